"""A worker finding its broker: the leader of a group, or a broker on its own; and fencing old leaders.

``discover`` asks every known member at once (``HELLO`` on its front socket) and takes the first
that answers as the leader (or a broker that names no group), learning the members and the leader
each answer names (``titan_zmq.members``). A follower that knows no leader yet (an election) is
asked again every ``_REASK`` seconds. A member that claims to lead at an epoch older than one
already seen is a deposed leader that does not know it yet: it is not taken.

``Fence`` keeps the highest epoch seen (``term``): an ``ASSIGN`` or ``KILL`` from an older leader
is dropped whole. ``watch_disconnects`` puts a monitor on the connection to a group's leader, so
that a leader whose process died is left at once, not after the heartbeat silence window.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from titan_zmq import protocol as P
from titan_zmq.config import tcp_endpoint
from titan_zmq.errors import ProtocolError
from titan_zmq.members import Address, Members, format_address, parse_hint

log = logging.getLogger(__name__)

_REASK = 0.2  # seconds before a member that is not the leader is asked again

Socket = zmq.Socket[bytes]
# Run the worker's loop (jobs, timeouts) until one of these sockets is readable (True; its callback
# has run) or the timeout passes (False).
WaitFn = Callable[[Mapping[Socket, Callable[[], None] | None], float], bool]


class Fence:
    """The highest leader epoch a worker has seen, and the messages of older leaders it dropped."""

    def __init__(self) -> None:
        self.term = 0  # 0: none seen (a broker on its own sends term 0, which is never fenced)
        self.fenced = 0  # ASSIGN and KILL messages dropped because an older leader sent them

    def see(self, epoch: int) -> None:
        """A leader's epoch learnt elsewhere (its HELLO answer)."""
        if epoch > self.term:
            self.term = epoch

    def admit(self, term: int, what: str, detail: str = "") -> bool:
        """Whether a message with ``term`` (non-zero) may be acted on: not when an older leader sent it."""
        if term >= self.term:
            if term > self.term:
                log.info("broker group: leader epoch %d (was %d)", term, self.term)
                self.term = term
            return True
        self.fenced += 1
        log.warning("dropped %s%s from an old leader: its term %d is older than term %d (%d dropped so far)",
                    what, detail, term, self.term, self.fenced)  # fmt: skip
        return False


def discover(
    ctx: zmq.Context[Any], members: Members, wait: WaitFn, timeout: float, *, term: int = 0,
    setup: Callable[[Socket], None] | None = None, stopping: Callable[[], bool] = lambda: False,
) -> tuple[Address, dict[str, Any]] | None:  # fmt: skip
    """Ask every member of ``members`` for its ports (HELLO) and return the first leader's (or lone
    broker's) address and answer; None when none answered so within ``timeout`` seconds (or
    ``stopping()``). ``members`` learns what the answers name. ``setup`` prepares each socket
    (CURVE keys); ``wait`` runs the worker's loop meanwhile; ``term``: the highest epoch seen."""
    asking = _Asking(ctx, members, term, setup)
    deadline = time.monotonic() + timeout
    try:
        for m in members:
            asking.ask(m)
        while not stopping():
            now = time.monotonic()
            for m in [m for m, at in asking.again.items() if at <= now]:
                asking.ask(m)
            if now >= deadline:
                return None
            readable: list[Address] = []
            handlers = {s: functools.partial(readable.append, m) for m, s in asking.socks.items()}
            wait(handlers, min(deadline, *asking.again.values()) - now)
            for m in readable:
                found = asking.read(m)
                if found is not None:
                    return m, found
        return None
    finally:
        asking.close()


class _Asking:
    """The members being asked, one DEALER each, and what their answers said."""

    def __init__(self, ctx: zmq.Context[Any], members: Members, term: int, setup: Callable[[Socket], None] | None):
        self.ctx, self.members, self.setup = ctx, members, setup
        self.socks: dict[Address, Socket] = {}
        self.again: dict[Address, float] = {}  # member: when to ask it again (inf: its answer is awaited)
        self.rids = itertools.count(1)
        self.newest = term  # the highest epoch any answer named: a "leader" below it was deposed

    def ask(self, member: Address) -> None:
        s = self.socks.get(member)
        if s is None:
            s = self.socks[member] = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self.setup is not None:
                self.setup(s)
            s.connect(tcp_endpoint(*member))
        try:
            P.send_frames(s, P.Hello(rid=next(self.rids)).encode())
        except zmq.Again:  # a fresh queue has room; should it not, the member is asked again later
            self.again[member] = time.monotonic() + _REASK
            return
        self.again[member] = float("inf")

    def read(self, member: Address) -> dict[str, Any] | None:
        """The answers waiting from ``member``: its HELLO data if it leads (or names no group)."""
        for msg in _answers(self.socks[member], member):
            if isinstance(msg, P.Reply) and isinstance(msg.data, dict) and self._leads(member, msg.data):
                return msg.data
        if self.again[member] == float("inf"):
            self.again[member] = time.monotonic() + _REASK
        return None

    def _leads(self, member: Address, data: dict[str, Any]) -> bool:
        group = data.get("group")
        if not isinstance(group, dict):
            return True  # a broker on its own
        epoch = int(group.get("epoch") or 0)
        self.members.learn(group)
        for m in self.members:
            if m not in self.socks:
                self.ask(m)  # a member (or the leader) not known before
        if group.get("role") == "leader":
            if epoch >= self.newest:
                return True
            log.warning("broker %s says it leads at epoch %d, but epoch %d is known: not taken",
                        format_address(member), epoch, self.newest)  # fmt: skip
        self.newest = max(self.newest, epoch)
        hint = group.get("leader")
        leader = parse_hint(hint) if isinstance(hint, str) else None
        if leader is not None and self.again.get(leader, 0.0) != float("inf"):
            self.ask(leader)  # the leader it names, at once (unless its answer is awaited)
        return False

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)


def _answers(sock: Socket, member: Address) -> list[P.Message]:
    """Every message waiting on ``sock`` (those that do not decode: logged, dropped)."""
    out: list[P.Message] = []
    while True:
        try:
            frames = P.recv_frames(sock)
        except zmq.Again:
            return out
        try:
            out.append(P.decode(frames))
        except ProtocolError as exc:
            log.error("broker at %s answered with something unexpected: %s", format_address(member), exc)


_LOST = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED  # dropped, or refused (nothing listens there)


def watch_disconnects(sock: Socket) -> Socket:
    """A monitor socket that becomes readable when ``sock``'s connection drops, or is refused
    (close it with :func:`unwatch`)."""
    mon: Socket = sock.get_monitor_socket(_LOST)
    mon.setsockopt(zmq.LINGER, 0)
    return mon


def disconnected(mon: Socket) -> bool:
    """Read the monitor's events: whether the connection dropped."""
    dropped = False
    while True:
        try:
            event = recv_monitor_message(mon, zmq.NOBLOCK)
        except zmq.Again:
            return dropped
        if isinstance(event, dict) and event.get("event", 0) & _LOST:
            dropped = True


def unwatch(sock: Socket, mon: Socket) -> None:
    """Stop monitoring ``sock`` and close the monitor socket."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass
    mon.close(0)
