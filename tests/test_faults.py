"""Failure: a worker killed mid-job, a broker killed or restarted under its workers, jobs that crash or hang."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.conftest import HEARTBEAT_WINDOW
from titan_zmq.client import JobState
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(90)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _worker_pid_running(client, job_id: str) -> str | None:
    rec = client.status(job_id)
    return rec.worker if rec.state is JobState.RUNNING else None


def test_sigkill_worker_mid_job_reruns_elsewhere(cluster: LocalCluster, tmp_path: Path) -> None:
    victim = cluster.add_worker(name="victim", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    marker = tmp_path / "pid"
    h = client.submit("tests.jobs:write_pid_and_sleep", args=[str(marker), 3.0])
    wait_for(lambda: _worker_pid_running(client, h.id) == "victim" and marker.exists(), 20, "the job to start")
    job_pid = int(marker.read_text())
    cluster.add_worker(name="survivor", slots=1)
    cluster.wait_workers(2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    def gone() -> bool:
        return [w["name"] for w in client.workers()] == ["survivor"]

    # A killed worker says nothing: the broker expires it after a heartbeat window of silence.
    wait_for(gone, HEARTBEAT_WINDOW + 15, "the broker to expire the killed worker")
    # The job's process died with its worker: nothing is left running it.
    wait_for(lambda: _gone(job_pid), 5, "orphan")
    rec = h.wait(30)
    assert rec.state is JobState.SUCCEEDED
    assert rec.worker == "survivor"
    assert rec.attempts == 2


def test_broker_restart_workers_rejoin_by_themselves(cluster: LocalCluster) -> None:
    cluster.add_worker(name="w1", slots=2)
    cluster.add_worker(name="w2", slots=2)
    cluster.wait_workers(2)
    client = cluster.client()
    assert client.submit("tests.jobs:add", args=[1, 1]).result(20) == 2
    cluster.kill_broker(signal.SIGKILL)
    cluster.start_broker()  # same ports, empty memory
    client2 = cluster.client()
    ws = cluster.wait_workers(2, timeout=20)
    assert sorted(w["name"] for w in ws) == ["w1", "w2"]
    assert client2.submit("tests.jobs:add", args=[2, 3]).result(20) == 5
    # The first client's socket reconnects by itself, too.
    assert client.submit("tests.jobs:add", args=[4, 5]).result(20) == 9


def test_a_timeout_is_enforced_while_the_broker_is_away(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="w", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    pidfile = tmp_path / "pid"
    # The timeout falls well after the worker has given the silent broker up (a heartbeat window after
    # the kill): by then it is reconnecting, not serving.
    client.submit(shell=f"echo $$ > {pidfile}; exec sleep 60", timeout=HEARTBEAT_WINDOW + 10)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, "the job to start")
    pid = int(pidfile.read_text())
    cluster.kill_broker(signal.SIGKILL)
    log = cluster.log_dir / "worker-w.log"
    wait_for(lambda: "reconnecting" in log.read_text(), HEARTBEAT_WINDOW + 20, "the worker to give the broker up")
    assert not _gone(pid), "the job ended before the worker was reconnecting"
    # With no broker, the worker still enforces the timeout.
    wait_for(lambda: _gone(pid), HEARTBEAT_WINDOW + 30, "the timeout to kill the job")


def test_worker_waits_for_a_broker_that_is_not_there_yet(cluster: LocalCluster) -> None:
    cluster.kill_broker(signal.SIGTERM)
    early = cluster.add_worker(name="early", slots=1)
    log = cluster.log_dir / "worker-early.log"
    wait_for(lambda: log.exists() and "not answering" in log.read_text(), 20, "the worker to retry")
    assert early.poll() is None
    cluster.start_broker()
    ws = cluster.wait_workers(1, timeout=20)
    assert ws[0]["name"] == "early"


def test_crashing_job_does_not_take_the_worker_down(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    rec = client.submit("tests.jobs:crash").wait(20)
    assert rec.state is JobState.FAILED
    assert rec.error_type == "ProcessDied" and "exit code 7" in (rec.error or "")
    assert client.submit("tests.jobs:add", args=[1, 2]).result(20) == 3
    assert len(client.workers()) == 2


def test_a_crash_is_seen_even_if_a_grandchild_holds_the_pipes(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    rec = client.submit("tests.jobs:crash_leaving_a_grandchild").wait(timeout=10)
    assert rec.state is JobState.FAILED and rec.error_type == "ProcessDied"
    assert client.submit("tests.jobs:add", args=[1, 1]).result(20) == 2


def test_memory_hog_fails_alone(cluster: LocalCluster) -> None:
    cluster.add_worker(name="small", slots=1, extra=["--job-memory", "300"])
    cluster.wait_workers(1)
    client = cluster.client()
    rec = client.submit("tests.jobs:hog_memory", args=[1024]).wait(30)
    assert rec.state is JobState.FAILED
    assert rec.error_type == "MemoryError"
    assert client.submit("tests.jobs:hog_memory", args=[10]).result(20) == 10 * 1024 * 1024


def test_timeout_kills_the_whole_process_tree(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    client = shared_cluster.client()
    pidfile = tmp_path / "grandchild"
    # A shell job whose grandchild would outlive a naive kill.
    cmd = f"sleep 300 & echo $! > {pidfile}; wait"
    rec = client.submit(shell=cmd, timeout=1.0).wait(30)
    assert rec.state is JobState.FAILED
    assert rec.error_type == "Timeout"
    pid = int(pidfile.read_text())
    wait_for(lambda: _gone(pid), 5, "grandchild killed")
    call = client.submit("tests.jobs:sleep", args=[60], timeout=0.5).wait(30)
    assert call.state is JobState.FAILED and call.error_type == "Timeout"
    assert client.submit("tests.jobs:add", args=[1, 1]).result(20) == 2


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts: its parent has not reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # also when it ends between two questions
        return True


def test_cancel_running_and_queued(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="one", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    marker = tmp_path / "pid"
    running = client.submit("tests.jobs:write_pid_and_sleep", args=[str(marker), 60])
    queued = client.submit("tests.jobs:add", args=[1, 2])
    wait_for(marker.exists, 20, "the long job to start")
    assert client.status(queued.id).state is JobState.QUEUED
    assert client.cancel(queued.id).state is JobState.CANCELLED
    assert client.cancel(running.id).state is JobState.CANCELLED
    pid = int(marker.read_text())
    wait_for(lambda: _gone(pid), 10, "job killed")
    # The slot is free again: the next job runs.
    assert client.submit("tests.jobs:add", args=[2, 2]).result(20) == 4
    assert client.status(queued.id).state is JobState.CANCELLED


def test_retries_with_backoff_then_success_or_dead(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    client = shared_cluster.client()
    counter = tmp_path / "count"
    h = client.submit("tests.jobs:fail_until", args=[str(counter), 3], retries=3, backoff=0.05)
    assert h.result(30) == 3
    assert client.status(h.id).attempts == 3
    dead = client.submit("tests.jobs:boom", retries=2, backoff=0.05).wait(30)
    assert dead.state is JobState.DEAD
    assert dead.attempts == 3
    assert os.environ.get("TITAN_JOB_ID") is None  # the test process itself is not a job
