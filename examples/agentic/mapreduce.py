"""MapReduce with the Python client: map over chunks on the grid, then one reduce job after all.

python -m examples.agentic.mapreduce
"""

from __future__ import annotations

from collections import Counter

from titan_zmq import LocalCluster
from titan_zmq.client import Dag

TEXT = ["the quick brown fox jumps over the lazy dog the dog sleeps", "a fox is quick and a dog is lazy the end"]


def count(line: str) -> dict[str, int]:
    return dict(Counter(line.split()))


def merge(*, inputs: dict[str, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in inputs.values():
        total.update(part)
    return dict(total.most_common())


def run() -> dict[str, int]:
    with LocalCluster(workers=2) as cluster:
        client = cluster.client()
        dag = Dag("wordcount")
        maps = [dag.add(count, args=[line]) for line in TEXT]
        reduce_id = dag.add(merge, after=maps)
        records = client.submit_dag(dag).wait(timeout=60)
        return dict(records[reduce_id].result)


if __name__ == "__main__":
    print(run())
