"""Live logs, the stats feed and events over PUB/SUB; a stalled subscriber never holds the broker up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.conftest import HEARTBEAT_WINDOW
from titan_zmq.client import Dag, JobState, UnknownJob
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


def _titan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))  # fmt: skip


def test_a_jobs_output_lines_in_order_with_their_streams(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    before = time.time()
    h = client.submit(shell="for i in 1 2 3; do echo out $i; echo err $i >&2; done; printf 'last'")
    h.wait(20)
    after = time.time()
    lines = list(client.logs(h.id))
    # Each stream keeps its order; between the two pipes, order is as the worker read them.
    assert [ln.text for ln in lines if ln.stream == "out"] == ["out 1", "out 2", "out 3", "last"]
    assert [ln.text for ln in lines if ln.stream == "err"] == ["err 1", "err 2", "err 3"]
    assert [ln.seq for ln in lines] == list(range(1, 8))
    assert all(before <= ln.time <= after for ln in lines)  # unix times, stamped while the job ran
    assert [ln.seq for ln in client.logs(h.id, after=5)] == [6, 7]
    c = client.submit("tests.jobs:chatty", args=[3, "call"])
    c.wait(20)
    assert [ln.text for ln in client.logs(c.id)] == ["call 0", "call 1", "call 2", "call done"]


def test_follow_streams_lines_while_the_job_runs_and_stops_at_its_end(
    shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    client = shared_cluster.client()
    gate = tmp_path / "gate"
    # The job prints a line, then waits for the test to open the gate (failing if it never does), then ends.
    h = client.submit(shell=f"echo tick 1; for i in $(seq 600); do [ -e {gate} ] && break; sleep 0.05; done; "
                            f"[ -e {gate} ] || exit 3; echo tick 2; echo tick 3")  # fmt: skip
    got: list[tuple[str, JobState]] = []
    for line in client.logs(h.id, follow=True):
        got.append((line.text, client.status(h.id).state))
        gate.touch()  # only once a line came: had lines come only at the job's end, it would fail
    assert [t for t, _ in got] == ["tick 1", "tick 2", "tick 3"]
    assert got[0][1] is JobState.RUNNING  # the first line came while the job ran, not at its end
    assert client.status(h.id).state is JobState.SUCCEEDED


def test_titan_logs_command(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    ok = client.submit(shell="echo hello; echo oops >&2")
    bad = client.submit(shell="echo about to fail; sleep 0.3; exit 3")
    b = ["--broker", shared_cluster.address]
    follow = _titan("logs", "-f", bad.id, *b)
    assert follow.returncode == 1 and follow.stdout == "about to fail\n"
    ok.wait(20)
    plain = _titan("logs", ok.id, *b)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "hello\n", "oops\n")
    rows = [json.loads(x) for x in _titan("logs", ok.id, "--json", *b).stdout.splitlines()]
    # Two pipes: which of the two lines the worker read first is not fixed.
    assert sorted((r["stream"], r["text"]) for r in rows) == [("err", "oops"), ("out", "hello")]
    assert sorted(r["seq"] for r in rows) == [1, 2]
    stamped = sorted(_titan("logs", ok.id, "-t", *b).stdout.splitlines(), key=lambda x: x.split()[1])
    assert stamped[0].endswith(" err | oops") and stamped[1].endswith(" out | hello")
    unknown = _titan("logs", "no-such-job", *b)
    assert unknown.returncode == 1 and "unknown job id 'no-such-job'" in unknown.stderr
    with pytest.raises(UnknownJob):
        list(client.logs("no-such-job"))


def test_the_tail_in_memory_and_the_whole_log_on_disk(tmp_path: Path) -> None:
    env = {"TITAN_LOG_TAIL_LINES": "5"}
    with LocalCluster(workers=1, env=env) as mem:
        client = mem.client()
        h = client.submit("tests.jobs:chatty", args=[20])
        h.wait(20)
        assert [ln.seq for ln in client.logs(h.id)] == [17, 18, 19, 20, 21]  # the last 5 of 21
    data = tmp_path / "data"
    with LocalCluster(workers=1, env=env, broker_args=["--data-dir", str(data)]) as disk:
        client = disk.client()
        h = client.submit("tests.jobs:chatty", args=[20])
        h.wait(20)
        assert [ln.seq for ln in client.logs(h.id)] == list(range(1, 22))
        assert (data / "logs" / f"{h.id}.log").read_text().count("\n") == 21
        disk.kill_broker()
        disk.start_broker()
        again = disk.client()
        assert [ln.text for ln in again.logs(h.id)][:2] == ["x 0", "x 1"]  # after a restart, from disk
        # A log request names a job, never a path: a file outside the log folder is not found.
        secret = tmp_path / "secret.log"
        secret.write_text("1\t0\tstdout\tnot yours\n")
        for bad in (str(tmp_path / "secret"), "../../secret", "../logs/../../secret"):
            with pytest.raises(UnknownJob, match="no such job or service replica"):
                list(again.logs(bad))


def _next(sub: Any, want: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.next(0.5)
        if msg is not None and msg[0] == want:
            return msg[1]
    raise TimeoutError(f"no {want!r} message within {timeout}s")


def test_stats_feed_and_job_events(cluster: LocalCluster) -> None:
    cluster.add_worker(name="s1", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    with client.subscribe("stats", "event.") as sub:
        wait_for(lambda: _next(sub, "stats")["worker_list"][0]["cpu"] is not None, 20, "a worker's load in stats")
        client.submit("tests.jobs:noop", requires=["gpu"])  # waits: no gpu worker
        dag = Dag("progress")
        a = dag.add("tests.jobs:noop", args=[1])
        dag.add("tests.jobs:sleep", args=[30], after=[a])
        client.submit_dag(dag)
        events: list[dict[str, Any]] = []

        def saw_a_succeed() -> bool:
            body = _next(sub, "event.job")
            events.extend(body["changes"])
            return any(c["id"] == a and c["state"] == "succeeded" for c in events)

        wait_for(saw_a_succeed, 20, "the event of a job succeeding")
        assert {"id", "state", "worker", "attempts", "dag"} <= events[0].keys()

        def progress() -> dict[str, Any] | None:
            s = _next(sub, "stats")
            d = [x for x in s["dags"] if x["id"] == "progress"]
            return s if d and d[0].get("running") == 1 else None

        stats = wait_for(progress, 20, "DAG progress in stats")
        w = stats["worker_list"][0]
        assert (w["name"], w["slots"], w["used"]) == ("s1", 2, 1)
        assert 0 <= w["mem"] <= 100 and 0 <= w["last_heartbeat_age"] < HEARTBEAT_WINDOW
        assert stats["queues"] == {"gpu": 1}
        d = next(x for x in stats["dags"] if x["id"] == "progress")
        assert (d["total"], d["done"], d["succeeded"]) == (2, 1, 1)
        assert stats["rate_in"] >= 0 and stats["services"] == []


def test_a_stalled_subscriber_does_not_hold_the_broker_up(cluster: LocalCluster) -> None:
    cluster.add_worker(slots=2)
    cluster.add_worker(slots=2)
    cluster.wait_workers(2)
    client = cluster.client()
    client.map("tests.jobs:chatty", [5] * 100)  # warm up

    def rate() -> float:
        t0 = time.perf_counter()
        assert client.map("tests.jobs:chatty", [20] * 600, timeout=120) == [20] * 600
        return 600 / (time.perf_counter() - t0)  # for the record only

    base = rate()
    ctx = zmq.Context.instance()
    stalled = ctx.socket(zmq.SUB)  # subscribed to everything, never reads, tiny queue
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.connect(f"tcp://127.0.0.1:{cluster.ports['events']}")
    try:
        with client.subscribe("stats") as live:
            _next(live, "stats")
            # Every job ran to its end while the stalled socket was offered their events and log lines.
            stalled_rate = rate()
            assert _next(live, "stats", 5)  # another subscriber still gets its feed
        # The broker answers a fresh client within its request deadline (a broker waiting on the stalled
        # socket would not answer at all).
        assert cluster.client(timeout=5.0).hello()["version"] == client.hello()["version"]
    finally:
        stalled.close()
    print(f"no-op chatty jobs/s: {base:.0f} alone, {stalled_rate:.0f} with a stalled subscriber")


def test_the_broker_builds_events_only_for_topics_someone_subscribes_to() -> None:
    from titan_zmq.broker import Broker
    from titan_zmq.config import BrokerConfig

    broker = Broker(BrokerConfig(host="127.0.0.1", front=0, back=0, events=0))
    ports = broker.bind()
    thread = threading.Thread(target=broker.run, name="test-broker", daemon=True)
    thread.start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    try:
        assert not broker.sched.track_changes  # no journal, no subscriber: job changes are not collected
        assert not broker.wants(b"event.job") and not broker.wants(b"stats")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://127.0.0.1:{ports['events']}")
        sub.setsockopt(zmq.SUBSCRIBE, b"event.")
        wait_for(lambda: broker.sched.track_changes, 10, "the broker to hear of the subscription")
        assert broker.wants(b"event.job") and broker.wants(b"event.worker") and not broker.wants(b"stats")
        sub.setsockopt(zmq.UNSUBSCRIBE, b"event.")
        wait_for(lambda: not broker.sched.track_changes, 10, "the broker to hear of the unsubscription")
        assert not broker.wants(b"event.job")
    finally:
        sub.close(0)
        broker.stop()
        thread.join(10)
    assert not thread.is_alive()
