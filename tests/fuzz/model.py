"""The model: what the broker must answer to each input (``protocol.decode`` being the reference), and which
inputs may be sent at all (harmless jobs only, no known bug)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fuzz.inputs import (
    ALLOWED,
    HEALTH_TAG,
    LIMIT,
    NEVER_TAG,
    REAL_WORKER,
    SAFE_TARGETS,
    SCHEDULE_NAMES,
    SERVICE_NAMES,
    FuzzInput,
)
from titan_zmq import protocol as P
from titan_zmq.broker.services import ServiceSpec
from titan_zmq.errors import PayloadTooLarge, ProtocolError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # names of services and schedules

# ---- what the broker must answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What one input must get: ``error`` (code, rid, text) if it does not decode, else the message."""

    error: tuple[str, int, str] | None
    msg: P.Message | None


def expect(inp: FuzzInput) -> Expect:
    frames = list(inp.frames)
    try:
        msg = P.decode(frames, ALLOWED[inp.sock], LIMIT)
    except PayloadTooLarge as exc:
        if inp.sock == "front":
            return Expect((P.E_TOO_LARGE, P.peek_rid(frames), str(exc)), None)
        return Expect((P.E_PROTOCOL, 0, str(exc)), None)
    except ProtocolError as exc:
        return Expect((P.E_PROTOCOL, P.peek_rid(frames) if inp.sock == "front" else 0, str(exc)), None)
    # Independent of decode: what no broker may accept.
    if len(frames) != 3 or frames[0] != P.VERSION or frames[1] not in ALLOWED[inp.sock] or len(frames[2]) > LIMIT:
        raise AssertionError(f"protocol.decode accepted {inp!r}")
    return Expect(None, msg)


def classify(inp: FuzzInput) -> tuple[str | None, Expect]:
    """Why this input must not be sent (None: it may be), and what it must get."""
    e = expect(inp)
    if e.msg is None:
        return None, e  # refused: it can do nothing
    return unsafe_reason(e.msg) or known_bug(e.msg), e


def _job_unsafe(spec: Any) -> str | None:
    """Why a fuzzed job map could run something it should not (None: it cannot, or it is refused)."""
    if not isinstance(spec, dict):
        return None
    kind = spec.get("kind")
    if kind in ("shell", "script", "archive"):
        return f"a {kind} job"
    if kind == "call":
        if spec.get("target") not in SAFE_TARGETS:
            return "a call job of another target"
        if spec.get("env"):
            return "a job with env"
    delay = spec.get("delay")
    if isinstance(delay, (int, float)) and not isinstance(delay, bool) and delay > 5:
        return "a long delay"
    return None


def unsafe_reason(msg: P.Message) -> str | None:
    """Why this (decoded) message must not be sent (None: it may)."""
    if isinstance(msg, (P.Submit, P.Schedule)):
        if isinstance(msg, P.Schedule):
            if msg.op != "add":
                return None
            if msg.name not in SCHEDULE_NAMES and _NAME_RE.fullmatch(msg.name):
                return "a schedule outside the name pool"
        for spec in msg.jobs:
            why = _job_unsafe(spec)
            if why:
                return why
    elif isinstance(msg, P.Deploy):
        try:
            spec = ServiceSpec.from_wire(msg.spec)
        except Exception:  # refused by the broker the same way
            return None
        if spec.name not in SERVICE_NAMES or NEVER_TAG not in spec.requires:
            return "a service that could be placed"
    elif isinstance(msg, P.Ready) and (msg.name == REAL_WORKER or HEALTH_TAG in msg.tags):
        return "a READY posing as the real worker"
    return None


# Bugs found by this fuzzer and not fixed yet: inputs that hit them are not sent, so that a run can go on to
# find others. Each entry: a name, and a predicate on the decoded message. The ones found so far (a DEPLOY with
# unknown keys of mixed types, a cron that never fires, a NaN KV ttl) are fixed, with tests in test_fuzz.py.
KNOWN_BUGS: list[tuple[str, Callable[[P.Message], bool]]] = []  # all found so far are fixed


def known_bug(msg: P.Message) -> str | None:
    """The name of the known bug this (decoded) message would hit (None: none)."""
    for name, hits in KNOWN_BUGS:
        if hits(msg):
            return f"known bug: {name}"
    return None
