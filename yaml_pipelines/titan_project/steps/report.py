"""Reads what its parents returned from $TITAN_INPUTS (the data bus) and prints a report."""

import json
import os
import sys

with open(os.environ["TITAN_INPUTS"]) as fh:
    parents = json.load(fh)
print("report", sys.argv[1:], "after", sorted(parents))
