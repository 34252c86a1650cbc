"""Hostile input, the short run: every command on both sockets, hypothesis-made frames, and the bugs the
fuzzer found. The machinery is the package tests/fuzz/; the long run is ``python -m tests.fuzz --inputs 100000``."""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import given

from tests import fuzz
from titan_zmq import protocol as P
from titan_zmq.errors import BrokerError, ProtocolError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def harness() -> Iterator[fuzz.Harness]:
    """A broker taking messages of at most 64 KiB, one real worker, and raw DEALERs on both sockets."""
    with fuzz.fuzz_cluster() as h:
        h.health_every, h.warmup = 500, 300
        yield h


def _plain(tp: Any) -> Any:
    """A simple value of annotation ``tp`` that the protocol accepts."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is type(None):
        return None
    if origin is not None and type(None) in typing.get_args(tp):
        return None
    return {bool: False, int: 1, float: 1.5, str: "fuzz-x", bytes: b""}.get(tp, [] if origin is list else {})


def minimal(code: bytes) -> P.Message:
    """The message of ``code`` with its required fields set to plain values."""
    cls = P.MESSAGES[code]
    hints = typing.get_type_hints(cls)
    kw = {f.name: _plain(hints[f.name]) for f in dataclasses.fields(cls)
          if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}  # fmt: skip
    return cls(**kw)


def corpus() -> list[fuzz.FuzzInput]:
    """For every command code, on both sockets: the message, and the same with each kind of damage."""
    out = []
    for code in fuzz.ALL_CODES:
        msg = minimal(code)
        name = fuzz.NAMES[code]
        body = fuzz.body_of(msg)
        frames = msg.encode()
        first = next(iter(body), None)
        variants: list[tuple[str, list[bytes]]] = [
            ("valid", frames),
            ("extra field", [P.VERSION, code, P.packb({**body, "evil": 1})]),
            ("field of the wrong type", [P.VERSION, code, P.packb({**body, first: {"x": [1]}} if first else [1])]),
            ("missing field", [P.VERSION, code, P.packb({k: v for k, v in body.items() if k != first})]),
            ("not a map", [P.VERSION, code, P.packb([body])]),
            ("truncated", [P.VERSION, code, frames[2][: max(0, len(frames[2]) - 1)]]),
            ("bit flip", [P.VERSION, code, bytes([frames[2][0] ^ 0x10]) + frames[2][1:]]),
            ("not msgpack", [P.VERSION, code, b"\xc1" + frames[2]]),
            ("too deep", [P.VERSION, code, fuzz.nested(P.MAX_DEPTH + 1, "map")]),
            ("too deep for msgpack", [P.VERSION, code, fuzz.nested(1100, "list")]),
            ("over the limit", [P.VERSION, code, fuzz.padded(body, fuzz.LIMIT + 1)]),
            ("two frames", frames[:2]),
            ("four frames", [*frames, b""]),
            ("old version", [b"TZ0", *frames[1:]]),
            ("command of two bytes", [P.VERSION, code + code, frames[2]]),
        ]
        for sock in ("front", "back"):
            out += [fuzz.FuzzInput(sock, tuple(f), f"{name}/{what}") for what, f in variants]
    return out


def test_every_command_on_both_sockets(harness: fuzz.Harness) -> None:
    inputs = corpus()
    assert {i.label.partition("/")[0] for i in inputs} == set(fuzz.NAMES.values())
    for i in range(0, len(inputs), 64):
        harness.check(inputs[i : i + 64])
    s = harness.stats
    assert s.refused > 0.8 * len(inputs) and s.errors == s.refused
    harness.health()


@fuzz.fuzz_settings(max_examples=300, derandomize=True)
@given(batch=fuzz.batches(4, mutants=1))
def test_hypothesis_frames(harness: fuzz.Harness, batch: list[fuzz.FuzzInput]) -> None:
    harness.check(batch)


def test_still_serving_within_bounded_memory(harness: fuzz.Harness) -> None:
    s = harness.stats
    assert s.total > 1000, s.total
    assert all(f"{sock} {name}" in s.sent for sock in ("front", "back") for name in fuzz.NAMES.values())
    harness.health()  # a fresh client's job runs; RSS within +50 MiB of the warm-up figure (checked inside)
    assert harness.rss_warm is not None and harness.rss() - harness.rss_warm < 50 << 20
    assert "Traceback" not in harness.new_log()


# ---- bugs the fuzzer found: fixed in protocol.py -----------------------------------------------------------


def _stats_published(h: fuzz.Harness, n: int = 2, timeout: float = 10) -> None:
    """Wait until the broker has published ``n`` stats messages (its loop ran its timers), and is alive."""
    sub = h.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.connect(f"tcp://127.0.0.1:{h.cluster.ports['events']}")
    try:
        deadline = time.monotonic() + timeout
        got = 0
        while got < n:
            h.alive()
            left = deadline - time.monotonic()
            assert left > 0, f"no stats published within {timeout}s"
            if sub.poll(int(min(left, 0.5) * 1000)):
                sub.recv_multipart()
                got += 1
    finally:
        sub.close(0)
    h.alive()


def _ready(**kw: Any) -> P.Ready:
    return P.Ready(**{"name": "fuzz-regress", "host": "h", "tags": [], "slots": 1, "pid": 1, **kw})


def test_ready_with_more_leases_than_jobs_is_refused(harness: fuzz.Harness) -> None:
    # Was: accepted, then worker_ready's zip(strict=True) raised; the worker was half registered.
    with pytest.raises(ProtocolError, match="READY has 2 leases for 1 running jobs"):
        P.decode(_ready(running=["a"], leases=[1, 2]).encode(), P.BACK_COMMANDS)
    harness.check([fuzz.FuzzInput("back", tuple(_ready(running=[], leases=[7]).encode()), "READY/leases")])
    assert P.decode(_ready(running=["a", "b"], leases=[1]).encode(), P.BACK_COMMANDS)  # fewer: padded with 0


def test_ready_with_absurd_slots_is_refused(harness: fuzz.Harness) -> None:
    # Was: accepted; the next stats message summed slots past 2**64 and msgpack's OverflowError killed the broker.
    for kw in ({"slots": 2**64 - 1}, {"slots": P.MAX_SLOTS + 1}, {"prefetch": 2**63}):
        with pytest.raises(ProtocolError, match="READY announces"):
            P.decode(_ready(**kw).encode(), P.BACK_COMMANDS)
        harness.check([fuzz.FuzzInput("back", tuple(_ready(**kw).encode()), "READY/slots")])
    assert P.decode(_ready(slots=P.MAX_SLOTS, prefetch=P.MAX_PREFETCH).encode(), P.BACK_COMMANDS)
    _stats_published(harness)
    harness.health()


def test_a_worker_name_cannot_forge_log_lines() -> None:
    forged = "w\n2026-01-01 00:00:00,000 WARNING titan_zmq.broker.loop: all is well"
    for kw in ({"name": forged}, {"host": "h\r"}, {"address": "x" * 300}):
        with pytest.raises(ProtocolError, match="must be printable and at most 256 characters"):
            P.decode(_ready(**kw).encode(), P.BACK_COMMANDS)
    assert P.decode(_ready(name="gpu-box-1/ü", host="h.example").encode(), P.BACK_COMMANDS)


def test_nesting_deeper_than_the_broker_can_pass_on_is_refused(harness: fuzz.Harness) -> None:
    # Was: a HEARTBEAT whose load nested 1,022 levels decoded (msgpack takes 1,024), and the stats message,
    # three levels deeper, could not be packed: ValueError in the loop's timers, the broker exited.
    deep_load = fuzz.pack_deep({"load": {"cpu": fuzz.PLACEHOLDER}}, 1022, "list")
    harness.check([
        fuzz.FuzzInput("back", tuple(_ready(name="fuzz-deep").encode()), "READY/deep"),
        fuzz.FuzzInput("back", (P.VERSION, P.HEARTBEAT, deep_load), "HEARTBEAT/deep"),
        fuzz.FuzzInput("front", tuple(P.Workers(rid=77).encode()), "WORKERS/after"),
    ])  # fmt: skip
    with pytest.raises(ProtocolError, match=f"HEARTBEAT body nests deeper than {P.MAX_DEPTH} levels"):
        P.decode([P.VERSION, P.HEARTBEAT, deep_load], P.BACK_COMMANDS)
    _stats_published(harness)
    # The limit, exactly: MAX_DEPTH levels pass, one more does not; peers' decoding keeps msgpack's own limit.
    ok = fuzz.pack_deep({"rid": 1, "op": "set", "key": "deep", "args": fuzz.PLACEHOLDER}, P.MAX_DEPTH - 1, "list")
    bad = fuzz.pack_deep({"rid": 1, "op": "set", "key": "deep", "args": fuzz.PLACEHOLDER}, P.MAX_DEPTH, "list")
    assert isinstance(P.decode([P.VERSION, P.KV, ok], P.FRONT_COMMANDS), P.Kv)
    with pytest.raises(ProtocolError, match="nests deeper"):
        P.decode([P.VERSION, P.KV, bad], P.FRONT_COMMANDS)
    assert isinstance(P.decode([P.VERSION, P.KV, bad]), P.Kv)
    harness.check([fuzz.FuzzInput("front", (P.VERSION, P.KV, body), "KV/depth") for body in (ok, bad)])
    harness.health()


# ---- bugs the fuzzer found outside protocol.py, fixed where they were -------------------------------------


def _ask_front(harness: fuzz.Harness, frames: list[bytes]) -> P.Message | None:
    """Send raw frames to the front socket; the broker's answer, or None after 3 s of silence."""
    sock = harness.socks["front"]
    try:
        sock.send_multipart(frames)
        return P.decode(sock.recv_multipart()) if sock.poll(3000) else None
    finally:
        harness.new_log()  # a traceback it logged must not be blamed on the next batch


def test_deploy_with_unknown_keys_of_mixed_types_gets_an_error(harness: fuzz.Harness) -> None:
    reply = _ask_front(harness, [P.VERSION, P.DEPLOY, P.packb({"rid": 5, "spec": {"name": "x", 1: 2, "y": 3}})])
    assert isinstance(reply, P.Error) and reply.rid == 5, reply


def test_schedule_of_a_cron_that_never_fires_gets_an_error(harness: fuzz.Harness) -> None:
    job = {"id": "fuzz-never", "kind": "call", "target": "tests.jobs:noop"}
    msg = P.Schedule(rid=6, op="add", name="fuzz-sched-0", cron="0 0 31 2 *", jobs=[job])
    reply = _ask_front(harness, msg.encode())
    assert isinstance(reply, P.Error) and reply.rid == 6 and "never fires" in reply.message, reply


def test_kv_nan_ttl_does_not_stop_expiry() -> None:
    from titan_zmq.aof.kv import KVStore

    now = [1000.0]
    kv = KVStore(wall=lambda: now[0])
    with pytest.raises(BrokerError, match="ttl must be a positive number"):
        kv.request("set", "poison", [1, float("nan")])
    kv.request("set", "poison", [1])
    with pytest.raises(BrokerError, match="finite number of seconds"):
        kv.request("expire", "poison", [float("nan")])
    kv.request("set", "short", [1, 0.5])
    now[0] += 10
    kv.sweep()
    assert "short" not in kv.data  # swept: it expired 9.5 s ago
