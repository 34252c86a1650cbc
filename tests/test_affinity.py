"""Placement by node and by parent: pins, soft fallback after a wait, strict waiting, cache preference."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_scheduler import FakeClock, spec, state, submit
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.client import Dag, JobState
from titan_zmq.errors import JobError
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sched(clock: FakeClock) -> Scheduler:
    s = Scheduler(clock=lambda: clock.now, wall=lambda: clock.now)
    for name in ("a", "b"):
        s.seen(s.worker_ready(name.encode(), {"name": name, "host": "h", "tags": [], "slots": 4, "pid": 1}))
    return s


def placed(s: Scheduler) -> dict[str, str]:
    s.dispatch()
    out = {j["id"]: ident.decode() for ident, jobs in s.fx.assign.items() for j in jobs}
    s.fx.clear()
    return out


def finish(s: Scheduler, jid: str, result: Any = None) -> None:
    e = s.entry(jid)
    assert e.worker is not None
    s.on_result(s.workers[e.worker], {"id": jid, "outcome": "succeeded", "lease": e.lease, "result": result})


def test_node_pin(sched: Scheduler) -> None:
    submit(sched, spec("p1", node="b"), spec("p2", node="b"), spec("p3", node="ghost"))
    assert placed(sched) == {"p1": "b", "p2": "b"}
    assert sched.record(sched.entry("p3"))["waiting"] == "waiting for worker ghost"


def _parent_then_blocked_child(sched: Scheduler, affinity: str) -> None:
    """b has one slot: the parent runs there, a blocker queued for b gets it next, the child waits."""
    sched.workers[b"b"].slots = 1
    submit(sched, spec("parent", node="b"))
    assert placed(sched) == {"parent": "b"}
    submit(sched, spec("blocker", node="b"))
    submit(sched, spec("child", depends_on=["parent"], affinity=affinity, affinity_wait=5))
    finish(sched, "parent")
    assert placed(sched) == {"blocker": "b"}  # FIFO on b's queue: the blocker came first
    assert state(sched, "child") is JobState.QUEUED


def test_soft_affinity_follows_the_parent_then_falls_back(sched: Scheduler, clock: FakeClock) -> None:
    submit(sched, spec("p0", node="a"))
    placed(sched)
    submit(sched, spec("near", depends_on=["p0"], affinity="parent"))
    finish(sched, "p0")
    assert placed(sched) == {"near": "a"}  # b is just as free: it went where its parent ran
    _parent_then_blocked_child(sched, "parent")
    assert sched.record(sched.entry("child"))["waiting"] == "waiting for a free slot on worker b (any worker after 5s)"
    clock.advance(4.9)
    sched.release_held()
    assert placed(sched) == {}
    clock.advance(0.2)
    sched.release_held()
    assert placed(sched) == {"child": "a"}


def test_strict_affinity_waits(sched: Scheduler, clock: FakeClock) -> None:
    _parent_then_blocked_child(sched, "strict")
    clock.advance(3600)
    sched.release_held()
    assert placed(sched) == {}
    assert sched.record(sched.entry("child"))["waiting"] == "waiting for a free slot on worker b"
    finish(sched, "blocker")
    assert placed(sched) == {"child": "b"}


def test_cache_preference_among_equals(sched: Scheduler) -> None:
    import hashlib

    content = b"print('x')\\n"
    sha = hashlib.sha256(content).hexdigest()
    sched.workers[b"b"].cached.add(sha)
    sched.submit([{"id": "s1", "kind": "script", "target": "x.py", "blob": sha}], {sha: content})
    assert placed(sched) == {"s1": "b"}


def test_affinity_needs_a_parent(sched: Scheduler) -> None:
    with pytest.raises(JobError, match="has no parent"):
        submit(sched, spec("orphan", affinity="parent"))


def test_affinity_end_to_end(cluster: LocalCluster) -> None:
    cluster.add_worker(name="left", slots=2)
    cluster.add_worker(name="right", slots=2)
    cluster.wait_workers(2)
    client = cluster.client()
    dag = Dag("aff")
    roots = [dag.add("tests.jobs:whoami", node=n) for n in ("left", "right")]
    kids = [dag.add("tests.jobs:whoami", after=[r], affinity="parent") for r in roots for _ in range(3)]
    recs = client.submit_dag(dag).wait(30)
    assert [recs[r].worker for r in roots] == ["left", "right"]
    assert [recs[k].worker for k in kids] == ["left"] * 3 + ["right"] * 3
