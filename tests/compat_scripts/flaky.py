# Fails its first two attempts, then succeeds (the worker numbers attempts in TITAN_ATTEMPT).
import os
import sys

attempt = int(os.environ.get("TITAN_ATTEMPT", "1"))
print(f"attempt {attempt}")
if attempt < 3:
    sys.exit(f"failing attempt {attempt} on purpose")
