"""End to end on a real local cluster: the three job kinds, results, output, failures."""

from __future__ import annotations

import pytest

from titan_zmq.client import JobFailed, JobState
from titan_zmq.errors import JobError
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(60)


def test_call_job_returns_its_result(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    handle = client.submit("tests.jobs:add", args=[2, 3])
    assert handle.result(timeout=20) == 5
    rec = client.status(handle.id)
    assert rec.state is JobState.SUCCEEDED
    assert rec.attempts == 1
    assert rec.worker in {"local-1", "local-2"}
    assert rec.submitted_at <= rec.started_at <= rec.finished_at


def test_shell_job_output_and_exit_status(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    ok = client.submit(shell="echo out-$TITAN_JOB_ID; echo err >&2").wait(20)
    assert ok.state is JobState.SUCCEEDED and ok.exit_code == 0
    assert ok.stdout == f"out-{ok.id}\n"
    assert ok.stderr == "err\n"
    bad = client.submit(shell="echo nope >&2; exit 4").wait(20)
    assert bad.state is JobState.FAILED
    assert bad.exit_code == 4
    assert "exit code 4" in (bad.error or "") and "nope" in (bad.error or "")


def test_script_content_travels_with_the_job(shared_cluster: LocalCluster, tmp_path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\n")
    client = shared_cluster.client()
    h = client.submit(script=str(script), args=["a", 2])
    script.unlink()  # the worker must not need the file
    rec = h.wait(20)
    assert rec.state is JobState.SUCCEEDED, rec
    assert rec.stdout == "args ['a', '2']\n"


def test_failure_carries_the_remote_traceback(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    h = client.submit("tests.jobs:boom", args=["kaput"])
    with pytest.raises(JobFailed) as info:
        h.result(timeout=20)
    assert "ValueError: kaput" in str(info.value)
    assert info.value.remote_traceback and "tests/jobs.py" in info.value.remote_traceback
    assert info.value.record.state is JobState.FAILED


def test_map_keeps_order(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    assert client.map("tests.jobs:noop", range(500)) == list(range(500))
    # Options go to every job (one template per chunk); per-job ones are refused by name.
    assert client.map("tests.jobs:noop", ["a", {"k": [1]}], priority=5, labels={"m": "1"}, chunk=1) == ["a", {"k": [1]}]
    with pytest.raises(JobError, match="an idempotency key names one job"):
        client.map("tests.jobs:noop", range(3), idempotency_key="once")
    with pytest.raises(JobError, match="arguments come from the iterable"):
        client.map("tests.jobs:noop", range(3), args=[1])


def test_map_failure_carries_the_remote_traceback(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(JobFailed) as info:
        client.map("tests.jobs:boom", ["first", "second"])  # lean records for successes, full ones for failures
    assert "2 of 2 map job(s) failed" in str(info.value)
    assert info.value.record is not None and "boom" in (info.value.record.traceback or "")
