"""Where the ``titan_sdk`` shim lives, and the environment that puts it on a job's path.

Kept free of imports beyond the standard library: the worker imports it once at start.
"""

from __future__ import annotations

import os
from pathlib import Path

SHIM_DIR = str(Path(__file__).resolve().parent / "shim")  # holds the package ``titan_sdk``


def with_sdk_shim(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` with :data:`SHIM_DIR` APPENDED to ``PYTHONPATH`` (if not there already).

    Appended, not prepended: whatever else provides ``titan_sdk`` (a real install, a folder on the
    path) wins; the shim only answers when nothing else does."""
    out = dict(env)
    parts = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SHIM_DIR not in parts:
        out["PYTHONPATH"] = os.pathsep.join([*parts, SHIM_DIR])
    return out
