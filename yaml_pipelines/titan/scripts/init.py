"""A first step: says what it was started with (its arguments) and on which worker."""

import os
import sys

print("init", " ".join(sys.argv[1:]) or "-", "on", os.environ.get("TITAN_WORKER", "?"))
