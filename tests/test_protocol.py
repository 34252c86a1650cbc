"""Unit tests of the wire protocol (protocol.py) and of the job model's validation (job.py)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titan_zmq import protocol as P
from titan_zmq.errors import JobError, PayloadTooLarge, ProtocolError
from titan_zmq.job import MAX_BACKOFF, Job, backoff_delay

pytestmark = pytest.mark.timeout(60)

SHA = "ab" * 32


def _sample(cls_name: str, /, **fields: Any) -> P.Message | None:
    """An instance of message class ``cls_name`` (if this protocol version has it), fields it lacks left out."""
    cls = getattr(P, cls_name, None)
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


# One valid instance of every message class, with every field set to a non-default value.
_SAMPLES = [
    _sample("Hello", rid=1),
    _sample(
        "Submit",
        rid=2,
        jobs=[{"id": "j1", "kind": "call", "target": "m:f", "args": [1, "two", None, 3.5]}],
        blobs={SHA: b"print('hi')\n"},
        watch=True,
    ),
    _sample("Status", rid=3, ids=["a", "b"]),
    _sample("Cancel", rid=4, id="a"),
    _sample("Workers", rid=5),
    _sample("Watch", rid=6, ids=["a"]),
    _sample("List", rid=7, state="queued", limit=10),
    _sample("Kv", rid=10, op="sadd", key="k", args=["a", 2, None]),
    _sample("Reply", rid=8, data={"ids": ["a"], "nested": [1, {"x": b"\x00"}]}),
    _sample("Error", rid=9, code=P.E_BAD_JOB, message="job #0 of the batch: bad"),
    _sample("Done", records=[{"id": "a", "state": "succeeded"}]),
    _sample("Ready", name="w1", host="h", tags=["cpu", "gpu"], slots=4, pid=123, running=["a"], cached=[SHA],
            services=["web.0"], draining=True, objects={"endpoint": "tcp://h:1", "held": [[SHA, 10]]}),
    _sample("Heartbeat", load={"cpu": 12.5, "mem": 40.0}, dropped=[SHA]),
    _sample("Log", lines=[["j1", 1700000000.5, "out", "hello"]]),
    _sample("Logs", rid=11, id="j1", after=3, limit=10),
    _sample("Deploy", rid=12, spec={"name": "web", "kind": "shell", "target": "serve"}, blobs={SHA: b"x"}),
    _sample("Services", rid=13, name="web"),
    _sample("Stop", rid=14, name="web"),
    _sample("Pressure", rid=15, tags=["gpu"]),
    _sample("Notify", rid=16, kind="autoscale", body={"action": "up"}),
    _sample("Drain"),
    _sample("Approve", rid=17, id="gate", approve=False, by="ana@host", note="not today"),
    _sample("Edge", rid=19, parent="a", child="b"),
    _sample("Retry", rid=20, ids=["a"], dag="d", from_job="b"),
    _sample("Schedule", rid=18, op="add", name="nightly", cron="0 3 * * *", catchup="once",
            jobs=[{"id": "n", "kind": "shell", "target": "true"}], blobs={SHA: b"x"}),
    _sample("SvcState", states=[{"id": "web.0", "state": "running", "port": 20001}]),
    _sample("SvcStart", spec={"id": "web.0", "name": "web", "port": 20001}, blobs={SHA: b"x"}),
    _sample("SvcStop", ids=["web.0"], grace=2.5),
    _sample("Result", results=[{"id": "a", "outcome": "succeeded", "result": 5}]),
    _sample("Bye", running=["a", "b"]),
    _sample(
        "Assign",
        jobs=[{"id": "a", "kind": "shell", "target": "true", "attempt": 1}],
        blobs={SHA: b"x"},
        acks=["z"],
    ),
    _sample("Kill", ids=["a"], reason="lost"),
    _sample("Reregister"),
    _sample("Objects", rid=21, verb="locate", args={"id": SHA}),
    _sample("ObjFree", ids=[SHA]),
]
SAMPLES: list[P.Message] = [m for m in _SAMPLES if m is not None]


def frames_of(code: bytes, body: Any) -> list[bytes]:
    return [P.VERSION, code, P.packb(body)]


def test_every_message_class_has_a_sample() -> None:
    # A new message class needs a sample above, so that its round trip is tested too.
    assert {type(m) for m in SAMPLES} == set(P.MESSAGES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_encode_decode_round_trip(msg: P.Message) -> None:
    frames = msg.encode()
    assert len(frames) == 3
    assert frames[0] == b"TZ1" == P.VERSION
    assert frames[1] == type(msg).CODE and len(frames[1]) == 1
    back = P.decode(frames)
    assert type(back) is type(msg)
    assert back == msg
    # The body is a plain msgpack map of every field.
    body = msgpack.unpackb(frames[2], raw=False)
    assert set(body) == {f.name for f in dataclasses.fields(msg)}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_defaults_fill_in_optional_fields(msg: P.Message) -> None:
    cls = type(msg)
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    body = {k: v for k, v in dataclasses.asdict(msg).items() if k in required}
    decoded = P.decode(frames_of(cls.CODE, body))
    assert type(decoded) is cls
    for f in dataclasses.fields(cls):
        if f.name not in required:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert getattr(decoded, f.name) == default


def test_command_codes_are_unique_single_bytes() -> None:
    codes = [cls.CODE for cls in P.MESSAGES.values()]
    assert len(set(codes)) == len(codes)
    assert all(len(c) == 1 for c in codes)
    assert P.FRONT_COMMANDS.isdisjoint(P.BACK_COMMANDS)
    assert set(P.MESSAGES) >= P.FRONT_COMMANDS | P.BACK_COMMANDS


def test_wrong_version_tag() -> None:
    with pytest.raises(ProtocolError, match=r"unknown protocol version b'TZ2'; this broker speaks TZ1"):
        P.decode([b"TZ2", P.HELLO, P.packb({"rid": 1})])
    # A long garbage tag is shown truncated, not whole.
    with pytest.raises(ProtocolError) as info:
        P.decode([b"X" * 1000, P.HELLO, P.packb({"rid": 1})])
    assert "X" * 16 in str(info.value) and "X" * 17 not in str(info.value)


@pytest.mark.parametrize(("code", "shown"), [(b"\x99", "99"), (b"", "(empty)"), (b"\x02\x02", "0202")])
def test_unknown_command(code: bytes, shown: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(f"unknown command {shown} on this socket")):
        P.decode([P.VERSION, code, P.packb({"rid": 1})])


def test_command_not_allowed_on_this_socket() -> None:
    ready = P.Ready(name="w", host="h", tags=[], slots=1, pid=1).encode()
    with pytest.raises(ProtocolError, match="unknown command 10 on this socket"):
        P.decode(ready, P.FRONT_COMMANDS)
    assert isinstance(P.decode(ready, P.BACK_COMMANDS), P.Ready)
    with pytest.raises(ProtocolError, match="unknown command 02"):
        P.decode(P.Submit(rid=1, jobs=[]).encode(), P.BACK_COMMANDS)


@pytest.mark.parametrize("n", [0, 1, 2, 4, 5])
def test_wrong_frame_count(n: int) -> None:
    frames = [P.VERSION, P.HELLO, P.packb({"rid": 1}), b"extra", b"more"][:n]
    with pytest.raises(ProtocolError, match=rf"expected 3 frames \[version, command, body\], got {n}"):
        P.decode(frames)


@pytest.mark.parametrize("body", [b"\xc1", b"", b"\x92\x01", P.packb({"rid": 1}) + b"\x00"])
def test_body_not_msgpack(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="body is not valid msgpack"):
        P.decode([P.VERSION, P.HELLO, body])


@pytest.mark.parametrize("body", [[1, 2], 7, "text", None, b"bytes"])
def test_body_not_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError, match="STATUS body must be a msgpack map, got"):
        P.decode(frames_of(P.STATUS, body))


def test_missing_required_field() -> None:
    with pytest.raises(ProtocolError, match="STATUS is missing the field 'ids'"):
        P.decode(frames_of(P.STATUS, {"rid": 1}))
    with pytest.raises(ProtocolError, match="READY is missing the field 'slots'"):
        P.decode(frames_of(P.READY, {"name": "w", "host": "h", "tags": [], "pid": 1}))


@pytest.mark.parametrize(
    ("code", "body", "text"),
    [
        (P.STATUS, {"rid": "1", "ids": []}, "STATUS field 'rid' must be an integer, got str"),
        (P.STATUS, {"rid": True, "ids": []}, "STATUS field 'rid' must be an integer, got bool"),
        (P.STATUS, {"rid": 1.0, "ids": []}, "STATUS field 'rid' must be an integer, got float"),
        (P.STATUS, {"rid": 1, "ids": "abc"}, "STATUS field 'ids' must be a list of a string, got str"),
        (P.STATUS, {"rid": 1, "ids": ["a", 2]}, "STATUS field 'ids' must be a list of a string, got list"),
        (P.SUBMIT, {"rid": 1, "jobs": [], "watch": 1}, "SUBMIT field 'watch' must be a boolean, got int"),
        (P.SUBMIT, {"rid": 1, "jobs": [1]}, "SUBMIT field 'jobs' must be a list of a map, got list"),
        (P.SUBMIT, {"rid": 1, "jobs": [], "blobs": {"a": "text"}}, "field 'blobs' must be a map of bytes"),
        (P.LIST, {"rid": 1, "state": 3}, "LIST field 'state' must be a string or nil, got int"),
        (P.READY, {"name": "w", "host": "h", "tags": [], "slots": True, "pid": 1}, "field 'slots' must be an"),
        (P.KILL, {"ids": ["a"], "reason": None}, "KILL field 'reason' must be a string, got NoneType"),
    ],
)
def test_wrong_field_type(code: bytes, body: dict[str, Any], text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        P.decode(frames_of(code, body))
    assert text in str(info.value)


def test_nil_is_accepted_where_the_field_is_optional() -> None:
    msg = P.decode(frames_of(P.LIST, {"rid": 1, "state": None}))
    assert msg == P.List(rid=1, state=None, limit=50)


def test_unknown_field() -> None:
    with pytest.raises(ProtocolError, match=r"HELLO has unknown field\(s\) \['bogus', 'zz'\]"):
        P.decode(frames_of(P.HELLO, {"rid": 1, "zz": 1, "bogus": 2}))
    with pytest.raises(ProtocolError, match=r"HEARTBEAT has unknown field\(s\) \['1'\]"):
        P.decode(frames_of(P.HEARTBEAT, {1: 2}))


def test_body_over_max_size_raises_payload_too_large() -> None:
    frames = P.Submit(rid=1, jobs=[{"x": "y" * 5000}]).encode()
    size = len(frames[2])
    assert isinstance(P.decode(frames, max_size=size), P.Submit)  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge) as info:
        P.decode(frames, max_size=size - 1)
    assert isinstance(info.value, ProtocolError)
    assert f"message of {size} bytes exceeds the limit of {size - 1} bytes" in str(info.value)
    assert isinstance(P.decode(frames, max_size=0), P.Submit)  # 0: no limit


def test_size_is_checked_before_the_body_is_decoded() -> None:
    # Garbage that is too large is refused as too large, without trying to unpack it.
    with pytest.raises(PayloadTooLarge):
        P.decode([P.VERSION, P.SUBMIT, b"\xc1" * 2000], max_size=1000)


def test_peek_rid() -> None:
    assert P.peek_rid([P.VERSION, P.STATUS, P.packb({"rid": 42, "ids": 5})]) == 42
    assert P.peek_rid([b"TZ9", b"\x99", P.packb({"rid": 7})]) == 7
    assert P.peek_rid([P.VERSION, P.STATUS, P.packb({"rid": "42"})]) == 0
    assert P.peek_rid([P.VERSION, P.STATUS, P.packb([42])]) == 0
    assert P.peek_rid([P.VERSION, P.STATUS, b"\xc1"]) == 0
    assert P.peek_rid([P.VERSION, P.STATUS]) == 0
    assert P.peek_rid([P.VERSION, P.STATUS, P.packb({"rid": 3}), b""]) == 0


def test_peek_rid_of_a_body_just_under_a_mebibyte() -> None:
    body = P.packb({"rid": 11, "jobs": [], "blobs": {"a": b"x" * ((1 << 20) - 100)}})
    assert len(body) < 1 << 20
    assert P.peek_rid([P.VERSION, P.SUBMIT, body]) == 11


def test_peek_rid_of_a_large_body() -> None:
    # Any body the broker answers with too_large is above max_message_size (64 MiB by default),
    # so with the 1 MiB cap the rid is lost exactly when it matters.
    body = P.packb({"rid": 5, "jobs": [], "blobs": {"a": b"x" * (2 << 20)}})
    assert P.peek_rid([P.VERSION, P.SUBMIT, body]) == 5


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
_all_fields = sorted({f.name for cls in P.MESSAGES.values() for f in dataclasses.fields(cls)} | {"junk"})


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.sampled_from(sorted(P.MESSAGES)),
    body=st.one_of(_values, st.dictionaries(st.sampled_from(_all_fields), _values, max_size=6)),
)
def test_decode_raises_only_protocol_error(code: bytes, body: Any) -> None:
    """Whatever a peer sends, decode returns a well-typed message or raises ProtocolError."""
    try:
        msg = P.decode([P.VERSION, code, P.packb(body)])
    except ProtocolError:
        return
    cls = P.MESSAGES[code]
    assert type(msg) is cls
    assert P.decode(msg.encode()) == msg


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.binary(max_size=64))
def test_decode_of_random_bytes_raises_only_protocol_error(body: bytes) -> None:
    for code in (P.SUBMIT, P.READY, P.RESULT):
        try:
            P.decode([P.VERSION, code, body])
        except ProtocolError:
            pass


# ---- job.Job.from_wire ------------------------------------------------------------------


def job(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": "job-1", "kind": "call", "target": "pkg.mod:fn"}
    d.update(kw)
    return d


def bad(spec: Any, *texts: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_wire(spec)
    msg = str(info.value)
    for t in texts:
        assert t in msg, f"{t!r} not in {msg!r}"


def test_minimal_jobs_of_each_kind() -> None:
    j = Job.from_wire(job())
    assert (j.id, j.kind, j.target, j.args, j.priority, j.retries, j.timeout) == (
        "job-1",
        "call",
        "pkg.mod:fn",
        [],
        0,
        0,
        None,
    )
    s = Job.from_wire({"id": "s", "kind": "shell", "target": "echo hi", "args": [1, 2.5, "x"]})
    assert s.args == ["1", "2.5", "x"]  # shell arguments become strings
    sc = Job.from_wire({"id": "sc", "kind": "script", "target": "a.py", "blob": SHA})
    assert sc.blob == SHA


def test_job_must_be_a_map() -> None:
    bad(["id", "x"], "a job must be a map, got list")


@pytest.mark.parametrize("jid", [None, 5, "", "-leading-dash", "has space", "x" * 129, "é", "a/b"])
def test_bad_id(jid: Any) -> None:
    bad(job(id=jid), f"job id {jid!r} is invalid", "1-128 characters")


def test_longest_id_is_accepted() -> None:
    assert Job.from_wire(job(id="x" * 128)).id == "x" * 128


@pytest.mark.parametrize("spec", [job(id="abc\n"), job(target="os:getcwd\n")], ids=["id", "target"])
def test_trailing_newline_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(JobError):
        Job.from_wire(spec)


def test_unknown_field_is_named() -> None:
    bad(job(colour="red"), "unknown job field(s) ['colour']", "known: id, kind")


@pytest.mark.parametrize("kind", [None, "lambda", 3, ["call"]])
def test_unknown_kind(kind: Any) -> None:
    bad(job(kind=kind), "job job-1: kind must be one of call, shell, script", repr(kind))


def test_unknown_kind_names_the_kinds() -> None:
    bad(job(kind="container"), "kind must be one of call, shell, script, archive, approval, service")


@pytest.mark.parametrize("extra", [{}, {"kwargs": {"name": "other"}}, {"kwargs": {"name": "x"}, "args": ["a"]}])
def test_a_service_node_names_its_service_and_gives_its_spec(extra: dict) -> None:
    bad(job(kind="service", target="x", **extra), "a service node names its service in 'target'")


@pytest.mark.parametrize("target", ["pkg.mod.fn", "pkg:", ":fn", "a:b:c", "1mod:fn", "mod:fn()", "mod: fn"])
def test_call_target_must_be_module_colon_function(target: str) -> None:
    bad(job(target=target), f"call target {target!r} must look like 'package.module:function'")


def test_call_target_may_be_dotted_both_sides() -> None:
    assert Job.from_wire(job(target="a.b_c.d:Cls.method")).target == "a.b_c.d:Cls.method"


@pytest.mark.parametrize("target", [None, "", "   ", 5])
def test_target_must_be_a_non_empty_string(target: Any) -> None:
    bad(job(kind="shell", target=target), "'target' must be a non-empty string")


def test_kwargs_on_a_shell_job() -> None:
    bad({"id": "s", "kind": "shell", "target": "ls", "kwargs": {"a": 1}}, "only call jobs take 'kwargs'", "'args'")
    bad(job(kwargs={1: 2}), "'kwargs' must be a map with string keys")
    assert Job.from_wire(job(kwargs={"lr": 0.1})).kwargs == {"lr": 0.1}


def test_shell_args_must_be_strings_or_numbers() -> None:
    bad({"id": "s", "kind": "shell", "target": "ls", "args": [True]}, "must be strings or numbers, got True")
    bad({"id": "s", "kind": "shell", "target": "ls", "args": [[1]]}, "must be strings or numbers")
    bad(job(args="notalist"), "'args' must be a list, got str")


@pytest.mark.parametrize("env", [{"A": 1}, {1: "a"}, {"A": None}, ["A=1"]])
def test_non_string_env(env: Any) -> None:
    bad(job(env=env), "'env' must be a map of strings to strings")


def test_labels_must_be_strings() -> None:
    bad(job(labels={"team": 3}), "'labels' must be a map of strings to strings")


def test_priority_bounds() -> None:
    assert Job.from_wire(job(priority=-(2**31))).priority == -(2**31)
    assert Job.from_wire(job(priority=-5)).priority == -5
    assert Job.from_wire(job(priority=3.0)).priority == 3  # a whole float is taken as an int
    bad(job(priority=-(2**31) - 1), "'priority' must be between", f"got {-(2**31) - 1}")
    bad(job(priority=2**31 + 1), "'priority' must be between")
    bad(job(priority=1.5), "'priority' must be a whole number, got 1.5")
    bad(job(priority="high"), "'priority' must be a number, got str")
    bad(job(priority=True), "'priority' must be a number, got bool")


def test_retries_bounds() -> None:
    assert Job.from_wire(job(retries=1000)).retries == 1000
    bad(job(retries=1001), "'retries' must be between 0 and 1000, got 1001")
    bad(job(retries=-1), "'retries' must be between 0 and 1000")


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("delay", -1, "'delay' must be between 0"),
        ("delay", float("nan"), "'delay' must be between"),
        ("timeout", 0, "'timeout' must be between 0.001"),
        ("timeout", float("inf"), "'timeout' must be between"),
        ("backoff", 3601, "'backoff' must be between 0 and 3600"),
        ("blob", "xyz", "'blob' must be a sha256 hex digest"),
        ("blob", SHA.upper(), "'blob' must be a sha256 hex digest"),
        ("idempotency_key", "", "'idempotency_key' must be a string of 1 to 256"),
        ("idempotency_key", "k" * 257, "'idempotency_key' must be a string of 1 to 256"),
        ("requires", "g pu", "'requires' has an invalid tag 'g pu'"),
        ("requires", {"gpu": 1}, "'requires' must be a list of tags, got dict"),
    ],
)
def test_other_fields_are_validated(field: str, value: Any, text: str) -> None:
    bad(job(**{field: value}), text)


def test_script_without_blob() -> None:
    bad({"id": "s", "kind": "script", "target": "etl.py"}, "a script job needs its content", "'blob'")


def test_requires_string_is_split_into_tags() -> None:
    assert Job.from_wire(job(requires="gpu, highmem")).requires == frozenset({"gpu", "highmem"})


def test_to_wire_from_wire_round_trip() -> None:
    full = Job.from_wire(
        {
            "id": "full.1",
            "kind": "call",
            "target": "pkg.mod:fn",
            "args": [1, "a", [2, 3], {"k": None}],
            "kwargs": {"lr": 0.5},
            "env": {"A": "1"},
            "requires": ["gpu", "cpu"],
            "priority": -7,
            "delay": 1.5,
            "timeout": 30,
            "retries": 3,
            "backoff": 0.0,
            "idempotency_key": "key-1",
            "labels": {"team": "ml"},
            "blob": SHA,
        }
    )
    wire = full.to_wire()
    assert wire["requires"] == ["cpu", "gpu"]
    assert wire["backoff"] == 0.0 and wire["timeout"] == 30.0
    assert Job.from_wire(wire) == full
    minimal = Job.from_wire({"id": "m", "kind": "shell", "target": "true"})
    assert minimal.to_wire() == {"id": "m", "kind": "shell", "target": "true"}
    assert Job.from_wire(minimal.to_wire()) == minimal
    # What goes on the wire survives msgpack too.
    assert Job.from_wire(msgpack.unpackb(P.packb(wire), raw=False)) == full


_tag = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@settings(max_examples=150, deadline=None, database=None)
@given(
    kind=st.sampled_from(["call", "shell", "script"]),
    args=st.lists(st.one_of(st.integers(-1000, 1000), st.text(max_size=5)), max_size=4),
    requires=st.lists(_tag, max_size=3),
    priority=st.integers(-(2**31), 2**31),
    delay=st.floats(0, 1000),
    timeout=st.none() | st.floats(0.001, 1000),
    retries=st.integers(0, 1000),
    backoff=st.floats(0, 3600),
    labels=st.dictionaries(_tag, st.text(max_size=5), max_size=2),
)
def test_round_trip_property(
    kind: str,
    args: list[Any],
    requires: list[str],
    priority: int,
    delay: float,
    timeout: float | None,
    retries: int,
    backoff: float,
    labels: dict[str, str],
) -> None:
    spec: dict[str, Any] = {
        "id": "p1",
        "kind": kind,
        "target": "m:f" if kind == "call" else "x",
        "args": args,
        "requires": requires,
        "priority": priority,
        "delay": delay,
        "timeout": timeout,
        "retries": retries,
        "backoff": backoff,
        "labels": labels,
    }
    if kind == "script":
        spec["blob"] = SHA
    j = Job.from_wire(spec)
    assert Job.from_wire(msgpack.unpackb(P.packb(j.to_wire()), raw=False)) == j


# ---- backoff_delay ------------------------------------------------------------------------


def test_backoff_zero_base_is_zero() -> None:
    assert backoff_delay(0, 5) == 0.0
    assert backoff_delay(-1, 5) == 0.0


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1234)
    base = 2.0
    means = []
    for attempt in range(1, 16):
        raw = min(MAX_BACKOFF, base * 2 ** (attempt - 1))
        samples = [backoff_delay(base, attempt, rng) for _ in range(400)]
        assert all(0.5 * raw <= s <= 1.5 * raw for s in samples), attempt
        # The jitter really spans about ±50%, not a narrow band.
        assert min(samples) < 0.6 * raw and max(samples) > 1.4 * raw
        means.append(sum(samples) / len(samples))
    # Exponential growth until the cap: each mean about doubles.
    for a, b in itertools.pairwise(means[:7]):
        assert 1.6 < b / a < 2.4
    # Capped: late attempts average MAX_BACKOFF, whatever the attempt number.
    assert all(0.9 * MAX_BACKOFF < m < 1.1 * MAX_BACKOFF for m in means[-4:])
    assert max(backoff_delay(base, 1000, rng) for _ in range(100)) <= 1.5 * MAX_BACKOFF


def test_backoff_first_attempts() -> None:
    rng = random.Random(7)
    for attempt in (0, 1):  # attempt 0 and 1 both wait about ``base``
        assert all(0.5 <= backoff_delay(1.0, attempt, rng) <= 1.5 for _ in range(100))


def test_archive_entry_point_must_stay_inside() -> None:
    sha = "a" * 64
    bad({"id": "x", "kind": "archive", "target": "../escape.py", "blob": sha}, "inside the project folder")
    bad({"id": "x", "kind": "archive", "target": "/etc/x.py", "blob": sha}, "inside the project folder")
    bad({"id": "x", "kind": "archive", "target": "main.py"}, "an archive job needs its content")
    assert Job.from_wire({"id": "x", "kind": "archive", "target": "steps/main.py", "blob": sha}).kind == "archive"
