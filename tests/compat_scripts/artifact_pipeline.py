# Orchestrator: artifacts between jobs, a project uploaded and run, a file round trip.
#   python artifact_pipeline.py TAG WORKDIR
import os
import sys

from common import wait_all
from titan_sdk.titan_sdk import TitanClient, TitanJob

tag, work = sys.argv[1], sys.argv[2]
client = TitanClient()
client.submit_dag("artifacts", [
    TitanJob("produce", "artifact_producer.py", args=tag),
    TitanJob("consume", "artifact_consumer.py", args=tag, parents=["produce"]),
])
status = wait_all(client, ["produce", "consume"])
here = os.path.join(work, "model.txt")
got = client.get_artifact(f"{tag}:model", save_path=here)


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


print("pipeline", status, got, read(here).strip() if got else None)

project = os.path.join(work, "proj")
os.makedirs(project, exist_ok=True)
with open(os.path.join(project, "main.py"), "w") as f:
    f.write("import sys\nfrom titan_sdk import TitanClient\nTitanClient().store_put(sys.argv[1] + ':proj', 'ran')\n")
print("project", client.upload_project_folder(project, f"proj_{tag}"))
client.submit_job(TitanJob("runproj", f"proj_{tag}/main.py", args=tag, is_archive=True))
print("archive", wait_all(client, ["runproj"]), client.store_get(f"{tag}:proj"))

data = os.path.join(work, f"data_{tag}.bin")
with open(data, "wb") as f:
    f.write(b"\x01\x02" * 1000)
print("upload", client.upload_file(data), client.upload_file(os.path.join(work, "missing.bin")))
back = os.path.join(work, "back.bin")
print("fetch", client.fetch_artifact(f"data_{tag}.bin", save_path=back), read(back, "rb") == b"\x01\x02" * 1000,
      client.fetch_artifact("never_uploaded.bin"))
print("deploy", client.deploy_script(os.path.join(project, "main.py")), client.get_artifact(f"{tag}:nothing"))
