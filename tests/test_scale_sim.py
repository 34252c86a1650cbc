"""The scale benchmark's simulated workers speak the worker protocol: the broker registers them and
their answers finish jobs (benchmarks/simworkers.py)."""

from __future__ import annotations

import pytest

from benchmarks.simworkers import start_swarms
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.process import stop_processes

WORKERS = 20


@pytest.mark.timeout(60)
def test_simulated_workers_register_and_finish_jobs() -> None:
    with LocalCluster(workers=0) as cluster:
        client = cluster.client(timeout=30)
        sims = start_swarms(cluster.address, WORKERS, per_process=WORKERS)
        try:
            wait_for(lambda: len(client.workers()) == WORKERS, 30, f"{WORKERS} simulated workers to register")
            names = {w["name"] for w in client.workers()}
            assert names == {f"sim0-{i}" for i in range(WORKERS)}
            assert client.map("benchmarks.noop:noop", range(50), timeout=30) == [None] * 50
            handles = [client.submit("benchmarks.noop:noop", args=[i]) for i in range(5)]
            assert [h.result(timeout=30) for h in handles] == [None] * 5
            done = wait_for(lambda: sum(w["done"] for w in client.workers()) >= 55, 10, "55 jobs counted done")
            assert done
            assert all(p.poll() is None for p in sims), "a simulator process exited"
        finally:
            stop_processes(sims)
