"""The pool of free workers (broker/scheduler/pool.py): dispatch finds the least loaded eligible
worker without looking at every worker, with the same choices as before."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.test_scheduler import FakeClock, add_worker, dispatch, make_sched, report, spec, submit
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.broker.scheduler.state import WorkerInfo

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sched() -> Scheduler:
    return make_sched(FakeClock())


class Looks:
    """Counts how often a worker's credit is read (``WorkerInfo.free``): a scan reads every worker's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        plain = WorkerInfo.free.fget
        assert plain is not None

        def counted(w: WorkerInfo) -> int:
            self.n += 1
            return plain(w)

        monkeypatch.setattr(WorkerInfo, "free", property(counted))


def test_one_job_among_a_thousand_workers_reads_a_few_of_them(sched: Scheduler, monkeypatch: Any) -> None:
    for i in range(1000):
        add_worker(sched, f"w{i:04d}", slots=2, tags=["gpu"] if i % 10 == 0 else [])
    looks = Looks(monkeypatch)
    for k in range(50):  # one at a time, as a client waiting on each result submits them
        submit(sched, spec(f"j{k}"))
        (name,) = dispatch(sched)
        report(sched, sched.workers[name.encode()], f"j{k}")
    assert looks.n < 50 * 40, f"{looks.n} reads of worker credit for 50 jobs on 1,000 workers"
    submit(sched, spec("needs-gpu", requires=["gpu"]))
    assert int(next(iter(dispatch(sched)))[1:]) % 10 == 0


def test_the_least_loaded_goes_first_and_fills_evenly(sched: Scheduler) -> None:
    for i in range(20):
        add_worker(sched, f"w{i}", slots=2)
    submit(sched, *(spec(f"j{i}") for i in range(40)))
    got = dispatch(sched)
    assert sorted(len(v) for v in got.values()) == [2] * 20  # each of the 20 took 2, none more
    submit(sched, spec("extra"))
    assert dispatch(sched) == {}  # all full
    report(sched, sched.workers[b"w7"], got["w7"][0])
    assert dispatch(sched) == {"w7": ["extra"]}  # the one that freed a slot


def test_a_worker_that_holds_the_content_is_preferred_among_many_equals(sched: Scheduler) -> None:
    for i in range(30):
        add_worker(sched, f"w{i}", slots=1)
    content = b"print('hi')\n"
    sha = hashlib.sha256(content).hexdigest()
    sched.workers[b"w17"].cached.add(sha)
    sched.submit([{"id": "s", "kind": "script", "target": "x.py", "blob": sha}], {sha: content})
    assert dispatch(sched) == {"w17": ["s"]}


def test_pins_tags_and_leavers(sched: Scheduler) -> None:
    add_worker(sched, "a", slots=1)
    add_worker(sched, "b", slots=1, tags=["gpu"])
    submit(sched, spec("pinned", node="a"), spec("gpu", requires=["gpu"]))
    assert dispatch(sched) == {"a": ["pinned"], "b": ["gpu"]}
    sched.worker_gone(b"b", "test")
    submit(sched, spec("gpu2", requires=["gpu"]))
    assert dispatch(sched) == {}  # the gpu worker left: its filings are stale
    add_worker(sched, "c", slots=1, tags=["gpu", "big"])
    assert dispatch(sched) == {"c": ["gpu"]}  # a new tag set covering gpu: the lost job first
    report(sched, sched.workers[b"c"], "gpu")
    assert dispatch(sched) == {"c": ["gpu2"]}


def test_many_changes_keep_the_heaps_bounded(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=4)
    for k in range(2000):
        submit(sched, spec(f"j{k}"))
        dispatch(sched)
        report(sched, w, f"j{k}")
    assert sum(len(h) for h in sched.pool.heaps.values()) <= 2 * len(sched.workers) + 64 + 64  # compacted every 64
