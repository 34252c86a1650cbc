"""``titan gates`` lists the gates awaiting a decision with the output of the job each reviews, and
``titan approve``/``reject`` show that output beside the decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from titan_zmq.client import Dag, JobState
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


def _titan(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TITAN_BROKER": cluster.address}
    return subprocess.run([sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, env=env,
                          timeout=90)  # fmt: skip


def test_gates_show_the_output_they_review(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    dag = Dag("gates-cli")
    work = dag.add(shell="echo accuracy 0.97; echo model saved", id="gates-cli.work")
    gate = dag.add(approval="ship the model?", after=[work], timeout=600, id="gates-cli.gate")
    ship = dag.add(shell="echo shipped", after=[work, gate], id="gates-cli.ship")
    client.submit_dag(dag)
    wait_for(lambda: client.status(gate).state is JobState.AWAITING, 30, "the gate to wait for a person")
    out = _titan(shared_cluster, "gates", "--json")
    assert out.returncode == 0, out.stderr
    (item,) = [g for g in json.loads(out.stdout) if g["id"] == gate]
    assert item["question"] == "ship the model?" and "rejected in" in item["waiting"]
    (rev,) = item["reviewed"]
    assert rev["id"] == work and rev["state"] == "succeeded" and rev["output"] == ["accuracy 0.97", "model saved"]
    text = _titan(shared_cluster, "gates").stdout
    assert f"{gate}: ship the model?" in text and "| accuracy 0.97" in text
    decided = _titan(shared_cluster, "approve", gate, "--note", "numbers look right")
    assert decided.returncode == 0, decided.stderr
    assert f"reviews {work} (succeeded)" in decided.stdout and "| model saved" in decided.stdout
    assert client.wait([ship], 60)[ship].state is JobState.SUCCEEDED
    assert gate not in _titan(shared_cluster, "gates").stdout
