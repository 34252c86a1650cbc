# Producer job: writes a model file in its working directory and publishes it.   python artifact_producer.py TAG
import os
import sys
import tempfile

from titan_sdk import TitanClient

tag = sys.argv[1]
os.chdir(tempfile.mkdtemp(prefix="producer-"))  # its own workspace, as the original's titan_workspace
name = f"model_{tag}.txt"
with open(name, "w") as f:
    f.write(f"weights for {tag}\n")
client = TitanClient()
ok = client.publish_artifact(f"{tag}:model", name)
print("published", ok)
sys.exit(0 if ok else 1)
