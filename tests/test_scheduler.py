"""Unit tests of the scheduler (broker/scheduler.py): a fake clock, no sockets, no processes."""

from __future__ import annotations

import dataclasses
import pickle
import random
from typing import Any

import pytest

from titan_zmq.broker.scheduler import Scheduler, WorkerInfo
from titan_zmq.errors import BrokerError, JobError, UnknownJob
from titan_zmq.job import Job, JobRecord, JobState

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.5
LIVENESS = 5
SILENCE = INTERVAL * LIVENESS  # a worker silent this long is expired


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_sched(clock: FakeClock, **kw: Any) -> Scheduler:
    kw.setdefault("heartbeat_interval", INTERVAL)
    kw.setdefault("heartbeat_liveness", LIVENESS)
    kw.setdefault("rng", random.Random(42))
    return Scheduler(clock=lambda: clock.now, wall=lambda: 1_700_000_000.0 + clock.now, **kw)


@pytest.fixture
def sched(clock: FakeClock) -> Scheduler:
    return make_sched(clock)


def add_worker(
    s: Scheduler, name: str, slots: int = 1, tags: list[str] | None = None, running: list[str] | None = None
) -> WorkerInfo:
    info: dict[str, Any] = {"name": name, "host": "h", "tags": tags or [], "slots": slots, "pid": 1}
    if running is not None:
        info["running"] = running
        # Like a real worker: it has seen every lease the broker sent it so far.
        info["seen_lease"] = max((e.lease for e in s.jobs.values()), default=0)
    w = s.worker_ready(name.encode(), info)
    s.seen(w)
    return w


def spec(jid: str, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": jid, "kind": "call", "target": "tests.jobs:noop"}
    d.update(kw)
    return d


def submit(s: Scheduler, *specs: dict[str, Any]) -> list[str]:
    return s.submit(list(specs), {})


def assigned(s: Scheduler, clear: bool = True) -> dict[str, list[str]]:
    """Job ids assigned per worker name since the last clear, in dispatch order."""
    out = {ident.decode(): [j["id"] for j in jobs] for ident, jobs in s.fx.assign.items()}
    if clear:
        s.fx.clear()
    return out


def dispatch(s: Scheduler) -> dict[str, list[str]]:
    s.fx.clear()
    s.dispatch()
    return assigned(s)


def killed(s: Scheduler) -> dict[bytes, list[str]]:
    """Job ids each worker is told to stop (whatever lease)."""
    return {ident: [jid for jid, _ in kills] for ident, kills in s.fx.kill.items()}


def state(s: Scheduler, jid: str) -> JobState:
    return s.entry(jid).state


def report(s: Scheduler, w: WorkerInfo, jid: str, outcome: str = "succeeded", **kw: Any) -> str | None:
    """A result as the worker sends it: by default for the job's current lease."""
    lease = s.jobs[jid].lease if jid in s.jobs else 0
    return s.on_result(w, {"id": jid, "outcome": outcome, "lease": lease, **kw})


# ---- order and credit -----------------------------------------------------------------------


def test_priority_order_then_fifo(sched: Scheduler) -> None:
    add_worker(sched, "w", slots=10, tags=["gpu"])
    submit(
        sched,
        spec("a", priority=0),
        spec("b", priority=5),
        spec("c", priority=0),
        spec("g", priority=3, requires=["gpu"]),  # another queue, same ordering rule across queues
        spec("d", priority=5),
        spec("e", priority=-1),
        spec("f", priority=0),
    )
    assert dispatch(sched) == {"w": ["b", "d", "g", "a", "c", "f", "e"]}


def test_priority_order_holds_one_slot_at_a_time(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, spec("low1"), spec("high", priority=9), spec("low2"))
    order = []
    for _ in range(3):
        got = dispatch(sched)["w"]
        assert len(got) == 1
        order += got
        report(sched, w, got[0])
        submit(sched, spec(f"late{len(order)}"))  # later arrivals of equal priority queue behind
    assert order == ["high", "low1", "low2"]


def test_credit_never_more_than_free_slots(sched: Scheduler) -> None:
    w1 = add_worker(sched, "w1", slots=2)
    w2 = add_worker(sched, "w2", slots=1)
    submit(sched, *(spec(f"j{i}") for i in range(10)))
    first = dispatch(sched)
    assert sorted(len(v) for v in first.values()) == [1, 2]
    assert len(first["w1"]) == 2 and len(first["w2"]) == 1
    assert (w1.free, w2.free) == (0, 0)
    assert dispatch(sched) == {}  # nothing more until a slot frees
    assert sched.queued_count() == 7
    report(sched, w1, first["w1"][0])
    again = dispatch(sched)
    assert again == {"w1": ["j3"]}
    assert len(w1.running) == 2 and len(w2.running) == 1
    assert sched.stats()["busy"] == 3 and sched.stats()["slots"] == 3


def test_zero_slots_counts_as_one(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=0)
    assert w.slots == 1
    submit(sched, spec("a"), spec("b"))
    assert dispatch(sched) == {"w": ["a"]}


# ---- routing -----------------------------------------------------------------------------------


def test_requires_routes_to_a_worker_with_the_tags(sched: Scheduler) -> None:
    add_worker(sched, "cpu-only", slots=4)
    submit(sched, spec("train", requires=["gpu"]), spec("plain"))
    assert dispatch(sched) == {"cpu-only": ["plain"]}
    assert state(sched, "train") is JobState.QUEUED
    assert sched.record(sched.entry("train"))["waiting"] == "waiting for a worker with tags {gpu}"
    add_worker(sched, "gpu-box", slots=4, tags=["gpu", "gpu:h100"])
    assert dispatch(sched) == {"gpu-box": ["train"]}
    assert sched.record(sched.entry("train"))["worker"] == "gpu-box"
    assert sched.record(sched.entry("train"))["waiting"] is None


def test_every_worker_has_cpu(sched: Scheduler) -> None:
    w = add_worker(sched, "w", tags=["gpu"])
    assert w.tags == frozenset({"cpu", "gpu"})
    submit(sched, spec("a", requires=["cpu"]))
    assert dispatch(sched) == {"w": ["a"]}


def test_waiting_reasons(sched: Scheduler) -> None:
    submit(sched, spec("any"), spec("multi", requires=["highmem", "gpu"]))
    assert sched.record(sched.entry("any"))["waiting"] == "waiting for a worker with tags {cpu}"
    add_worker(sched, "g", slots=1, tags=["gpu"])
    assert sched.record(sched.entry("multi"))["waiting"] == "waiting for a worker with tags {gpu, highmem}"
    assert sched.record(sched.entry("any"))["waiting"] == "queued: being dispatched"
    assert dispatch(sched) == {"g": ["any"]}
    submit(sched, spec("next"))
    assert sched.record(sched.entry("next"))["waiting"] == "waiting for a free slot: 1 eligible worker(s) busy"


def test_least_loaded_worker_is_chosen(sched: Scheduler) -> None:
    big = add_worker(sched, "big", slots=4)
    submit(sched, spec("p1"), spec("p2"))
    assert dispatch(sched) == {"big": ["p1", "p2"]}  # big is 2/4 busy
    add_worker(sched, "small", slots=2)  # 0/2
    picks = []
    for i in range(3):
        submit(sched, spec(f"n{i}"))
        (name,) = dispatch(sched)
        picks.append(name)
    # small (0/2) < big (2/4); then 1/2 ties 2/4 and small runs fewer; then big (2/4 < 2/2 full)
    assert picks == ["small", "small", "big"]
    assert len(big.running) == 3


def test_least_loaded_spreads_a_batch(sched: Scheduler) -> None:
    add_worker(sched, "a", slots=4)
    add_worker(sched, "b", slots=4)
    submit(sched, *(spec(f"j{i}") for i in range(4)))
    got = dispatch(sched)
    assert sorted(len(v) for v in got.values()) == [2, 2]


# ---- delay -------------------------------------------------------------------------------------


def test_delay_holds_a_job_until_the_clock_passes_it(sched: Scheduler, clock: FakeClock) -> None:
    add_worker(sched, "w", slots=2)
    t0 = clock.now
    submit(sched, spec("later", delay=10))
    assert sched.release_held() == pytest.approx(t0 + 10)
    assert dispatch(sched) == {}
    assert state(sched, "later") is JobState.QUEUED
    assert sched.record(sched.entry("later"))["waiting"] == "delayed: runs in 10.0s"
    clock.advance(9.9)
    assert sched.release_held() == pytest.approx(t0 + 10)
    assert dispatch(sched) == {}
    clock.advance(0.2)
    assert sched.release_held() is None
    assert dispatch(sched) == {"w": ["later"]}
    assert sched.entry("later").attempts == 1


def test_delayed_job_does_not_block_others(sched: Scheduler, clock: FakeClock) -> None:
    add_worker(sched, "w", slots=1)
    submit(sched, spec("later", delay=5, priority=9), spec("now"))
    sched.release_held()
    assert dispatch(sched) == {"w": ["now"]}


# ---- failure and retries -----------------------------------------------------------------------


def test_failure_with_retries_backs_off_then_dies(sched: Scheduler, clock: FakeClock) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, spec("flaky", retries=2, backoff=1.0))
    for attempt in (1, 2):
        sched.fx.clear()
        sched.dispatch()
        (wire,) = sched.fx.assign[b"w"]
        assert wire["id"] == "flaky" and wire["attempt"] == attempt
        ack = report(sched, w, "flaky", "failed", error="RuntimeError: nope", error_type="RuntimeError")
        assert ack == "flaky"
        e = sched.entry("flaky")
        assert e.state is JobState.RETRYING
        assert e.error == "RuntimeError: nope"
        assert sched.record(e)["waiting"].startswith(f"retry {attempt + 1} of 3 in ")
        assert w.free == 1
        # Held for the backoff: base * 2**(attempt-1), ±50%.
        due = sched.release_held()
        assert due is not None
        raw = 1.0 * 2 ** (attempt - 1)
        assert 0.5 * raw <= due - clock.now <= 1.5 * raw
        assert dispatch(sched) == {}
        clock.advance(due - clock.now - 0.01)
        sched.release_held()
        assert dispatch(sched) == {}  # not yet
        clock.advance(0.02)
        sched.release_held()
        assert state(sched, "flaky") is JobState.QUEUED
    sched.fx.clear()
    sched.dispatch()
    assert sched.fx.assign[b"w"][0]["attempt"] == 3
    report(sched, w, "flaky", "failed", error="RuntimeError: still")
    e = sched.entry("flaky")
    assert e.state is JobState.DEAD
    assert e.attempts == 3
    assert e.error == "RuntimeError: still"
    assert sched.release_held() is None
    assert dispatch(sched) == {}
    assert sched.counters["failed"] == 1


def test_failure_without_retries_is_failed(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("once"))
    dispatch(sched)
    report(sched, w, "once", "failed", error="boom", traceback="tb")
    rec = sched.record(sched.entry("once"))
    assert rec["state"] == "failed"
    assert (rec["attempts"], rec["error"], rec["traceback"], rec["error_type"]) == (1, "boom", "tb", "Error")
    assert rec["finished_at"] is not None


def test_timeout_outcome_is_a_failure_of_type_timeout(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("slow", timeout=1))
    dispatch(sched)
    report(sched, w, "slow", "timeout", error="ran past its timeout of 1s", exit_code=-9)
    rec = sched.record(sched.entry("slow"))
    assert (rec["state"], rec["error_type"], rec["exit_code"]) == ("failed", "Timeout", -9)


def test_success_records_result_and_output(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("ok"))
    dispatch(sched)
    report(sched, w, "ok", result={"x": [1, 2]}, stdout="out\n", stderr="err\n", exit_code=0)
    rec = sched.record(sched.entry("ok"))
    assert rec["state"] == "succeeded"
    assert (rec["result"], rec["stdout"], rec["stderr"], rec["exit_code"]) == ({"x": [1, 2]}, "out\n", "err\n", 0)
    assert w.done == 1 and w.free == 1
    assert sched.counters["succeeded"] == 1


# ---- workers lost ------------------------------------------------------------------------------


def test_expired_worker_requeues_its_job_and_it_runs_elsewhere(sched: Scheduler, clock: FakeClock) -> None:
    add_worker(sched, "w1")
    submit(sched, spec("j"))
    assert dispatch(sched) == {"w1": ["j"]}
    w2 = add_worker(sched, "w2")
    clock.advance(SILENCE - 0.5)
    sched.seen(w2)  # w2 keeps talking, w1 falls silent
    sched.expire_workers()
    assert b"w1" in sched.workers  # not yet
    clock.advance(0.6)
    sched.fx.clear()
    sched.expire_workers()
    assert set(sched.workers) == {b"w2"}
    assert ("worker", {"name": "w1", "host": "h", "state": "left",
                       "reason": "no heartbeat for 2.6s (its window: 2.5s)"}) in sched.fx.events  # fmt: skip
    e = sched.entry("j")
    assert e.state is JobState.QUEUED
    assert e.attempts == 1 and e.lost == 1
    assert e.error_type == "WorkerLost" and "w1" in (e.error or "")
    sched.fx.clear()
    sched.dispatch()
    (wire,) = sched.fx.assign[b"w2"]
    assert wire["id"] == "j" and wire["attempt"] == 2
    assert sched.record(e)["worker"] == "w2"


def test_expire_workers_returns_next_deadline(sched: Scheduler, clock: FakeClock) -> None:
    t0 = clock.now
    assert sched.expire_workers() == pytest.approx(t0 + SILENCE)
    add_worker(sched, "w")
    clock.advance(1.0)
    assert sched.expire_workers() == pytest.approx(t0 + SILENCE)


def test_max_lost_makes_a_job_dead(clock: FakeClock) -> None:
    sched = make_sched(clock, max_lost=1)
    submit(sched, spec("cursed", retries=5))
    for i in (1, 2):
        add_worker(sched, f"w{i}")
        assert dispatch(sched) == {f"w{i}": ["cursed"]}
        clock.advance(SILENCE + 0.1)
        sched.expire_workers()
        assert not sched.workers
    e = sched.entry("cursed")
    assert e.state is JobState.DEAD
    assert e.lost == 2 and e.attempts == 2
    assert "max_lost=1" in (e.error or "")
    add_worker(sched, "w3")
    assert dispatch(sched) == {}


def test_bye_requeues_stopped_jobs_without_counting_a_loss(sched: Scheduler) -> None:
    add_worker(sched, "w1", slots=2)
    submit(sched, spec("a"), spec("b"))
    dispatch(sched)
    sched.worker_gone(b"w1", "it left", stopped=["a"])
    a, b = sched.entry("a"), sched.entry("b")
    assert a.state is JobState.QUEUED and a.lost == 0 and "interrupted" in (a.error or "")
    assert b.state is JobState.QUEUED and b.lost == 1


# ---- cancel ------------------------------------------------------------------------------------


def test_cancel_queued_job(sched: Scheduler) -> None:
    submit(sched, spec("a"), spec("b"))
    rec = sched.cancel("a")
    assert rec["state"] == "cancelled" and rec["error"] == "cancelled by request"
    assert sched.fx.kill == {}
    add_worker(sched, "w", slots=4)
    assert dispatch(sched) == {"w": ["b"]}
    assert sched.queued_count() == 0


def test_cancel_running_job_kills_it_on_its_worker(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=2)
    submit(sched, spec("run"))
    dispatch(sched)
    rec = sched.cancel("run")
    assert rec["state"] == "cancelled"
    assert sched.fx.kill == {b"w": [("run", sched.entry("run").lease)]}  # that lease only
    sched.fx.clear()
    assert sched.cancel("run")["state"] == "cancelled"  # again: no second kill
    assert sched.fx.kill == {}
    # The worker reports the killed attempt: acknowledged, the slot frees, the state stays.
    assert report(sched, w, "run", "cancelled", stdout="partial\n") == "run"
    assert state(sched, "run") is JobState.CANCELLED
    assert sched.entry("run").stdout == "partial\n"
    assert w.free == 2


def test_cancel_unknown_job(sched: Scheduler) -> None:
    with pytest.raises(UnknownJob) as info:
        sched.cancel("ghost")
    assert info.value.code == "unknown_job" and "ghost" in str(info.value)


def test_success_after_cancel_does_not_resurrect(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("j"))
    dispatch(sched)
    sched.cancel("j")
    report(sched, w, "j", result=1)
    assert state(sched, "j") is JobState.CANCELLED
    assert sched.entry("j").result is None


# ---- submission --------------------------------------------------------------------------------


def test_idempotent_resubmission(sched: Scheduler) -> None:
    assert submit(sched, spec("same", args=[1])) == ["same"]
    assert submit(sched, spec("same", args=[1])) == ["same"]
    assert sched.counters["submitted"] == 1
    assert sched.queued_count() == 1
    with pytest.raises(BrokerError) as info:
        submit(sched, spec("same", args=[2]))
    assert info.value.code == "conflict"
    assert not isinstance(info.value, UnknownJob)
    assert "already taken by a different job" in str(info.value)
    assert sched.entry("same").job.args == [1]


def test_batch_is_all_or_nothing(sched: Scheduler) -> None:
    submit(sched, spec("taken"))
    with pytest.raises(BrokerError):
        submit(sched, spec("fresh"), spec("taken", priority=3))
    assert "fresh" not in sched.jobs
    with pytest.raises(JobError, match="job #1 of the batch"):
        submit(sched, spec("fresh"), spec("bad", kind="nope"))
    assert "fresh" not in sched.jobs
    with pytest.raises(JobError, match="appears twice"):
        submit(sched, spec("dup"), spec("dup"))
    assert "dup" not in sched.jobs


def test_idempotency_key_dedupes(sched: Scheduler) -> None:
    assert submit(sched, spec("first", idempotency_key="nightly-2026-01-01")) == ["first"]
    assert submit(sched, spec("second", idempotency_key="nightly-2026-01-01")) == ["first"]
    assert "second" not in sched.jobs
    assert submit(sched, spec("third", idempotency_key="nightly-2026-01-02")) == ["third"]
    assert sched.counters["submitted"] == 2


def test_script_blob_must_travel_and_match(sched: Scheduler) -> None:
    import hashlib

    content = b"print(1)\n"
    sha = hashlib.sha256(content).hexdigest()
    script = {"id": "s", "kind": "script", "target": "a.py", "blob": sha}
    with pytest.raises(JobError, match="was not sent with it"):
        sched.submit([script], {})
    with pytest.raises(JobError, match="does not match its sha256"):
        sched.submit([script], {sha: b"tampered"})
    assert sched.submit([script], {sha: content}) == ["s"]
    w = add_worker(sched, "w")
    sched.fx.clear()
    sched.dispatch()
    assert sched.fx.blobs == {b"w": {sha: content}}
    report(sched, w, "s")
    assert sha not in sched.blobs  # released with its last job


# ---- results, stale and unknown ----------------------------------------------------------------


def test_stale_success_from_an_expired_worker_is_accepted(sched: Scheduler, clock: FakeClock) -> None:
    w1 = add_worker(sched, "w1")
    submit(sched, spec("j"))
    assert dispatch(sched) == {"w1": ["j"]}
    w2 = add_worker(sched, "w2")
    clock.advance(SILENCE + 0.1)
    sched.seen(w2)
    sched.expire_workers()
    assert dispatch(sched) == {"w2": ["j"]}  # run again elsewhere
    # w1 was only cut off: it comes back, still holding the finished job, and reports success.
    w1 = add_worker(sched, "w1", running=["j"])
    assert killed(sched) == {b"w1": ["j"]}  # the job runs on w2 now; w1 is told to drop it
    sched.fx.clear()
    assert report(sched, w1, "j", result=42) == "j"
    e = sched.entry("j")
    assert e.state is JobState.SUCCEEDED and e.result == 42
    assert e.worker_name == "w1"
    assert killed(sched) == {b"w2": ["j"]}  # the newer copy is stopped: the work is done
    assert "j" not in w2.running and "j" not in w1.running
    assert dispatch(sched) == {}  # and it is not run again
    # w2's report of its killed copy changes nothing.
    assert report(sched, w2, "j", "cancelled") == "j"
    assert state(sched, "j") is JobState.SUCCEEDED
    assert sched.counters["succeeded"] == 1


def test_stale_failure_yields_to_the_newer_attempt(sched: Scheduler, clock: FakeClock) -> None:
    w1 = add_worker(sched, "w1")
    submit(sched, spec("j"))
    dispatch(sched)
    w2 = add_worker(sched, "w2")
    clock.advance(SILENCE + 0.1)
    sched.seen(w2)
    sched.expire_workers()
    assert dispatch(sched) == {"w2": ["j"]}
    w1 = add_worker(sched, "w1", running=["j"])
    assert report(sched, w1, "j", "failed", error="late") == "j"
    e = sched.entry("j")
    assert e.state is JobState.RUNNING and e.worker == b"w2" and e.error != "late"


def test_unknown_job_in_result_is_acknowledged(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("known"))
    dispatch(sched)
    assert report(sched, w, "never-heard-of-it", result=1) == "never-heard-of-it"
    assert "never-heard-of-it" not in sched.jobs
    assert state(sched, "known") is JobState.RUNNING and w.running == {"known"}


@pytest.mark.parametrize(
    ("res", "ack"),
    [({"id": "known", "outcome": "exploded"}, "known"), ({"outcome": "succeeded"}, None), ({"id": 5}, None)],
)
def test_malformed_result_is_dropped(sched: Scheduler, res: dict[str, Any], ack: str | None) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("known"))
    dispatch(sched)
    assert sched.on_result(w, res) == ack
    assert state(sched, "known") is JobState.RUNNING


def test_ready_with_running_adopts_a_requeued_job(sched: Scheduler, clock: FakeClock) -> None:
    add_worker(sched, "w1")
    submit(sched, spec("j"))
    dispatch(sched)
    clock.advance(SILENCE + 0.1)
    sched.expire_workers()
    assert state(sched, "j") is JobState.QUEUED
    # It was only a network blip: w1 re-joins and says it still runs j.
    w1 = add_worker(sched, "w1", running=["j"])
    e = sched.entry("j")
    assert e.state is JobState.RUNNING
    assert e.worker == b"w1" and e.worker_name == "w1"
    assert w1.running == {"j"}
    assert sched.fx.kill == {}
    assert dispatch(sched) == {}  # not leased twice
    report(sched, w1, "j", result="done")
    assert state(sched, "j") is JobState.SUCCEEDED


def test_backoff_is_not_cut_short_by_a_re_reported_failure(sched: Scheduler, clock: FakeClock) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("j", retries=3, backoff=10))
    dispatch(sched)
    report(sched, w, "j", "failed", error="first")
    first_due = sched.entry("j").not_before
    clock.advance(4)
    # The worker re-joins before it saw the ACK: it still holds the result, and sends it again.
    w = add_worker(sched, "w", running=["j"])
    report(sched, w, "j", "failed", error="first")
    e = sched.entry("j")
    # The duplicate report is recognised as the same failure: one attempt, one backoff.
    assert e.state is JobState.RETRYING and e.not_before == first_due and e.attempts == 1
    clock.now = first_due - 0.001
    sched.release_held()
    assert e.state is JobState.RETRYING, "released before its backoff was over"
    assert dispatch(sched) == {}
    clock.now = first_due + 0.001
    sched.release_held()
    assert e.state is JobState.QUEUED


def test_ready_without_a_leased_job_loses_it(sched: Scheduler) -> None:
    add_worker(sched, "w1", slots=2)
    submit(sched, spec("a"), spec("b"))
    dispatch(sched)
    w1 = add_worker(sched, "w1", slots=2, running=["a"])  # it restarted and only has a
    assert w1.running == {"a"}
    assert state(sched, "a") is JobState.RUNNING
    b = sched.entry("b")
    assert b.state is JobState.QUEUED and b.lost == 1


def test_ready_with_unknown_or_finished_jobs_kills_them(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    submit(sched, spec("done"))
    dispatch(sched)
    report(sched, w, "done")
    sched.fx.clear()
    add_worker(sched, "w", running=["done", "stranger"])
    assert sorted(j for j, _ in sched.fx.kill[b"w"]) == ["done", "stranger"]
    assert state(sched, "done") is JobState.SUCCEEDED
    assert "stranger" not in sched.jobs


# ---- memory ------------------------------------------------------------------------------------


def test_max_finished_forgets_the_oldest(clock: FakeClock) -> None:
    sched = make_sched(clock, max_finished=2)
    w = add_worker(sched, "w", slots=4)
    submit(sched, spec("j1", idempotency_key="k1"), spec("j2"), spec("j3"), spec("live"))
    dispatch(sched)
    for jid in ("j1", "j2", "j3"):
        report(sched, w, jid)
    with pytest.raises(UnknownJob, match="j1"):
        sched.entry("j1")
    assert state(sched, "j2") is JobState.SUCCEEDED and state(sched, "j3") is JobState.SUCCEEDED
    assert state(sched, "live") is JobState.RUNNING  # running jobs are never evicted
    assert "k1" not in sched.idempotency
    assert [r["id"] for r in sched.list_jobs(None, 10)] == ["live", "j3", "j2"]
    # The forgotten id and key are free again.
    assert submit(sched, spec("j4", idempotency_key="k1")) == ["j4"]


def test_list_jobs_filters_by_state(sched: Scheduler) -> None:
    submit(sched, spec("a"), spec("b"))
    sched.cancel("a")
    assert [r["id"] for r in sched.list_jobs("cancelled", 10)] == ["a"]
    assert [r["id"] for r in sched.list_jobs("queued", 10)] == ["b"]
    assert [r["id"] for r in sched.list_jobs(None, 1)] == ["b"]
    with pytest.raises(BrokerError, match="unknown state 'bogus'"):
        sched.list_jobs("bogus", 10)


def test_watch_gets_done_once(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    sched.submit([spec("j")], {}, watcher=b"client-1")
    assert sched.watch(b"client-2", ["j"]) == []
    dispatch(sched)
    report(sched, w, "j", result=3)
    assert set(sched.fx.done) == {b"client-1", b"client-2"}
    assert sched.fx.done[b"client-1"][0]["result"] == 3
    ended = sched.watch(b"client-3", ["j"])
    assert [r["state"] for r in ended] == ["succeeded"]


def test_ready_does_not_lose_a_lease_sent_after_it(sched: Scheduler) -> None:
    """A READY that crossed an ASSIGN on the wire does not make that job look lost."""
    w = add_worker(sched, "w", slots=2)
    submit(sched, spec("a"))
    dispatch(sched)
    lease_a = sched.entry("a").lease
    w = sched.worker_ready(b"w", {"name": "w", "host": "h", "tags": [], "slots": 2, "pid": 1,
                                  "running": [], "seen_lease": lease_a - 1})  # fmt: skip
    assert state(sched, "a") is JobState.RUNNING and w.running == {"a"}
    assert sched.entry("a").lost == 0
    report(sched, w, "a", result=1)
    assert state(sched, "a") is JobState.SUCCEEDED


def test_result_of_an_old_lease_is_stale(sched: Scheduler) -> None:
    """The reviewer's case: a cancelled old lease's reply must not end the new lease of the same job."""
    w = add_worker(sched, "w", slots=2)
    submit(sched, spec("j", retries=2, backoff=0))
    dispatch(sched)
    old = sched.entry("j").lease
    report(sched, w, "j", "failed", error="x")
    sched.release_held()
    dispatch(sched)
    assert sched.entry("j").lease != old and state(sched, "j") is JobState.RUNNING
    sched.on_result(w, {"id": "j", "outcome": "cancelled", "lease": old})
    assert state(sched, "j") is JobState.RUNNING
    assert w.running == {"j"}  # its new lease still holds the slot
    report(sched, w, "j", result="ok")
    assert state(sched, "j") is JobState.SUCCEEDED


# ---- fallback chains ------------------------------------------------------------------------------


def test_fallback_when_no_eligible_worker_appears_in_time(sched: Scheduler, clock: FakeClock) -> None:
    add_worker(sched, "cpu-box", slots=2)
    submit(sched, spec("train", requires=["gpu"], wait=5, fallback=[{"requires": ["cpu"], "timeout": 600}]))
    assert dispatch(sched) == {}
    clock.advance(5.1)
    sched.release_held()
    e = sched.jobs["train"]
    assert e.level == 1 and "no worker with tags {gpu} within its wait" in (e.error or "")
    assert dispatch(sched) == {"cpu-box": ["train"]}


def test_a_job_that_fell_back_never_runs_from_its_old_queue(sched: Scheduler, clock: FakeClock) -> None:
    """Its item in the queue of its first level's tags goes stale when it falls back: a worker with
    only the old tags that joins later must not get it (it would run without the tags it needs)."""
    submit(sched, spec("train", requires=["gpu"], wait=5, fallback=[{"requires": ["special"]}]))
    clock.advance(5.1)
    sched.release_held()
    assert sched.jobs["train"].level == 1
    add_worker(sched, "gpu-box", slots=1, tags=["gpu"])
    assert dispatch(sched) == {}  # not to the gpu worker: the job now needs "special"
    add_worker(sched, "special-box", slots=1, tags=["special"])
    assert dispatch(sched) == {"special-box": ["train"]}


def test_fallback_after_failing_for_good(sched: Scheduler, clock: FakeClock) -> None:
    w = add_worker(sched, "box", slots=1, tags=["gpu"])
    submit(sched, spec("j", requires=["gpu"], retries=1, fallback=[{"requires": ["cpu"], "timeout": 30}]))
    dispatch(sched)
    report(sched, w, "j", "failed", error="CUDA out of memory")
    assert sched.jobs["j"].state is JobState.RETRYING  # its own retries first
    clock.advance(100)
    sched.release_held()
    dispatch(sched)
    report(sched, w, "j", "failed", error="CUDA out of memory")
    e = sched.jobs["j"]
    assert e.state is JobState.QUEUED and e.level == 1 and "failed: CUDA out of memory" in (e.error or "")
    sched.fx.clear()
    sched.dispatch()
    (jobs,) = sched.fx.assign.values()
    assert jobs[0]["requires"] == ["cpu"] and jobs[0]["timeout"] == 30 and jobs[0]["attempt"] == 3
    report(sched, w, "j", "failed", error="again")
    assert sched.jobs["j"].state is JobState.RETRYING  # retries count again at each level
    clock.advance(100)
    sched.release_held()
    dispatch(sched)
    report(sched, w, "j", "failed", error="again")
    assert sched.jobs["j"].state is JobState.DEAD  # the chain is spent


# ---- records ------------------------------------------------------------------------------------


def test_final_record_pushed_to_watchers_reads_as_the_full_record(sched: Scheduler) -> None:
    w = add_worker(sched, "w")
    sched.submit([spec("plain"), spec("rich", labels={"team": "a"}, priority=3, requires=["cpu"])], {},
                 watcher=b"client")  # fmt: skip
    sched.submit([spec("child", depends_on=["plain"], dag="d1")], {}, watcher=b"client")
    dispatch(sched)
    report(sched, w, "plain", result=[1, 2], runtime=0.01)
    pushed = {r["id"]: r for r in sched.fx.done[b"client"]}
    assert pushed["plain"]["result"] == [1, 2] and "error" not in pushed["plain"]
    report(sched, w, "rich", "failed", error="boom", error_type="ValueError", traceback="tb", stdout="out\n")
    dispatch(sched)
    report(sched, w, "child", result=None, runtime=0.01)
    for jid in ("plain", "rich", "child"):
        compact = sched.final_record(sched.entry(jid))
        full = sched.record(sched.entry(jid))
        assert JobRecord.from_dict(compact) == JobRecord.from_dict(full)
        assert len(compact) < len(full)  # empty and default fields stay out of it
    assert sched.final_record(sched.entry("child"))["depends_on"] == ["plain"]


def test_job_from_wire_equals_the_dataclass_and_is_frozen() -> None:
    wire = spec("j", args=[1], env={"A": "1"}, priority=2, timeout=5, depends_on=["p"], affinity="parent")
    job = Job.from_wire(wire)
    assert job == Job(id="j", kind="call", target="tests.jobs:noop", args=[1], env={"A": "1"}, priority=2,
                      timeout=5.0, depends_on=("p",), affinity="parent")  # fmt: skip
    assert Job.from_journal(job.to_wire()) == job
    bare = Job.from_wire(spec("k"))
    assert bare.kwargs == {} and bare.kwargs is not Job.from_wire(spec("m")).kwargs  # fresh defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.id = "x"  # type: ignore[misc]


def test_lean_watchers_hear_of_successes_by_id_and_result_only(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=2)
    sched.submit([spec("ok"), spec("bad")], {}, watcher=b"map", lean=True)
    dispatch(sched)
    report(sched, w, "ok", result={"x": 1}, runtime=0.01)
    report(sched, w, "bad", "failed", error="ValueError: no", error_type="ValueError", traceback="tb")
    assert sched.fx.ok[b"map"] == [["ok", {"x": 1}]]
    (bad,) = sched.fx.done[b"map"]
    assert bad["id"] == "bad" and bad["traceback"] == "tb" and bad["state"] == "failed"  # a failure says it all
    full = Job.from_wire(spec("f", priority=3, requires=["gpu"], timeout=2))
    assert type(full) is Job and full == Job(id="f", kind="call", target="tests.jobs:noop", priority=3,
                                             requires=frozenset({"gpu"}), timeout=2.0)  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.priority = 4  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(full)) == full


def test_final_records_keep_empty_results_and_lean_goes_only_to_the_map_that_asked(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=3)
    sched.submit([spec("empty-str"), spec("empty-map"), spec("shared")], {}, watcher=b"map", lean=True)
    sched.watch(b"other", ["shared"])  # another client waits on one of the map's jobs
    dispatch(sched)
    report(sched, w, "empty-str", result="", runtime=0.01)
    report(sched, w, "empty-map", result={}, runtime=0.01)
    report(sched, w, "shared", result=7, runtime=0.01)
    assert sched.fx.ok[b"map"] == [["empty-str", ""], ["empty-map", {}], ["shared", 7]]
    assert b"map" not in sched.fx.done
    (to_other,) = sched.fx.done[b"other"]
    rec = JobRecord.from_dict(to_other)  # a full record: it reads as one
    assert rec.result == 7 and rec.kind == "call" and rec.target == "tests.jobs:noop"
    for jid, value in (("empty-str", ""), ("empty-map", {})):
        assert JobRecord.from_dict(sched.final_record(sched.entry(jid))).result == value


# ---- template submissions (map) ----------------------------------------------------------------


def test_template_items_make_the_jobs_their_full_specs_would(sched: Scheduler) -> None:
    template = {"kind": "call", "target": "tests.jobs:noop", "priority": 3, "requires": ["gpu"], "timeout": 2}
    items = [["a", [1]], ["b", [2, "x"]], ["c", []]]
    jobs = Job.from_template(template, items)
    assert jobs == [Job.from_wire({**template, "id": jid, "args": args}) for jid, args in items]
    shell = Job.from_template({"kind": "shell", "target": "echo"}, [["s", [1, 2.5, "x"]]])
    assert shell[0].args == ["1", "2.5", "x"]  # arguments of a command line are strings
    w = add_worker(sched, "w", slots=3, tags=["gpu"])
    assert sched.submit_items(template, items, {}, watcher=b"map", lean=True) == ["a", "b", "c"]
    sched.fx.clear()
    sched.dispatch()
    wires = {j["id"]: j for j in sched.fx.assign[b"w"]}
    for job in jobs:  # what the worker gets: the job's own wire map, with its attempt and lease
        wire = wires[job.id]
        assert {k: v for k, v in wire.items() if k not in ("attempt", "lease")} == job.to_wire()
        assert wire["lease"] == sched.entry(job.id).lease and wire["attempt"] == 1
    report(sched, w, "b", result=[2, "x"], runtime=0.01)
    assert sched.fx.ok[b"map"] == [["b", [2, "x"]]]
    assert sched.record(sched.entry("b"))["state"] == "succeeded"


@pytest.mark.parametrize(
    ("template", "items", "error"),
    [
        ({"kind": "call", "target": "m:f", "id": "x"}, [["a", []]], "each item gives its own id and args"),
        ({"kind": "call", "target": "m:f", "args": [1]}, [["a", []]], "each item gives its own id and args"),
        ({"kind": "call", "target": "m:f", "idempotency_key": "k"}, [["a", []]], "an idempotency key names one job"),
        ({"kind": "call", "target": "no-colon"}, [["a", []]], "job template: call target 'no-colon'"),
        ({"kind": "call", "target": "m:f"}, [["a", []], "b"], "template item #1 must be a list [id, args]"),
        ({"kind": "call", "target": "m:f"}, [["bad id", []]], "template item #0: job id 'bad id' is invalid"),
        ({"kind": "call", "target": "m:f"}, [["a", "notalist"]], "job a: 'args' must be a list"),
        ({"kind": "shell", "target": "echo"}, [["a", [{"x": 1}]]], "arguments of a shell job must be strings"),
        ({"kind": "approval", "target": "ok?"}, [["a", [1]]], "an approval gate takes no args"),
        ({"kind": "call", "target": "m:f", "depends_on": ["a"]}, [["a", []]], "job a depends on itself"),
        ("not a map", [["a", []]], "a job template must be a map"),
        ({"kind": "call", "target": "m:f"}, {"a": []}, "template items must be a list of [id, args]"),
    ],
)
def test_bad_templates_and_items_are_refused_by_name(sched: Scheduler, template: Any, items: Any, error: str) -> None:
    with pytest.raises(JobError, match=error.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        sched.submit_items(template, items, {})
    assert not sched.jobs  # all or nothing


def test_template_jobs_are_journaled_whole_and_resubmission_is_idempotent(sched: Scheduler) -> None:
    sched.journaled()
    template = {"kind": "call", "target": "tests.jobs:noop", "labels": {"team": "a"}}
    sched.submit_items(template, [["a", [1]], ["b", [2]]], {})
    accepted = [op[1] for op in sched.take_ops() if op[0] == "A"]
    assert [Job.from_journal(w) for w in accepted] == Job.from_template(template, [["a", [1]], ["b", [2]]])
    assert sched.submit_items(template, [["a", [1]], ["c", [3]]], {}) == ["a", "c"]  # a is the same job: kept
    with pytest.raises(BrokerError, match="already taken by a different job"):
        sched.submit_items(template, [["a", [9]]], {})
    assert sched.pending == {} and len(sched.jobs) == 3


def test_bare_successes_count_like_full_results(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=3)
    other = add_worker(sched, "other", slots=1)
    submit(sched, spec("a"), spec("b"), spec("c"))
    dispatch(sched)
    lease_a = sched.entry("a").lease
    assert sched.on_success(w, "a", lease_a, 0.01, {"v": 1}) == "a"
    rec = sched.record(sched.entry("a"))
    assert rec["state"] == "succeeded" and rec["result"] == {"v": 1}
    assert rec["stdout"] == "" and rec["exit_code"] is None
    assert "a" not in w.running and w.done == 1
    # A stale lease's success still counts (the work is done) and goes through the general path.
    assert sched.on_success(w, "b", sched.entry("b").lease + 100, 0.01, 2) == "b"
    assert state(sched, "b") is JobState.SUCCEEDED
    assert sched.on_success(other, "nope", 1, 0.01, None) == "nope"  # unknown: acknowledged, nothing else
    assert sched.on_success(w, ["not", "an", "id"], 1, 0.01, None) is None  # malformed: dropped
    assert state(sched, "c") is JobState.RUNNING


def test_the_worker_sends_bare_successes_compactly() -> None:
    from titan_zmq.worker.connection import result_message

    bare = {"id": "a", "attempt": 1, "lease": 7, "outcome": "succeeded", "runtime": 0.5, "result": [1]}
    printed = {**bare, "id": "b", "stdout": "hi\n"}
    failed = {"id": "c", "attempt": 2, "lease": 8, "outcome": "failed", "runtime": 0.1, "error": "x"}
    msg = result_message([bare, printed, failed])
    assert msg.ok == [["a", 7, 0.5, [1]]] and msg.results == [printed, failed]
