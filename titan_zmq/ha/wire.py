"""Frames of the journal stream between members: ``[b"TZR1", kind, msgpack header, data?]``.

A follower's DEALER talks to a member's ROUTER on its replication port (front + 4):

    FOLLOW  F {member, promised, history, end, base}   follower -> source: send me what I lack
    ACK     A {end}                                     follower -> source: I hold up to here
    GRANT   G {epoch, candidate}                        candidate -> member: promise me this epoch
    GRANTED g {ok, promised, history, end}              member -> candidate
    START   T {epoch, history, at}                      source -> follower: cut to ``at``, then data
    DATA    D {epoch, at} + bytes                       journal bytes at position ``at``
    SNAP    N {epoch, gen, offset, last} + bytes        a piece of snapshot ``gen``
    ALIVE   K {epoch, end}                              source -> follower, when there is nothing to send
    REFUSE  X {reason, promised}                        either way: this session ends
"""

from __future__ import annotations

from typing import Any

import msgpack

from titan_zmq.errors import ProtocolError

VERSION = b"TZR1"
FOLLOW, ACK, GRANT, GRANTED, START, DATA, SNAP, ALIVE, REFUSE = (bytes([c]) for c in b"FAGgTDNKX")
KINDS = frozenset({FOLLOW, ACK, GRANT, GRANTED, START, DATA, SNAP, ALIVE, REFUSE})
CHUNK = 1 << 20  # bytes of journal or snapshot per message
WINDOW = 16 << 20  # bytes sent and not yet acknowledged, per follower


def frames(kind: bytes, header: dict[str, Any], data: bytes | None = None) -> list[bytes]:
    out = [VERSION, kind, msgpack.packb(header, use_bin_type=True)]
    if data is not None:
        out.append(data)
    return out


def parse(parts: list[bytes]) -> tuple[bytes, dict[str, Any], bytes | None]:
    """(kind, header, data) of a message without its routing frames; ProtocolError when malformed."""
    if len(parts) not in (3, 4) or parts[0] != VERSION or parts[1] not in KINDS:
        raise ProtocolError(f"not a journal stream message ({len(parts)} frame(s), tag {parts[0][:8]!r})")
    try:
        header = msgpack.unpackb(parts[2], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"journal stream header undecodable ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("journal stream header must be a map")
    return parts[1], header, parts[3] if len(parts) == 4 else None
