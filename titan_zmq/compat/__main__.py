"""``python -m titan_zmq.compat script.py [args...]``: see :mod:`titan_zmq.compat.runner`."""

import sys

from titan_zmq.compat.runner import run

sys.exit(run(sys.argv[1:]))
