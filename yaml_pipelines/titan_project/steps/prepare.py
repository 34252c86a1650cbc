"""Runs from inside the shipped project folder: imports lib/ and reads data/ by relative path."""

import json
import sys

sys.path.insert(0, ".")
from lib.words import count

with open("data/colours.txt") as fh:
    print(json.dumps(count(fh.read())))
