# A diamond DAG: extract -> (clean, enrich) -> merge.   python diamond.py TAG
import sys

from common import wait_all
from titan_sdk import TitanClient, TitanJob

tag = sys.argv[1]
client = TitanClient()
jobs = [
    TitanJob("extract", "step.py", args=f"{tag} extract", priority=5),
    TitanJob("clean", "step.py", args=f"{tag} clean", parents=["extract"]),
    TitanJob("enrich", "step.py", args=f"{tag} enrich", parents=["extract"]),
    TitanJob("merge", "step.py", args=f"{tag} merge", parents=["clean", "enrich"]),
]
print(client.submit_dag("diamond", jobs))
status = wait_all(client, [j.id for j in jobs])
print(status)
print(client.fetch_logs("DAG-merge"))
sys.exit(0 if set(status.values()) == {"COMPLETED"} else 1)
