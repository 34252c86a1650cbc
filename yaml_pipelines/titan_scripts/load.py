"""Load: pretend to write into a table given as --table NAME."""

import sys

table = sys.argv[sys.argv.index("--table") + 1] if "--table" in sys.argv else "default"
print(f"loaded into {table}")
