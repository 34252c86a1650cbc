"""The receiving half of the journal stream: a thread that keeps this member's copy.

It follows the member it is pointed at (the leader, or during a takeover the member that
holds the most), writes what arrives into the data directory (``Mirror``), and acknowledges
the end of its copy: under ``always`` once a group of messages is fsynced, else once it is
written. It takes nothing from a leader whose epoch is below the one this member promised,
and it cuts, before taking anything, whatever its copy holds past where the two agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from titan_zmq.errors import JournalWriteError, ProtocolError
from titan_zmq.ha import wire as W
from titan_zmq.ha.grants import Grants, Pos, history_from, pos
from titan_zmq.ha.mirror import Mirror, StreamGap

log = logging.getLogger(__name__)

SILENCE = 2.0  # s without a message from the source before the session is started again
_DISK_RETRY = 1.0  # s before trying again after the disk refused a write


class Follower(threading.Thread):
    """Keep this member's journal a copy of ``target()``'s (a replication endpoint, or None: idle)."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], name: str, mirror: Mirror, grants: Grants, always: bool,
        target: Callable[[], str | None],
    ) -> None:  # fmt: skip
        super().__init__(name="titan-ha-follower", daemon=True)
        self.ctx = ctx
        self.name_ = name
        self.mirror = mirror
        self.grants = grants
        self.always = always  # fsync each group of messages before acknowledging it
        self.target = target
        self.source: str | None = None  # the endpoint of the session now running
        self.error = ""  # the last reason the copy could not be kept (a full disk), "" when fine
        self._halt = threading.Event()
        self._paused = threading.Event()
        self._busy = threading.Lock()
        self._nudge = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self._nudge.set()
        if self.is_alive():
            self.join(5)

    def nudge(self) -> None:
        """The leader may have changed: look at ``target()`` again now."""
        self._nudge.set()

    def pause(self) -> None:
        """Stop following (this member is about to lead); returns once no session runs."""
        self._paused.set()
        self._nudge.set()
        with self._busy:
            pass

    def resume(self) -> None:
        self._paused.clear()
        self._nudge.set()

    # ---- the thread ---------------------------------------------------------------------

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._follow_once()
            except Exception:  # a bug must not end this member's copy for good
                log.exception("journal copy: internal error; it starts again")
                self._nudge.wait(0.5)
                self._nudge.clear()

    def _follow_once(self) -> None:
        """One session with the leader there is now (or a short wait when there is none)."""
        endpoint = None if self._paused.is_set() else self.target()
        if endpoint is None:
            self._nudge.wait(0.1)
            self._nudge.clear()
            return
        with self._busy:
            if self._paused.is_set():
                return
            ok = self.session(endpoint, None, self._moved(endpoint))
        if not ok:
            self._nudge.wait(_DISK_RETRY if self.error else 0.1)
            self._nudge.clear()

    def _moved(self, endpoint: str) -> Callable[[], bool]:
        """Whether the session with ``endpoint`` should end: paused, or the leader is now another."""
        return lambda: self._paused.is_set() or self.target() != endpoint

    def sync(self, endpoint: str, until: Pos, give_up: Callable[[], bool]) -> bool:
        """Copy from ``endpoint`` until this member's journal reaches ``until`` (a takeover), unless
        ``give_up()`` first."""
        with self._busy:
            return self.session(endpoint, until, give_up)

    def session(self, endpoint: str, until: Pos | None, done: Callable[[], bool]) -> bool:
        """Follow ``endpoint`` until ``done()`` (or, with ``until``, until the copy reaches it).
        Returns whether it ended well (reached ``until``, or was told to stop)."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.setsockopt(zmq.MAXMSGSIZE, W.CHUNK + (1 << 16))
        sock.connect(endpoint)
        self.source = endpoint
        try:
            return self._session(sock, until, done)
        except (JournalWriteError, OSError) as exc:  # a full or failing disk: the others carry the group
            text = str(exc) if isinstance(exc, JournalWriteError) else f"cannot write {self.mirror.root}: {exc}"
            if self.error != text:
                log.error("this member cannot keep its copy of the journal (it retries every %.0fs; the group "
                          "goes on while a majority can): %s", _DISK_RETRY, text)  # fmt: skip
            self.error = text
            return False
        except (StreamGap, ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.warning("journal stream from %s: %s; starting again", endpoint, exc)
            return False
        finally:
            self.source = None
            sock.close(0)
            if self.always:
                try:
                    self.mirror.sync()
                except OSError as exc:
                    self.error = f"cannot fsync {self.mirror.root}: {exc}"

    def _session(self, sock: zmq.Socket[bytes], until: Pos | None, done: Callable[[], bool]) -> bool:
        g = self.grants
        hello = {"member": self.name_, "promised": g.promised, "history": g.wire(), "end": list(self.mirror.end()),
                 "base": self.mirror.base(), "catch_up": until is not None}  # fmt: skip
        sock.send_multipart(W.frames(W.FOLLOW, hello))
        heard = time.monotonic()
        started = False
        snap = 0
        while True:
            if until is not None and started and self.mirror.end() >= until:
                return True
            if done():
                return until is None
            if not sock.poll(50):
                if time.monotonic() - heard > SILENCE:
                    return False
                continue
            heard = time.monotonic()
            wrote = False
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind, h, data = W.parse(parts)
                if kind == W.REFUSE:  # "not leading" is every follower's lot during an election
                    log.log(logging.DEBUG if h.get("reason") == "not leading" else logging.INFO,
                            "journal stream refused: %s", h.get("reason"))  # fmt: skip
                    return False
                epoch = int(h["epoch"])
                with g.lock:
                    if epoch < g.promised:  # a leader of an older epoch: nothing from it
                        sock.send_multipart(W.frames(W.REFUSE, {"reason": "stale", "promised": g.promised}))
                        return False
                    if kind == W.START:
                        self._start(pos(h["at"]), h, epoch)
                        started = True
                    elif kind == W.DATA and started and data is not None:
                        self.mirror.append(pos(h["at"]), data)
                        wrote = True
                    elif kind == W.SNAP and started and data is not None:
                        self.mirror.snapshot_part(int(h["gen"]), int(h["offset"]), data, bool(h["last"]))
                        snap = 0 if h["last"] else int(h["offset"]) + len(data)
                        wrote = True
            if started:
                if wrote and self.always:
                    self.mirror.sync()
                self.error = ""
                sock.send_multipart(W.frames(W.ACK, {"member": self.name_, "end": list(self.mirror.end()),
                                                     "snap": snap}))  # fmt: skip

    def _start(self, at: Pos, h: dict[str, object], epoch: int) -> None:
        """Cut what differs from the source, take its history and epoch."""
        if at < self.mirror.end():
            self.mirror.truncate(at)
        self.grants.follow(history_from(h["history"]))
        self.grants.adopt(epoch)
