# Producer job: publishes a metric and the files it handled.   python kv_producer.py TAG
import sys

from titan_sdk import TitanClient

tag = sys.argv[1]
client = TitanClient()
client.store_put(f"{tag}:accuracy", 98.5)
for name in ("batch_A.csv", "batch_B.csv"):
    client.store_sadd(f"{tag}:files", name)
print("produced")
