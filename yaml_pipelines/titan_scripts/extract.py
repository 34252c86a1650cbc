"""Extract: emit N records (N from the command line)."""

import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
print(",".join(f"record-{i}" for i in range(n)))
