# Fan out N workers' worth of jobs, then one job that runs after all of them.   python fanout.py TAG N
import sys

from common import wait_all
from titan_sdk import TitanClient, TitanJob

tag, n = sys.argv[1], int(sys.argv[2])
client = TitanClient()
shards = [TitanJob(f"shard_{i}", "step.py", args=[tag, f"shard_{i}"]) for i in range(n)]
final = TitanJob("collect", "step.py", args=f"{tag} collect", parents=[j.id for j in shards])
client.submit_dag("fanout", [*shards, final])
status = wait_all(client, [j.id for j in shards] + ["collect"])
members = client.store_smembers(f"{tag}:done")
print(len(members), sorted(members))
sys.exit(0 if set(status.values()) == {"COMPLETED"} else 1)
