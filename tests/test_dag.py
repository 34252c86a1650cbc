"""DAGs: dependency release, results from parents to children, failure propagation, checks at submit."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.test_scheduler import FakeClock, dispatch, report, spec, state, submit
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.client import Dag, JobState
from titan_zmq.errors import JobError
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sched() -> Scheduler:
    clock = FakeClock()
    s = Scheduler(clock=lambda: clock.now, wall=lambda: clock.now)
    w = s.worker_ready(b"w", {"name": "w", "host": "h", "tags": [], "slots": 100, "pid": 1})
    s.seen(w)
    return s


def w_of(s: Scheduler) -> Any:
    return s.workers[b"w"]


def test_diamond_releases_in_order_and_passes_results(sched: Scheduler) -> None:
    submit(sched, spec("a"), spec("b", depends_on=["a"]), spec("c", depends_on=["a"]),
           spec("d", depends_on=["b", "c"]))  # fmt: skip
    assert state(sched, "d") is JobState.PENDING
    assert sched.record(sched.entry("d"))["waiting"] == "waiting for 2 parent job(s)"
    assert dispatch(sched) == {"w": ["a"]}
    report(sched, w_of(sched), "a", result=1)
    assert sorted(dispatch(sched)["w"]) == ["b", "c"]
    report(sched, w_of(sched), "b", result="B")
    assert dispatch(sched) == {}
    sched.fx.clear()
    report(sched, w_of(sched), "c", result="C")
    sched.dispatch()
    (job,) = sched.fx.assign[b"w"]
    assert job["id"] == "d" and job["inputs"] == {"b": "B", "c": "C"}


def test_child_of_an_already_finished_parent_runs(sched: Scheduler) -> None:
    submit(sched, spec("p"))
    dispatch(sched)
    report(sched, w_of(sched), "p", result=7)
    submit(sched, spec("late", depends_on=["p"]))  # registered after its parent ended
    sched.fx.clear()
    sched.dispatch()
    assert sched.fx.assign[b"w"][0]["inputs"] == {"p": 7}


def test_failure_cancels_descendants_but_not_other_branches(sched: Scheduler) -> None:
    submit(sched, spec("root"), spec("bad", depends_on=["root"]), spec("good", depends_on=["root"]),
           spec("child", depends_on=["bad"]), spec("grandchild", depends_on=["child"]),
           spec("sibling", depends_on=["good"]))  # fmt: skip
    dispatch(sched)
    report(sched, w_of(sched), "root", result=0)
    dispatch(sched)
    report(sched, w_of(sched), "bad", "failed", error="no")
    assert state(sched, "child") is JobState.CANCELLED
    assert sched.entry("child").error == "upstream job bad failed"
    assert state(sched, "grandchild") is JobState.CANCELLED
    assert sched.entry("grandchild").error == "upstream job child cancelled"
    report(sched, w_of(sched), "good", result=1)
    assert state(sched, "sibling") is JobState.QUEUED
    # A child submitted later under a failed parent is cancelled at once, with the reason.
    submit(sched, spec("latecomer", depends_on=["bad"]))
    assert state(sched, "latecomer") is JobState.CANCELLED


def test_on_failure_continue_lets_children_run(sched: Scheduler) -> None:
    submit(sched, spec("flaky", on_failure="continue"), spec("after", depends_on=["flaky"]))
    dispatch(sched)
    report(sched, w_of(sched), "flaky", "failed", error="x")
    assert state(sched, "flaky") is JobState.FAILED
    assert state(sched, "after") is JobState.QUEUED


def test_cycle_and_unknown_parent_are_refused_whole(sched: Scheduler) -> None:
    with pytest.raises(JobError, match=r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"):
        submit(sched, spec("ok"), spec("a", depends_on=["c"]), spec("b", depends_on=["a"]),
               spec("c", depends_on=["b"]))  # fmt: skip
    with pytest.raises(JobError, match="depends on 'ghost', which is neither"):
        submit(sched, spec("x"), spec("y", depends_on=["ghost"]))
    assert sched.jobs == {}  # nothing of a refused batch was accepted
    with pytest.raises(JobError, match="depends on itself"):
        submit(sched, spec("self", depends_on=["self"]))


def test_cancel_a_pending_job_cancels_its_descendants(sched: Scheduler) -> None:
    submit(sched, spec("a"), spec("b", depends_on=["a"]), spec("c", depends_on=["b"]))
    sched.cancel("b")
    assert state(sched, "c") is JobState.CANCELLED
    assert state(sched, "a") is JobState.QUEUED


def test_random_10k_dag_runs_each_job_once_after_its_parents() -> None:
    """Random DAG of 10,000 nodes through the scheduler with a fake clock: order and exactly-once."""
    clock = FakeClock()
    s = Scheduler(clock=lambda: clock.now, wall=lambda: clock.now, max_finished=1_000_000)
    for i in range(4):
        s.seen(s.worker_ready(f"w{i}".encode(), {"name": f"w{i}", "host": "h", "tags": [], "slots": 8, "pid": i}))
    rng = random.Random(7)
    n = 10_000
    specs = []
    for i in range(n):
        parents = rng.sample(range(max(0, i - 200), i), k=min(i, rng.randint(0, 3))) if i else []
        specs.append(spec(f"n{i}", depends_on=[f"n{p}" for p in parents]))
    rng.shuffle(specs)  # the broker orders them itself
    s.submit(specs, {})
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    runs: dict[str, int] = {}
    while len(finished) < n:
        s.fx.clear()
        s.dispatch()
        assigned = [(ident, j["id"]) for ident, jobs in s.fx.assign.items() for j in jobs]
        assert assigned, "stalled with jobs left"
        clock.advance(1)
        for _, jid in assigned:
            started[jid] = clock.now
            runs[jid] = runs.get(jid, 0) + 1
        clock.advance(1)
        for ident, jid in assigned:
            s.on_result(s.workers[ident], {"id": jid, "outcome": "succeeded", "lease": s.jobs[jid].lease})
            finished[jid] = clock.now
    assert all(v == 1 for v in runs.values()) and len(runs) == n
    for sp in specs:
        for p in sp["depends_on"]:
            assert started[sp["id"]] > finished[p]


def test_mapreduce_word_count_through_results(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    chunks = ["the cat sat", "the dog sat down", "a cat and a dog"]
    dag = Dag("wordcount")
    maps = [dag.add("tests.jobs:count_words", args=[c]) for c in chunks]
    total = dag.add("tests.jobs:add_counts", after=maps)
    run = client.submit_dag(dag)
    assert run.result(total, timeout=30) == {
        "a": 2, "and": 1, "cat": 2, "dog": 2, "down": 1, "sat": 2, "the": 2,
    }  # fmt: skip
    recs = run.wait(10)
    assert all(r.dag == "wordcount" for r in recs.values())
    last_map = max(recs[m].finished_at for m in maps)
    assert recs[total].started_at >= last_map
    assert recs[total].depends_on == maps


def test_failed_branch_and_script_inputs(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    client = shared_cluster.client()
    reader = tmp_path / "read_inputs.py"
    reader.write_text("import json, os\nprint(json.load(open(os.environ['TITAN_INPUTS'])))\n")
    dag = Dag()
    ok = dag.add("tests.jobs:ignore_inputs", args=[21])
    bad = dag.add("tests.jobs:boom")
    script = dag.add(script=str(reader), after=[ok])
    doomed = dag.add("tests.jobs:noop", after=[bad])
    recs = client.submit_dag(dag).wait(30)
    assert recs[script].state is JobState.SUCCEEDED and recs[script].stdout == f"{{'{ok}': 42}}\n"
    assert recs[doomed].state is JobState.CANCELLED and recs[doomed].error == f"upstream job {bad} failed"


def test_client_sees_the_cycle(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    dag = Dag("loop")
    dag.add("tests.jobs:noop", id="loop-a", after=["loop-b"])
    dag.add("tests.jobs:noop", id="loop-b", after=["loop-a"])
    with pytest.raises(JobError, match="cycle"):
        client.submit_dag(dag)


def test_status_and_cancel_a_whole_dag(cluster: LocalCluster) -> None:
    import json

    from tests.test_cli import titan

    cluster.add_worker(name="one", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    dag = Dag("nightly")
    first = dag.add("tests.jobs:sleep", args=[30])
    second = dag.add("tests.jobs:noop", after=[first])
    other = dag.add("tests.jobs:noop", args=["x"])
    run = client.submit_dag(dag)
    assert run.result(other, timeout=30) == "x"
    states = {r.id: r.state for r in client.dag_status("nightly")}
    assert states[second] is JobState.PENDING and states[other] is JobState.SUCCEEDED
    shown = titan("status", "nightly", broker=cluster.address)
    assert shown.returncode == 0 and shown.stdout.startswith("DAG nightly: 3 job(s): ")
    assert json.loads(titan("status", "nightly", "--json", broker=cluster.address).stdout)["dag"] == "nightly"
    out = titan("cancel", "nightly", broker=cluster.address)
    assert out.returncode == 0 and out.stdout.startswith("DAG nightly: ")
    final = {r.id: r for r in run.wait(20).values()}
    assert final[first].state is JobState.CANCELLED and final[second].state is JobState.CANCELLED
    assert final[other].state is JobState.SUCCEEDED
    with pytest.raises(JobError, match="is a DAG"):
        client.status("nightly")


def test_random_10k_dag_end_to_end(cluster: LocalCluster) -> None:
    """10,000 random nodes on real workers: from the broker's own times, no job started before all
    its parents finished, and every job ran exactly once."""
    for i in range(2):
        cluster.add_worker(name=f"dag-w{i}", slots=2)
    cluster.wait_workers(2)
    client = cluster.client()
    rng = random.Random(11)
    dag = Dag("big")
    parents: dict[str, list[str]] = {}
    ids: list[str] = []
    for i in range(10_000):
        lo = max(0, i - 500)
        after = [ids[p] for p in rng.sample(range(lo, i), k=min(i - lo, rng.randint(0, 3)))] if i else []
        jid = dag.add("tests.jobs:noop", args=[i], after=after, id=f"big.{i}")
        ids.append(jid)
        parents[jid] = after
    recs = client.submit_dag(dag).wait(timeout=100)
    assert len(recs) == 10_000
    assert all(r.state is JobState.SUCCEEDED and r.attempts == 1 for r in recs.values())
    for jid, ps in parents.items():
        for p in ps:
            assert recs[jid].started_at >= recs[p].finished_at, (jid, p)
