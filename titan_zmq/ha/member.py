"""One member of a broker group (``titan broker --peers``): follow, stand, catch up, lead, step down.

A member starts as a follower: it keeps its copy of the journal from the leader and answers
clients and workers with the leader's address. When Raft makes it leader it asks every member
for a new epoch; with a majority's grants it copies what the most complete of them holds past
its own copy, records where its epoch starts, and starts a broker on its data directory (the
same replay as a restart). That broker ships every committed turn to the followers and sends
replies and leases only once a majority holds the turn. When it loses Raft's leadership, or
a member grants a higher epoch, the broker stops and the member follows again.
"""

from __future__ import annotations

import gc
import logging
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from titan_zmq.aof.journal import DataDir, generations, journal_path
from titan_zmq.broker.loop import Broker
from titan_zmq.config import BrokerConfig, tcp_endpoint
from titan_zmq.errors import ConfigError, ProtocolError, TitanError
from titan_zmq.ha import wire as W
from titan_zmq.ha.election import Election
from titan_zmq.ha.follower import Follower
from titan_zmq.ha.grants import START, Grants, Pos, history_from, last_epoch, pos
from titan_zmq.ha.mirror import Mirror
from titan_zmq.ha.redirect import Redirector
from titan_zmq.ha.source import Source

log = logging.getLogger(__name__)

_GRANT_WAIT = 1.0  # s to wait for the members' answers to a grant request
_CATCH_UP = 60.0  # s a new leader may take to copy what it lacks from the most complete member
_MAX_FAILED = 3  # takeovers that fail in a row before this member leaves the election to the others


def _name(host: str, port: int) -> str:
    return f"{host}:{port}"


def _is_local(host: str) -> bool:
    """Whether ``host`` names an address of this machine (a socket can be bound to it)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    for family, kind, _, _, addr in infos:
        try:
            with socket.socket(family, kind) as s:
                s.bind((addr[0], 0))
            return True
        except OSError:
            continue
    return False


class Member:
    """A group member. ``run()`` blocks until ``stop()``."""

    def __init__(self, config: BrokerConfig) -> None:
        config.validate()
        if config.keys:
            raise ConfigError("--keys (CURVE) is not supported in a group yet: the journal stream and the election "
                              "would travel in clear; run the group on a private network, or one broker with --keys")
        self.config = cfg = config
        members = cfg.members()
        mine = [m for m in members if m[1] == cfg.front]
        if len(mine) > 1:  # the same port on several hosts: the one named by --host, else the one that is here
            mine = [m for m in mine if m[0] == cfg.host] or [m for m in mine if _is_local(m[0])]
        if len(mine) != 1:
            raise ConfigError(f"cannot tell which of --peers {cfg.peers} is this broker (front port {cfg.front}, "
                              f"host {cfg.host}); give each member its own front port, or --host its address")
        self.names = [_name(h, p) for h, p in members]
        self.name = _name(*mine[0])
        self.majority = len(members) // 2 + 1
        self._raft_of = {_name(h, p + 5): _name(h, p) for h, p in members}
        self.root = Path(cfg.data_dir)
        self.data = DataDir(self.root, cfg.fsync)
        self.data.lock()
        snaps, journals = generations(self.root)
        empty = not snaps and all(journal_path(self.root, g).stat().st_size == 0 for g in journals)
        self.grants = Grants(self.root, empty=empty)
        if self.grants.fresh:
            log.info("member %s is new (an empty data directory): it grants no epoch until it has followed a "
                     "leader, unless every member is new", _name(*mine[0]))  # fmt: skip
        always = cfg.fsync == "always"
        self.mirror = Mirror(self.root, "no" if always else cfg.fsync)
        self.role = "follower"
        self.epoch = 0  # the epoch this member leads (0: it does not)
        self.broker: Broker | None = None
        self.started = time.time()
        self._stopping = threading.Event()
        self._retry_at = 0.0
        self._failed = 0  # takeovers that failed in a row
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.source = Source(self.ctx, tcp_endpoint(cfg.host, cfg.repl_port), self.root, self.grants, self.names,
                             self.name, self._committed, self._deposed, self._watch)  # fmt: skip
        self.follower = Follower(self.ctx, self.name, self.mirror, self.grants, always, self._leader_endpoint)
        self.redirector: Redirector | None = None
        others = [r for r, n in self._raft_of.items() if n != self.name]
        me = _name(mine[0][0], mine[0][1] + 5)
        self.election = Election(me, others, cfg.election_timeout, self._changed)

    # ---- where the others are -----------------------------------------------------------

    def leader_name(self) -> str:
        """The leader's front address as this member knows it ("" when none)."""
        if self.role == "leader":
            return self.name
        raft = self.election.leader()
        return self._raft_of.get(raft or "", "")

    def _endpoint(self, name: str) -> str:
        host, port = name.rsplit(":", 1)
        return tcp_endpoint(host.strip("[]"), int(port) + 4)

    def _leader_endpoint(self) -> str | None:
        leader = self.leader_name()
        if not leader or leader == self.name or self.role == "leader":
            return None
        return self._endpoint(leader)

    def group(self) -> dict[str, Any]:
        """What HELLO and ``titan cluster status`` show of this member."""
        leading = self.role == "leader"
        try:
            end = self.source.until if leading else self.mirror.end()
        except (OSError, AttributeError):  # the follower thread swapped its file meanwhile
            end = (0, 0)
        info: dict[str, Any] = {
            "name": self.name, "role": self.role, "epoch": self.epoch or self.grants.promised,
            "leader": self.leader_name(), "members": list(self.names), "raft_term": self.election.raft_term,
            "position": list(end), "uptime": time.time() - self.started,
        }  # fmt: skip
        if leading:
            info["committed"] = list(self.source.committed)
            info["lag"] = self.source.lag()
        else:
            info["following"] = self.follower.source or ""
            info["error"] = self.follower.error
        return info

    # ---- callbacks from other threads ---------------------------------------------------

    def _committed(self) -> None:
        broker = self.broker
        if broker is not None:
            broker.wake()

    def _deposed(self, why: str) -> None:
        broker = self.broker
        if broker is not None and self.role == "leader":
            log.warning("this member stops leading epoch %d: %s", self.epoch, why)
            self.role = "stepping down"
            broker.stop()

    def _changed(self) -> None:
        self.follower.nudge()

    def _watch(self) -> None:
        """The source thread's tick: a leader that Raft no longer backs, or that promised a higher epoch, stops."""
        if self.role != "leader":
            return
        if not self.election.leading:
            self._deposed("Raft no longer backs it (it lost the majority, or another member was elected)")
        elif self.grants.promised > self.epoch:
            self._deposed(f"this member promised epoch {self.grants.promised} to another")

    # ---- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        broker = self.broker
        if broker is not None:
            broker.stop()

    def run(self) -> None:
        self.source.start()
        self.follower.start()
        self.redirector = Redirector(self.config, self)
        log.info("group member %s of %s: following until an election", self.name, ", ".join(self.names))
        try:
            while not self._stopping.is_set():
                if self.election.leading and time.monotonic() >= self._retry_at:
                    try:
                        epoch = self._acquire()
                    except (TitanError, OSError) as exc:  # its copy is damaged, or its disk refuses: not this one
                        log.error("member %s cannot take over: %s", self.name, exc)
                        self.follower.resume()
                        epoch = 0
                    if epoch and self._lead(epoch):
                        continue
                    self._failed += 1
                    if self._failed >= _MAX_FAILED:  # it cannot lead: let Raft choose another member
                        log.warning("member %s could not take over %d times; it leaves the election for another "
                                    "member to win", self.name, self._failed)  # fmt: skip
                        self.election.restart()
                        self._failed = 0
                    self._retry_at = time.monotonic() + random.uniform(0.2, 0.6)
                self.redirector.serve(0.05)
        finally:
            self.close()

    def close(self) -> None:
        if self.redirector is not None:
            self.redirector.close()
            self.redirector = None
        self.election.stop()
        self.follower.stop()
        self.source.stop()
        self.mirror.close()
        self.data.unlock()
        self.ctx.term()

    # ---- taking over --------------------------------------------------------------------

    def _acquire(self) -> int:
        """Collect a majority's grant of a new epoch and everything they hold; 0 if that failed."""
        self.follower.pause()
        epoch = self.grants.promised + 1
        bootstrap = False
        for _ in range(3):
            if not self.election.leading or self._stopping.is_set():
                break
            answers = self._ask(epoch, bootstrap)
            oks = {n: a for n, a in answers.items() if a.get("ok")}
            if len(oks) < self.majority and len(answers) == len(self.names) and not bootstrap \
                    and all(a.get("fresh") and a.get("empty") for a in answers.values()):
                log.info("every member of the group is new and empty: bootstrapping it")
                bootstrap = True
                continue
            if len(oks) >= self.majority:
                if self._catch_up(oks, epoch):
                    end = self.mirror.cut_torn()
                    self.grants.begin(epoch, end)
                    log.info("member %s leads epoch %d from journal position %s (grants: %s)",
                             self.name, epoch, end, ", ".join(sorted(oks)))  # fmt: skip
                    return epoch
                break
            epoch = max([int(a.get("promised", 0)) for a in answers.values()] + [epoch]) + 1
        self.follower.resume()
        return 0

    def _ask(self, epoch: int, bootstrap: bool = False) -> dict[str, dict[str, Any]]:
        """Ask every member (this one too) to grant ``epoch``; their answers, by member."""
        out: dict[str, dict[str, Any]] = {}
        with self.grants.lock:
            fresh = self.grants.fresh
            ok = self.grants.grant(epoch, bootstrap)
            end = self.mirror.end()
            out[self.name] = {"ok": ok, "promised": self.grants.promised, "history": self.grants.wire(),
                              "end": list(end), "fresh": fresh, "empty": end == START and not self.mirror.base()}
        if not ok and not fresh:
            return out
        socks: dict[zmq.Socket[bytes], str] = {}
        poller = zmq.Poller()
        for name in self.names:
            if name == self.name:
                continue
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self._endpoint(name))
            s.send_multipart(W.frames(W.GRANT, {"epoch": epoch, "candidate": self.name, "bootstrap": bootstrap}))
            socks[s] = name
            poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + _GRANT_WAIT
        try:
            # Every answer, or a majority of grants: that is enough to lead safely (each acknowledged
            # record is on a majority, so on one of them), and a dead member must not hold up the takeover.
            while len(out) < len(self.names) and (left := deadline - time.monotonic()) > 0:
                if sum(1 for a in out.values() if a.get("ok")) >= self.majority:
                    break
                for s, _ in poller.poll(int(left * 1000) + 1):
                    try:
                        kind, h, _ = W.parse(s.recv_multipart())
                    except ProtocolError as exc:
                        log.warning("grant answer from %s dropped: %s", socks[s], exc)
                        continue
                    if kind == W.GRANTED:
                        out[socks[s]] = h
        finally:
            for s in socks:
                s.close(0)
        return out

    def _catch_up(self, oks: dict[str, dict[str, Any]], epoch: int) -> bool:
        """Copy what the most complete granting member holds past this member's copy."""

        def rank(a: dict[str, Any]) -> tuple[int, Pos]:
            end = pos(a["end"])
            return last_epoch(history_from(a["history"]), end), end

        mine = rank(oks[self.name])
        best = max(oks, key=lambda n: (rank(oks[n]), n == self.name))
        if best == self.name or rank(oks[best]) <= mine:
            return True
        until = pos(oks[best]["end"])
        log.info("catching up from %s: it holds the journal to %s, this member to %s", best, until, mine[1])
        deadline = time.monotonic() + _CATCH_UP

        def give_up() -> bool:  # Raft moved on, or another candidate got a higher epoch: this takeover is over
            return time.monotonic() > deadline or not self.election.leading or self.grants.promised > epoch

        if self.follower.sync(self._endpoint(best), until, give_up):
            return True
        log.error("could not copy the journal from %s before leading; standing again later", best)
        return False

    def _lead(self, epoch: int) -> bool:
        """Serve as the group's broker for ``epoch`` until deposed or stopped; False if it could not start
        (or its journal could no longer be written)."""
        if self.redirector is not None:
            self.redirector.close()
            self.redirector = None
        self.mirror.close()
        self.epoch = epoch
        self.role = "leader"
        end = self.mirror.end()
        self.source.lead(epoch, end)
        self.data.unlock()  # the broker takes the directory (replay, then its journal)
        ok = True
        try:
            self.broker = Broker(self.config, replica=self)
            self.broker.bind()
            if self.role == "leader":
                self._failed = 0
                self.broker.run()
            else:
                self.broker.close()
        except TitanError as exc:  # its journal cannot be replayed or written (a full disk): another must lead
            log.error("member %s cannot lead: %s", self.name, exc)
            if self.broker is not None:
                self.broker.close()
            ok = False
        finally:
            self.broker = None
            gc.unfreeze()  # the broker froze its replayed state: let this leadership's go
            gc.collect()
            self.role = "follower"
            self.epoch = 0
            self.source.follow()
            self.data.lock()
            if not self._stopping.is_set():
                self.redirector = Redirector(self.config, self)
            self.follower.resume()
            log.info("member %s follows again", self.name)
        return ok

    # ---- what the broker asks of its group ----------------------------------------------

    @property
    def term(self) -> int:
        return self.epoch

    @property
    def committed(self) -> Pos:
        return self.source.committed

    def advance(self, end: Pos, durable: bool) -> None:
        self.source.advance(end, durable)
