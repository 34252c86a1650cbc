"""A script job: its content travels to the worker with the job."""

import os
import sys

name = sys.argv[1] if len(sys.argv) > 1 else "there"
print(f"hello {name}, from job {os.environ['TITAN_JOB_ID']} attempt {os.environ['TITAN_ATTEMPT']}")
