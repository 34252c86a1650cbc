"""A dynamic switch: a probe measures (simulated) traffic and submits one of two DAGs.

python -m examples.agentic.dynamic_switch [TRAFFIC]
"""

from __future__ import annotations

import sys
from pathlib import Path

import titan_zmq
from titan_zmq import LocalCluster

THRESHOLD = 1000
MOD = "examples.agentic.dynamic_switch"  # jobs name their functions, so workers import them from here
ROOT = str(Path(__file__).resolve().parents[2])


def measure(simulated: int) -> int:
    """Stands in for a real measurement (a metrics query, a queue length...)."""
    return simulated


def scale_out(n: int) -> str:
    return f"scaled out to {n} shards"


def cache_warm() -> str:
    return "cache warmed"


def report(*, inputs: dict[str, str]) -> str:
    return "; ".join(sorted(inputs.values()))


def switch(simulated: int) -> str:
    """Runs on a worker: measure, then grow the DAG with the branch that fits."""
    ctx = titan_zmq.current()
    traffic = measure(simulated)
    if traffic > THRESHOLD:  # heavy: fan out over shards, then report
        shards = [ctx.spawn(f"{MOD}:scale_out", args=[i]) for i in range(1, 4)]
        ctx.spawn(f"{MOD}:report", after=shards, id=f"{ctx.dag_id}.report")
        return f"heavy traffic ({traffic}): 3 shards"
    ctx.spawn(f"{MOD}:report", after=[ctx.spawn(f"{MOD}:cache_warm")], id=f"{ctx.dag_id}.report")
    return f"light traffic ({traffic}): warm the cache"


def run(traffic: int) -> tuple[str, str]:
    with LocalCluster(workers=2, env={"PYTHONPATH": ROOT}) as cluster:
        client = cluster.client()
        job = client.submit(f"{MOD}:switch", args=[traffic])
        decision = job.result(timeout=60)
        final = client.wait([f"{job.id}:dag.report"], timeout=60)[f"{job.id}:dag.report"]
        return decision, final.result


if __name__ == "__main__":
    decision, outcome = run(int(sys.argv[1]) if len(sys.argv) > 1 else 1500)
    print(decision, "->", outcome)
