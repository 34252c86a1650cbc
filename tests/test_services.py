"""Services: managed ports, health checks, restarts, crash loops, discovery, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from titan_zmq.client import TitanClient
from titan_zmq.errors import BrokerError, JobError, ServiceFailed
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)
ECHO = str(Path(__file__).resolve().parent / "services" / "echo_server.py")


def _ask(address: str, text: str) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(text.encode() + b"\n")
        reply = s.makefile().readline().split(" ", 1)
    return int(reply[0]), reply[1].strip()


def _replica(client: TitanClient, name: str, i: int = 0) -> dict:
    return client.services(name)[0]["replicas"][i]


def test_a_killed_service_comes_back_with_a_new_pid_at_its_address(cluster: LocalCluster) -> None:
    cluster.add_worker(name="s1", slots=1)
    cluster.add_worker(name="s2", slots=1)
    cluster.wait_workers(2)
    client = cluster.client()
    rec = client.deploy("echo", script=ECHO, replicas=2, health="tcp", backoff=0.2)
    assert rec["state"] == "running"
    reps = rec["replicas"]
    assert {r["worker"] for r in reps} == {"s1", "s2"}  # replicas spread over workers
    assert len({r["port"] for r in reps}) == 2 and all(20000 <= r["port"] <= 29999 for r in reps)
    address = client.service_address("echo")
    pid, text = _ask(address, "hello")
    assert text == "hello" and pid in {r["pid"] for r in reps}
    os.kill(pid, signal.SIGKILL)
    victim = next(r for r in reps if r["pid"] == pid)
    idx = int(victim["id"].rsplit(".", 1)[1])
    wait_for(lambda: _replica(client, "echo", idx)["state"] == "running" and _replica(client, "echo", idx)["pid"]
             not in (None, pid), 20, "the service to come back")  # fmt: skip
    back = _replica(client, "echo", idx)
    assert back["restarts"] == 1 and back["id"] == victim["id"]
    new_pid, text = _ask(back["address"], "again")
    assert new_pid == back["pid"] != pid and text == "again"
    assert any(line.text.startswith("echo server on port") for line in client.logs(back["id"]))


def test_a_crash_loop_fails_the_service_and_says_why(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(ServiceFailed, match=r"crash loop: 3 crashes within 30s \(last: exited with code 3"):
        client.deploy("crashy", shell="echo cannot start >&2; exit 3", max_crashes=3, crash_window=30, backoff=0.1)
    rec = client.services("crashy")[0]
    assert rec["state"] == "failed" and rec["replicas"][0]["restarts"] == 2
    assert "cannot start" in rec["replicas"][0]["error"]
    client.stop_service("crashy")


def test_a_given_port_is_honoured_and_a_taken_one_is_refused(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = client.deploy("fixed", script=ECHO, port=port)
    assert rec["replicas"][0]["port"] == port and client.service_address("fixed").endswith(f":{port}")
    with pytest.raises(BrokerError, match=f"port {port} is already given to service 'fixed'"):
        client.deploy("other", script=ECHO, port=port)
    with socket.socket() as busy:  # a port some other program holds: a clear failure, not a crash loop
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        with pytest.raises(ServiceFailed, match=f"port {busy.getsockname()[1]} is in use"):
            client.deploy("blocked", script=ECHO, port=busy.getsockname()[1], max_crashes=2, backoff=0.1)
    for name in ("fixed", "blocked"):
        client.stop_service(name)
    wait_for(lambda: not [s for s in client.services() if s["name"] in ("fixed", "blocked")], 20, "both to stop")


def test_a_service_that_never_gets_healthy_is_killed_and_counted(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(ServiceFailed, match=r"not healthy within 0.5s \(tcp check\); killed"):
        client.deploy("deaf", shell="sleep 60", start_timeout=0.5, max_crashes=2, backoff=0.1)
    client.stop_service("deaf")


def test_a_worker_that_leaves_cleanly_hands_its_services_on(cluster: LocalCluster) -> None:
    leaving = cluster.add_worker(name="leaving", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    assert client.deploy("handed", script=ECHO)["replicas"][0]["worker"] == "leaving"
    cluster.add_worker(name="staying", slots=1)
    cluster.wait_workers(2)
    leaving.terminate()  # SIGTERM: it stops its services and says goodbye
    leaving.wait(20)
    wait_for(lambda: _replica(client, "handed")["state"] == "running" and _replica(client, "handed")["worker"]
             == "staying", 30, "the service to move to the worker that stays")  # fmt: skip
    assert _ask(client.service_address("handed"), "still here")[1] == "still here"


def test_bad_service_specs_get_clear_errors(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(JobError, match="health must be 'tcp' or 'http:/path'"):
        client.deploy("x", shell="true", health="udp")
    with pytest.raises(JobError, match="service name"):
        client.deploy("no spaces", shell="true")
    with pytest.raises(JobError, match="sha256 hex digest"):
        client.request(__import__("titan_zmq.protocol").protocol.Deploy,
                       spec={"name": "b", "kind": "shell", "target": "x", "blob": [1]})  # fmt: skip
    client.deploy("twice", shell="sleep 30", wait=None)
    client.stop_service("twice")
    with pytest.raises(BrokerError, match="still stopping"):
        client.deploy("twice", shell="sleep 30", wait=None)
    with pytest.raises(BrokerError, match="unknown service 'ghost'"):
        client.stop_service("ghost")


def test_services_move_when_their_worker_dies(cluster: LocalCluster) -> None:
    doomed = cluster.add_worker(name="doomed", slots=1)
    cluster.wait_workers(1)
    client = cluster.client()
    first = client.deploy("mover", script=ECHO)["replicas"][0]
    assert first["worker"] == "doomed"
    cluster.add_worker(name="heir", slots=1)
    cluster.wait_workers(2)
    doomed.kill()
    wait_for(lambda: _replica(client, "mover")["state"] == "running" and _replica(client, "mover")["worker"]
             == "heir", 30, "the service to move")  # fmt: skip
    assert _ask(client.service_address("mover"), "moved")[1] == "moved"


def _titan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, timeout=90,
                          env=dict(os.environ))  # fmt: skip


def test_deploy_services_stop_commands(shared_cluster: LocalCluster) -> None:
    b = ["--broker", shared_cluster.address]
    dep = _titan("deploy", "web", "--health", "http:/", *b, "--", sys.executable, "-m", "http.server", "$PORT")
    assert dep.returncode == 0 and "service web: running at " in dep.stdout, dep.stderr
    listed = json.loads(_titan("services", "--json", *b).stdout)
    web = next(s for s in listed if s["name"] == "web")
    assert web["state"] == "running" and web["replicas"][0]["uptime"] is not None
    table = _titan("services", *b).stdout
    assert "web.0" in table and "running" in table and web["replicas"][0]["address"] in table
    stop = _titan("stop", "web", *b)
    assert stop.returncode == 0 and "service web: stopping" in stop.stdout
    client = shared_cluster.client()
    wait_for(lambda: all(s["name"] != "web" for s in client.services()), 20, "web to stop")
    missing = _titan("stop", "web", *b)
    assert missing.returncode == 1 and "unknown service 'web'" in missing.stderr
    usage = _titan("deploy", "nothing", *b)
    assert usage.returncode == 2 and "--script FILE" in usage.stderr


def test_stop_escalates_to_sigkill_after_the_grace_period(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    code = ("import os, signal, socket, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); s = socket.socket(); "
            "s.bind(('0.0.0.0', int(os.environ['PORT']))); s.listen(); time.sleep(300)")  # fmt: skip
    rec = client.deploy("stubborn", shell=f'exec {sys.executable} -c "{code}"', grace=0.5)
    pid = rec["replicas"][0]["pid"]
    client.stop_service("stubborn")  # SIGTERM is ignored: SIGKILL after half a second
    wait_for(lambda: all(s["name"] != "stubborn" for s in client.services()), 20, "SIGKILL after the grace")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 10, "the process to be gone")
