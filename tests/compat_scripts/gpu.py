# GPU routing: one job needs a GPU worker, one runs anywhere ("GENERAL").   python gpu.py TAG
import sys

from common import wait_all
from titan_sdk import TitanClient, TitanJob

tag = sys.argv[1]
client = TitanClient()
client.submit_job(TitanJob("train", "step.py", args=f"{tag} train", requirement="GPU"))
client.submit_job(TitanJob("report", "step.py", args=f"{tag} report", requirement="GENERAL"))
status = wait_all(client, ["train", "report"])
print(status, client.store_get(f"{tag}:train"))
sys.exit(0 if set(status.values()) == {"COMPLETED"} else 1)
