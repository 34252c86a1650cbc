"""Services as DAG nodes: deployed once their parents succeeded, succeeded once healthy (releasing
their children), running on after the DAG ends; failing like a job when they cannot get healthy."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from titan_zmq.client import Dag, JobState, TitanClient
from titan_zmq.errors import JobError, UnknownService
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)
ECHO = str(Path(__file__).resolve().parent / "services" / "echo_server.py")


def _ask(address: str, text: str) -> str:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(text.encode() + b"\n")
        return s.makefile().readline().split(" ", 1)[1].strip()


def _state(client: TitanClient, name: str) -> str | None:
    """The service's state, or None once the broker has forgotten it (stopped and gone)."""
    try:
        return str(client.services(name)[0]["state"])
    except UnknownService:
        return None


def _stopped(client: TitanClient, name: str) -> bool:
    return _state(client, name) in ("stopped", None)


def test_a_service_in_the_middle_of_a_dag(cluster: LocalCluster) -> None:
    cluster.add_worker(name="w1", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    dag = Dag("svc-mid")
    prep = dag.add(shell="echo prepared", id="svc-mid.prep")
    svc = dag.deploy("echo-mid", script=ECHO, health="tcp", after=[prep], id="svc-mid.echo")
    # The child finds the service's address in its inputs and talks to it.
    talk = ("import json, os, socket; addr = next(iter(json.load(open(os.environ['TITAN_INPUTS'])).values()))"
            "['addresses'][0]; h, p = addr.rsplit(':', 1); s = socket.create_connection((h, int(p)), timeout=5); "
            "s.sendall(b'hi from the child\\n'); print(s.makefile().readline().strip())")
    use = dag.add(shell=f'{sys.executable} -c "{talk}"', after=[svc], id="svc-mid.use")
    run = client.submit_dag(dag)
    recs = run.wait(60)
    assert {j: r.state for j, r in recs.items()} == {prep: JobState.SUCCEEDED, svc: JobState.SUCCEEDED,
                                                     use: JobState.SUCCEEDED}  # fmt: skip
    node = recs[svc]
    assert node.result["service"] == "echo-mid" and len(node.result["addresses"]) == 1
    assert node.started_at >= recs[prep].finished_at  # deployed only once its parent succeeded
    assert recs[use].started_at >= node.finished_at  # its child ran once it was healthy
    assert recs[use].stdout.strip().endswith("hi from the child")  # and reached the service
    # The service runs on after the DAG ended, at the address the node gave.
    assert client.services("echo-mid")[0]["state"] == "running"
    assert _ask(node.result["addresses"][0], "still there") == "still there"
    client.stop_service("echo-mid")
    wait_for(lambda: _stopped(client, "echo-mid"), 30, "the service to stop")


def test_a_service_that_cannot_get_healthy_fails_and_cancels_its_descendants(cluster: LocalCluster) -> None:
    cluster.add_worker(name="w1", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    dag = Dag("svc-bad")
    svc = dag.deploy("broken", shell="echo cannot bind >&2; exit 3", health="tcp", max_crashes=1,
                     id="svc-bad.broken")  # fmt: skip
    child = dag.add(shell="echo never", after=[svc], id="svc-bad.child")
    recs = client.submit_dag(dag).wait(60)
    assert recs[svc].state is JobState.FAILED and recs[svc].error_type == "ServiceFailed"
    assert "cannot bind" in (recs[svc].error or "")  # its last output says why
    assert recs[child].state is JobState.CANCELLED
    assert f"upstream job {svc} failed" in (recs[child].error or "") and "cannot bind" in (recs[child].error or "")


def test_cancelling_a_dag_stops_a_service_that_is_not_healthy_yet(cluster: LocalCluster) -> None:
    client = cluster.client()  # no worker: the service cannot start
    dag = Dag("svc-cancel")
    svc = dag.deploy("waiting", script=ECHO, health="tcp", id="svc-cancel.waiting")
    client.submit_dag(dag)
    wait_for(lambda: client.status(svc).state is JobState.RUNNING, 30, "the node to deploy its service")
    assert "deploying service waiting" in (client.status(svc).waiting or "")
    client.cancel_dag("svc-cancel")
    assert client.status(svc).state is JobState.CANCELLED
    wait_for(lambda: _stopped(client, "waiting"), 30, "the service to be stopped")


def test_a_service_node_with_a_bad_spec_is_refused_at_submission(cluster: LocalCluster) -> None:
    client = cluster.client()
    dag = Dag("svc-refused")
    dag.deploy("bad", shell="true", port=70000, id="svc-refused.bad")
    with pytest.raises(JobError, match="port must be 1-65535"):
        client.submit_dag(dag)


def test_a_service_node_waiting_for_health_survives_a_broker_restart(tmp_path: Path) -> None:
    with LocalCluster(workers=0, broker_args=["--data-dir", str(tmp_path / "data")]) as c:
        client = c.client()
        dag = Dag("svc-restart")
        svc = dag.deploy("echo-restart", script=ECHO, health="tcp", id="svc-restart.echo")
        after = dag.add(shell="echo released", after=[svc], id="svc-restart.after")
        client.submit_dag(dag)
        wait_for(lambda: client.status(svc).state is JobState.RUNNING, 30, "the node to deploy its service")
        c.kill_broker()
        c.start_broker()
        again = c.client()
        assert again.status(svc).state is JobState.RUNNING  # still waiting for its service, not lost
        c.add_worker(name="late", slots=2)
        recs = again.wait([svc, after], 60)
        assert recs[svc].state is JobState.SUCCEEDED and recs[after].state is JobState.SUCCEEDED
        assert recs[svc].result["service"] == "echo-restart"
        again.stop_service("echo-restart")
        wait_for(lambda: _stopped(again, "echo-restart"), 30, "the service to stop")


def test_two_nodes_for_one_service_both_settle_and_a_cancel_leaves_the_other(cluster: LocalCluster) -> None:
    """A pipeline run twice deploys the same service from two nodes: both wait for it; cancelling
    one does not stop the service the other waits for."""
    client = cluster.client()  # no worker yet: both nodes wait
    nodes = []
    for run in ("two-a", "two-b", "two-c"):
        dag = Dag(run)
        nodes.append(dag.deploy("shared-echo", script=ECHO, health="tcp", id=f"{run}.echo"))
        client.submit_dag(dag)
    for n in nodes:
        wait_for(lambda n=n: client.status(n).state is JobState.RUNNING, 30, f"{n} to wait for its service")
    client.cancel_dag("two-c")
    assert client.services("shared-echo")[0]["state"] != "stopping"  # the others still want it
    cluster.add_worker(name="w-two", slots=1)
    recs = client.wait(nodes[:2], 60)
    assert all(r.state is JobState.SUCCEEDED for r in recs.values())
    assert recs[nodes[0]].result == recs[nodes[1]].result
    client.stop_service("shared-echo")
    wait_for(lambda: _stopped(client, "shared-echo"), 30, "the service to stop")


def test_a_node_fails_when_its_service_is_stopped_before_it_is_healthy(cluster: LocalCluster) -> None:
    client = cluster.client()  # no worker: it cannot get healthy
    dag = Dag("stopped-early")
    svc = dag.deploy("early-stop", script=ECHO, health="tcp", id="stopped-early.echo")
    client.submit_dag(dag)
    wait_for(lambda: client.status(svc).state is JobState.RUNNING, 30, "the node to wait for its service")
    client.stop_service("early-stop")
    rec = client.wait([svc], 30)[svc]
    assert rec.state is JobState.FAILED and "stopped before it became healthy" in (rec.error or "")


def test_running_a_failed_service_node_again_says_to_stop_the_service_first(cluster: LocalCluster) -> None:
    cluster.add_worker(name="w1", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    dag = Dag("svc-again")
    svc = dag.deploy("flaky-svc", shell="exit 3", health="tcp", max_crashes=1, id="svc-again.svc")
    assert client.submit_dag(dag).wait(60)[svc].state is JobState.FAILED
    run = client.retry_dag("svc-again")
    rec = run.wait(30)[svc]
    assert rec.state is JobState.FAILED and "`titan stop flaky-svc` first" in (rec.error or "")
    client.stop_service("flaky-svc")
    wait_for(lambda: _state(client, "flaky-svc") is None, 30, "the failed service to go")
    assert client.retry_dag("svc-again").wait(30)[svc].state is JobState.FAILED  # deployed again: it fails again
    assert "exited with code 3" in (client.status(svc).error or "")

