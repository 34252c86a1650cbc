"""What a broker in a group asks of its member, and the turns it holds until a majority has them.

In a group (:mod:`titan_zmq.ha`) every turn's journal batch is shipped to the followers, and
what the turn would send (replies, leases, kills) waits until a majority of the members hold
the batch: an acknowledgement then survives the loss of any minority of the members.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import zmq

Pos = tuple[int, int]
Outbox = list[tuple[zmq.Socket[bytes], list[bytes]]]


class Replica(Protocol):
    """The group member a broker leads for (:class:`titan_zmq.ha.member.Member`)."""

    @property
    def term(self) -> int: ...  # the fencing epoch this broker leads

    @property
    def committed(self) -> Pos: ...  # the journal position a majority holds

    def advance(self, end: Pos, durable: bool) -> None: ...  # the journal ends at ``end`` (fsynced if durable)

    def group(self) -> dict[str, Any]: ...  # this member's place in the group (HELLO, stats)


class HeldTurns:
    """Outboxes waiting for the journal position they depend on, oldest first.

    A turn that wrote nothing waits with the turns before it (it carries the same position),
    so nothing is sent ahead of a reply that promises."""

    def __init__(self) -> None:
        self._turns: deque[tuple[Pos, Outbox]] = deque()

    def __bool__(self) -> bool:
        return bool(self._turns)

    def hold(self, end: Pos, outbox: Outbox) -> None:
        self._turns.append((end, outbox))

    def release(self, committed: Pos) -> Outbox:
        """Everything a majority now holds, in order."""
        out: Outbox = []
        turns = self._turns
        while turns and turns[0][0] <= committed:
            out.extend(turns.popleft()[1])
        return out
