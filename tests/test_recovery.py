"""A broker with --data-dir, killed and started again: real processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from titan_zmq.client import JobState, KVTypeError
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[LocalCluster]:
    """A broker journaling to tmp_path/data with fsync always, and no workers yet."""
    c = LocalCluster(workers=0, broker_args=["--data-dir", str(tmp_path / "data"), "--fsync", "always"])
    with c:
        yield c


def _lines(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def _restart(c: LocalCluster) -> None:
    c.kill_broker(signal.SIGKILL)
    c.start_broker()


def test_queued_jobs_and_kv_survive_a_kill(durable: LocalCluster, tmp_path: Path) -> None:
    client = durable.client()
    handles = [client.submit("tests.jobs:add", args=[i, i]) for i in range(20)]
    client.kv.set("config", {"lr": 0.1})
    client.kv.incr("runs", 3)
    client.kv.sadd("tags", "a", "b")
    _restart(durable)
    assert client.status(handles[0].id).state is JobState.QUEUED
    durable.add_worker(slots=2)
    assert [h.result(30) for h in handles] == [2 * i for i in range(20)]
    assert client.kv.get("config") == {"lr": 0.1} and client.kv.get("runs") == 3
    assert client.kv.smembers("tags") == ["a", "b"]
    with pytest.raises(KVTypeError, match="holds a set"):
        client.kv.incr("tags")


def test_a_job_that_finished_while_the_broker_was_down_is_not_run_again(
    durable: LocalCluster, tmp_path: Path
) -> None:
    durable.add_worker(name="w1", slots=1)
    durable.wait_workers(1)
    client = durable.client()
    log = tmp_path / "runs.log"
    h = client.submit("tests.jobs:log_run", args=[str(log), "once", 1.0])
    wait_for(lambda: client.status(h.id).state is JobState.RUNNING, 20, "the job to start")
    durable.kill_broker(signal.SIGKILL)
    wait_for(lambda: _lines(log), 20, "the job to finish while the broker is down")
    durable.start_broker()
    assert h.result(30) == "once"
    rec = client.status(h.id)
    assert rec.attempts == 1 and rec.worker == "w1"
    assert len(_lines(log)) == 1


def test_a_job_whose_worker_does_not_come_back_runs_again(durable: LocalCluster, tmp_path: Path) -> None:
    victim = durable.add_worker(name="victim", slots=1)
    durable.wait_workers(1)
    client = durable.client()
    log = tmp_path / "runs.log"
    h = client.submit("tests.jobs:log_run", args=[str(log), "again", 1.5])
    wait_for(lambda: client.status(h.id).state is JobState.RUNNING, 20, "the job to start")
    durable.kill_broker(signal.SIGKILL)
    victim.kill()
    victim.wait(10)
    durable.env["TITAN_ORPHAN_WAIT"] = "1.0"
    durable.start_broker()
    rec = client.status(h.id)
    assert rec.state is JobState.RUNNING and "waiting for it to reconnect" in (rec.waiting or "")
    durable.add_worker(name="rescuer", slots=1)
    assert h.result(30) == "again"
    rec = client.status(h.id)
    assert (rec.worker, rec.attempts) == ("rescuer", 2)
    assert len(_lines(log)) == 1  # the first attempt died with its worker


def test_a_dag_carries_on_across_a_restart(durable: LocalCluster, tmp_path: Path) -> None:
    from titan_zmq.client import Dag

    durable.add_worker(slots=2)
    client = durable.client()
    log = tmp_path / "runs.log"
    dag = Dag("wide")
    first = dag.add("tests.jobs:log_run", args=[str(log), "first", 1.0], id="first")
    mids = [dag.add("tests.jobs:log_run", args=[str(log), f"m{i}"], id=f"m{i}", after=[first]) for i in range(4)]
    dag.add("tests.jobs:log_run", args=[str(log), "last"], id="last", after=mids)
    run = client.submit_dag(dag)
    wait_for(lambda: client.status(run.ids[0]).state is JobState.RUNNING, 20, "the first job to start")
    _restart(durable)
    records = run.wait(60)
    assert all(r.state is JobState.SUCCEEDED for r in records.values())
    rows = {row[0]: (float(row[1]), float(row[2])) for row in _lines(log)}
    assert len(_lines(log)) == 6
    assert all(rows[f"m{i}"][0] >= rows["first"][1] for i in range(4))
    assert rows["last"][0] >= max(rows[f"m{i}"][1] for i in range(4))


def test_kv_from_inside_jobs(durable: LocalCluster) -> None:
    durable.add_worker(name="kvw", slots=2)
    client = durable.client()
    assert sorted(client.map("tests.jobs:kv_from_inside", ["hits"] * 10)) == list(range(1, 11))
    assert client.kv.get("hits") == 10 and client.kv.smembers("hits:workers") == ["kvw"]


def _titan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_kv_and_aof_commands(durable: LocalCluster, tmp_path: Path) -> None:
    b = ["--broker", durable.address]
    assert _titan("kv", "set", "n", "5", *b).returncode == 0
    assert _titan("kv", "set", "s", "5", "--string", *b).returncode == 0
    assert _titan("kv", "set", "obj", '{"a": [1, 2]}', *b).returncode == 0
    assert _titan("kv", "set", "word", "hello world", *b).returncode == 0
    assert _titan("kv", "get", "n", "--json", *b).stdout.strip() == "5"
    assert _titan("kv", "get", "s", "--json", *b).stdout.strip() == '"5"'
    assert json.loads(_titan("kv", "get", "obj", *b).stdout) == {"a": [1, 2]}
    assert _titan("kv", "get", "word", *b).stdout.strip() == "hello world"
    assert json.loads(_titan("kv", "ls", "--json", *b).stdout) == ["n", "obj", "s", "word"]
    assert _titan("kv", "ls", "o", *b).stdout.split() == ["obj"]
    assert _titan("kv", "del", "word", *b).returncode == 0
    gone = _titan("kv", "get", "word", *b)
    assert gone.returncode == 1 and "no key 'word'" in gone.stderr
    assert _titan("kv", "del", "word", *b).returncode == 1
    data = tmp_path / "data"
    check = _titan("aof", "check", str(data), "--json")  # reading is fine while the broker runs
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["kv_keys"] == 3
    busy = _titan("aof", "compact", str(data))
    assert busy.returncode == 1 and "in use by process" in busy.stderr
    durable.kill_broker(signal.SIGTERM)
    done = _titan("aof", "compact", str(data))
    assert done.returncode == 0 and "compacted to generation 2" in done.stdout, done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["LOCK", "journal-00000002.aof", "logs", "snapshot-00000002.tzs"]
    durable.start_broker()
    assert _titan("kv", "get", "n", *b).stdout.strip() == "5"


def test_a_corrupt_journal_stops_the_start_until_repaired(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalCluster(workers=0, broker_args=["--data-dir", str(data)]) as c:
        client = c.client()
        for i in range(5):
            client.kv.set(f"k{i}", i)
    journal = data / "journal-00000001.aof"
    raw = bytearray(journal.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    journal.write_bytes(bytes(raw))
    start = _titan("broker", "--data-dir", str(data), "--front", "0", "--back", "0", "--events", "0")
    assert start.returncode == 1
    assert str(journal) in start.stderr and "offset" in start.stderr and "titan aof repair" in start.stderr
    check = _titan("aof", "check", str(data))
    assert check.returncode == 1 and "DAMAGE" in check.stdout
    repair = _titan("aof", "repair", str(data))
    assert repair.returncode == 0 and "kept" in repair.stdout and "dropped" in repair.stdout
    with LocalCluster(workers=0, broker_args=["--data-dir", str(data)]) as c:
        keys = c.client().kv.keys()
    assert keys and keys == [f"k{i}" for i in range(len(keys))]  # a prefix of what was written


def test_a_torn_tail_is_cut_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalCluster(workers=0, broker_args=["--data-dir", str(data)]) as c:
        c.client().kv.set("kept", 1)
    journal = data / "journal-00000001.aof"
    size = journal.stat().st_size
    with open(journal, "ab") as fh:
        fh.write(b"\x30\x00\x00\x00\x01\x02")  # half a record header: a write cut short
    with LocalCluster(workers=0, broker_args=["--data-dir", str(data)]) as c:
        assert c.client().kv.get("kept") == 1
        text = (c.log_dir / "broker.log").read_text()
    assert f"torn tail at offset {size}" in text and "cut off" in text
    assert journal.stat().st_size == size


def test_a_service_survives_a_broker_restart_without_a_restart_of_its_own(durable: LocalCluster) -> None:
    echo = str(Path(__file__).resolve().parent / "services" / "echo_server.py")
    durable.add_worker(name="svc-host", slots=1)
    durable.wait_workers(1)
    client = durable.client()
    before = client.deploy("kept", script=echo)["replicas"][0]
    _restart(durable)
    wait_for(lambda: client.services("kept")[0]["state"] == "running", 20, "the service to be adopted")
    after = client.services("kept")[0]["replicas"][0]
    assert (after["pid"], after["restarts"], after["address"]) == (before["pid"], 0, before["address"])


def test_a_failed_service_stays_failed_across_a_restart(durable: LocalCluster) -> None:
    from titan_zmq.errors import ServiceFailed

    durable.add_worker(slots=1)
    durable.wait_workers(1)
    client = durable.client()
    with pytest.raises(ServiceFailed, match="crash loop"):
        client.deploy("doomed", shell="exit 4", max_crashes=2, backoff=0.1)
    _restart(durable)
    rec = client.services("doomed")[0]
    assert rec["state"] == "failed" and "crash loop" in rec["replicas"][0]["error"]
