"""Heartbeats: a worker keeps the broker's pace and allows the broker's window, whatever its own settings.

These tests set their heartbeat settings themselves, apart from the suite's (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from titan_zmq import protocol as P
from titan_zmq.client import JobState
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.process import die_with_parent

pytestmark = pytest.mark.timeout(90)


def test_a_worker_beats_at_the_pace_the_broker_asks_for(tmp_path: Path) -> None:
    # A stand-in broker that asks for a heartbeat every 0.1 s, and a worker whose own pace is one every
    # 5 s. Besides, a worker sends its load about once a second whatever the pace, and any message it
    # sends resets its heartbeat clock: one at its own pace would send load reports only; one at the
    # broker's pace sends about nine plain heartbeats between two load reports. Counted, not timed.
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for s in (front, back):
        s.setsockopt(zmq.LINGER, 0)
    front_port = front.bind_to_random_port("tcp://127.0.0.1")
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    env = {**os.environ, "TITAN_HEARTBEAT_INTERVAL": "5", "TITAN_HEARTBEAT_LIVENESS": "4",
           "TITAN_GPU_PROBE": "false", "TITAN_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    with open(tmp_path / "worker.log", "ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "titan_zmq", "worker", "--broker", f"127.0.0.1:{front_port}", "--name", "paced",
             "--slots", "1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent,
        )  # fmt: skip
    plain = loads = 0
    registered = False
    try:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        deadline = time.monotonic() + 60
        while loads < 5:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, f"only {loads} load report(s) and {plain} heartbeat(s) came"
            for sock, _ in poller.poll(500):
                ident, *frames = sock.recv_multipart()
                msg = P.decode(frames)
                if sock is front and isinstance(msg, P.Hello):
                    info = {"version": P.VERSION.decode(), "pid": os.getpid(), "heartbeat_interval": 0.1,
                            "heartbeat_liveness": 10, "front": front_port, "back": back_port, "events": 0}  # fmt: skip
                    front.send_multipart([ident, *P.Reply(rid=msg.rid, data=info).encode()])
                elif sock is back and isinstance(msg, P.Ready):
                    registered = True
                    back.send_multipart([ident, *P.Heartbeat().encode()])
                elif sock is back and isinstance(msg, P.Heartbeat) and registered:
                    if msg.load:
                        loads += 1
                    else:
                        plain += 1
                    back.send_multipart([ident, *P.Heartbeat().encode()])
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        ctx.destroy(0)
    print(f"worker heartbeats, the broker asking for one every 0.1 s: {plain} plain, {loads} load reports")
    assert plain >= 2 * loads, f"{plain} plain heartbeat(s) for {loads} load report(s): not the broker's pace"


def test_a_worker_allows_the_window_of_a_slower_broker() -> None:
    # The broker beats every 2 s and gives a worker 8 s; the worker's own settings would give the broker
    # up after 1 s of silence. It must allow the broker's window: no reconnect while a 3 s job runs.
    broker_env = {"TITAN_HEARTBEAT_INTERVAL": "2", "TITAN_HEARTBEAT_LIVENESS": "4"}
    with LocalCluster(workers=0, slots=1, env=broker_env) as cluster:
        cluster.add_worker(name="patient", env={"TITAN_HEARTBEAT_INTERVAL": "0.25", "TITAN_HEARTBEAT_LIVENESS": "4"})
        cluster.wait_workers(1)
        client = cluster.client()
        rec = client.submit("tests.jobs:sleep", args=[3.0]).wait(30)
        assert rec.state is JobState.SUCCEEDED and rec.result == 3.0 and rec.attempts == 1
        log = (cluster.log_dir / "worker-patient.log").read_text()
        assert "reconnecting" not in log


def test_the_interval_grows_with_the_workers_and_each_takes_the_new_pace(tmp_path: Path) -> None:
    """--heartbeat-rate 2: past one worker per half second the interval grows (3 workers: 1.5 s); the
    broker tells each worker in its heartbeats, each keeps the new pace, and none is dropped."""
    with LocalCluster(workers=0, broker_args=["--heartbeat-rate", "2"], log_dir=str(tmp_path)) as c:
        for i in range(3):
            c.add_worker(name=f"hb{i}", slots=1)
        c.wait_workers(3)
        client = c.client()
        wait_for(lambda: client.hello()["heartbeat_interval"] == 1.5, 30, "the broker's interval for 3 workers")
        logs = [tmp_path / f"worker-hb{i}.log" for i in range(3)]
        wait_for(lambda: all("heartbeat interval now 1.50s" in p.read_text() for p in logs), 60,
                 "every worker at the new pace")  # fmt: skip
        assert client.map("tests.jobs:square", range(20), timeout=60) == [i * i for i in range(20)]
        assert {w["name"] for w in client.workers()} == {"hb0", "hb1", "hb2"}
        broker_log = (tmp_path / "broker.log").read_text()
        assert "no heartbeat for" not in broker_log, broker_log[-2000:]


def test_a_workers_window_follows_the_interval_it_was_asked_for() -> None:
    from tests.test_scheduler import FakeClock, add_worker, make_sched

    clock = FakeClock()
    s = make_sched(clock, heartbeat_rate=2.0)  # 0.5 s and liveness 5 up to 1 worker; then n / 2 s
    ws = [add_worker(s, f"w{i}") for i in range(4)]
    assert s.beat() == 2.0
    w = ws[0]
    s.seen(w)
    assert w.deadline == clock.now + 2.0 * 5
    w.told = 2.0  # it was asked for 2 s; then three workers leave and the interval shrinks...
    for x in ws[1:]:
        s.worker_gone(x.ident, "left")
    assert s.beat() == 0.5
    s.seen(w)
    assert w.deadline == clock.now + 2.0 * 5  # ...but it keeps its window until it is told the new one
    w.told = 0.5
    s.seen(w)
    assert w.deadline == clock.now + 0.5 * 5


def test_results_of_long_jobs_go_at_once_short_ones_wait_for_company() -> None:
    from titan_zmq.worker.connection import send_now

    short = [{"id": "a", "runtime": 0.001}]
    assert not send_now(short, short, busy=True, waited=0.0)  # others run: it may share their message
    assert send_now(short, short, busy=True, waited=0.01)  # it waited long enough
    assert send_now(short, short, busy=False, waited=0.0)  # nothing else runs: no reason to wait
    long = [{"id": "b", "runtime": 1.2}]
    assert send_now(short + long, long, busy=True, waited=0.0)  # its slot is wanted at once
    assert send_now([{"id": str(i), "runtime": 0.001} for i in range(256)], [], busy=True, waited=0.0)
