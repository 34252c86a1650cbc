"""Transform: read the parent's result from $TITAN_INPUTS and report what it got."""

import json
import os

with open(os.environ["TITAN_INPUTS"]) as fh:
    inputs = json.load(fh)
print("transform got parents:", ",".join(sorted(inputs)))
