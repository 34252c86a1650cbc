"""Placement: capability tags (GPU detection faked), waiting reasons, priority, delay, load."""

from __future__ import annotations

from pathlib import Path

import pytest

from titan_zmq.client import JobState
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.worker.gpu import gpu_tags, model_tag

pytestmark = pytest.mark.timeout(90)

FAKE_SMI = """#!/bin/sh
echo "NVIDIA H100 80GB HBM3"
echo "NVIDIA H100 80GB HBM3"
"""


def fake_gpu_path(tmp_path: Path) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    import os

    return f"{bindir}{os.pathsep}{os.environ['PATH']}"


def test_gpu_probe_parses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_gpu_path(tmp_path))
    assert gpu_tags() == ["gpu", "gpu:h100-80gb-hbm3"]
    assert model_tag("NVIDIA A100-SXM4-40GB") == "gpu:a100-sxm4-40gb"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_tags() == []


def test_gpu_job_waits_for_a_gpu_worker_then_runs_there(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="cpu-only", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    h = client.submit("tests.jobs:whoami", requires=["gpu"])
    cpu_job = client.submit("tests.jobs:whoami")
    assert cpu_job.result(20)["worker"] == "cpu-only"
    rec = client.status(h.id)
    assert rec.state is JobState.QUEUED
    assert rec.waiting == "waiting for a worker with tags {gpu}"
    cluster.add_worker(name="gpu-box", slots=1, env={"TITAN_GPU_PROBE": "true", "PATH": fake_gpu_path(tmp_path)})
    assert h.result(30)["worker"] == "gpu-box"
    tags = {w["name"]: w["tags"] for w in client.workers()}
    assert tags["gpu-box"] == ["cpu", "gpu", "gpu:h100-80gb-hbm3"]
    assert tags["cpu-only"] == ["cpu"]
    model = client.submit("tests.jobs:whoami", requires=["gpu:h100-80gb-hbm3"]).result(20)
    assert model["worker"] == "gpu-box"


def test_custom_tags_route_and_busy_reason(cluster: LocalCluster) -> None:
    cluster.add_worker(name="plain", slots=1)
    cluster.add_worker(name="big", slots=1, tags=["highmem"])
    cluster.wait_workers(2)
    client = cluster.client()
    for _ in range(4):
        assert client.submit("tests.jobs:whoami", requires="highmem").result(20)["worker"] == "big"
    blocker = client.submit("tests.jobs:sleep", args=[30], requires=["highmem"])
    wait_for(lambda: client.status(blocker.id).state is JobState.RUNNING, 20, "blocker to run")
    waiting = client.submit("tests.jobs:noop", requires=["highmem"])
    wait_for(lambda: "free slot" in (client.status(waiting.id).waiting or ""), 10, "busy reason")
    client.cancel(blocker.id)
    assert waiting.result(20) is None


def test_priority_first_then_fifo(cluster: LocalCluster, tmp_path: Path) -> None:
    client = cluster.client()
    # No worker yet: everything queues, then one single-slot worker drains the queue in order.
    order = [("low-1", 0), ("high-1", 5), ("low-2", 0), ("mid", 2), ("high-2", 5)]
    runs = tmp_path / "runs.log"  # each job appends its name as it runs: the order they ran in
    for name, prio in order:
        client.submit("tests.jobs:log_run", args=[str(runs), name], priority=prio, id=f"prio-{name}")
    cluster.add_worker(name="solo", slots=1)
    client.wait([f"prio-{n}" for n, _ in order], timeout=30)
    ran = [line.split()[0] for line in runs.read_text().splitlines()]
    assert ran == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_delay_holds_a_job_back(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    h = client.submit("tests.jobs:noop", args=[1], delay=1.0)
    rec = client.status(h.id)
    assert rec.state is JobState.QUEUED and (rec.waiting or "").startswith("delayed")
    assert rec.queued_at is None  # held: not in a queue yet, though free slots wait
    done = h.wait(20)
    assert done.state is JobState.SUCCEEDED
    # The broker's own record of it: held for its delay from its submission, queued, then started.
    assert done.submitted_at is not None and done.queued_at is not None and done.started_at is not None
    assert done.submitted_at + 1.0 - 0.01 <= done.queued_at <= done.started_at


def test_least_loaded_worker_is_chosen(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=2)
    cluster.add_worker(name="b", slots=2)
    cluster.wait_workers(2)
    client = cluster.client()
    hs = [client.submit("tests.jobs:sleep", args=[1.0]) for _ in range(4)]
    recs = client.wait([h.id for h in hs], timeout=30)
    per = {}
    for r in recs.values():
        per[r.worker] = per.get(r.worker, 0) + 1
    assert per == {"a": 2, "b": 2}


def test_capacity_never_exceeds_slots(cluster: LocalCluster) -> None:
    cluster.add_worker(name="two", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    hs = [client.submit("tests.jobs:sleep", args=[0.3]) for _ in range(6)]
    recs = list(client.wait([h.id for h in hs], timeout=30).values())
    assert all(r.state is JobState.SUCCEEDED for r in recs)
    # From the broker's own times: at no instant were more than 2 of them running.
    events = sorted([(r.started_at, 1) for r in recs] + [(r.finished_at, -1) for r in recs], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2
