"""The prefetch window: workers whose jobs are short hold a few more than their slots; long jobs never hoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_scheduler import FakeClock, dispatch, report, spec, state, submit
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.client import JobState
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sched() -> Scheduler:
    clock = FakeClock()
    return Scheduler(clock=lambda: clock.now, wall=lambda: clock.now, prefetch_below=0.05)


def worker(s: Scheduler, name: str, slots: int = 1, prefetch: int = 4) -> Any:
    w = s.worker_ready(name.encode(), {"name": name, "host": "h", "tags": [], "slots": slots, "pid": 1,
                                      "prefetch": prefetch})  # fmt: skip
    s.seen(w)
    return w


def test_window_opens_only_after_short_jobs(sched: Scheduler) -> None:
    w = worker(sched, "w", slots=1, prefetch=4)
    submit(sched, *[spec(f"j{i}") for i in range(10)])
    assert dispatch(sched) == {"w": ["j0"]}  # nothing known about its jobs yet: strict credit
    report(sched, w, "j0", runtime=0.001)
    assert dispatch(sched) == {"w": ["j1", "j2", "j3", "j4", "j5"]}  # 1 slot + 4 prefetched, in order
    assert w.free == 0
    assert sched.workers[b"w"].describe(0, 0.5, 4)["used"] == 1


def test_window_closes_when_jobs_get_long(sched: Scheduler) -> None:
    w = worker(sched, "w", slots=1, prefetch=4)
    submit(sched, *[spec(f"j{i}") for i in range(10)])
    dispatch(sched)
    report(sched, w, "j0", runtime=0.001)
    dispatch(sched)
    for jid in ("j1", "j2", "j3", "j4", "j5"):
        report(sched, w, jid, runtime=2.0)  # the average climbs past 50 ms
    assert not w.short
    assert dispatch(sched) == {"w": ["j6"]}


def test_returned_job_is_requeued_unstarted(sched: Scheduler) -> None:
    w = worker(sched, "w", slots=1, prefetch=2)
    submit(sched, spec("a"), spec("b"), spec("c"))
    dispatch(sched)
    report(sched, w, "a", runtime=0.001)
    assert dispatch(sched) == {"w": ["b", "c"]}
    assert report(sched, w, "c", "returned") == "c"
    e = sched.entry("c")
    assert state(sched, "c") is JobState.QUEUED and e.attempts == 0 and e.worker is None
    assert not w.short  # its window closes until its jobs are short again
    other = worker(sched, "other", slots=1, prefetch=0)
    assert dispatch(sched) == {"other": ["c"]}
    assert other.running == {"c"}


def test_long_job_does_not_hoard_prefetched_short_ones(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="first", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    assert client.map("tests.jobs:noop", range(20)) == list(range(20))  # its jobs are short: window open
    long = client.submit("tests.jobs:sleep", args=[6.0])
    wait_for(lambda: client.status(long.id).state is JobState.RUNNING, 20, "the long job to start")
    shorts = [client.submit("tests.jobs:whoami") for _ in range(3)]
    cluster.add_worker(name="second", slots=1)
    recs = client.wait([h.id for h in shorts], timeout=20)
    # They were held behind the long job at most prefetch_wait (1 s), then handed back and run elsewhere.
    assert all(r.state is JobState.SUCCEEDED and r.result["worker"] == "second" for r in recs.values())
    assert all(r.attempts == 1 for r in recs.values())
    assert client.status(long.id).state is JobState.RUNNING
    client.cancel(long.id)


def test_cancel_a_prefetched_job_that_has_not_started(cluster: LocalCluster) -> None:
    cluster.add_worker(name="solo", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    client.map("tests.jobs:noop", range(20))
    long = client.submit("tests.jobs:sleep", args=[5.0])
    held = client.submit("tests.jobs:noop", args=["never"])
    wait_for(lambda: client.status(held.id).state is JobState.RUNNING, 20, "the job to be leased")
    assert client.cancel(held.id).state is JobState.CANCELLED
    client.cancel(long.id)
    assert client.submit("tests.jobs:add", args=[1, 2]).result(20) == 3
    rec = client.status(held.id)
    assert rec.state is JobState.CANCELLED and rec.stdout == ""


def test_window_holds_about_prefetch_below_of_work_per_slot(sched: Scheduler) -> None:
    w = worker(sched, "w", slots=2, prefetch=64)
    submit(sched, *[spec(f"j{i}") for i in range(200)])
    assert dispatch(sched) == {"w": ["j0", "j1"]}
    report(sched, w, "j0", runtime=0.01)  # 10 ms jobs: 2 slots x 50 ms / 10 ms = 10 held ahead
    assert len(dispatch(sched)["w"]) == 1 + 10
    assert w.free == 0
    for jid in sorted(w.running):
        report(sched, w, jid, runtime=0.0001)  # the average falls towards 0.1 ms: capped at 64
    assert w.window == 64 and not w.running
    assert len(dispatch(sched)["w"]) == 2 + 64
    report(sched, w, "j13", "returned")  # a job came back unstarted: the window closes
    assert w.window == 0 and w.free < 0
