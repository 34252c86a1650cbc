"""Bad input on the wire, from clients and from would-be workers: a clear ERROR back, and the broker carries on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from titan_zmq import protocol as P
from titan_zmq.broker import Broker
from titan_zmq.client import JobState, PayloadTooLarge, TitanClient, UnknownJob
from titan_zmq.config import BrokerConfig
from titan_zmq.errors import JobError
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(60)

LIMIT = 64 * 1024  # the broker's max_message_size in this module
SLACK = 64 * 1024  # frames up to LIMIT + SLACK still get an answer; larger ones cost the connection


@pytest.fixture(scope="module")
def small() -> Iterator[LocalCluster]:
    """A broker that takes messages of at most 64 KiB, and one worker."""
    with LocalCluster(workers=1, slots=2, broker_args=["--max-message-size", str(LIMIT)]) as c:
        yield c


@pytest.fixture
def dealer(small: LocalCluster) -> Iterator[Callable[..., zmq.Socket[bytes]]]:
    """Raw DEALER sockets to the broker's front (or back) port, closed after the test."""
    ctx = zmq.Context.instance()
    socks: list[zmq.Socket[bytes]] = []

    def make(port: str = "front") -> zmq.Socket[bytes]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{small.ports[port]}")
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(0)


def ask(sock: zmq.Socket[bytes], frames: list[bytes], timeout: float = 10.0) -> P.Message:
    """Send raw frames and return the decoded answer."""
    sock.send_multipart(frames)
    assert sock.poll(int(timeout * 1000)), f"no answer within {timeout}s"
    return P.decode(sock.recv_multipart())


def ask_error(sock: zmq.Socket[bytes], frames: list[bytes]) -> P.Error:
    msg = ask(sock, frames)
    assert isinstance(msg, P.Error), msg
    return msg


def body(**fields: Any) -> bytes:
    return P.packb(fields)


def noop_job(jid: str, **kw: Any) -> dict[str, Any]:
    return {"id": jid, "kind": "call", "target": "tests.jobs:noop", **kw}


def big_submit(rid: int, size: int, jid: str) -> list[bytes]:
    """A SUBMIT whose body is ``size`` bytes (give or take a few)."""
    overhead = len(P.packb({"rid": rid, "jobs": [noop_job(jid, args=[""])]}))
    pad = "x" * (size - overhead - 5)
    frames = [P.VERSION, P.SUBMIT, P.packb({"rid": rid, "jobs": [noop_job(jid, args=[pad])]})]
    assert abs(len(frames[2]) - size) < 16
    return frames


# (name, frames, code, rid, text the message must contain)
BAD_CLIENT_MESSAGES = [
    ("one frame", [b"garbage"], P.E_PROTOCOL, 0, "expected 3 frames [version, command, body], got 1"),
    ("two frames", [P.VERSION, P.HELLO], P.E_PROTOCOL, 0, "expected 3 frames [version, command, body], got 2"),
    ("four frames", [P.VERSION, P.HELLO, body(rid=3), b""], P.E_PROTOCOL, 0, "got 4"),
    ("old version", [b"TZ0", P.HELLO, body(rid=4)], P.E_PROTOCOL, 4, "unknown protocol version b'TZ0'"),
    ("unknown command", [P.VERSION, b"\x7f", body(rid=5)], P.E_PROTOCOL, 5, "unknown command 7f"),
    (
        "worker command on the client socket",
        [P.VERSION, P.READY, body(name="x", host="h", tags=[], slots=1, pid=1)],
        P.E_PROTOCOL,
        0,
        "unknown command 10",
    ),
    ("not msgpack", [P.VERSION, P.STATUS, b"\xc1\xc1\xc1"], P.E_PROTOCOL, 0, "body is not valid msgpack"),
    ("body not a map", [P.VERSION, P.STATUS, P.packb([6, ["a"]])], P.E_PROTOCOL, 0, "must be a msgpack map"),
    ("missing field", [P.VERSION, P.STATUS, body(rid=7)], P.E_PROTOCOL, 7, "STATUS is missing the field 'ids'"),
    (
        "wrong field type",
        [P.VERSION, P.CANCEL, body(rid=8, id=12)],
        P.E_PROTOCOL,
        8,
        "CANCEL field 'id' must be a string, got int",
    ),
    ("unknown field", [P.VERSION, P.HELLO, body(rid=9, evil=1)], P.E_PROTOCOL, 9, "unknown field(s) ['evil']"),
    (
        "status of an unknown job",
        [P.VERSION, P.STATUS, body(rid=10, ids=["no-such-job"])],
        P.E_UNKNOWN_JOB,
        10,
        "unknown job id 'no-such-job'",
    ),
    (
        "cancel of an unknown job",
        [P.VERSION, P.CANCEL, body(rid=11, id="no-such-job")],
        P.E_UNKNOWN_JOB,
        11,
        "'no-such-job'",
    ),
    (
        "invalid job field",
        [P.VERSION, P.SUBMIT, body(rid=12, jobs=[noop_job("bad-prio", priority="high")])],
        P.E_BAD_JOB,
        12,
        "'priority' must be a number, got str",
    ),
    (
        "service node without its spec",
        [P.VERSION, P.SUBMIT, body(rid=13, jobs=[{"id": "svc", "kind": "service", "target": "x"}])],
        P.E_BAD_JOB,
        13,
        "a service node names its service in 'target' and gives its spec",
    ),
    (
        "bad call target",
        [P.VERSION, P.SUBMIT, body(rid=14, jobs=[{"id": "t", "kind": "call", "target": "no-colon"}])],
        P.E_BAD_JOB,
        14,
        "call target 'no-colon' must look like 'package.module:function'",
    ),
    (
        "job map with a non-string key",
        [P.VERSION, P.SUBMIT, P.packb({"rid": 16, "jobs": [{**noop_job("k"), 7: 1}]})],
        P.E_BAD_JOB,
        16,
        "unknown job field(s) ['7']",
    ),
    (
        "job that is not a map",
        [P.VERSION, P.SUBMIT, body(rid=17, jobs=["echo hi"])],
        P.E_PROTOCOL,
        17,
        "SUBMIT field 'jobs' must be a list of a map",
    ),
    (
        "template item that is not [id, args]",
        [P.VERSION, P.SUBMIT, body(rid=18, template={"kind": "call", "target": "tests.jobs:noop"}, items=[["a"]])],
        P.E_BAD_JOB,
        18,
        "template item #0 must be a list [id, args]",
    ),
    (
        "template that names an id",
        [P.VERSION, P.SUBMIT, body(rid=19, template=noop_job("t"), items=[["a", []]])],
        P.E_BAD_JOB,
        19,
        "each item gives its own id and args",
    ),
    (
        "template items with jobs as well",
        [P.VERSION, P.SUBMIT, body(rid=20, jobs=[noop_job("j")], template={"kind": "call"}, items=[["a", []]])],
        P.E_PROTOCOL,
        20,
        "either 'jobs' or 'template' and 'items'",
    ),
    (
        "list of a bogus state",
        [P.VERSION, P.LIST, body(rid=15, state="sleeping")],
        "bad_request",
        15,
        "unknown state 'sleeping'",
    ),
]


@pytest.mark.parametrize(
    ("frames", "code", "rid", "text"), [c[1:] for c in BAD_CLIENT_MESSAGES], ids=[c[0] for c in BAD_CLIENT_MESSAGES]
)
def test_bad_client_message_gets_a_clear_error(
    dealer: Callable[..., zmq.Socket[bytes]], frames: list[bytes], code: str, rid: int, text: str
) -> None:
    err = ask_error(dealer(), frames)
    assert err.code == code
    assert err.rid == rid
    assert text in err.message


def test_body_over_the_limit_gets_too_large(small: LocalCluster, dealer: Callable[..., zmq.Socket[bytes]]) -> None:
    size = LIMIT + SLACK // 2
    err = ask_error(dealer(), big_submit(21, size, "too-big"))
    assert err.code == P.E_TOO_LARGE
    assert err.rid == 21
    assert f"exceeds the limit of {LIMIT} bytes" in err.message
    with pytest.raises(UnknownJob):
        small.client().status("too-big")  # nothing of it was accepted


def test_body_far_over_the_limit_costs_the_connection(
    small: LocalCluster, dealer: Callable[..., zmq.Socket[bytes]]
) -> None:
    s = dealer()
    s.setsockopt(zmq.RECONNECT_IVL, 50)
    s.send_multipart(big_submit(22, 4 * LIMIT, "far-too-big"))
    # No answer: the broker drops the connection instead of buffering the whole message.
    assert not s.poll(1000)
    # The broker carries on: a fresh client gets service...
    fresh = dealer()
    reply = ask(fresh, P.Hello(rid=23).encode())
    assert isinstance(reply, P.Reply) and reply.rid == 23 and reply.data["max_message_size"] == LIMIT
    with pytest.raises(UnknownJob):
        small.client().status("far-too-big")
    # ...and so does the offending socket itself, once it has reconnected.
    hello = P.Hello(rid=24).encode()

    def answered() -> P.Message | None:
        s.send_multipart(hello)
        return P.decode(s.recv_multipart()) if s.poll(200) else None

    msg = wait_for(answered, 10, "the dropped client to reconnect")
    assert isinstance(msg, P.Reply) and msg.rid == 24


def test_service_continues_after_all_the_bad_input(
    small: LocalCluster, dealer: Callable[..., zmq.Socket[bytes]]
) -> None:
    bad = dealer()
    for _, frames, code, _, _ in BAD_CLIENT_MESSAGES:
        assert ask_error(bad, frames).code == code
    assert ask_error(bad, big_submit(30, LIMIT + 1000, "big-1")).code == P.E_TOO_LARGE
    # The same socket still gets normal answers...
    reply = ask(bad, P.Status(rid=31, ids=["a", "b"]).encode())
    assert isinstance(reply, P.Reply) and reply.data == {"records": [], "missing": ["a", "b"]}
    # ...and a client on another socket gets its job run by the worker.
    client = small.client()
    assert client.submit("tests.jobs:add", args=[2, 3]).result(timeout=20) == 5
    assert len(client.workers()) == 1


# ---- through TitanClient --------------------------------------------------------------------------


def test_client_status_of_unknown_job_raises(small: LocalCluster) -> None:
    client = small.client()
    with pytest.raises(UnknownJob) as info:
        client.status("nope")
    assert info.value.code == "unknown_job" and "'nope'" in str(info.value)
    with pytest.raises(UnknownJob):
        client.cancel("nope")


def test_client_invalid_job_raises_job_error(small: LocalCluster) -> None:
    client = small.client()
    with pytest.raises(JobError, match="'retries' must be between 0 and 1000"):
        client.submit("tests.jobs:noop", retries=5000)


def test_missing_module_fails_the_job_not_the_worker(small: LocalCluster) -> None:
    client = small.client()
    (before,) = client.workers()
    rec = client.submit("no_such_module:fn").wait(20)
    assert rec.state is JobState.FAILED
    assert rec.error_type == "ModuleNotFoundError"
    assert "ModuleNotFoundError" in (rec.error or "") and "no_such_module" in (rec.error or "")
    assert rec.traceback and "no_such_module" in rec.traceback
    # The worker is still up, the same process, and runs the next job.
    nxt = client.submit("tests.jobs:whoami").result(timeout=20)
    assert nxt["worker"] == before["name"]
    (after,) = client.workers()
    assert after["pid"] == before["pid"] and after["name"] == before["name"]


def test_missing_function_fails_with_a_clear_error(small: LocalCluster) -> None:
    rec = small.client().submit("tests.jobs:no_such_function").wait(20)
    assert rec.state is JobState.FAILED
    assert "has no attribute 'no_such_function'" in (rec.error or "")


def test_client_refuses_an_oversized_submit_before_sending(small: LocalCluster) -> None:
    tiny = TitanClient(small.address, max_message_size=1024, timeout=5)
    try:
        with pytest.raises(PayloadTooLarge) as info:
            tiny.submit("tests.jobs:noop", args=["x" * 2000], id="never-sent")
        assert "exceeds the limit of 1024 bytes" in str(info.value)
        # Small requests still go through on the same client.
        assert tiny.submit("tests.jobs:add", args=[1, 1]).result(timeout=20) == 2
    finally:
        tiny.close()
    with pytest.raises(UnknownJob):
        small.client().status("never-sent")


def test_broker_refusal_of_an_oversized_submit_raises(small: LocalCluster) -> None:
    client = small.client(timeout=5)  # allows 64 MiB: the broker is the one to refuse
    with pytest.raises(PayloadTooLarge, match=f"exceeds the limit of {LIMIT} bytes"):
        client.submit("tests.jobs:noop", args=["x" * (LIMIT + 1000)], id="refused")
    assert client.submit("tests.jobs:add", args=[20, 22]).result(timeout=20) == 42
    with pytest.raises(UnknownJob):
        client.status("refused")


# ---- the worker socket ----------------------------------------------------------------------------


def test_garbage_on_the_worker_socket_does_not_disturb_the_broker(
    small: LocalCluster, dealer: Callable[..., zmq.Socket[bytes]]
) -> None:
    client = small.client()
    (before,) = client.workers()
    back = dealer("back")
    err = ask_error(back, [b"\x00\xff garbage"])
    assert err.code == P.E_PROTOCOL and "expected 3 frames" in err.message
    err = ask_error(back, [P.VERSION, P.SUBMIT, body(rid=1, jobs=[])])
    assert err.code == P.E_PROTOCOL and "unknown command 02" in err.message
    err = ask_error(back, [P.VERSION, P.READY, body(name="x", host="h", tags=[], slots="many", pid=1)])
    assert "READY field 'slots' must be an integer" in err.message
    err = ask_error(back, [P.VERSION, P.RESULT, b"\xc1"])
    assert "not valid msgpack" in err.message
    # A stranger that never said READY is told to register, and its "results" are ignored.
    h = client.submit("tests.jobs:sleep", args=[0.3])
    msg = ask(back, P.Result(results=[{"id": h.id, "outcome": "succeeded", "result": "forged"}]).encode())
    assert isinstance(msg, P.Reregister)
    assert h.result(timeout=20) == 0.3
    # The real worker was not disturbed.
    (after,) = client.workers()
    assert (after["name"], after["pid"]) == (before["name"], before["pid"])
    assert client.submit("tests.jobs:add", args=[3, 4]).result(timeout=20) == 7


# ---- a broker in a thread, with a limit above 1 MiB --------------------------------------------------


@pytest.fixture
def thread_broker() -> Iterator[Callable[..., Broker]]:
    """Start brokers in threads on random loopback ports; always stopped and joined."""
    started: list[tuple[Broker, threading.Thread]] = []

    def start(**config: Any) -> Broker:
        broker = Broker(BrokerConfig(front=0, back=0, events=0, **config))
        broker.bind()
        t = threading.Thread(target=broker.run, name="test-broker", daemon=True)
        t.start()
        started.append((broker, t))
        return broker

    yield start
    for broker, t in started:
        broker.stop()
        t.join(10)
        assert not t.is_alive(), "broker thread did not stop"


def test_thread_broker_refuses_an_oversized_submit_below_a_mebibyte(thread_broker: Callable[..., Broker]) -> None:
    broker = thread_broker(max_message_size=512 * 1024)
    with TitanClient(f"127.0.0.1:{broker.ports['front']}", timeout=5) as client:
        with pytest.raises(PayloadTooLarge):  # over the limit, under limit + 64 KiB
            client.submit("tests.jobs:noop", args=["x" * (540 * 1024)], id="big")
        assert client.hello()["max_message_size"] == 512 * 1024
        assert "big" not in broker.sched.jobs


def test_thread_broker_refuses_an_oversized_submit_above_a_mebibyte(thread_broker: Callable[..., Broker]) -> None:
    broker = thread_broker(max_message_size=2 * 1024 * 1024)
    with TitanClient(f"127.0.0.1:{broker.ports['front']}", timeout=2) as client, pytest.raises(PayloadTooLarge):
        client.submit("tests.jobs:noop", args=["x" * (2 * 1024 * 1024 + 1000)], id="big")
