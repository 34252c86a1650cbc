"""The data plane: large results stay on their worker, jobs run where their inputs are.

pip install . numpy && python examples/data_plane.py

A map step makes four arrays of 32 MB; each stays on the worker that made it, and the broker only
records a reference. A reduce step per array runs where its array already is (placement by
locality), reading it in place; the last step adds the sums. When the DAG ends, what it made in
between is freed. Then this process fetches an array itself, straight from the worker that made
it, and stores a value of its own for a job to use.
"""

from __future__ import annotations

from typing import Any

from titan_zmq import LocalCluster
from titan_zmq.client import Dag

N = 4_000_000  # 32 MB of float64 per partition


def partition(seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).random(N)  # larger than 256 KiB: kept on this worker


def total(inputs: dict[str, Any]) -> float:
    (arr,) = inputs.values()  # the parent's array itself, mapped from the worker's store
    return float(arr.sum())


def combine(inputs: dict[str, float]) -> float:
    return sum(inputs.values())


def scale(arr: Any, factor: float) -> float:
    return float((arr * factor).mean())


def main() -> None:
    with LocalCluster(workers=2) as cluster:
        client = cluster.client()
        dag = Dag("mapreduce")
        maps = [dag.add(partition, args=[i], id=f"mapreduce.map{i}") for i in range(4)]
        sums = [dag.add(total, after=[m], id=f"mapreduce.sum{i}") for i, m in enumerate(maps)]
        dag.add(combine, after=sums, id="mapreduce.all")
        records = client.submit_dag(dag).wait(timeout=120)
        print("sum of all partitions:", round(records["mapreduce.all"].result, 3))
        for i in range(4):
            m, s = records[f"mapreduce.map{i}"], records[f"mapreduce.sum{i}"]
            (src,) = (s.fetched or {"?": {"from": "?"}}).values()
            where = "read where it was made" if src["from"] == "local" else f"fetched from {src['from']}"
            print(f"  partition {i}: made on {m.worker}, summed on {s.worker} ({where})")

        print(f"objects held once the DAG ended: {len(client.objects())} (what it made in between is freed)")

        ref = client.submit(partition, args=[9]).result(timeout=60, fetch=False)  # a reference: {id, size, kind}
        arr = client.get(ref)  # fetched straight from its worker, not through the broker
        print(f"fetched a partition here: {arr.nbytes / 1e6:.0f} MB, mean {arr.mean():.4f}, held by",
              client.locate(ref)["holders"])
        mine = client.put(arr[:1000])  # a value of ours, held by a worker until released
        print("a job on our value:", round(client.submit(scale, args=[mine, 2.0]).result(timeout=60), 4))
        client.release(mine)
        for o in client.objects():  # a result outside any DAG is kept object_ttl; an argument, by its job
            print(f"  held: {o['id'][:12]}… {o['size'] / 1e6:.1f} MB on {o['holders']}, owners {o['owners']}")


if __name__ == "__main__":
    main()
