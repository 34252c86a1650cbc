"""Durable broker state: what the journal records and how a restarted broker carries on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_scheduler import FakeClock, add_worker, dispatch, make_sched, report, spec, submit
from titan_zmq.aof.kv import KVStore
from titan_zmq.broker.durable import Restorer, capture
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.errors import BrokerError, JobError
from titan_zmq.job import JobState

pytestmark = pytest.mark.timeout(60)

WINDOW = 4.0  # orphan window used below


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def journaled(clock: FakeClock) -> Scheduler:
    s = make_sched(clock)
    s.journaled()
    return s


def restart(ops: list[list[Any]], clock: FakeClock, **kw: Any) -> tuple[Scheduler, dict[str, int]]:
    """A new scheduler from journal ops, as a restarted broker builds it."""
    s = make_sched(clock, **kw)
    r = Restorer(s, KVStore(), WINDOW)
    for op in ops:
        r.apply(op)
    counts = r.finish()
    s.journaled()
    return s, counts


def _fields(s: Scheduler, jid: str) -> dict[str, Any]:
    rec = s.record(s.jobs[jid])
    rec.pop("waiting")
    return rec


def _busy_scheduler(clock: FakeClock) -> tuple[Scheduler, list[list[Any]]]:
    s = journaled(clock)
    ops: list[list[Any]] = []
    w = add_worker(s, "w1", slots=3)
    submit(s, spec("ok"), spec("bad", retries=2), spec("run"))
    dispatch(s)
    report(s, w, "ok", result={"v": 1}, stdout="hi\n")
    report(s, w, "bad", "failed", error="nope")  # retrying, held for its backoff
    submit(s, spec("later", delay=30), spec("gpu", requires=["gpu"]))
    submit(s, spec("p"), spec("c", depends_on=["p"], dag="d1"), spec("x"))
    dispatch(s)
    s.cancel("x")
    ops += s.take_ops()
    return s, ops


def test_a_restart_rebuilds_every_job_as_it_was(clock: FakeClock) -> None:
    s, ops = _busy_scheduler(clock)
    s2, counts = restart(ops, clock)
    assert list(s2.jobs) == list(s.jobs)
    for jid in s.jobs:
        assert _fields(s2, jid) == _fields(s, jid), jid
    assert counts == {"queued": 1, "held": 2, "pending": 1, "orphaned": 2}  # run, p were leased to w1
    assert s2.jobs["ok"].result == {"v": 1} and s2.jobs["ok"].stdout == "hi\n"
    assert s2.dags == {"d1": {"c": None}}
    assert s2.waiting_reason(s2.jobs["gpu"]) == "waiting for a worker with tags {gpu}"
    assert s2.waiting_reason(s2.jobs["later"]) == "delayed: runs in 30.0s"
    assert "before the broker restarted" in (s2.waiting_reason(s2.jobs["run"]) or "")
    # Lease ids go on from where they were: an old worker's result can never match a new lease.
    assert next(s2.leases) > max(e.lease for e in s.jobs.values())


def test_a_snapshot_rebuilds_the_same_state_as_the_journal(clock: FakeClock) -> None:
    s, ops = _busy_scheduler(clock)
    kv = KVStore()
    kv.set("k", [1, 2])
    from_journal, _ = restart(ops, clock)
    s3 = make_sched(clock)
    kv3 = KVStore()
    r = Restorer(s3, kv3, WINDOW)
    for op in capture(s, kv):
        r.apply(op)
    r.finish()
    for jid in s.jobs:
        assert _fields(s3, jid) == _fields(from_journal, jid), jid
    assert kv3.data == {"k": [1, 2]}


def test_the_worker_comes_back_with_its_job_and_its_result_counts_once(clock: FakeClock) -> None:
    s, ops = _busy_scheduler(clock)
    lease = s.jobs["run"].lease
    s2, _ = restart(ops, clock)
    clock.advance(1.0)
    w = s2.worker_ready(b"w1", {"name": "w1", "host": "h", "tags": [], "slots": 3, "pid": 1,
                                "running": ["run", "p"], "leases": [lease, s.jobs["p"].lease],
                                "seen_lease": lease + 10})  # fmt: skip
    assert s2.orphans == {} and s2.jobs["run"].worker == b"w1"
    assert s2.on_result(w, {"id": "run", "outcome": "succeeded", "lease": lease, "result": 7}) == "run"
    e = s2.jobs["run"]
    assert (e.state, e.result, e.attempts) == (JobState.SUCCEEDED, 7, 1)
    report(s2, w, "p", result="P")
    dispatch(s2)
    assert s2.jobs["c"].state is JobState.RUNNING and s2.jobs["c"].inputs == {"p": "P"}
    clock.advance(WINDOW + 1)
    s2.expire_orphans()
    assert s2.jobs["run"].state is JobState.SUCCEEDED  # adopted jobs are not expired later


def test_a_worker_that_does_not_come_back_loses_its_jobs_after_the_window(clock: FakeClock) -> None:
    _s, ops = _busy_scheduler(clock)
    s2, _ = restart(ops, clock)
    clock.advance(WINDOW - 0.1)
    s2.expire_orphans()
    assert s2.jobs["run"].state is JobState.RUNNING
    clock.advance(0.2)
    s2.expire_orphans()
    e = s2.jobs["run"]
    assert e.state is JobState.QUEUED and e.lost == 1 and "did not come back" in (e.error or "")
    w2 = add_worker(s2, "w2", slots=5)
    got = dispatch(s2)
    assert "run" in got["w2"] and s2.jobs["run"].attempts == 2  # the attempt is counted
    assert s2.worker_ready(b"w2", {"name": "w2", "host": "h", "tags": [], "slots": 5, "pid": 1}) is w2


def test_a_worker_back_without_its_job_requeues_it_at_once(clock: FakeClock) -> None:
    s, ops = _busy_scheduler(clock)
    run_lease, p_lease = s.jobs["run"].lease, s.jobs["p"].lease
    assert run_lease < p_lease
    s2, _ = restart(ops, clock)
    # w1 is back holding nothing. It had seen the lease of "run" (so it lost that job), but not
    # the lease of "p" (the broker died before that ASSIGN left).
    s2.worker_ready(b"w1", {"name": "w1", "host": "h", "tags": [], "slots": 3, "pid": 1,
                            "running": [], "seen_lease": run_lease})  # fmt: skip
    assert s2.orphans == {}
    run, p = s2.jobs["run"], s2.jobs["p"]
    assert (run.state, run.lost, run.attempts) == (JobState.QUEUED, 1, 1)
    assert (p.state, p.lost, p.attempts) == (JobState.QUEUED, 0, 0)


def test_journal_ops_come_out_once_per_turn_in_order(clock: FakeClock) -> None:
    s = journaled(clock)
    submit(s, spec("a"), spec("b", depends_on=["a"]))
    ops = s.take_ops()
    kinds = [op[0] for op in ops]
    assert kinds == ["A", "A", "S", "S"]
    assert [op[1] for op in ops if op[0] == "S"] == ["a", "b"]
    assert s.take_ops() == []
    w = add_worker(s, "w")
    dispatch(s)
    report(s, w, "a")
    ops = s.take_ops()
    assert [(op[1], op[2]) for op in ops] == [("a", "succeeded"), ("b", "queued")]


def test_not_journaled_means_no_ops(clock: FakeClock) -> None:
    s = make_sched(clock)
    submit(s, spec("a"))
    assert s.take_ops() == [] and s.ops is None


def test_journaled_jobs_rebuild_equal_to_validated_ones() -> None:
    from titan_zmq.job import Job

    specs = [
        spec("a", args=[1, "x"], kwargs={"k": 2}, requires=["gpu", "big"], priority=3, delay=1.5, timeout=9,
             retries=2, backoff=0.5, idempotency_key="once", labels={"l": "v"}, env={"E": "1"}),
        spec("b", depends_on=["a"], dag="d", on_failure="continue", affinity="parent", affinity_wait=2.0),
        {"id": "c", "kind": "shell", "target": "echo hi", "node": "w1"},
        spec("d", affinity_wait=9.0),  # kept even without affinity: a resubmission must compare equal
    ]
    for d in specs:
        job = Job.from_wire(d)
        assert Job.from_journal(job.to_wire()) == job


def test_forgetting_is_journaled_so_a_restart_keeps_the_same_jobs(clock: FakeClock) -> None:
    s = make_sched(clock, max_finished=1)
    s.journaled()
    ops: list[list[Any]] = []
    submit(s, spec("j"))
    ops += s.take_ops()
    submit(s, spec("n"))  # one turn: n accepted, j and n cancelled: j is forgotten (ended first)
    s.cancel("j")
    s.cancel("n")
    ops += s.take_ops()
    submit(s, spec("j", target="tests.jobs:add"))  # the id is free again: a new job takes it
    ops += s.take_ops()
    submit(s, spec("z"))
    s.cancel("z")  # n is forgotten now, not the new j
    ops += s.take_ops()
    live = {k: v.state for k, v in s.jobs.items()}
    assert live == {"j": JobState.QUEUED, "z": JobState.CANCELLED}
    s2, _ = restart(ops, clock, max_finished=1)
    assert {k: v.state for k, v in s2.jobs.items()} == live
    assert s2.jobs["j"].job.target == "tests.jobs:add"


def test_a_dag_child_keeps_its_inputs_when_the_parent_is_forgotten(clock: FakeClock) -> None:
    s = make_sched(clock, max_finished=1)
    s.journaled()
    w = add_worker(s, "w", slots=2)
    submit(s, spec("a"), spec("b", retries=3), spec("c", depends_on=["a", "b"]), spec("d"))
    dispatch(s)
    report(s, w, "a", result={"v": 42})
    s.cancel("d")  # d ends after a: a is forgotten, but c already holds a's result
    ops = s.take_ops()
    assert "a" not in s.jobs and s.jobs["c"].inputs == {"a": {"v": 42}}
    s2, _ = restart(ops, clock, max_finished=1)
    c = s2.jobs["c"]
    assert c.state is JobState.PENDING and c.inputs == {"a": {"v": 42}} and c.waiting_on == 1
    w2 = s2.worker_ready(b"w", {"name": "w", "host": "h", "tags": [], "slots": 2, "pid": 1,
                                "running": ["b"], "leases": [s.jobs["b"].lease], "seen_lease": 99})  # fmt: skip
    s2.on_result(w2, {"id": "b", "outcome": "succeeded", "lease": s.jobs["b"].lease, "result": "B"})
    dispatch(s2)
    assert s2.jobs["c"].state is JobState.RUNNING and s2.jobs["c"].inputs == {"a": {"v": 42}, "b": "B"}


def test_lease_ids_never_repeat_after_a_compaction(clock: FakeClock) -> None:
    s = make_sched(clock, max_finished=1)
    s.journaled()
    w = add_worker(s, "w", slots=3)
    submit(s, spec("a"), spec("b"), spec("c"))
    dispatch(s)
    for jid in ("a", "b", "c"):
        report(s, w, jid)
    issued = s.last_lease
    s.take_ops()
    s3 = make_sched(clock)
    r = Restorer(s3, KVStore(), WINDOW)
    for op in capture(s, KVStore()):
        r.apply(op)
    r.finish()
    assert next(s3.leases) == issued + 1


def test_a_broker_closed_before_its_first_turn_keeps_the_replayed_state(tmp_path: Any) -> None:
    from titan_zmq.broker.loop import Broker
    from titan_zmq.config import BrokerConfig

    cfg = BrokerConfig(data_dir=str(tmp_path), front=0, back=0, events=0)
    b = Broker(cfg)
    b.sched.submit([spec("a"), spec("b", depends_on=["a"])], {})
    b.kv.set("k", 1)
    b.close()  # no loop turn ran: close() commits and publishes without error
    b2 = Broker(cfg)
    try:
        assert {j: e.state for j, e in b2.sched.jobs.items()} == {"a": JobState.QUEUED, "b": JobState.PENDING}
        assert b2.kv.get("k") == 1
    finally:
        b2.close()


def test_edges_added_at_run_time_are_checked_and_journaled(clock: FakeClock) -> None:
    s = journaled(clock)
    w = add_worker(s, "w", slots=1)
    submit(s, spec("long"), spec("a"), spec("b", depends_on=["a"]))
    dispatch(s)  # long runs; a is queued; b waits for a
    assert s.jobs["a"].state is JobState.QUEUED
    s.add_edge("long", "a")  # a queued job now waits for long as well
    assert s.jobs["a"].state is JobState.PENDING and s.jobs["a"].job.depends_on == ("long",)
    with pytest.raises(BrokerError, match="cannot add an edge into job long: it is running"):
        s.add_edge("b", "long")
    with pytest.raises(JobError, match="closes a cycle: a is an ancestor of b"):
        s.add_edge("b", "a")
    ops = s.take_ops()
    s2, _ = restart(ops, clock)
    assert s2.jobs["a"].job.depends_on == ("long",) and s2.jobs["a"].state is JobState.PENDING
    report(s, w, "long", result=1)
    assert s.jobs["a"].state is JobState.QUEUED and s.jobs["a"].inputs == {"long": 1}
