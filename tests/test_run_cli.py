"""`titan run PIPELINE.yaml` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import titan
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def test_run_twice_on_one_broker_json(shared_cluster: LocalCluster) -> None:
    for _ in range(2):  # every run gets fresh job ids: the second is a real run, not a replay
        res = titan("run", str(ROOT / "yaml_pipelines" / "mapreduce.yaml"), "--json", broker=shared_cluster.address)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["ok"] is True and out["dag"].startswith("mapreduce-")
        assert all(j["state"] == "succeeded" and j["id"].startswith(out["dag"] + ".") for j in out["jobs"])
        reducer = [j for j in out["jobs"] if j["depends_on"]]
        assert reducer and reducer[0]["result"]


def test_run_failure_and_bad_file(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    bad_job = tmp_path / "fails.yaml"
    bad_job.write_text(
        "name: fails\njobs:\n  - id: boom\n    call: tests.jobs:boom\n"
        "  - id: after\n    shell: 'true'\n    after: [boom]\n"
    )
    res = titan("run", str(bad_job), broker=shared_cluster.address)
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "upstream job" in res.stdout and "cancelled" in res.stdout
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\njobs:\n  - id: a\n    shell: 'true'\n    retrys: 2\n")
    res = titan("run", str(typo), broker=shared_cluster.address)
    assert res.returncode == 2
    assert "typo.yaml:5" in res.stderr and "retrys" in res.stderr


def test_run_local_starts_its_own_cluster() -> None:
    res = titan("run", "--local", str(ROOT / "yaml_pipelines" / "diamond.yaml"))
    assert res.returncode == 0, res.stderr
    assert "diamond: succeeded" in res.stdout and "4/4" in res.stderr


def test_run_a_pipeline_with_a_service(shared_cluster: LocalCluster) -> None:
    res = titan("run", str(ROOT / "yaml_pipelines" / "service.yaml"), "--json", broker=shared_cluster.address)
    assert res.returncode == 0, res.stderr
    assert "service pipeline-echo: running at " in res.stderr  # a node of the DAG, its address in the summary
    out = json.loads(res.stdout)
    jobs = {j["id"][len(out["dag"]) + 1 :]: j for j in out["jobs"]}
    assert jobs["pipeline-echo"]["state"] == "succeeded" and jobs["pipeline-echo"]["result"]["addresses"]
    assert jobs["ask"]["depends_on"] == [f"{out['dag']}.pipeline-echo"]  # it waited for the service node
    assert jobs["ask"]["stdout"].strip().startswith("service answered: ")
    assert jobs["ask"]["stdout"].strip().endswith(" hello")
    assert jobs["ask-again"]["stdout"].strip().endswith(" again")
    client = shared_cluster.client()
    assert client.services("pipeline-echo")[0]["state"] == "running"  # a service outlives the pipeline
    client.stop_service("pipeline-echo")
