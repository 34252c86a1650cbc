"""The serving half of the journal stream: one thread and a ROUTER on the replication port.

Every member runs one. It answers grants, and it serves its journal to whoever follows it:
the followers of a leader, or a new leader catching up from the member that holds the most.
A session sends, from where the follower's copy agrees with this one, the bytes of the
journal files as they are (a compaction's snapshot whole, once it is written), at most
``WINDOW`` bytes ahead of the follower's acknowledgement. While this member leads, the
highest position a majority holds (this member counted) is ``committed``: the broker sends
a turn's replies and leases only once ``committed`` has passed that turn's batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from titan_zmq.errors import ProtocolError
from titan_zmq.ha import wire as W
from titan_zmq.ha.grants import START, Grants, Pos, agreed_end, history_from, pos
from titan_zmq.ha.mirror import Gone, Mirror
from titan_zmq.process import Waker

log = logging.getLogger(__name__)

_ALIVE_EVERY = 0.25  # s between ALIVE messages to a follower with nothing to receive
_SESSION_SILENCE = 10.0  # s without a word from a follower before its session is dropped
_BASE_EVERY = 0.5  # s between looks for a new snapshot (a compaction's) to ship


@dataclass
class Session:
    """One follower's place in this member's journal."""

    ident: bytes
    member: str
    sent: Pos
    acked: Pos
    base: int  # the follower's newest snapshot
    heard: float
    alive_at: float = 0.0
    inflight: deque[tuple[Pos, int]] = field(default_factory=deque)  # (end, bytes) of each piece not acked
    in_flight: int = 0  # their bytes
    snap: tuple[int, int] | None = None  # (generation, offset) of a snapshot being sent
    snap_acked: int = 0


class Source(threading.Thread):
    """Serve this member's journal and grants; count a majority while leading."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, root: Path, grants: Grants, members: list[str],
        name: str, on_commit: Callable[[], None], on_deposed: Callable[[str], None],
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        super().__init__(name="titan-ha-source", daemon=True)
        self.mirror = Mirror(root)
        self.grants = grants
        self.members = set(members)
        self.me = name
        self.majority = len(members) // 2 + 1
        self.on_commit, self.on_deposed, self.on_tick = on_commit, on_deposed, on_tick
        self.epoch = 0  # the epoch this member leads (0: it does not)
        self.until: Pos = START  # while leading: the end of what the broker wrote
        self.durable: Pos = START  # ...and of what this member holds as the policy asks (fsynced under always)
        self.committed: Pos = START
        self.sessions: dict[str, Session] = {}
        self.turns = 0  # turns of the thread so far
        self._lock = threading.Lock()  # held by each turn of the thread, and by a change of role
        self._waker = Waker()
        self._woken = False
        self._base = 0  # the newest snapshot here, looked up at most every _BASE_EVERY seconds
        self._base_at = 0.0
        self._halt = threading.Event()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, W.CHUNK + (1 << 16))
        self.sock.bind(endpoint)

    # ---- from other threads -------------------------------------------------------------

    def lead(self, epoch: int, end: Pos) -> None:
        """This member leads ``epoch`` from ``end``: followers' sessions start again. Applied before it
        returns (the broker, started next, must find ``until`` and ``committed`` set)."""
        with self._lock:
            self._apply_role((epoch, end))

    def follow(self) -> None:
        with self._lock:
            self._apply_role(None)

    def advance(self, end: Pos, durable: bool = True) -> None:
        """The broker wrote its journal up to ``end`` (the broker's thread, once per committed turn): it may
        be shipped; with ``durable`` it is also on this member's disk (fsynced under always), and counts."""
        self.until = end
        if durable:
            self.durable = end
        if not self._woken:  # one wake-up until the thread has looked: no write per turn under load
            self._woken = True
            self._waker.wake()

    def stop(self) -> None:
        self._halt.set()
        self._waker.wake()
        if self.is_alive():
            self.join(5)
        self.sock.close(0)
        self._waker.close()

    def lag(self) -> dict[str, int]:
        """Bytes each follower is behind (same generation; another generation counts its offset whole)."""
        out: dict[str, int] = {}
        for s in list(self.sessions.values()):
            a, u = s.acked, self.until
            out[s.member] = u[1] - a[1] if a[0] == u[0] else u[1]
        return out

    # ---- the thread ---------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        while not self._halt.is_set():
            try:
                ready = dict(poller.poll(50))
                if self._waker.fd in ready:
                    # Drain, then clear: cleared first, a wake-up written in between would be drained
                    # with the flag still set, and no later advance() would write one again.
                    self._waker.drain()
                    self._woken = False
                with self._lock:
                    self._turn(ready)
                self.on_tick()
            except Exception:  # a bug here must not end the stream for good
                log.exception("journal stream: internal error; it carries on")
                time.sleep(0.05)

    def _turn(self, ready: dict[object, int]) -> None:
        self.turns += 1
        if self.sock in ready:
            self._receive()
        now = time.monotonic()
        if now - self._base_at >= _BASE_EVERY:
            self._base, self._base_at = self.mirror.base(), now
        for s in list(self.sessions.values()):
            if now - s.heard > _SESSION_SILENCE:
                del self.sessions[s.member]
                continue
            self._pump(s, now)
        self._count()

    @property
    def leading(self) -> bool:
        """Whether this member leads, and has promised no higher epoch to another since it began."""
        return bool(self.epoch) and self.grants.promised <= self.epoch

    def _apply_role(self, lead: tuple[int, Pos] | None) -> None:
        for s in self.sessions.values():  # each follower starts again, with the leader there is now
            self._send(s.ident, W.frames(W.REFUSE, {"reason": "role changed", "promised": self.grants.promised}))
        self.sessions.clear()
        # The files may have been cut and written again while this member followed: read them afresh.
        self.mirror.close()
        self._base_at = 0.0
        if lead is None:
            self.epoch = 0
            return
        self.committed = START
        self.epoch, self.until = lead
        self.durable = self.until

    def _end(self) -> Pos:
        return self.until if self.epoch else self.mirror.end()

    def _epoch(self) -> int:
        """The epoch this member's stream speaks for: the one it leads, else (a follower, or a leader that
        granted a higher one and serves catch-ups only) the one it promised."""
        return self.epoch if self.leading else self.grants.promised

    def _send(self, ident: bytes, parts: list[bytes]) -> bool:
        try:
            self.sock.send_multipart([ident, *parts], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # gone, or its queue full: it asks again
            return False

    def _receive(self) -> None:
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident = parts[0]
            try:
                kind, h, _ = W.parse(parts[1:])
                if kind == W.FOLLOW:
                    self._follow(ident, h)
                elif kind == W.ACK:
                    self._ack(ident, h)
                elif kind == W.GRANT:
                    self._grant(ident, h)
                elif kind == W.REFUSE and self.epoch and int(h.get("promised", 0)) > self.epoch:
                    self.on_deposed(f"a follower promised epoch {h.get('promised')}")
            except (ProtocolError, KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("journal stream: bad message from %s dropped: %s", ident.hex()[:16], exc)

    def _follow(self, ident: bytes, h: dict[str, object]) -> None:
        member = str(h["member"])
        if member not in self.members or member == self.me:
            self._send(ident, W.frames(W.REFUSE, {"reason": f"{member} is not another member of this group",
                                                  "promised": self.grants.promised}))  # fmt: skip
            return
        their_promised = int(h["promised"])  # type: ignore[call-overload]
        if not self.leading and not h.get("catch_up"):
            # Only a leader is followed: its journal holds everything acknowledged, so what a follower
            # cuts to agree with it was never acknowledged. A member that does not lead serves only a
            # takeover's catch-up (the new leader copying from the member that holds the most).
            self._send(ident, W.frames(W.REFUSE, {"reason": "not leading", "promised": self.grants.promised}))
            return
        my_epoch = self._epoch()
        if their_promised > my_epoch:
            self._send(ident, W.frames(W.REFUSE, {"reason": "stale", "promised": my_epoch}))
            if self.epoch:
                self.on_deposed(f"{member} promised epoch {their_promised}, above this leader's {self.epoch}")
            return
        if not self.leading:  # serving a catch-up: this member's follower may have cut and rewritten files
            self.mirror.close()
        end = self._end()
        their_end = pos(h["end"])
        at = agreed_end(self.grants.history, end, history_from(h["history"]), their_end)
        # acked stays at START until the follower says what it holds after cutting to `at`
        s = Session(ident, member, at, START, int(h.get("base", 0)), time.monotonic())  # type: ignore[call-overload]
        self.sessions[member] = s
        self._send(ident, W.frames(W.START, {"epoch": my_epoch, "history": self.grants.wire(), "at": list(at)}))
        if at < self.mirror.first() and at < end:
            s.snap = (self.mirror.base(), 0)  # its bytes were compacted away: the snapshot first
        log.info("journal stream: %s follows from %s (it had %s; here ends at %s)", member, at, their_end, end)

    def _ack(self, ident: bytes, h: dict[str, object]) -> None:
        s = self.sessions.get(str(h["member"]))
        if s is None or s.ident != ident:  # no session (this member's role changed): start one again
            self._send(ident, W.frames(W.REFUSE, {"reason": "no session", "promised": self.grants.promised}))
            return
        s.heard = time.monotonic()
        end = pos(h["end"])
        if end > s.acked:
            s.acked = end
        while s.inflight and s.inflight[0][0] <= s.acked:
            s.in_flight -= s.inflight.popleft()[1]
        s.snap_acked = int(h.get("snap", 0))  # type: ignore[call-overload]

    def _grant(self, ident: bytes, h: dict[str, object]) -> None:
        epoch = int(h["epoch"])  # type: ignore[call-overload]
        with self.grants.lock:
            ok = self.grants.grant(epoch, bootstrap=bool(h.get("bootstrap")))
            end = self._end()
            answer = {"ok": ok, "promised": self.grants.promised, "history": self.grants.wire(), "end": list(end),
                      "fresh": self.grants.fresh, "empty": end == START and not self.mirror.base()}  # fmt: skip
        self._send(ident, W.frames(W.GRANTED, answer))
        if ok and self.epoch:
            self.on_deposed(f"granted epoch {epoch} to {h.get('candidate')}")

    def _pump(self, s: Session, now: float) -> None:
        if self.epoch and not self.leading:
            return  # it promised a higher epoch: not one more byte of its own goes out as its leader's
        if s.snap is not None:
            self._pump_snapshot(s)
            return
        base = self._base
        if base > s.base and s.sent >= (base, 0):  # a compaction here: the follower gets its snapshot
            s.snap = (base, 0)
            self._pump_snapshot(s)
            return
        sent_any = False
        until = self._end()
        while s.in_flight < W.WINDOW:
            try:
                got = self.mirror.read(s.sent, until, W.CHUNK)
            except Gone:
                self._base = self.mirror.base()
                s.snap = (self._base, 0)
                return
            if got is None:
                break
            at, data = got
            if not self._send(s.ident, W.frames(W.DATA, {"epoch": self._epoch(), "at": list(at)}, data)):
                break
            s.sent = (at[0], at[1] + len(data))
            s.inflight.append((s.sent, len(data)))
            s.in_flight += len(data)
            sent_any = True
        if not sent_any and now - s.alive_at >= _ALIVE_EVERY:
            s.alive_at = now
            self._send(s.ident, W.frames(W.ALIVE, {"epoch": self._epoch(), "end": list(until)}))

    def _pump_snapshot(self, s: Session) -> None:
        assert s.snap is not None
        gen, off = s.snap
        try:
            size = self.mirror.snapshot_size(gen)
            while off - s.snap_acked < W.WINDOW:
                data = self.mirror.read_snapshot(gen, off, W.CHUNK)
                last = off + len(data) >= size
                head = {"epoch": self._epoch(), "gen": gen, "offset": off, "last": last}
                if not self._send(s.ident, W.frames(W.SNAP, head, data)):
                    break
                off += len(data)
                if last:
                    s.snap, s.base, s.snap_acked = None, gen, 0
                    s.sent = max(s.sent, (gen, 0))
                    s.inflight.clear()
                    s.in_flight = 0
                    return
        except FileNotFoundError:  # replaced by a newer one meanwhile: start that one
            s.snap = (self.mirror.base(), 0)
            return
        s.snap = (gen, off)

    def _count(self) -> None:
        """While leading: the highest position a majority of the group holds. Nothing more counts once this
        member has promised a higher epoch to another: that candidate may lead without what follows."""
        if not self.leading:
            return
        ends = sorted([self.durable, *(s.acked for s in self.sessions.values())], reverse=True)
        if len(ends) < self.majority:
            return
        c = ends[self.majority - 1]
        if c > self.committed:
            self.committed = c
            self.on_commit()
