"""``python -m titan_zmq.compat script.py [args...]``: run a script written for the original Titan SDK.

The script runs as ``__main__`` (``sys.argv`` is ``[script.py, args...]``, its folder on ``sys.path``
as ``python script.py`` would put it), with the shim folder FIRST on ``sys.path``: inside the runner
``import titan_sdk`` (and ``titan_sdk.titan_sdk``) is always this layer, even where a real
``titan_sdk`` is installed or sits beside the script, since the runner's purpose is to run such
scripts on titan_zmq. The shim is also put first on ``PYTHONPATH``, for the processes the script
starts. (On a worker the shim is appended instead, so a real ``titan_sdk`` wins there: see
:func:`titan_zmq.compat.paths.with_sdk_shim`.)
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from titan_zmq.compat.paths import SHIM_DIR

USAGE = "usage: python -m titan_zmq.compat SCRIPT.py [ARGS...]  (runs a titan_sdk script on titan_zmq)"


def run(argv: list[str]) -> int:
    """Run ``argv[0]`` with ``argv[1:]`` as its arguments; its exit status (SystemExit passes through)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    script = Path(argv[0])
    if not script.is_file():
        print(f"titan_zmq.compat: no such script: {script}", file=sys.stderr)
        return 2
    for name in [m for m in sys.modules if m == "titan_sdk" or m.startswith("titan_sdk.")]:
        del sys.modules[name]  # imported from elsewhere before the runner took over
    script_dir = str(script.resolve().parent)
    # sys.path[0] is the runner's own entry (the working directory, for -m): the script's folder
    # replaces it, as for `python script.py`, with the shim in front of everything.
    sys.path[0:1] = [SHIM_DIR, script_dir]
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SHIM_DIR]
    os.environ["PYTHONPATH"] = os.pathsep.join([SHIM_DIR, *parts])
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
    return 0
