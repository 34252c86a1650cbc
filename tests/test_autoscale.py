"""The node agent: worker processes scaled with the load, drained when idle, a webhook when saturated."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.worker.agent import parse_range

pytestmark = pytest.mark.timeout(150)


def _agent(cluster: LocalCluster, *args: str) -> subprocess.Popen[bytes]:
    log = open(cluster.log_dir / "agent.log", "ab")  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "titan_zmq", "worker", "--broker", cluster.address, "--no-gpu-probe",
             "--prefetch", "0", *args],
            stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
        )  # fmt: skip
    finally:
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_parse_range() -> None:
    assert parse_range("1:4") == (1, 4) and parse_range("3") == (3, 3) and parse_range("0:2") == (0, 2)
    for bad in ("4:1", "x", "0:0", "-1:3", "1:2:3"):
        with pytest.raises(Exception, match="MIN:MAX"):
            parse_range(bad)


def test_a_burst_scales_one_to_four_and_back_without_losing_a_job(cluster: LocalCluster) -> None:
    agent = _agent(cluster, "--autoscale", "1:4", "--slots", "1", "--idle", "2", "--name", "node")
    try:
        client = cluster.client()
        wait_for(lambda: len(client.workers()) == 1, 30, "the minimum of one worker")
        decisions: list[dict[str, Any]] = []
        peak = 0
        with client.subscribe("event.autoscale") as feed:
            handles = [client.submit("tests.jobs:sleep", args=[0.1]) for _ in range(200)]

            def watch() -> bool:
                nonlocal peak
                decisions.extend(body for _, body in feed.drain())
                peak = max(peak, len(client.workers()))
                return all(h.status().state.value == "succeeded" for h in handles[-5:]) and peak >= 4

            wait_for(watch, 90, "the burst to run on 4 processes", 0.2)
            records = client.wait([h.id for h in handles], timeout=60)
            assert all(r.state.value == "succeeded" for r in records.values())
            wait_for(lambda: len(client.workers()) == 1, 60, "the idle processes to drain away", 0.2)
            decisions.extend(body for _, body in feed.drain())
        assert peak == 4
        ups = [d for d in decisions if d["action"] == "up"]
        downs = [d for d in decisions if d["action"] == "down"]
        assert len(ups) >= 3 and all("queued for this pool and no free slot" in d["reason"] for d in ups[-3:])
        assert len(downs) == 3 and all("idle for 2s" in d["reason"] for d in downs)
        retried = [r for r in records.values() if r.attempts > 1]
        assert not retried, f"a descale interrupted {len(retried)} job(s)"
    finally:
        _stop(agent)


def test_a_saturated_pool_asks_the_webhook_for_machines(cluster: LocalCluster) -> None:
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/scale"
    agent = _agent(cluster, "--autoscale", "1:1", "--slots", "1", "--tags", "big", "--scale-webhook", url)
    try:
        client = cluster.client()
        wait_for(lambda: len(client.workers()) == 1, 30, "the agent's worker")
        cpu_only = [client.submit("tests.jobs:sleep", args=[0.05]) for _ in range(5)]
        client.wait([h.id for h in cpu_only], timeout=30)
        assert not got  # jobs any worker serves do not count as pressure on the 'big' pool
        handles = [client.submit("tests.jobs:sleep", args=[0.2], requires=["big"]) for _ in range(15)]
        wait_for(lambda: got, 30, "a scale request")
        body = got[0]
        assert body["tags"] == ["big"] and body["queued"] > 0 and body["running"] == 1 and body["wanted"] > 0
        client.wait([h.id for h in handles], timeout=60)
    finally:
        _stop(agent)
        server.shutdown()
