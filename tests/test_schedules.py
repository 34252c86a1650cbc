"""Schedules: cron firings, catch-up after downtime, journaled, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from titan_zmq.broker.schedules import ScheduleManager
from titan_zmq.errors import BrokerError, JobError
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _manager(wall: Wall) -> tuple[ScheduleManager, list[list[dict[str, Any]]], list[list[Any]]]:
    submitted: list[list[dict[str, Any]]] = []
    journal: list[list[Any]] = []
    m = ScheduleManager(lambda specs, blobs: submitted.append(specs) or [s["id"] for s in specs], journal.append, wall)
    return m, submitted, journal


SPEC = {"id": "x", "kind": "shell", "target": "echo tick"}


def test_firings_and_ids() -> None:
    wall = Wall(1_000_000.0)  # a whole minute
    m, submitted, _ = _manager(wall)
    m.add("every-10s", "* * * * * */10", [SPEC])
    assert m.tick() == 1_000_010.0 and not submitted
    wall.t = 1_000_010.0
    m.tick()
    assert [s["id"] for s in submitted[0]] == ["every-10s.1000010"]
    wall.t = 1_000_035.0  # two firings late (a long broker turn): one run, then the next regular one
    m.tick()
    assert len(submitted) == 2 and m.schedules["every-10s"].next_fire == 1_000_040.0


def test_a_dag_template_gets_fresh_ids_per_firing() -> None:
    wall = Wall(1_000_000.0)
    m, submitted, _ = _manager(wall)
    dag = [{"id": "a", "kind": "shell", "target": "true"},
           {"id": "b", "kind": "shell", "target": "true", "depends_on": ["a"]}]  # fmt: skip
    m.add("etl", "* * * * * */10", dag)
    wall.t += 10
    m.tick()
    assert submitted[0] == [
        {**dag[0], "id": "etl.1000010.a", "dag": "etl.1000010"},
        {**dag[1], "id": "etl.1000010.b", "dag": "etl.1000010", "depends_on": ["etl.1000010.a"]},
    ]


@pytest.mark.parametrize(("catchup", "runs"), [("skip", 0), ("once", 1)])
def test_catch_up_after_downtime(catchup: str, runs: int) -> None:
    wall = Wall(1_000_000.0)
    m, _, journal = _manager(wall)
    m.add("s", "* * * * * */10", [SPEC], catchup=catchup)
    wall.t += 10
    m.tick()
    # The broker is down for a minute: six firings missed. A new broker replays the journal.
    wall.t += 60
    m2, submitted, _ = _manager(wall)
    for op in journal:
        m2.apply(op)
    m2.restored()
    assert len(submitted) == runs
    if runs:
        assert submitted[0][0]["id"] == "s.1000070"  # the latest missed firing, once
    assert m2.schedules["s"].next_fire == 1_000_080.0


def test_bad_schedules_are_refused() -> None:
    m, _, _ = _manager(Wall(0.0))
    with pytest.raises(JobError, match="not a cron expression"):
        m.add("a", "every minute", [SPEC])
    with pytest.raises(JobError, match="catchup must be"):
        m.add("a", "* * * * *", [SPEC], catchup="all")
    with pytest.raises(JobError, match="kind must be one of"):
        m.add("a", "* * * * *", [{"id": "x", "kind": "nope", "target": "t"}])
    m.add("a", "* * * * *", [SPEC])
    with pytest.raises(BrokerError, match="exists"):
        m.add("a", "* * * * *", [SPEC])
    with pytest.raises(BrokerError, match="unknown schedule 'b'"):
        m.remove("b")


def _titan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))  # fmt: skip


def test_schedules_run_survive_a_restart_and_the_cli(tmp_path) -> None:
    with LocalCluster(workers=1, broker_args=["--data-dir", str(tmp_path / "d"), "--fsync", "always"]) as c:
        b = ["--broker", c.address]
        add = _titan("schedule", "add", "tick", "* * * * * *", "--call", "tests.jobs:add", "--arg", "2", "--arg", "3",
                     *b)  # fmt: skip
        assert add.returncode == 0 and "schedule tick added: '* * * * * *', next run" in add.stdout, add.stderr
        client = c.client()
        wait_for(lambda: client.schedules()[0]["runs"] >= 2, 20, "two firings")
        ran = [j for j in client.jobs(limit=20) if j.id.startswith("tick.")]
        assert ran and all(j.target == "tests.jobs:add" for j in ran)
        wait_for(lambda: any(j.result == 5 for j in client.jobs(limit=20) if j.id.startswith("tick.")), 20, "a result")
        c.kill_broker(signal.SIGKILL)
        c.start_broker()
        listed = json.loads(_titan("schedule", "ls", "--json", *b).stdout)
        assert [s["name"] for s in listed] == ["tick"] and listed[0]["runs"] >= 2  # journaled
        before = listed[0]["runs"]
        wait_for(lambda: client.schedules()[0]["runs"] > before, 20, "firings after the restart")
        assert _titan("schedule", "rm", "tick", *b).returncode == 0
        assert _titan("schedule", "ls", *b).stdout.strip() == "no schedules"
        bad = _titan("schedule", "add", "x", "not cron", *b, "--", "true")
        assert bad.returncode == 1 and "not a cron expression" in bad.stderr


def test_a_yaml_pipeline_with_a_schedule(shared_cluster: LocalCluster, tmp_path) -> None:
    src = tmp_path / "nightly.yaml"
    src.write_text(
        "name: nightly-etl\nschedule: '* * * * * */2'\ncatchup: once\njobs:\n"
        "  - {id: extract, shell: 'echo rows'}\n  - {id: load, shell: 'echo loaded', after: [extract]}\n"
    )
    res = _titan("run", str(src), "--broker", shared_cluster.address)
    assert res.returncode == 0 and "pipeline nightly-etl scheduled: '* * * * * */2'" in res.stderr, res.stderr
    client = shared_cluster.client()
    try:
        wait_for(lambda: client.schedules()[0]["runs"] >= 1, 20, "a firing")
        fired = [j for j in client.jobs(limit=50) if j.id.startswith("nightly-etl.")]

        def loaded() -> bool:
            return any(j.id.startswith("nightly-etl.") and j.id.endswith(".load") and j.state.value == "succeeded"
                       for j in client.jobs(limit=50))  # fmt: skip

        wait_for(loaded, 20, "a DAG run")
        assert {j.id.rsplit(".", 1)[1] for j in fired} <= {"extract", "load"}
    finally:
        client.unschedule("nightly-etl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: sometimes\njobs:\n  - {id: a, shell: 'true'}\n")
    res = _titan("run", str(bad), "--broker", shared_cluster.address)
    assert res.returncode == 2 and "bad.yaml:1" in res.stderr and "not a cron expression" in res.stderr
