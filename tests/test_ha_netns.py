"""A broker group across network namespaces: the leader is cut off from the others, then healed.

Topology (per test, always deleted)::

    bridge namespace: br0 (no address)
    member namespaces m0, m1, m2: eth0 10.231.N.1, .2, .3, each a member on ports 5555-5560
    root namespace: 10.231.N.254 (pytest, the client, the workers)

Cutting a member's cable (``ip link set eth0 down`` in its namespace) leaves it alone, and every
other process sees its connections go silent: nothing is refused, as on a real partition.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ha_check import Load, verdict
from tests.test_netns import PREFIX, _free_subnet, _ip, netns_ok, teardown  # noqa: F401 - netns_ok is a fixture
from titan_zmq.client.client import TitanClient
from titan_zmq.ha.local import hello
from titan_zmq.local import wait_for
from titan_zmq.process import die_with_parent

pytestmark = pytest.mark.timeout(180)


class Net:
    """Three member namespaces and a bridge; members and their logs."""

    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.tmp = tmp
        self.ns = [f"{PREFIX}-{os.getpid()}-{tag}-m{i}" for i in range(3)]
        self.bridge = f"{PREFIX}-{os.getpid()}-{tag}-br"
        self.root_if = f"tzh{tag}"
        self.net = f"10.231.{_free_subnet(128, 254)}"
        self.ips = [f"{self.net}.{i + 1}" for i in range(3)]
        self.names = [f"{ip}:5555" for ip in self.ips]
        self.peers = ",".join(self.names)
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.members: list[subprocess.Popen[bytes] | None] = [None] * 3
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
        self.env.update({k: v for k, v in os.environ.items() if k.startswith("TITAN_HEARTBEAT")})

    def build(self) -> None:
        for ns in (self.bridge, *self.ns):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            _ip("-n", self.bridge, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", "pR", "netns", self.bridge)
        _ip("-n", self.bridge, "link", "set", "pR", "master", "br0", "up")
        _ip("addr", "add", f"{self.net}.254/24", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")

    def spawn(self, ns: str | None, args: list[str], log: str) -> subprocess.Popen[bytes]:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        with open(self.tmp / log, "ab") as out:
            p = subprocess.Popen([*prefix, sys.executable, "-m", "titan_zmq", "--log-level", "INFO", *args],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                 preexec_fn=die_with_parent)  # fmt: skip
        self.procs.append(p)
        return p

    def start(self, i: int) -> None:
        self.members[i] = self.spawn(self.ns[i], [
            "broker", "--peers", self.peers, "--host", self.ips[i], "--data-dir", str(self.tmp / f"d{i}"),
            "--fsync", "always"], f"member{i}.log")  # fmt: skip

    def cut(self, i: int) -> None:
        _ip("-n", self.ns[i], "link", "set", "eth0", "down")

    def plug(self, i: int) -> None:
        _ip("-n", self.ns[i], "link", "set", "eth0", "up")

    def info(self, i: int) -> dict[str, object] | None:
        data = hello(self.names[i], 1.0)
        return None if data is None else data.get("group")

    def leader(self, among: list[int], timeout: float = 60) -> int:
        found: list[int] = []

        def agreed() -> bool:
            infos = {i: self.info(i) for i in among}
            leaders = [i for i, g in infos.items() if g and g["role"] == "leader"]
            if len(leaders) == 1 and sum(1 for g in infos.values() if g and g["leader"] == self.names[leaders[0]]) >= 2:
                found[:] = leaders
                return True
            return False

        wait_for(agreed, timeout, "a leader the members agree on")
        return found[0]

    def close(self) -> None:
        teardown(self.made, self.procs)


@pytest.fixture
def net(netns_ok: None, tmp_path: Path) -> Iterator[Net]:  # noqa: F811 - the fixture imported above
    n = Net(tmp_path)
    try:
        n.build()
        for i in range(3):
            n.start(i)
        yield n
    finally:
        for i in range(3):
            log = tmp_path / f"member{i}.log"
            print(f"---- member{i} ----\n{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")
        n.close()


def _minority_write(net: Net, i: int) -> subprocess.CompletedProcess[str]:
    """A client in member i's namespace (it reaches only member i) writes a KV key."""
    code = ("import sys\nfrom titan_zmq.client.client import TitanClient\n"
            f"c = TitanClient({net.names[i]!r}, timeout=4)\n"
            "try:\n    c.kv['minority'] = 1\n    print('ACKNOWLEDGED')\n"
            "except Exception as exc:\n    print('REFUSED', type(exc).__name__, exc)\n")  # fmt: skip
    return subprocess.run(["ip", "netns", "exec", net.ns[i], sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, env=net.env)  # fmt: skip


def test_a_leader_cut_off_stops_and_rejoins_when_healed(net: Net, tmp_path: Path) -> None:
    old = net.leader([0, 1, 2])
    workers = [net.spawn(None, ["worker", "--broker", net.peers, "--slots", "2", "--name", f"w{k}",
                                "--cache-dir", str(tmp_path / f"cache{k}")], f"worker{k}.log") for k in range(2)]
    load = Load(net.peers, tmp_path / "runs.log").start()
    try:
        wait_for(lambda: len(load.jobs) >= 20, 60, "the load to start")
        net.cut(old)
        # At once, before it knows it is alone, the old leader takes a write from a client that reaches only
        # it: it journals it, but no majority ever holds it, so it never acknowledges it.
        alone: list[subprocess.CompletedProcess[str]] = []
        writer = threading.Thread(target=lambda: alone.append(_minority_write(net, old)))
        writer.start()
        others = [i for i in range(3) if i != old]
        new = net.leader(others)
        assert new != old
        wait_for(load.grew(20), 60, "the load to go on with the new leader")
        writer.join(60)
        assert alone and "REFUSED" in alone[0].stdout, alone[0].stdout + alone[0].stderr if alone else "no result"
        wait_for(lambda: (net.info(old) or {}).get("role") != "leader", 30, "the old leader to step down")
        net.plug(old)
        wait_for(lambda: (net.info(old) or {}).get("role") == "follower", 60, "the old leader to follow")
        wait_for(load.grew(20), 60, "the load to go on after healing")
    finally:
        load.stop()
    try:
        result = verdict(net.peers, load)
    finally:
        for w in workers:
            w.terminate()
    print("verdict:", result)
    assert result["jobs_lost"] == 0 and result["kv_lost"] == 0 and result["ran_twice_at_once"] == 0, result
    info = net.info(old)
    assert info is not None and info["leader"] == net.names[new]
    with TitanClient(net.peers, timeout=15) as c:
        assert c.kv.get("minority") is None  # never acknowledged, and cut when the old leader rejoined
    # it dropped nothing it should keep and kept nothing it should drop: its journal is the leader's again
    wait_for(lambda: (net.info(old) or {}).get("position") == (net.info(new) or {}).get("position"), 30,
             "the old leader's copy to reach the new leader's journal")  # fmt: skip
