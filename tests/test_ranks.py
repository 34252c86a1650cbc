"""Critical-path-first dispatch (broker/scheduler/ranks.py): within a DAG, among jobs of equal
priority, the ready job with the longest expected path to the DAG's end goes first; estimates come
from hints, from what a target took before, or one unit each; a DAG that grows re-ranks its queued
jobs; a job expected to run long never waits in a prefetch window."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_scheduler import FakeClock, add_worker, assigned, dispatch, make_sched, report, spec, submit
from titan_zmq.broker.scheduler import Scheduler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sched() -> Scheduler:
    return make_sched(FakeClock())


def dag(jid: str, after: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    d = spec(jid, dag="d", **kw)
    if after:
        d["depends_on"] = after
    return d


def test_the_longer_path_goes_first_though_it_came_second(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    # root -> short (ends the DAG) and root -> b1 -> b2 -> b3: after the root, b1's path is the longer.
    submit(sched, dag("root"), dag("short", ["root"]), dag("b1", ["root"]), dag("b2", ["b1"]), dag("b3", ["b2"]))
    assert dispatch(sched) == {"w": ["root"]}
    report(sched, w, "root")
    assert dispatch(sched) == {"w": ["b1"]}
    ranks = {j: sched.entry(j).rank for j in ("root", "short", "b1", "b2", "b3")}
    assert ranks == {"root": 4.0, "short": 1.0, "b1": 3.0, "b2": 2.0, "b3": 1.0}  # one unit per job


def test_hints_weigh_the_path(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, dag("quick", estimate=1.0), dag("slow", estimate=30.0), dag("mid", estimate=5.0))
    order = []
    for _ in range(3):
        got = dispatch(sched)["w"]
        order += got
        report(sched, w, got[0])
    assert order == ["slow", "mid", "quick"]


def test_runtimes_are_learned_per_target(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, spec("a", target="tests.jobs:add"), spec("s", target="tests.jobs:sleep"))
    for _ in range(2):
        jid = dispatch(sched)["w"][0]
        report(sched, w, jid, runtime=4.0 if jid == "s" else 0.01)
    submit(sched, dag("x", target="tests.jobs:add"), dag("y", target="tests.jobs:sleep"))
    assert sched.ranks.estimate(sched.entry("y").job) == pytest.approx(4.0)
    assert dispatch(sched) == {"w": ["y"]}  # submitted second, expected to take longer


def test_dags_keep_their_arrival_order_and_plain_jobs_stay_fifo(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, spec("p1"), spec("p2"))
    submit(sched, {**dag("first-a"), "dag": "one"}, {**dag("first-b", estimate=1.0), "dag": "one"})
    submit(sched, {**dag("second", estimate=99.0), "dag": "two"})
    submit(sched, spec("p3"))
    order = []
    for _ in range(6):
        got = dispatch(sched)["w"]
        order += got
        report(sched, w, got[0])
    assert order == ["p1", "p2", "first-a", "first-b", "second", "p3"]


def test_a_growing_dag_reranks_its_queued_jobs(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, dag("busy", estimate=100.0), dag("q"), dag("r"), dag("q-child", ["q"]), dag("r-child", ["r"]))
    assert dispatch(sched) == {"w": ["busy"]}
    assert sched.entry("q").rank == sched.entry("r").rank == 2.0  # a tie: q, submitted first, would go first
    # A running job spawns a long chain after r-child: r's path grows, and r goes first.
    submit(sched, dag("c1", ["r-child"], estimate=10.0), dag("c2", ["c1"], estimate=10.0))
    assert sched.entry("r").rank == 22.0 and sched.entry("r-child").rank == 21.0 and sched.entry("q").rank == 2.0
    report(sched, w, "busy")
    assert dispatch(sched) == {"w": ["r"]}
    report(sched, w, "r")
    assert dispatch(sched) == {"w": ["r-child"]}  # rank 21 against q's 2
    report(sched, w, "r-child")
    assert dispatch(sched) == {"w": ["c1"]}


def test_an_added_edge_raises_the_parent(sched: Scheduler) -> None:
    w = add_worker(sched, "w", slots=1)
    submit(sched, dag("hold"), dag("a"), dag("b"), dag("tail", estimate=50.0, delay=1))  # tail waits out its delay
    assert dispatch(sched) == {"w": ["hold"]}
    sched.add_edge("b", "tail")
    assert sched.entry("b").rank == 51.0
    report(sched, w, "hold")
    assert dispatch(sched) == {"w": ["b"]}


def windowed() -> tuple[Scheduler, Any]:
    """A scheduler and a 1-slot worker whose prefetch window (4) is open: its jobs were short."""
    clock = FakeClock()
    s = Scheduler(clock=lambda: clock.now, wall=lambda: clock.now, prefetch_below=0.05)
    w = s.worker_ready(b"w", {"name": "w", "host": "h", "tags": [], "slots": 1, "pid": 1, "prefetch": 4})
    s.seen(w)
    submit(s, spec("warm"))
    dispatch(s)
    report(s, w, "warm", runtime=0.001)
    return s, w


def test_a_long_job_never_waits_in_a_prefetch_window() -> None:
    s, _ = windowed()
    submit(s, spec("s1"), spec("s2"), spec("long", estimate=20.0), spec("s3"))
    assert dispatch(s) == {"w": ["s1", "s2"]}  # s1 in its slot, s2 in its window; the long job stops there
    other = s.worker_ready(b"o", {"name": "o", "host": "h", "tags": [], "slots": 1, "pid": 2})
    s.seen(other)
    assert dispatch(s) == {"o": ["long"], "w": ["s3"]}  # a free slot: it goes there; s3 is short: w's window
    assert assigned(s) == {}


def test_ranks_are_rebuilt_from_the_graph() -> None:
    s = make_sched(FakeClock())
    submit(s, dag("a", estimate=2.0), dag("b", ["a"], estimate=3.0), dag("c", ["b"]))
    before = {j: s.entry(j).rank for j in "abc"}
    s.ranks.rebuild(s.jobs.values())
    assert {j: s.entry(j).rank for j in "abc"} == before == {"a": 6.0, "b": 4.0, "c": 1.0}


def test_rank_cost_is_linear_in_the_batch(sched: Scheduler) -> None:
    layers = [[f"n{i}-{j}" for j in range(50)] for i in range(40)]  # 2,000 nodes, two parents each
    specs = [dag(n, [layers[i - 1][(j * 7) % 50], layers[i - 1][(j * 13 + 1) % 50]] if i else None)
             for i, layer in enumerate(layers) for j, n in enumerate(layer)]  # fmt: skip
    submit(sched, *specs)
    assert max(sched.entry(n).rank for n in layers[0]) == 40.0  # the longest path: one node per layer
    assert all(sched.entry(n).rank == 1.0 for n in layers[-1])


def test_short_jobs_do_not_queue_behind_a_long_one_in_a_window() -> None:
    s, w = windowed()
    submit(s, spec("map", estimate=1.0), spec("tiny1", estimate=0.01), spec("tiny2", estimate=0.01))
    assert dispatch(s) == {"w": ["map"]}  # the long one takes the slot; the tiny ones do not wait behind it
    other = s.worker_ready(b"o", {"name": "o", "host": "h", "tags": [], "slots": 1, "pid": 2})
    s.seen(other)
    assert dispatch(s) == {"o": ["tiny1"]}
    report(s, w, "map", runtime=1.0)
    assert dispatch(s) == {"w": ["tiny2"]}
