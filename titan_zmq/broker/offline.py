"""The broker's state, rebuilt from a stopped broker's data directory: what ``titan aof check``
reports of it and what ``titan aof compact`` writes as its snapshot.

The journal package reads and writes records (``aof.tools``); this module gives them meaning
with the broker's own replay (``broker.durable``), so the layers point one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from titan_zmq.aof import tools
from titan_zmq.aof.kv import KVStore
from titan_zmq.broker.durable import Restorer, capture
from titan_zmq.broker.scheduler import Scheduler


def _replay() -> tuple[Scheduler, Restorer]:
    sched = Scheduler()
    return sched, Restorer(sched, KVStore(), orphan_wait=0.0)


def _jobs_by_state(sched: Scheduler) -> dict[str, int]:
    states: dict[str, int] = {}
    for e in sched.jobs.values():
        states[e.state.value] = states.get(e.state.value, 0) + 1
    return states


def check(root: Path) -> dict[str, Any]:
    """Every file read as a start would read it (nothing changed): damage, and the state it holds."""
    sched, restorer = _replay()
    report = tools.check(root, restorer.apply)
    report["jobs"] = _jobs_by_state(sched)
    report["kv_keys"] = len(restorer.kv)
    return report


def compact(root: Path) -> dict[str, Any]:
    """Replace the snapshot and journals by one snapshot of the live state (the broker stopped)."""
    sched, restorer = _replay()

    def snapshot() -> list[list[Any]]:
        restorer.finish()
        return capture(sched, restorer.kv)

    report = tools.compact(root, restorer.apply, snapshot)
    report["jobs"] = len(sched.jobs)
    report["kv_keys"] = len(restorer.kv)
    return report


repair = tools.repair  # needs no state: it keeps the records before the damage
