"""Damage done to valid messages (fields, bytes, nesting, frames, size), and the strategies of whole fuzz
inputs and batches of them."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.fuzz.inputs import ALL_CODES, LIMIT, NAMES, SLACK, SOCKET_CODES, FuzzInput
from tests.fuzz.values import HUGE, KEYS, VALUES, body_of, valid_message
from titan_zmq import protocol as P

# ---- mutations ------------------------------------------------------------------------------------------

PLACEHOLDER = b"\x00fuzz-deep-placeholder\x00"


def nested(depth: int, kind: str) -> bytes:
    """msgpack bytes of a list (or map) nested ``depth`` deep: past 1024 msgpack itself refuses it."""
    if kind == "list":
        return b"\x91" * depth + b"\xc0"
    return b"\x81\xa1k" * depth + b"\xc0"


def pack_deep(body: Any, depth: int, kind: str) -> bytes:
    """Pack ``body`` with the nesting written in place of the placeholder (deeper than packb allows)."""
    return P.packb(body).replace(P.packb(PLACEHOLDER), nested(depth, kind), 1)


def _str_header(n: int) -> int:
    return 1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5


def padded(body: dict[Any, Any], size: int) -> bytes:
    """``body`` plus a ``pad`` string field making it ``size`` bytes (an unknown field: only its size counts)."""
    base = len(P.packb({**body, "pad": ""}))
    n = max(0, size - base)
    n = max(0, n - (_str_header(n) - 1))
    return P.packb({**body, "pad": "x" * n})


@st.composite
def _mutate_bytes(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    op = draw(st.sampled_from(["flip", "flip", "flip", "truncate", "insert", "delete", "append", "overwrite"]))
    if not data:
        return draw(st.binary(min_size=1, max_size=8)), "bytes-" + op
    buf = bytearray(data)
    if op == "flip":
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, len(buf) * 8 - 1))
            buf[bit // 8] ^= 1 << (bit % 8)
    elif op == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    elif op == "insert":
        at = draw(st.integers(0, len(buf)))
        buf[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif op == "delete":
        at = draw(st.integers(0, len(buf) - 1))
        del buf[at : at + draw(st.integers(1, 8))]
    elif op == "append":
        buf += draw(st.binary(min_size=1, max_size=16))
    else:
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf), "bytes-" + op


@st.composite
def _mutate_fields(draw: st.DrawFn, body: dict[Any, Any], code: bytes) -> tuple[Any, str]:
    names = [k for k in body if isinstance(k, str)]
    op = draw(st.sampled_from(["drop", "extra", "retype", "retype", "huge", "nonmap", "rekey", "nest-field"]))
    body = dict(body)
    if op == "drop" and names:
        del body[draw(st.sampled_from(names))]
    elif op == "extra" or not names:
        other = sorted({f.name for c in P.MESSAGES.values() for f in dataclasses.fields(c)})
        body[draw(st.one_of(st.sampled_from(other), KEYS))] = draw(VALUES)
        op = "extra"
    elif op == "retype":
        body[draw(st.sampled_from(names))] = draw(VALUES)
    elif op == "huge":
        body[draw(st.sampled_from(names))] = draw(HUGE)
    elif op == "nonmap":
        return draw(st.one_of(VALUES.filter(lambda v: not isinstance(v, dict)), st.just([body]))), "fields-nonmap"
    elif op == "rekey":
        name = draw(st.sampled_from(names))
        body[draw(st.sampled_from([name.encode(), name.upper(), name + " ", 0]))] = body.pop(name)
    else:  # a list-of-maps field whose first map gets a field of random shape (job specs, results...)
        lists = [n for n in names if isinstance(body[n], list) and body[n] and isinstance(body[n][0], dict)]
        if not lists:
            body[draw(st.sampled_from(names))] = draw(VALUES)
        else:
            name = draw(st.sampled_from(lists))
            first = dict(body[name][0])
            known = sorted(k for k in first if isinstance(k, str))
            key = draw(st.one_of(st.sampled_from(known), KEYS) if known else KEYS)
            first[key] = draw(st.one_of(VALUES, HUGE))
            body[name] = [first, *body[name][1:]]
    return body, "fields-" + op


# Total nesting of a body: around the broker's limit (MAX_DEPTH) and msgpack's (1,024), or any.
TOTAL_DEPTHS = st.one_of(
    st.sampled_from([P.MAX_DEPTH - 1, P.MAX_DEPTH, P.MAX_DEPTH + 1, 1020, 1021, 1022, 1023, 1024, 1025, 5000]),
    st.integers(2, 1100),
)


@st.composite
def _deep(draw: st.DrawFn, body: dict[Any, Any]) -> tuple[bytes, str]:
    """Deep nesting in a field, in a map field or the first map of a list field (a job's args, a result,
    a heartbeat's load...), or as the whole body; its total depth drawn near the limits."""
    total, kind = draw(TOTAL_DEPTHS), draw(st.sampled_from(["list", "map"]))
    body = dict(body)
    where = draw(st.sampled_from(["field", "inner", "inner", "body"]))
    names = [k for k in body if isinstance(k, str)]
    if where == "body" or not names:
        return nested(total, kind), f"deep-body-{kind}"
    maps = [n for n in names if isinstance(body[n], dict)]
    lists = [n for n in names if isinstance(body[n], list) and body[n] and isinstance(body[n][0], dict)]
    keys = st.sampled_from(["args", "kwargs", "result", "labels", "cpu", "mem", "load1", "spec", "x"])
    if where == "inner" and (maps or lists):
        name = draw(st.sampled_from(maps + lists))
        if name in maps:  # body{name{key: deep}}
            body[name] = {**body[name], draw(keys): PLACEHOLDER}
            above = 2
        else:  # body{name[{key: deep}, ...]}
            body[name] = [{**body[name][0], draw(keys): PLACEHOLDER}, *body[name][1:]]
            above = 3
    else:
        body[draw(st.sampled_from(names))] = PLACEHOLDER
        where, above = "field", 1
    return pack_deep(body, max(1, total - above), kind), f"deep-{where}-{kind}"


VERSIONS = st.one_of(
    st.sampled_from([b"", b"TZ0", b"TZ2", b"tz1", b"TZ1\x00", b"\x00TZ1", b"TZ"]), st.binary(max_size=40)
)
COMMANDS = st.one_of(st.binary(max_size=3), st.sampled_from(ALL_CODES))


@st.composite
def fuzz_input(draw: st.DrawFn, focus: bytes | None = None) -> FuzzInput:
    """One hostile (or valid) message for the front or back socket; with ``focus``, of that command
    (hypothesis favours the first of a list, so a long run focuses on each command in turn)."""
    if focus is not None:
        home = "front" if focus in P.FRONT_COMMANDS else "back" if focus in P.BACK_COMMANDS else None
        sock = home if home and draw(st.integers(0, 9)) < 8 else draw(st.sampled_from(("front", "back")))
    else:
        sock = draw(st.sampled_from(("front", "back")))
    shape = draw(st.sampled_from(
        ["valid"] * 6 + ["fields"] * 8 + ["bytes"] * 7 + ["deep"] * 2 + ["frames"] * 3 + ["random"] * 2
        + ["body"] * 2 + ["oversize"]
    ))  # fmt: skip
    if shape == "random":
        frames = draw(st.lists(st.binary(max_size=48), min_size=1, max_size=6))
        return FuzzInput(sock, tuple(frames), "raw/random")
    if focus is not None:
        code = focus
    else:
        code = draw(st.sampled_from(SOCKET_CODES[sock]) if draw(st.integers(0, 9)) < 7 else st.sampled_from(ALL_CODES))
    name = NAMES[code]
    if shape == "body":
        body = draw(st.one_of(VALUES.map(P.packb), st.binary(max_size=64)))
        return FuzzInput(sock, (P.VERSION, code, body), f"{name}/random-body")
    msg = draw(valid_message(code))
    valid = msg.encode()
    if shape == "valid":
        return FuzzInput(sock, tuple(valid), f"{name}/valid")
    if shape == "bytes":
        data, label = draw(_mutate_bytes(valid[2]))
        return FuzzInput(sock, (P.VERSION, code, data), f"{name}/{label}")
    if shape == "fields":
        mutated, label = draw(_mutate_fields(body_of(msg), code))
        return FuzzInput(sock, (P.VERSION, code, P.packb(mutated)), f"{name}/{label}")
    if shape == "deep":
        data, label = draw(_deep(body_of(msg)))
        return FuzzInput(sock, (P.VERSION, code, data), f"{name}/{label}")
    if shape == "oversize":
        edges = st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1])
        size = draw(st.one_of(edges, st.integers(LIMIT + 1, LIMIT + SLACK - 4096)))
        return FuzzInput(sock, (P.VERSION, code, padded(body_of(msg), size)), f"{name}/oversize")
    # frames: wrong count, version or command byte around a valid body
    how = draw(st.sampled_from(["count", "version", "command"]))
    frames = list(valid)
    if how == "count":
        frames = draw(st.sampled_from([frames[:1], frames[:2], frames[1:], [*frames, b""], [*frames, frames[2]],
                                       [frames[0], *frames]]))  # fmt: skip
    elif how == "version":
        frames[0] = draw(VERSIONS)
    else:
        frames[1] = draw(COMMANDS)
    return FuzzInput(sock, tuple(frames), f"{name}/frames-{how}")


_INTERESTING = (0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC4, 0xCF, 0xD3, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF)


def _rmutate(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    """One random byte-level mutation (the cheap kind: a hypothesis-seeded Random makes it)."""
    buf = bytearray(data)
    if not buf:
        return bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8))), "new"
    op = rnd.choice(("flip", "flip", "flip", "byte", "truncate", "insert", "delete", "dup", "splice"))
    n = len(buf)
    if op == "flip":
        for _ in range(rnd.randint(1, 4)):
            bit = rnd.randrange(n * 8)
            buf[bit // 8] ^= 1 << (bit % 8)
    elif op == "byte":
        buf[rnd.randrange(n)] = rnd.choice(_INTERESTING)
    elif op == "truncate":
        del buf[rnd.randrange(n) :]
    elif op == "insert":
        at = rnd.randrange(n + 1)
        buf[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
    elif op == "delete":
        at = rnd.randrange(n)
        del buf[at : at + rnd.randint(1, 8)]
    elif op == "dup":  # a chunk repeated: lengths and counts stop matching the data
        at = rnd.randrange(n)
        chunk = buf[at : at + rnd.randint(1, 16)]
        buf[at:at] = chunk * rnd.randint(1, 4)
    else:  # two chunks swapped
        a, b = sorted((rnd.randrange(n), rnd.randrange(n)))
        k = rnd.randint(1, 8)
        buf[a : a + k], buf[b : b + k] = buf[b : b + k], buf[a : a + k]
    return bytes(buf), op


def amplify(inp: FuzzInput, rnd: random.Random, k: int) -> list[FuzzInput]:
    """``inp`` and ``k`` random byte-level mutants of it (mostly of its body, now and then of another frame)."""
    out = [inp]
    name = inp.label.split("/")[0]
    for _ in range(k):
        frames = list(inp.frames)
        i = len(frames) - 1 if rnd.random() < 0.9 else rnd.randrange(len(frames))
        frames[i], op = _rmutate(frames[i], rnd)
        out.append(FuzzInput(inp.sock, tuple(frames), f"{name}/rand-{op}"))
    return out


def batches(max_size: int = 24, mutants: int = 0, focus: bytes | None = None) -> SearchStrategy[list[FuzzInput]]:
    """Lists of inputs (half of them of command ``focus`` if given); with ``mutants``, each input is followed
    by that many random byte-level mutants of it, made by a hypothesis-seeded Random: far cheaper to draw
    than structured inputs, for long runs."""
    one = fuzz_input() if focus is None else st.one_of(fuzz_input(focus), fuzz_input())
    inputs = st.lists(one, min_size=max(1, max_size // 2), max_size=max_size)
    if not mutants:
        return inputs
    return st.tuples(inputs, st.randoms(use_true_random=True)).map(
        lambda t: [m for inp in t[0] for m in amplify(inp, t[1], mutants)]
    )

