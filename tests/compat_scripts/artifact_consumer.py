# Consumer job: fetches the producer's artifact by its key.   python artifact_consumer.py TAG
import os
import sys
import tempfile

from titan_sdk import TitanClient

tag = sys.argv[1]
os.chdir(tempfile.mkdtemp(prefix="consumer-"))
client = TitanClient()
if not client.get_artifact(f"{tag}:model", save_path="got.txt"):
    sys.exit("no artifact")
with open("got.txt") as f:
    text = f.read()
client.store_put(f"{tag}:seen", text.strip())
print("consumed", text.strip())
