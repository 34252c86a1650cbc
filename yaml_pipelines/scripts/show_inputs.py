"""Print the parents' results, which the worker leaves as JSON in the file named by $TITAN_INPUTS."""

import json
import os

with open(os.environ["TITAN_INPUTS"]) as fh:
    inputs = json.load(fh)
print(json.dumps(inputs, sort_keys=True))
