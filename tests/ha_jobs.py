"""Jobs of the HA tests: each run writes when it starts and ends, for the checker."""

from __future__ import annotations

import os
import time


def logged(path: str, seconds: float = 0.05) -> str:
    """Sleep ``seconds``, between a ``start`` and an ``end`` line in ``path`` (job id, pid, time)."""
    jid = os.environ.get("TITAN_JOB_ID", "?")
    with open(path, "a") as fh:
        fh.write(f"start {jid} {os.getpid()} {time.time():.6f}\n")
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(f"end {jid} {os.getpid()} {time.time():.6f}\n")
    return jid
