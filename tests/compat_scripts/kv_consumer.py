# Consumer job: reads what the producer left, and answers with a summary.   python kv_consumer.py TAG
import sys

from titan_sdk import TitanClient

tag = sys.argv[1]
client = TitanClient()
accuracy = client.store_get(f"{tag}:accuracy")
files = client.store_smembers(f"{tag}:files")
if accuracy == "NULL" or not files:
    sys.exit(f"nothing from the producer: {accuracy!r} {files!r}")
client.store_put(f"{tag}:summary", f"{accuracy}|{','.join(sorted(files))}")
print(f"Downstream task received accuracy: {accuracy}")
