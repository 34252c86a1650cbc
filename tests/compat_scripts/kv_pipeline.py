# Orchestrator: producer then consumer, talking through TitanStore.   python kv_pipeline.py TAG
import sys

from common import wait_all
from titan_sdk.titan_sdk import TitanClient, TitanJob

tag = sys.argv[1]
client = TitanClient()
client.submit_dag("kv", [
    TitanJob("produce", "kv_producer.py", args=tag),
    TitanJob("consume", "kv_consumer.py", args=tag, parents=["produce"]),
])
status = wait_all(client, ["produce", "consume"])
print(status, client.store_get(f"{tag}:summary"))
sys.exit(0 if set(status.values()) == {"COMPLETED"} else 1)
