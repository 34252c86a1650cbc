"""Fixtures: real brokers and workers on random loopback ports, always stopped."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from titan_zmq.local import LocalCluster, wait_for

ROOT = Path(__file__).resolve().parent.parent
# Workers import test helper functions (tests.jobs) from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Heartbeats of every broker and worker the tests start (LocalCluster, `titan` subprocesses: they
# inherit this environment). The defaults (0.5 s x 4 = 2 s) are too tight for a busy 2-core
# machine: a worker or a broker stalled for a second or two must not be taken for gone. A
# silence of HEARTBEAT_WINDOW seconds is; a test that waits for an expiry waits longer than that.
# Tests of the heartbeat machinery itself set their own values.
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_LIVENESS = 10
HEARTBEAT_WINDOW = HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS
os.environ["TITAN_HEARTBEAT_INTERVAL"] = str(HEARTBEAT_INTERVAL)
os.environ["TITAN_HEARTBEAT_LIVENESS"] = str(HEARTBEAT_LIVENESS)

# The suite runs in two processes at once (pytest-xdist, `-n 2 --dist loadfile` in setup.cfg). Each
# takes its own slice of the ports services are given (so a service of one never answers another's
# health probe) and of the ports broker groups bind (titan_zmq/ha/local.py). Each file runs whole in
# one process; the two network-namespace modules pick their subnets from separate ranges.
_WORKER = int((os.environ.get("PYTEST_XDIST_WORKER") or "gw0")[2:] or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))


def _slice(lo: int, hi: int) -> tuple[int, int]:
    size = (hi - lo + 1) // _WORKERS
    start = lo + _WORKER * size
    return start, start + size - 1


os.environ["TITAN_SERVICE_PORTS"] = "{}-{}".format(*_slice(20000, 29999))
GROUP_PORTS = _slice(30000, 32767)


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[LocalCluster]:
    """Two workers with 2 slots each, shared by the tests of one module that do not break it."""
    with LocalCluster(workers=2, slots=2) as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A broker and no workers yet: the test adds what it needs, and may kill anything."""
    with LocalCluster(workers=0) as c:
        yield c


__all__ = ["GROUP_PORTS", "HEARTBEAT_INTERVAL", "HEARTBEAT_LIVENESS", "HEARTBEAT_WINDOW", "wait_for"]
