"""Regression tests for faults found in review: each failed before its fix."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from titan_zmq.client import JobState
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(90)


def test_crash_is_seen_even_if_a_grandchild_holds_the_pipes(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    rec = client.submit("tests.jobs:crash_leaving_a_grandchild").wait(timeout=10)
    assert rec.state is JobState.FAILED and rec.error_type == "ProcessDied"
    assert client.submit("tests.jobs:add", args=[1, 1]).result(20) == 2


def test_worker_follows_the_brokers_heartbeat_settings() -> None:
    # A broker with a much shorter heartbeat than the worker's default: the worker must keep
    # pace, or the broker takes it for dead and its job for lost.
    with LocalCluster(workers=1, slots=1, broker_args=["--heartbeat-interval", "0.1"]) as cluster:
        client = cluster.client()
        rec = client.submit("tests.jobs:sleep", args=[2.0]).wait(30)
        assert rec.state is JobState.SUCCEEDED and rec.attempts == 1
    with LocalCluster(workers=1, slots=1, broker_args=["--heartbeat-interval", "2"]) as cluster:
        client = cluster.client()
        t0 = time.monotonic()
        assert client.submit("tests.jobs:sleep", args=[3.0]).result(30) == 3.0
        assert time.monotonic() - t0 < 10
        log = (cluster.log_dir / "worker-local-1.log").read_text()
        assert "reconnecting" not in log


def test_timeouts_hold_while_the_broker_is_away(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="w", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    pidfile = tmp_path / "pid"
    # Longer than the worker's 2 s silence window: by then it is reconnecting, not serving.
    client.submit(shell=f"echo $$ > {pidfile}; exec sleep 60", timeout=5.0)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, "the job to start")
    pid = int(pidfile.read_text())
    cluster.kill_broker(signal.SIGKILL)
    # With no broker, the worker still enforces the timeout.
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 12, "timeout kill")


def test_resubmitting_a_finished_job_answers_at_once(shared_cluster: LocalCluster) -> None:
    first = shared_cluster.client()
    assert first.submit("tests.jobs:add", args=[20, 22], id="fixed-answer").result(20) == 42
    second = shared_cluster.client()
    t0 = time.monotonic()
    assert second.submit("tests.jobs:add", args=[20, 22], id="fixed-answer").result(20) == 42
    assert time.monotonic() - t0 < 1.0


def test_closed_client_says_so(shared_cluster: LocalCluster) -> None:
    from titan_zmq.errors import TitanError

    client = shared_cluster.client()
    h = client.submit("tests.jobs:add", args=[1, 2])
    client.close()
    with pytest.raises(TitanError, match="closed"):
        h.wait(5)
    with pytest.raises(TitanError, match="closed"):
        client.workers()


def test_log_level_after_the_command(shared_cluster: LocalCluster) -> None:
    from tests.test_cli import titan

    res = titan("workers", "--log-level", "ERROR", broker=shared_cluster.address)
    assert res.returncode == 0 and "local-1" in res.stdout


def test_script_args_in_the_order_given(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    from tests.test_cli import titan

    script = tmp_path / "a.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    res = titan(
        "submit", "--wait", "--script", str(script), "--arg", "first", "--", "second", broker=shared_cluster.address
    )
    assert res.stdout.strip() == "['first', 'second']"
