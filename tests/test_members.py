"""Broker groups from the client's and the worker's side: finding the leader, following it, fencing old ones.

The pure rules (``titan_zmq.members``) are tested alone. The rest runs real processes on loopback:
a fake follower (a ROUTER thread that answers like a member that does not lead) in front of a real
broker on its own, which stands in for the group's leader.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from titan_zmq import protocol as P
from titan_zmq.client import TitanClient
from titan_zmq.client.failover import leader_hint
from titan_zmq.config import WorkerConfig
from titan_zmq.errors import BrokerUnavailable, ConfigError
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.members import Members, format_address, parse_hint
from titan_zmq.worker.connection import Worker
from titan_zmq.worker.discovery import Fence

pytestmark = pytest.mark.timeout(60)

A, B, C = ("a", 5555), ("b", 5555), ("c", 5555)


# ---- the rules ------------------------------------------------------------------------------------


def test_members_parse_in_order_without_repeats() -> None:
    m = Members.parse("a:5555, b ,a:5555,[::1]:7000")
    assert list(m) == [A, B, ("::1", 7000)] and len(m) == 3 and m.grouped
    assert m.current() == A and m.address() == "a:5555"
    assert m.spec() == "a:5555,b:5555,[::1]:7000" and format_address(("::1", 7000)) == "[::1]:7000"
    one = Members.parse("localhost")
    assert list(one) == [("localhost", 5555)] and not one.grouped
    for bad in ("", " , ", "a:b", "a:5555,:1"):
        with pytest.raises(ConfigError):
            Members.parse(bad)


def test_next_moves_the_member_in_use_last_and_says_when_a_round_is_over() -> None:
    m = Members([A, B, C])
    assert m.next() == B and list(m) == [B, C, A] and not m.exhausted()
    assert m.next() == C and not m.exhausted()
    assert m.next() == A and m.exhausted()  # every member tried
    m.new_round()
    assert not m.exhausted() and m.current() == A
    solo = Members([A])
    assert solo.next() == A and solo.exhausted()


def test_redirect_follows_the_hint_and_adds_a_member_it_did_not_know() -> None:
    m = Members([A, B])
    assert m.redirect("c:5555") == C and list(m) == [C, B, A]
    assert m.redirect("") == B  # no leader named: the next member
    assert m.redirect("nonsense:port") == A  # an unreadable hint is no hint
    assert C in m and len(m) == 3


def test_redirect_does_not_ping_pong_between_two_stale_followers() -> None:
    # During an election A says B leads and B says A leads: C, the one neither named, is tried.
    m = Members([A, B, C])
    assert m.redirect("b:5555") == B
    assert m.redirect("a:5555") == C
    assert m.redirect("a:5555") == A and m.exhausted()  # all tried: the caller pauses, then a new round
    m.new_round()
    assert m.redirect("b:5555") == B


def test_learn_adds_the_members_named_and_puts_the_leader_first() -> None:
    m = Members([A])
    changed = m.learn({"name": "a:5555", "role": "follower", "epoch": 2, "leader": "c:5555",
                       "members": ["a:5555", "b:5555", "c:5555", 7, "bad:x"]})  # fmt: skip
    assert changed and list(m) == [C, A, B]
    assert not m.learn({"role": "leader", "leader": "c:5555", "members": ["c:5555"]})
    assert not m.learn({"role": "candidate", "leader": "", "members": None}) and m.current() == C
    assert parse_hint("") is None and parse_hint("x:1") == ("x", 1)


def test_a_fence_keeps_the_highest_term_and_counts_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    f = Fence()
    assert f.admit(3, "ASSIGN") and f.term == 3
    f.see(2)
    assert f.term == 3
    f.see(5)
    with caplog.at_level(logging.WARNING):
        assert not f.admit(4, "KILL")
    assert f.term == 5 and f.fenced == 1
    assert "term 4" in caplog.text and "term 5" in caplog.text


def test_leader_hint_reads_not_leader_errors_and_follower_hellos() -> None:
    assert leader_hint(P.Error(rid=1, code=P.E_NOT_LEADER, message="", leader="b:1")) == "b:1"
    assert leader_hint(P.Error(rid=1, code=P.E_NOT_LEADER, message="")) == ""
    assert leader_hint(P.Error(rid=1, code="unknown_job", message="")) is None
    assert leader_hint(P.Reply(rid=1, data={"group": {"role": "follower", "leader": "c:2"}})) == "c:2"
    assert leader_hint(P.Reply(rid=1, data={"group": {"role": "leader", "leader": "c:2"}})) is None
    assert leader_hint(P.Reply(rid=1, data={"back": 1})) is None and leader_hint(None) is None


# ---- fakes ----------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeFollower(threading.Thread):
    """A member that does not lead: HELLO gets a follower's answer naming ``leader``; any other front
    request, and anything on its back socket, gets ``not_leader`` naming it. ``deposed``: it answers
    the first HELLO as the leader at epoch 1 (with its own back port), as a leader that just lost."""

    def __init__(self, leader: str, *, deposed: bool = False, epoch: int = 3) -> None:
        super().__init__(name="fake-follower", daemon=True)
        self.leader, self.deposed, self.epoch = leader, deposed, epoch
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.front, self.back = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.ROUTER)
        for s in (self.front, self.back):
            s.setsockopt(zmq.LINGER, 0)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back_port = self.back.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"127.0.0.1:{self.port}"
        self.front_seen: list[P.Message] = []
        self.back_seen: list[P.Message] = []
        self._halt = threading.Event()

    def group(self, role: str, leader: str, epoch: int) -> dict[str, Any]:
        return {"name": self.address, "role": role, "epoch": epoch, "leader": leader,
                "members": [self.address, self.leader]}  # fmt: skip

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._halt.is_set():
            for sock, _ in poller.poll(50):
                ident, *frames = sock.recv_multipart()
                msg = P.decode(frames)
                if sock is self.back:
                    self.back_seen.append(msg)
                    reply: P.Message = P.Error(rid=0, code=P.E_NOT_LEADER, message="a follower", leader=self.leader)
                elif isinstance(msg, P.Hello):
                    self.front_seen.append(msg)
                    if self.deposed and len(self.front_seen) == 1:
                        data = {"version": P.VERSION.decode(), "front": self.port, "back": self.back_port,
                                "heartbeat_interval": 0.5, "heartbeat_liveness": 10,
                                "group": self.group("leader", self.address, 1)}  # fmt: skip
                    else:
                        data = {"version": P.VERSION.decode(), "group": self.group("follower", self.leader, self.epoch)}
                    reply = P.Reply(rid=msg.rid, data=data)
                else:
                    self.front_seen.append(msg)
                    reply = P.Error(rid=getattr(msg, "rid", 0), code=P.E_NOT_LEADER, message="a follower",
                                    leader=self.leader)  # fmt: skip
                sock.send_multipart([ident, *reply.encode()])

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.ctx.destroy(0)


@pytest.fixture
def follower(shared_cluster: LocalCluster) -> Iterator[FakeFollower]:
    """A fake follower that names the shared cluster's broker as the leader."""
    f = FakeFollower(shared_cluster.address)
    f.start()
    yield f
    f.stop()


def _fake(cluster: LocalCluster, **kwargs: Any) -> Iterator[FakeFollower]:
    f = FakeFollower(cluster.address, **kwargs)
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def fake(cluster: LocalCluster) -> Iterator[FakeFollower]:
    """A fake follower naming the (function-scoped) cluster's broker as the leader."""
    yield from _fake(cluster)


@pytest.fixture
def deposed(cluster: LocalCluster) -> Iterator[FakeFollower]:
    """A fake member that answers the first HELLO as the leader, then says it follows."""
    yield from _fake(cluster, deposed=True)


# ---- the client -----------------------------------------------------------------------------------


def test_a_client_given_a_follower_follows_it_to_the_leader(
    shared_cluster: LocalCluster, follower: FakeFollower
) -> None:
    with TitanClient(follower.address, timeout=10) as client:
        assert client.submit("tests.jobs:add", args=[2, 3]).result(20) == 5
        assert client.address == shared_cluster.address
        assert (client.host, client.port) == ("127.0.0.1", shared_cluster.ports["front"])
        assert client.map("tests.jobs:square", [1, 2, 3], timeout=20) == [1, 4, 9]
        assert any(isinstance(m, P.Submit) for m in follower.front_seen)
        # HELLO through a follower: the follower answers without ports, the client asks the leader.
        assert client.hello()["back"] == shared_cluster.ports["back"]
        assert len(client.members) == 2


def test_a_client_skips_a_dead_member_and_a_follower(shared_cluster: LocalCluster, follower: FakeFollower) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with TitanClient(f"{dead},{follower.address}", timeout=10) as client:
        assert client.submit("tests.jobs:add", args=[40, 2]).result(20) == 42
        assert client.address == shared_cluster.address
        assert format_address(client.members.current()) == shared_cluster.address


def test_a_group_without_any_answer_names_every_member_tried() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with TitanClient(",".join(dead), timeout=2.5) as client, pytest.raises(BrokerUnavailable) as err:
        client.workers()
    assert dead[0] in str(err.value) and dead[1] in str(err.value), err.value


# ---- the worker -----------------------------------------------------------------------------------


def _log(cluster: LocalCluster, name: str) -> str:
    path = cluster.log_dir / f"worker-{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_worker_given_a_follower_and_the_leader_registers_with_the_leader(
    cluster: LocalCluster, fake: FakeFollower
) -> None:
    cluster.add_worker(name="grouped", extra=["--broker", f"{fake.address},{cluster.address}"])
    workers = cluster.wait_workers(1)
    assert [w["name"] for w in workers] == ["grouped"]
    client = cluster.client()
    assert client.submit("tests.jobs:add", args=[1, 2]).result(20) == 3
    assert not fake.back_seen, "the worker talked to a follower's back socket"
    assert f"connected to broker 127.0.0.1:{cluster.ports['front']}" in _log(cluster, "grouped")


def test_a_worker_told_not_leader_on_the_back_socket_finds_the_leader(
    cluster: LocalCluster, deposed: FakeFollower
) -> None:
    # Given the deposed member only: it says it leads, then its back socket says not_leader, naming the
    # real broker; the worker learns it from the answers and registers there.
    cluster.add_worker(name="redirected", extra=["--broker", deposed.address])
    cluster.wait_workers(1)
    assert any(isinstance(m, P.Ready) for m in deposed.back_seen)
    assert cluster.client().submit("tests.jobs:add", args=[2, 2]).result(20) == 4
    assert "is not the leader" in _log(cluster, "redirected")


def test_a_worker_whose_leader_dies_rediscovers_without_waiting_for_silence(
    cluster: LocalCluster, fake: FakeFollower
) -> None:
    # The worker allows the broker 100 s of silence: only the dropped connection can make it look again.
    # The broker comes back at the same front address with another back port, where the old
    # connection cannot reconnect by itself.
    cluster.add_worker(name="watchful", extra=["--broker", f"{cluster.address},{fake.address}"],
                       env={"TITAN_HEARTBEAT_LIVENESS": "200"})  # fmt: skip
    cluster.wait_workers(1)
    cluster.kill_broker()
    cluster.ports["back"] = free_port()
    cluster.start_broker()
    client = cluster.client(timeout=2)

    def registered() -> bool:
        try:
            return [w["name"] for w in client.workers()] == ["watchful"]
        except BrokerUnavailable:
            return False

    wait_for(registered, 20, "the worker to register with the broker started again")
    assert "dropped (or refused); reconnecting" in _log(cluster, "watchful")
    assert client.submit("tests.jobs:add", args=[5, 5]).result(20) == 10


def test_a_worker_drops_an_assign_or_kill_from_an_older_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = WorkerConfig(broker=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", name="fenced", slots=1,
                       cache_dir=str(tmp_path), gpu_probe=False, fork_server=False)  # fmt: skip
    worker = Worker(cfg)
    started: list[str] = []
    killed: list[str] = []
    monkeypatch.setattr(worker.executor, "submit", lambda job, fill=True: started.append(job["id"]))
    monkeypatch.setattr(worker.executor, "fill", lambda: None)
    monkeypatch.setattr(worker.executor, "lease_of", lambda jid: 1 if jid in started else None)
    monkeypatch.setattr(worker.executor, "kill", lambda jid, reason: killed.append(jid) or True)

    def deliver(msg: P.Message) -> None:
        worker.handle(P.decode(msg.encode()))  # as it comes off the wire

    def job(jid: str, lease: int) -> dict[str, Any]:
        return {"id": jid, "kind": "call", "target": "tests.jobs:add", "args": [1, 2], "lease": lease}

    try:
        deliver(P.Assign(jobs=[job("new", 1)], term=5))
        with caplog.at_level(logging.WARNING):
            deliver(P.Assign(jobs=[job("old", 2)], term=4))
            deliver(P.Kill(ids=["new"], term=4))
        deliver(P.Assign(jobs=[job("newer", 3)], term=6))
        deliver(P.Assign(jobs=[job("alone", 4)]))  # term 0: a broker on its own, never fenced
        deliver(P.Kill(ids=["new"], term=6))
    finally:
        worker._shutdown()
    assert started == ["new", "newer", "alone"] and killed == ["new"]
    assert worker.term == 6 and worker.fenced == 2
    assert "term 4" in caplog.text and "term 5" in caplog.text
