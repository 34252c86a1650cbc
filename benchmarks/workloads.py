"""titan_zmq workloads beyond no-op calls: script jobs, a dynamic fan-out, memory per queued job, scaling.

Each function takes a running cluster (or starts its own) and returns plain figures; run.py puts
them next to their baselines.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.noop import TARGET
from benchmarks.report import percentile
from benchmarks.titan import cluster, throughput, warm_up
from titan_zmq.client import JobState, TitanClient

log = logging.getLogger(__name__)

SCRIPT = 'import sys\nprint("ok", sys.argv[1:])\n'  # what a small real script does: start, print, end


def write_script(folder: Path) -> str:
    path = folder / "noop_script.py"
    path.write_text(SCRIPT)
    return str(path)


def script_jobs(client: TitanClient, path: str, jobs: int, samples: int) -> dict[str, float]:
    """Script jobs/s (all submitted at once) and one-at-a-time p50/p99 through the cluster."""
    client.submit(script=path, args=["warm"]).result(timeout=60)  # the fork server starts here
    t0 = time.perf_counter()
    specs = [client.build(script=path, args=[str(i)]) for i in range(jobs)]
    recs = client.wait([h.id for h in client.submit_specs(specs)], timeout=60 + jobs / 2)
    rate = jobs / (time.perf_counter() - t0)
    bad = [r for r in recs.values() if r.state is not JobState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} script job(s) failed, e.g. {bad[0].error}")
    lat = []
    for i in range(samples + 3):
        t = time.perf_counter()
        client.submit(script=path, args=[str(i)]).result(timeout=60)
        if i >= 3:
            lat.append(time.perf_counter() - t)
    return {"jobs_per_s": rate, "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def direct_spawns(path: str, jobs: int, samples: int, parallel: int = 2) -> dict[str, float]:
    """The baseline: ``python script.py`` started directly, ``parallel`` at a time, and one at a time."""

    def run(n: int) -> None:
        for i in range(n):
            subprocess.run([sys.executable, path, str(i)], check=True, stdout=subprocess.DEVNULL, timeout=60)

    threads = [threading.Thread(target=run, args=(jobs // parallel,)) for _ in range(parallel)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = (jobs // parallel * parallel) / (time.perf_counter() - t0)
    lat = []
    for _ in range(samples):
        start = time.perf_counter()
        run(1)
        lat.append(time.perf_counter() - start)
    return {"jobs_per_s": rate, "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def fan_out(client: TitanClient, n: int) -> dict[str, float]:
    """One job spawns ``n`` no-op jobs into its DAG; seconds from submitting it until all of them ended."""
    t0 = time.perf_counter()
    parent = client.submit("benchmarks.noop:fan_out", args=[n])
    ids = parent.result(timeout=120)
    spawned = time.perf_counter() - t0
    recs = client.wait(ids, timeout=120 + n / 50)
    elapsed = time.perf_counter() - t0
    if len(recs) != n or any(r.state is not JobState.SUCCEEDED for r in recs.values()):
        raise RuntimeError("the fan-out's children did not all succeed")
    return {"jobs_per_s": n / elapsed, "elapsed_s": elapsed, "spawn_s": spawned}


def memory_per_job(jobs: int, batch: int = 1000) -> dict[str, float]:
    """Broker RSS growth per queued job: ``jobs`` no-op jobs that no worker can take stay queued."""
    with cluster(0, 1) as c:
        client = c.client()
        if c.broker is None:
            raise RuntimeError("the cluster has no broker process")
        broker = psutil.Process(c.broker.pid)

        def submit(n: int, first: int) -> None:
            for start in range(first, first + n, batch):
                specs = [client.build(TARGET, args=[i], requires=["bench-nowhere"])
                         for i in range(start, min(start + batch, first + n))]  # fmt: skip
                client.submit_specs(specs, watch=False)

        submit(batch, 0)  # the broker's structures and allocator pools exist before the baseline
        before = broker.memory_info().rss
        t0 = time.perf_counter()
        submit(jobs, batch)
        rate = jobs / (time.perf_counter() - t0)
        after = broker.memory_info().rss
        queued = client.pressure(["bench-nowhere"]).get("queued", 0)
    if queued < jobs:
        log.warning("only %d of %d jobs counted as queued", queued, jobs)
    spec = client.build(TARGET, args=[jobs], requires=["bench-nowhere"])
    import msgpack

    return {"bytes_per_job": (after - before) / jobs, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "submit_per_s": rate, "wire_bytes_per_job": float(len(msgpack.packb(spec)))}  # fmt: skip


def scaling(jobs: int, counts: tuple[int, ...] = (1, 2, 4, 8), slots: int = 2) -> dict[int, float]:
    """No-op jobs/s with 1, 2, 4 and 8 worker processes (``slots`` each)."""
    out = {}
    for w in counts:
        with cluster(w, slots) as c:
            client = c.client()
            warm_up(client, w, slots)
            out[w] = throughput(client, jobs)
        log.info("scaling: %d worker(s): %.0f jobs/s", w, out[w])
    return out


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
