"""Jobs that grow their own DAG at run time: titan_zmq.current(), spawn, fan-out/fan-in, feedback loops."""

from __future__ import annotations

import signal

import pytest

import titan_zmq
from titan_zmq.client import JobState
from titan_zmq.client.context import IterationLimit, JobContext
from titan_zmq.errors import TitanError
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


def test_current_outside_a_job_says_so() -> None:
    with pytest.raises(TitanError, match="inside a running job only"):
        JobContext(env={})
    ctx = JobContext(env={"TITAN_JOB_ID": "j1", "TITAN_ITERATION": "4"})
    assert (ctx.job_id, ctx.dag_id, ctx.iteration) == ("j1", "j1:dag", 4)
    with pytest.raises(IterationLimit, match="iteration 4 of at most 5"):
        ctx.successor("tests.jobs:noop", max_iterations=5)
    assert callable(titan_zmq.current)


def test_a_job_fans_out_and_in_within_its_dag(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    h = client.submit("tests.jobs:fan_out", args=[5])
    spawned = h.result(30)
    assert len(spawned) == 6 and all(s.startswith(h.id + ":dag.") for s in spawned)
    records = client.wait(spawned, timeout=30)
    assert records[spawned[-1]].result == sum(i * i for i in range(5))
    assert records[spawned[-1]].depends_on == spawned[:-1]
    dag = client.dag_status(h.id + ":dag")  # a lone job's children form a DAG named after it
    assert sorted(r.id for r in dag) == sorted(spawned)


def test_a_spawned_cycle_is_refused_clearly(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    out = client.submit("tests.jobs:spawn_a_cycle").result(30)
    assert out.startswith("refused: ") and "the jobs form a cycle" in out


def test_a_feedback_loop_until_success_counted_in_kv(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    key = "tries-" + titan_zmq.__version__
    client.kv.delete(key)
    h = client.submit("tests.jobs:fragile_until", args=[key, 3, 10])
    assert h.result(30) == "try 1 failed; successor spawned"

    def last() -> str | None:
        recs = client.dag_status(h.id + ":dag")
        done = [r for r in recs if r.state is JobState.SUCCEEDED and "succeeded on try" in str(r.result)]
        return str(done[0].result) if done else None

    assert wait_for(last, 30, "the loop to succeed") == "succeeded on try 3 (iteration 2)"
    assert client.kv.get(key) == 3


def test_spawned_jobs_survive_a_broker_restart(tmp_path) -> None:
    with LocalCluster(workers=1, broker_args=["--data-dir", str(tmp_path / "d"), "--fsync", "always"]) as c:
        client = c.client()
        h = client.submit("tests.jobs:fan_out", args=[3])
        spawned = h.result(30)
        c.kill_broker(signal.SIGKILL)
        c.start_broker()
        records = client.wait(spawned, timeout=30)
        assert records[spawned[-1]].result == 0 + 1 + 4


def test_an_approval_gate_holds_its_children_until_a_person_decides(shared_cluster: LocalCluster) -> None:
    from titan_zmq.client import Dag

    client = shared_cluster.client()
    dag = Dag("release")
    build = dag.add("tests.jobs:add", args=[1, 2])
    gate = dag.add(approval="ship build to production?", after=[build])
    ship = dag.add("tests.jobs:noop", args=["shipped"], after=[gate])
    client.submit_dag(dag)
    wait_for(lambda: client.status(gate).state is JobState.AWAITING, 20, "the gate to wait")
    rec = client.status(gate)
    assert "awaiting approval: ship build to production? (titan approve" in (rec.waiting or "")
    assert client.status(ship).state is JobState.PENDING
    with pytest.raises(TitanError, match="not an approval gate"):
        client.approve(build)
    decided = client.approve(gate, note="looks good", by="ana@ops")
    assert decided.state is JobState.SUCCEEDED and decided.result["by"] == "ana@ops"
    assert client.wait([ship], timeout=20)[ship].result == "shipped"
    with pytest.raises(TitanError, match="not awaiting a decision"):
        client.reject(gate)


def test_a_rejected_or_timed_out_gate_cancels_what_follows(shared_cluster: LocalCluster) -> None:
    from titan_zmq.client import Dag

    client = shared_cluster.client()
    dag = Dag("guarded")
    gate = dag.add(approval="run the migration?")
    after = dag.add("tests.jobs:noop", after=[gate])
    slow = dag.add(approval="still there?", timeout=0.5)
    after_slow = dag.add("tests.jobs:noop", after=[slow])
    client.submit_dag(dag)
    wait_for(lambda: client.status(gate).state is JobState.AWAITING, 20, "the gate to wait")
    rejected = client.reject(gate, note="not on a Friday", by="bob")
    assert rejected.state is JobState.FAILED and rejected.error == "rejected by bob: not on a Friday"
    recs = client.wait([after, slow, after_slow], timeout=20)
    assert recs[after].state is JobState.CANCELLED
    assert recs[slow].state is JobState.FAILED and recs[slow].error == "rejected by timeout: no decision within 0.5s"
    assert recs[after_slow].state is JobState.CANCELLED


def test_approve_and_reject_commands_and_a_gate_across_a_restart(tmp_path) -> None:
    import os
    import subprocess
    import sys

    with LocalCluster(workers=1, broker_args=["--data-dir", str(tmp_path / "d"), "--fsync", "always"]) as c:
        client = c.client()
        h = client.submit(approval="proceed?", id="gate-1")
        wait_for(lambda: client.status(h.id).state is JobState.AWAITING, 20, "the gate")
        c.kill_broker(signal.SIGKILL)
        c.start_broker()
        assert client.status(h.id).state is JobState.AWAITING  # the gate is journaled
        out = subprocess.run([sys.executable, "-m", "titan_zmq", "approve", h.id, "--note", "ok", "--broker",
                              c.address], capture_output=True, text=True, timeout=60, env=dict(os.environ))  # fmt: skip
        assert out.returncode == 0 and "gate-1: succeeded (approved by " in out.stdout, out.stderr
        c.kill_broker(signal.SIGKILL)
        c.start_broker()
        rec = client.status(h.id)  # who decided survives a restart too
        assert rec.state is JobState.SUCCEEDED and rec.result["note"] == "ok" and "@" in rec.result["by"]


def test_a_fallback_chain_on_a_real_cluster(shared_cluster: LocalCluster, tmp_path) -> None:
    from titan_zmq.client.pipeline import load_pipeline

    client = shared_cluster.client()
    h = client.submit("tests.jobs:add", args=[1, 2], requires=["gpu"], wait=0.5,
                      fallback=[{"requires": ["cpu"], "timeout": 60}])  # fmt: skip
    assert h.result(30) == 3  # no gpu worker here: after half a second it ran on a cpu worker
    src = tmp_path / "fb.yaml"
    src.write_text("jobs:\n  - id: fb\n    call: tests.jobs:add\n    args: [2, 2]\n    requires: [gpu]\n"
                   "    wait: 0.5\n    fallback: [{requires: [cpu]}]\n")  # fmt: skip
    recs = client.submit_dag(load_pipeline(src).dag.instance()).wait(30)
    assert [r.result for r in recs.values()] == [4]
    with pytest.raises(Exception, match="fallback #1 has unknown key"):
        client.submit("tests.jobs:noop", fallback=[{"gpu": True}])


def test_a_job_adds_an_edge_between_jobs_it_spawned(shared_cluster: LocalCluster, tmp_path) -> None:
    client = shared_cluster.client()
    log = tmp_path / "runs.log"
    first, second, refused = client.submit("tests.jobs:wire_later", args=[str(log)]).result(30)
    assert "cannot add an edge into job" in refused and "running" in refused
    recs = client.wait([first, second], timeout=30)
    assert recs[second].depends_on == [first]
    rows = {r.split()[0]: (float(r.split()[1]), float(r.split()[2])) for r in log.read_text().splitlines()}
    assert rows["second"][0] >= rows["first"][1]
