"""The members of a broker group, and which one is believed to lead: shared by the client and the worker.

A broker address may name one broker (``HOST[:PORT]``) or the members of a group
(``HOST:PORT,HOST:PORT,HOST:PORT``). :class:`Members` keeps them in order of preference: the
first is the member in use (``current()``), the believed leader. It is pure bookkeeping (no
sockets, no clock), so that the client and the worker follow one rule:

- ``learn(group)``: a ``HELLO`` answer's ``group`` names members (added, in order) and the
  leader (moved first);
- ``redirect(hint)``: the member in use said ``not_leader``: go to the leader it named, or to
  the next member when it named none (or one already tried this round);
- ``next()``: the member in use did not answer: the next one;
- ``exhausted()`` / ``new_round()``: every member was tried since the round began (the caller
  pauses, the group may be electing), then a new round begins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from titan_zmq.config import DEFAULT_FRONT, parse_address, parse_members
from titan_zmq.errors import ConfigError

log = logging.getLogger(__name__)

Address = tuple[str, int]  # (host, front port) of one member


def format_address(member: Address) -> str:
    """``HOST:PORT`` of a member (``[V6]:PORT`` for an IPv6 literal), as group answers name them."""
    host, port = member
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hint(hint: str | None) -> Address | None:
    """The member a ``leader`` hint names, or None when it names none (or cannot be read)."""
    if not hint:
        return None
    try:
        return parse_address(hint)
    except ConfigError as exc:
        log.warning("ignoring a leader hint that is not HOST:PORT (%r): %s", hint, exc)
        return None


class Members:
    """The known members of a broker group, the one in use (believed leader) first."""

    def __init__(self, members: Iterable[Address]) -> None:
        self._order: list[Address] = list(dict.fromkeys(members))
        if not self._order:
            raise ConfigError("a broker group needs at least one member")
        self._tried: set[Address] = set()  # members left (no answer, or not the leader) this round

    @classmethod
    def parse(cls, addrs: str, default_port: int = DEFAULT_FRONT) -> Members:
        """From ``HOST[:PORT]`` or ``HOST:PORT,HOST:PORT,...`` (ConfigError if malformed or empty)."""
        return cls(parse_members(addrs, default_port))

    # ---- what is known ------------------------------------------------------------------------

    def current(self) -> Address:
        """The member in use: the believed leader."""
        return self._order[0]

    def address(self) -> str:
        """``HOST:PORT`` of the member in use."""
        return format_address(self._order[0])

    def addresses(self) -> list[str]:
        """Every member's ``HOST:PORT``, the one in use first."""
        return [format_address(m) for m in self._order]

    def spec(self) -> str:
        """The comma list of every member, the one in use first (what ``TITAN_BROKER`` holds)."""
        return ",".join(self.addresses())

    @property
    def grouped(self) -> bool:
        """More than one member is known: a group (a single broker when False, unless told otherwise)."""
        return len(self._order) > 1

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Address]:
        return iter(list(self._order))

    def __contains__(self, member: object) -> bool:
        return member in self._order

    def __repr__(self) -> str:
        return f"Members({self.spec()!r})"

    # ---- what changes it ----------------------------------------------------------------------

    def add(self, member: Address) -> bool:
        """Add a member at the end if it is new. Returns whether it was."""
        if member in self._order:
            return False
        self._order.append(member)
        return True

    def prefer(self, member: Address) -> bool:
        """Make ``member`` the one in use (added if unknown). Returns whether the one in use changed."""
        if self._order[0] == member:
            return False
        if member in self._order:
            self._order.remove(member)
        self._order.insert(0, member)
        return True

    def learn(self, group: Mapping[str, Any]) -> bool:
        """Take in a ``HELLO`` answer's ``group``: add the members it names, and move the leader it
        names first. Returns whether the member in use changed."""
        names = group.get("members")
        if isinstance(names, (list, tuple)):
            for name in names:
                member = parse_hint(name) if isinstance(name, str) else None
                if member is not None:
                    self.add(member)
        hint = group.get("leader")
        leader = parse_hint(hint) if isinstance(hint, str) else None
        return self.prefer(leader) if leader is not None else False

    def next(self) -> Address:
        """The member in use did not answer (or is not the leader and named none): move it last, and
        use the next. Returns the member now in use (the same one when it is the only one)."""
        left = self._order.pop(0)
        self._tried.add(left)
        self._order.append(left)
        return self._order[0]

    def redirect(self, hint: str | None) -> Address:
        """The member in use answered ``not_leader`` naming ``hint`` (``HOST:PORT``, or "" for none):
        use that member (added if unknown), unless it was already tried this round (two followers
        naming each other during an election); else the next. Returns the member now in use."""
        leader = parse_hint(hint)
        if leader is None or leader in self._tried or leader == self._order[0]:
            return self.next()
        left = self._order.pop(0)
        self._tried.add(left)
        self._order.append(left)
        self.prefer(leader)
        return leader

    def exhausted(self) -> bool:
        """Whether the member in use was already tried this round: every way on was tried, and the
        caller should pause (an election may be under way) and call :meth:`new_round`."""
        return self._order[0] in self._tried

    def new_round(self) -> None:
        """Begin a new round: members tried before may be tried (and hints to them followed) again.
        Also the thing to call once a leader answered."""
        self._tried.clear()
