"""A self-healing agent: a fragile job is re-spawned until it succeeds; the KV store counts tries.

python -m examples.agentic.self_healing
"""

from __future__ import annotations

from pathlib import Path

import titan_zmq
from titan_zmq import LocalCluster
from titan_zmq.local import wait_for

MAX_ROUNDS = 10
MOD = "examples.agentic.self_healing"
ROOT = str(Path(__file__).resolve().parents[2])


def fragile(key: str, fails: int) -> str:
    """Fails its first ``fails`` tries (any worker, any round): the count lives in the cluster's KV store."""
    ctx = titan_zmq.current()
    tries = ctx.kv.incr(key)
    if tries <= fails:
        ctx.kv.sadd(f"{key}:failures", f"round {ctx.iteration}")
        ctx.successor(f"{MOD}:fragile", args=[key, fails], max_iterations=MAX_ROUNDS)  # try again, bounded
        return f"try {tries} failed"
    return f"succeeded on try {tries}"


def run(fails: int = 3) -> dict[str, object]:
    with LocalCluster(workers=2, env={"PYTHONPATH": ROOT}) as cluster:
        client = cluster.client()
        key = "healing"
        client.kv.delete(key)
        first = client.submit(f"{MOD}:fragile", args=[key, fails])
        first.result(timeout=60)
        dag = f"{first.id}:dag"

        def healed() -> str | None:
            done = [r for r in client.dag_status(dag) if str(r.result).startswith("succeeded")]
            return str(done[0].result) if done else None

        outcome = wait_for(healed, 60, "the job to heal")
        return {"outcome": outcome, "tries": client.kv.get(key), "failures": client.kv.smembers(f"{key}:failures")}


if __name__ == "__main__":
    print(run())
