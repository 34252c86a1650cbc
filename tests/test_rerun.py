"""Running ended jobs again: a DAG retried from its failed jobs on (results of what succeeded kept),
from a chosen job on, and the dead-letter list requeued; in the scheduler, across a restart, and
through ``titan retry`` / ``titan dead`` against a real cluster."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_scheduler import FakeClock, add_worker, dispatch, make_sched, report, spec, submit
from titan_zmq.aof.kv import KVStore
from titan_zmq.broker.durable import Restorer
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.client import Dag, JobState
from titan_zmq.errors import BadRequest, Conflict, UnknownJob
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(120)


def _diamond(s: Scheduler) -> None:
    submit(s, spec("a", dag="d"), spec("b", dag="d", depends_on=["a"]), spec("c", dag="d", depends_on=["a"]),
           spec("z", dag="d", depends_on=["b", "c"]))  # fmt: skip


def _run_to_end(s: Scheduler, w: object, fail: set[str]) -> None:
    while True:
        got = dispatch(s).get("w", [])
        if not got:
            return
        for jid in got:
            if jid in fail:
                report(s, w, jid, "failed", error=f"{jid} broke")  # type: ignore[arg-type]
            else:
                report(s, w, jid, result=f"{jid}-result")  # type: ignore[arg-type]


def test_a_dag_runs_again_from_its_failed_jobs_and_keeps_what_succeeded() -> None:
    s = make_sched(FakeClock())
    w = add_worker(s, "w", slots=4)
    _diamond(s)
    _run_to_end(s, w, fail={"b"})
    assert {j: s.jobs[j].state for j in "abcz"} == {"a": JobState.SUCCEEDED, "b": JobState.FAILED,
                                                     "c": JobState.SUCCEEDED, "z": JobState.CANCELLED}  # fmt: skip
    out = s.retry([], dag="d")
    assert sorted(r["id"] for r in out["records"]) == ["b", "z"]
    assert s.jobs["a"].result == "a-result" and s.jobs["c"].state is JobState.SUCCEEDED  # kept, not run again
    assert dispatch(s) == {"w": ["b"]}  # b first: z waits for it
    report(s, w, "b", result="b-again")
    assert dispatch(s) == {"w": ["z"]}
    z = s.jobs["z"]
    assert z.inputs == {"b": "b-again", "c": "c-result"}  # the kept result and the new one
    report(s, w, "z", result="done")
    assert z.state is JobState.SUCCEEDED and s.jobs["b"].attempts == 2


def test_from_a_job_on_reruns_it_and_everything_after_it() -> None:
    s = make_sched(FakeClock())
    w = add_worker(s, "w", slots=4)
    _diamond(s)
    _run_to_end(s, w, fail=set())
    out = s.retry([], dag="d", from_job="c")
    assert sorted(r["id"] for r in out["records"]) == ["c", "z"]
    assert s.jobs["b"].state is JobState.SUCCEEDED and s.jobs["z"].state is JobState.PENDING
    assert dispatch(s) == {"w": ["c"]}


def test_the_dead_letter_list_is_requeued_with_what_it_cancelled() -> None:
    clock = FakeClock()
    s = make_sched(clock)
    w = add_worker(s, "w", slots=2)
    submit(s, spec("p", dag="q", retries=1), spec("k", dag="q", depends_on=["p"]))
    for _ in range(2):
        assert dispatch(s) == {"w": ["p"]}
        report(s, w, "p", "failed", error="flaky")
        clock.advance(60)
        s.release_held()
    assert s.jobs["p"].state is JobState.DEAD and s.jobs["k"].state is JobState.CANCELLED
    assert [r["id"] for r in s.list_jobs("dead", 10)] == ["p"]
    out = s.retry(["p"])
    assert sorted(r["id"] for r in out["records"]) == ["k", "p"]
    assert dispatch(s) == {"w": ["p"]}
    report(s, w, "p", result=1)
    assert dispatch(s) == {"w": ["k"]}


def test_what_cannot_run_again_is_refused_by_name() -> None:
    s = make_sched(FakeClock())
    _diamond(s)
    with pytest.raises(Conflict, match="cannot run again what has not ended"):
        s.retry([], dag="d", from_job="a")
    with pytest.raises(UnknownJob, match="unknown DAG id 'nope'"):
        s.retry([], dag="nope")
    with pytest.raises(BadRequest, match="not part of DAG 'd'"):
        s.retry([], dag="d", from_job="elsewhere")
    with pytest.raises(UnknownJob):
        s.retry(["ghost"])


def test_a_rerun_survives_a_restart() -> None:
    clock = FakeClock()
    s = make_sched(clock)
    s.journaled()
    w = add_worker(s, "w", slots=4)
    _diamond(s)
    _run_to_end(s, w, fail={"b"})
    ops = s.take_ops()
    s.retry([], dag="d")
    ops += s.take_ops()
    s2 = make_sched(clock)
    restorer = Restorer(s2, KVStore(), orphan_wait=5.0)
    for op in ops:
        restorer.apply(op)
    restorer.finish()
    assert {j: s2.jobs[j].state for j in "abcz"} == {"a": JobState.SUCCEEDED, "b": JobState.QUEUED,
                                                      "c": JobState.SUCCEEDED, "z": JobState.PENDING}  # fmt: skip
    assert "b" not in s2.finished and "z" not in s2.finished  # never forgotten while they run again


def _titan(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TITAN_BROKER": cluster.address}
    return subprocess.run([sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, env=env,
                          timeout=90)  # fmt: skip


def test_titan_retry_and_titan_dead_from_the_command_line(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    client = shared_cluster.client()
    flag = tmp_path / "fixed"
    dag = Dag("cli-retry")
    first = dag.add(shell="echo first", id="cli-retry.first")
    fragile = dag.add(shell=f"test -f {flag}", after=[first], id="cli-retry.fragile")
    last = dag.add(shell="echo last", after=[fragile], id="cli-retry.last")
    recs = client.submit_dag(dag).wait(60)
    assert recs[fragile].state is JobState.FAILED and recs[last].state is JobState.CANCELLED
    flag.write_text("")  # the cause is fixed
    out = _titan(shared_cluster, "retry", "cli-retry", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    report_ = json.loads(out.stdout)
    states = {j["id"]: j["state"] for j in report_["jobs"]}
    assert report_["ok"] and set(states.values()) == {"succeeded"}
    assert client.status(first).attempts == 1  # kept, not run again
    # The dead-letter list: a job whose retries are spent.
    h = client.submit(shell=f"test -f {tmp_path / 'never'}", retries=1, backoff=0.01, id="cli-dead.job")
    h.wait(60)
    listed = _titan(shared_cluster, "dead", "--json")
    assert listed.returncode == 0 and "cli-dead.job" in [r["id"] for r in json.loads(listed.stdout)]
    (tmp_path / "never").write_text("")
    again = _titan(shared_cluster, "dead", "--requeue", "cli-dead.job")
    assert again.returncode == 0 and "1 job(s) run again" in again.stdout, again.stdout + again.stderr
    assert client.wait(["cli-dead.job"], 60)["cli-dead.job"].state is JobState.SUCCEEDED


def test_a_child_run_again_waits_for_a_parent_that_is_still_running() -> None:
    """Its other parent listed it from its first wiring: it must be wired once, not twice."""
    s = make_sched(FakeClock())
    w = add_worker(s, "w", slots=4)
    submit(s, spec("a", dag="d"), spec("b", dag="d"), spec("c", dag="d", depends_on=["a", "b"]))
    assert sorted(dispatch(s)["w"]) == ["a", "b"]
    report(s, w, "b", "failed", error="broke")
    assert s.jobs["c"].state is JobState.CANCELLED and s.jobs["a"].state is JobState.RUNNING
    s.retry([], dag="d", from_job="b")
    assert s.jobs["a"].children == ["c"] and s.jobs["c"].waiting_on == 2
    report(s, w, "a", result="A")
    assert s.jobs["c"].state is JobState.PENDING  # still waits for b
    assert dispatch(s) == {"w": ["b"]}
    report(s, w, "b", result="B")
    assert dispatch(s) == {"w": ["c"]} and s.jobs["c"].inputs == {"a": "A", "b": "B"}


def test_requeue_runs_again_what_it_cancelled_in_other_dags_and_outside_any() -> None:
    s = make_sched(FakeClock())
    w = add_worker(s, "w", slots=4)
    submit(s, spec("r", dag="d1"), spec("c", dag="d2", depends_on=["r"]), spec("n", depends_on=["r"]))
    dispatch(s)
    report(s, w, "r", "failed", error="broke")
    out = s.retry(["r"])
    assert sorted(r["id"] for r in out["records"]) == ["c", "n", "r"]


SHA_OK = hashlib.sha256(b"print(1)").hexdigest()


def test_a_script_job_that_failed_keeps_its_content_to_run_again() -> None:
    clock = FakeClock()
    s = make_sched(clock)
    s.journaled()
    w = add_worker(s, "w", slots=2)
    s.submit([spec("s", kind="script", target="job.py", blob=SHA_OK, dag="d")], {SHA_OK: b"print(1)"})
    dispatch(s)
    report(s, w, "s", "failed", error="broke")
    assert SHA_OK in s.blobs  # kept: a job that did not succeed may run again
    ops = s.take_ops()
    # ... also across a restart, and a snapshot keeps it.
    s2 = make_sched(clock)
    restorer = Restorer(s2, KVStore(), orphan_wait=5.0)
    for op in ops:
        restorer.apply(op)
    restorer.finish()
    assert s2.blobs[SHA_OK][1] == 1
    s.retry([], dag="d")
    assert dispatch(s) == {"w": ["s"]}
    report(s, w, "s", result=1)
    assert SHA_OK not in s.blobs  # it succeeded: its content goes
