"""Fan-in: sum the parents' results (JSON in the file named by $TITAN_INPUTS) and print the total."""

import json
import os

with open(os.environ["TITAN_INPUTS"]) as fh:
    inputs = json.load(fh)
print(f"{len(inputs)} parents, total {sum(inputs.values())}")
