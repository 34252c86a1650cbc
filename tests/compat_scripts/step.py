# A job script in the original Titan's style: it imports titan_sdk on the worker, records that it
# ran (and where), and passes a value on through TitanStore.
#   python step.py TAG NAME
import os
import sys

from titan_sdk import TitanClient

tag, name = sys.argv[1], sys.argv[2]
client = TitanClient()
client.store_put(f"{tag}:{name}", os.environ.get("TITAN_WORKER", "?"))
client.store_sadd(f"{tag}:done", name)
print(f"[{name}] done on {os.environ.get('TITAN_WORKER')}")
