"""Membership: workers joining and re-joining, heartbeats, workers lost or leaving, and the
orphans a broker restart leaves (jobs that were running, until their worker reports back)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from titan_zmq.broker.scheduler.state import Part, WorkerInfo, fmt_tags
from titan_zmq.job import FINAL_STATES, JobState

log = logging.getLogger(__name__)


class Membership(Part):
    """The workers the broker knows, and what their coming and going does to jobs."""

    def worker_ready(self, ident: bytes, info: dict[str, Any]) -> WorkerInfo:
        """A worker joins or re-joins. Reconcile the jobs it says it still holds."""
        st = self.st
        w = self._register(ident, info)
        objects = info.get("objects")
        if isinstance(objects, dict):  # its object server, and what its store holds
            w.endpoint = str(objects.get("endpoint") or "")
            st.directory.worker_joined(w, w.endpoint, list(objects.get("held") or ()))
        running = list(info.get("running") or ())
        leases = list(info.get("leases") or ())
        held_lease = dict(zip(running, leases + [0] * (len(running) - len(leases)), strict=True))
        held = set(running)
        seen = int(info.get("seen_lease") or 0)
        # Jobs the broker leased to it that it no longer holds were lost with its previous session,
        # unless their lease is newer than anything it had seen when it sent this (still in flight).
        for jid in list(w.running - held):
            e = st.jobs.get(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker == ident and e.lease > seen:
                continue
            w.running.discard(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker == ident:
                st.outcomes.lost(e, w.name)
        if st.orphans:
            self._orphans_of(w, held, seen)
        for jid in held:
            self._reconcile(w, jid, held_lease[jid])
        st.pool.joined(w)
        return w

    def _register(self, ident: bytes, info: dict[str, Any]) -> WorkerInfo:
        """The worker's record, new or refreshed from what it announced."""
        st = self.st
        now = st.clock()
        tags = frozenset(info["tags"]) | {"cpu"}
        w = st.workers.get(ident)
        if w is None:
            w = WorkerInfo(
                ident=ident, name=info["name"], host=info["host"], tags=tags, slots=max(1, info["slots"]),
                pid=info["pid"], deadline=now + st.interval * st.liveness, joined_at=now,
            )  # fmt: skip
            st.workers[ident] = w
            st.fx.events.append(("worker", {"name": w.name, "host": w.host, "state": "joined"}))
            log.info("worker %s joined from %s with tags %s and %d slots", w.name, w.host, fmt_tags(tags), w.slots)
        else:
            w.name, w.host, w.tags, w.pid = info["name"], info["host"], tags, info["pid"]
            w.slots = max(1, info["slots"])
        w.cached = set(info.get("cached") or ())
        w.draining = bool(info.get("draining"))
        w.address = str(info.get("address") or w.host)
        w.prefetch = max(0, int(info.get("prefetch") or 0))
        w.adapt(st.prefetch_below)
        return w

    def _reconcile(self, w: WorkerInfo, jid: str, lease: int) -> None:
        """Worker ``w`` says it holds job ``jid`` (under ``lease``): keep it there, or tell it to stop."""
        st = self.st
        ident = w.ident
        e = st.jobs.get(jid)
        if e is None:
            log.warning("worker %s holds job %s, unknown to this broker; told to stop it", w.name, jid)
            st.fx.add_kill(ident, jid)
        elif e.state in FINAL_STATES:
            st.fx.add_kill(ident, jid)  # harmless if it is only a held result
            w.running.add(jid)
        elif (e.state is JobState.RUNNING and e.worker not in (None, ident)) or e.state is JobState.RETRYING:
            # Leased elsewhere, or its failure here is known and its retry waits out a backoff.
            st.fx.add_kill(ident, jid)
            w.running.add(jid)
        else:
            # Queued again, still leased to it, or running there when the broker restarted:
            # it runs there, so let it finish there.
            st.touch(e)
            st.orphans.pop(jid, None)
            e.state = JobState.RUNNING
            e.not_before = 0.0
            e.worker = ident
            e.worker_name = w.name
            if lease:
                e.lease = lease
            if e.attempts == 0:
                e.attempts = 1
            w.running.add(jid)

    def _orphans_of(self, w: WorkerInfo, held: set[str], seen: int) -> None:
        """After a restart, worker ``w`` is back: its jobs from before that it no longer holds
        were lost there (or, with a lease it never saw, never reached it): queue them now."""
        st = self.st
        for jid in [j for j in st.orphans if j not in held]:
            e = st.jobs.get(jid)
            if e is None or e.state is not JobState.RUNNING or e.worker is not None:
                del st.orphans[jid]
            elif e.worker_name == w.name:
                del st.orphans[jid]
                if e.lease > seen:  # the broker stopped before its ASSIGN got there
                    e.attempts = max(0, e.attempts - 1)
                    st.queues.enqueue(e)
                else:
                    st.outcomes.lost(e, w.name, "while the broker was down")

    def expire_orphans(self) -> None:
        """Re-run jobs whose worker did not come back in time after a restart (attempt counted)."""
        st = self.st
        now = st.clock()
        for jid, deadline in list(st.orphans.items()):
            if deadline > now:
                continue
            del st.orphans[jid]
            e = st.jobs.get(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker is None:
                st.outcomes.lost(e, e.worker_name or "?", "and did not come back after the broker restarted")

    def beat(self) -> float:
        """The heartbeat interval asked of workers now: the configured one, longer with more workers
        than ``heartbeat_rate`` allows at it (Nomad scales its heartbeat TTLs the same way)."""
        st = self.st
        if st.beat_rate <= 0:
            return st.interval
        return max(st.interval, len(st.workers) / st.beat_rate)

    def seen(self, w: WorkerInfo) -> None:
        """A message from ``w``: it is alive for another heartbeat window (of the longer of the interval
        asked now and the one it was last told: it may not have heard of a shorter one yet)."""
        st = self.st
        w.seen_at = now = st.clock()
        w.deadline = now + max(self.beat(), w.told) * st.liveness

    def worker_gone(self, ident: bytes, reason: str, stopped: Iterable[str] = ()) -> None:
        """Forget a worker; re-queue the jobs it held. ``stopped`` ones were stopped cleanly."""
        st = self.st
        w = st.workers.pop(ident, None)
        if w is None:
            return
        for hook in st.gone_hooks:
            hook(ident)
        if st.objects:
            st.directory.worker_lost(w)  # before its jobs are queued again: their inputs may need remaking
        log.warning("worker %s removed: %s; %d job(s) go back to the queue", w.name, reason, len(w.running))
        clean = set(stopped)
        for jid in sorted(w.running):
            e = st.jobs.get(jid)
            if e is None or e.state is not JobState.RUNNING or e.worker != ident:
                continue
            if jid in clean:
                st.outcomes.interrupted(e, w.name)
            else:
                st.outcomes.lost(e, w.name)
        st.fx.events.append(("worker", {"name": w.name, "host": w.host, "state": "left", "reason": reason}))

    def expire_workers(self) -> float:
        """Remove workers silent past their deadline. Returns the earliest remaining deadline."""
        st = self.st
        now = st.clock()
        nxt = now + st.interval * st.liveness
        for ident, w in list(st.workers.items()):
            if now >= w.deadline:
                self.worker_gone(ident, f"no heartbeat for {now - w.seen_at:.1f}s "
                                        f"(its window: {w.deadline - w.seen_at:.1f}s)")  # fmt: skip
            else:
                nxt = min(nxt, w.deadline)
        return nxt
