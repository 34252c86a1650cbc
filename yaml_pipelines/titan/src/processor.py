"""A processing step: prints its argument and the jobs it ran after.

The worker leaves the parents' results as JSON in the file named by $TITAN_INPUTS; their ids
start with the run's DAG id, which is stripped here so the output reads like the YAML.
"""

import json
import os
import sys

prefix = os.environ.get("TITAN_DAG_ID", "") + "."
parents = []
if os.environ.get("TITAN_INPUTS"):
    with open(os.environ["TITAN_INPUTS"]) as fh:
        parents = sorted(p[len(prefix):] if p.startswith(prefix) else p for p in json.load(fh))
print(" ".join(sys.argv[1:]) or "-", "after", ", ".join(parents) or "nothing", "on", os.environ.get("TITAN_WORKER", "?"))
