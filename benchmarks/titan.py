"""titan_zmq itself: no-op jobs through an embedded LocalCluster (a broker and worker processes)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.noop import TARGET
from titan_zmq.client import TitanClient
from titan_zmq.local import LocalCluster

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the repository root: workers import benchmarks.noop from it


@contextmanager
def cluster(workers: int, slots: int, broker_args: list[str] | None = None) -> Iterator[LocalCluster]:
    """A started LocalCluster whose workers can import ``benchmarks``; stopped however the block ends."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with LocalCluster(workers=workers, slots=slots, env={"PYTHONPATH": path}, broker_args=broker_args) as c:
        log.info(
            "titan: broker pid %d on %s, worker pids %s",
            c.broker.pid if c.broker else -1, c.address, [p.pid for p in c.workers],
        )  # fmt: skip
        yield c


def warm_up(client: TitanClient, workers: int, slots: int) -> None:
    """Start every call executor and import the job's module there, outside the clock."""
    n = max(200, 50 * workers * slots)
    got = client.map(TARGET, range(n), timeout=120)
    if got != list(range(n)):
        raise RuntimeError("titan warm-up returned wrong results")


def throughput(client: TitanClient, jobs: int) -> float:
    """No-op jobs per second through ``TitanClient.map``, results checked."""
    timeout = 60.0 + jobs / 100  # gives up only below 100 jobs/s
    start = time.perf_counter()
    got = client.map(TARGET, range(jobs), timeout=timeout)
    elapsed = time.perf_counter() - start
    if len(got) != jobs or got[0] != 0 or got[-1] != jobs - 1:
        raise RuntimeError("titan map returned wrong results")
    return jobs / elapsed


def latencies(client: TitanClient, samples: int, warmup: int = 20, timeout: float = 30.0) -> list[float]:
    """Seconds from submit to result, one job in flight at a time."""
    out = []
    for i in range(warmup + samples):
        t0 = time.perf_counter()
        value = client.submit(TARGET, args=[i]).result(timeout=timeout)
        dt = time.perf_counter() - t0
        if value != i:
            raise RuntimeError(f"titan job returned {value!r}, expected {i}")
        if i >= warmup:
            out.append(dt)
    return out
