"""The scheduler's short paths (plain jobs accepted in bulk, a lone ready queue drained, bare
successes) end exactly where its general paths do: the same job states, the same published
changes, the same journal records and the same messages to workers and clients.

Hypothesis drives random job mixes through two schedulers, one with its fast paths on and one
with them off, step by step, and compares everything that leaves them.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titan_zmq.broker.scheduler import Entry, Scheduler
from titan_zmq.client import Dag
from titan_zmq.job import JobState, Outcome
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def make(clock: Clock, fast: bool) -> Scheduler:
    s = Scheduler(clock=lambda: clock.now, wall=lambda: 1_700_000_000.0 + clock.now,
                  rng=random.Random(7), max_finished=40)  # fmt: skip
    s.fast_paths = fast
    s.journaled()
    return s


def published(changed: list[Entry]) -> list[dict[str, Any]]:
    """What the broker publishes on ``event.job`` for a turn's changes (see Broker._publish_changes)."""
    return [{"id": e.job.id, "state": e.state.value, "worker": e.worker_name, "attempts": e.attempts,
             "dag": e.job.dag} for e in changed]  # fmt: skip


def turn(s: Scheduler) -> dict[str, Any]:
    """Everything one broker turn would send or write, taken from the scheduler."""
    changed = s.take_changes()
    out = {
        "events": published(changed),
        "ops": s.take_ops(changed),
        "assign": {k: list(v) for k, v in s.fx.assign.items()},
        "done": {k: list(v) for k, v in s.fx.done.items()},
        "ok": {k: list(v) for k, v in s.fx.ok.items()},
        "kill": {k: list(v) for k, v in s.fx.kill.items()},
        "counters": dict(s.counters),
        "pending": dict(s.pending),
    }
    s.fx.clear()
    return out


job_spec = st.fixed_dictionaries(
    {"priority": st.integers(0, 2), "gpu": st.booleans()},
    optional={"retries": st.integers(0, 2), "idem": st.booleans()},
)
batch = st.tuples(st.booleans(), st.lists(job_spec, min_size=1, max_size=6))  # (as a template?, jobs)
outcome = st.sampled_from(["ok", "ok", "ok", "fail", "timeout", "returned", "output"])
step = st.tuples(st.one_of(st.none(), batch), st.lists(outcome, max_size=8), st.booleans())


def submit(s: Scheduler, n: int, as_template: bool, jobs: list[dict[str, Any]], client: bytes) -> list[str]:
    if as_template:  # a template's jobs share every field but id and args
        first = jobs[0]
        template = {"kind": "call", "target": "tests.jobs:echo", "priority": first["priority"],
                    "requires": ["gpu"] if first["gpu"] else [], "retries": first.get("retries", 0)}  # fmt: skip
        items = [[f"j{n}-{i}", [i]] for i in range(len(jobs))]
        return s.submit_items(template, items, {}, watcher=client, owner=client, lean=True)
    specs = []
    for i, j in enumerate(jobs):
        spec: dict[str, Any] = {"id": f"j{n}-{i}", "kind": "call", "target": "tests.jobs:echo", "args": [i],
                                "priority": j["priority"], "requires": ["gpu"] if j["gpu"] else []}  # fmt: skip
        if j.get("retries"):
            spec["retries"] = j["retries"]
        if j.get("idem"):
            spec["idempotency_key"] = f"k{n}-{i}"
        specs.append(spec)
    return s.submit(specs, {}, watcher=client, owner=client)


def report(s: Scheduler, wire: dict[str, Any], what: str, ident: bytes, fast: bool) -> None:
    """A worker's report of one attempt: a bare success on the short path, a full result otherwise."""
    w = s.workers[ident]
    jid, lease = wire["id"], wire["lease"]
    if what == "ok":
        if fast:
            s.on_success(w, jid, lease, 0.01, {"r": jid})
        else:
            s.on_result(w, {"id": jid, "lease": lease, "outcome": Outcome.SUCCEEDED.value, "runtime": 0.01,
                            "result": {"r": jid}})  # fmt: skip
        return
    res: dict[str, Any] = {"id": jid, "lease": lease, "runtime": 0.02}
    if what == "output":
        res.update(outcome=Outcome.SUCCEEDED.value, result=1, stdout="out\n", exit_code=0)
    elif what == "returned":
        res.update(outcome=Outcome.RETURNED.value)
    else:
        res.update(outcome=(Outcome.TIMEOUT if what == "timeout" else Outcome.FAILED).value, error="boom")
    s.on_result(w, res)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=12))
def test_fast_and_general_paths_end_the_same(steps: list[Any]) -> None:
    clock = Clock()
    fast, slow = make(clock, True), make(clock, False)
    for s in (fast, slow):
        s.worker_ready(b"w-cpu", {"name": "w-cpu", "host": "h", "tags": [], "slots": 2, "pid": 1, "prefetch": 4})
        s.worker_ready(b"w-gpu", {"name": "w-gpu", "host": "h", "tags": ["gpu"], "slots": 1, "pid": 2})
    assert turn(fast) == turn(slow)
    for n, (sub, outcomes, later) in enumerate(steps):
        if sub is not None:
            as_template, jobs = sub
            assert submit(fast, n, as_template, jobs, b"c1") == submit(slow, n, as_template, jobs, b"c1")
        fast.dispatch()
        slow.dispatch()
        t_fast, t_slow = turn(fast), turn(slow)
        assert t_fast == t_slow
        leased = [(ident, wire) for ident, wires in t_fast["assign"].items() for wire in wires]
        for (ident, wire), what in zip(leased, outcomes, strict=False):
            report(fast, wire, what, ident, True)
            report(slow, wire, what, ident, False)
        assert turn(fast) == turn(slow)
        if later:  # backoffs and held jobs come due
            clock.now += 5.0
            fast.release_held()
            slow.release_held()
            assert turn(fast) == turn(slow)
    assert {j: fast.record(e) for j, e in fast.jobs.items()} == {j: slow.record(e) for j, e in slow.jobs.items()}
    assert list(fast.finished) == list(slow.finished)


def test_a_dag_child_entering_pending_is_published_without_a_data_dir() -> None:
    """Without a journal the broker tracks changes only for subscribers; a DAG child that enters
    ``pending`` is such a change (it used to be marked changed only when journaling)."""
    s = Scheduler()
    assert s.ops is None  # no data directory
    s.submit([{"id": "p", "kind": "call", "target": "m:f", "dag": "d"},
              {"id": "c", "kind": "call", "target": "m:f", "dag": "d", "depends_on": ["p"]}], {})  # fmt: skip
    changes = {e.job.id: e.state for e in s.take_changes()}
    assert changes == {"p": JobState.QUEUED, "c": JobState.PENDING}


def test_a_subscriber_sees_a_pending_dag_child(cluster: LocalCluster) -> None:
    """The same through a real broker without a data directory (and no worker, so the child stays
    pending): event.job carries the child's ``pending``."""
    client = cluster.client()
    with client.subscribe("event.job") as feed:
        states: dict[str, set[str]] = {}
        for n in range(30):  # the broker learns of the subscription asynchronously: try until it hears
            dag = Dag(f"d{n}")
            parent = dag.add(shell="true", id=f"p{n}")
            dag.add(shell="true", id=f"c{n}", after=[parent])
            client.submit_dag(dag)
            got = feed.next(timeout=1.0)
            while got is not None:
                for ch in got[1]["changes"]:
                    states.setdefault(ch["id"], set()).add(ch["state"])
                got = feed.next(timeout=0.2)
            if f"p{n}" in states:  # the subscription was live for this submission
                assert states[f"c{n}"] == {"pending"}
                assert states[f"p{n}"] == {"queued"}
                return
    pytest.fail(f"no event.job was published for 30 DAG submissions: {states}")
