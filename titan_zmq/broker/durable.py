"""What of the broker's state the journal keeps, and how it comes back after a restart.

The records are the typed ones of ``titan_zmq.aof.records``: a job accepted (``Accepted``) with
its content (``Blob``), its progress after each turn that changed it (``Progress``), edges added
at run time (``Edge``), ended jobs forgotten (``Forgotten``); in snapshots, the last lease issued
(``LastLease``) and the order jobs ended in (``EndOrder``); and the KV store's, the services'
and the schedules' own records.

Workers are not journaled: they announce themselves again. Jobs that were running come
back as *orphans*: still running, on no connected worker, until their worker reconnects
and reports them (it may even have finished them meanwhile), or the heartbeat window
passes and they are queued again with the attempt counted.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable
from typing import Any

from titan_zmq.aof import records as R
from titan_zmq.aof.kv import KVStore
from titan_zmq.broker.scheduler import Entry, Scheduler, state_op
from titan_zmq.broker.scheduler.objects import receives_objects
from titan_zmq.errors import AOFCorrupt
from titan_zmq.job import FINAL_STATES, Job, JobState

log = logging.getLogger(__name__)

_STATES = {s.value: s for s in JobState}


class Restorer:
    """Feeds journal ops into an empty scheduler and KV store, then makes the result runnable."""

    def __init__(
        self, sched: Scheduler, kv: KVStore, orphan_wait: float, services: Any = None, schedules: Any = None
    ) -> None:
        self.sched = sched
        self.kv = kv
        self.orphan_wait = orphan_wait
        self.max_lease = 0
        self.seq = 0
        self.skipped = 0
        self.inputs: dict[str, dict[str, Any]] = {}  # journaled parents' results, by child
        self._handlers: dict[type, Callable[[Any], None]] = {
            R.Accepted: self._accept, R.Blob: self._blob, R.Progress: self._state, R.Forgotten: self._forget,
            R.LastLease: self._lease, R.EndOrder: self._order, R.Edge: self._edge,
            R.ObjectAdded: self._object, R.ObjectReleased: self._released,
        }  # fmt: skip
        for cls in R.KV_VERBS.values():
            self._handlers[cls] = kv.apply
        if services is not None:
            for cls in (R.ServiceDeployed, R.ServiceStopped, R.ReplicaFailed):
                self._handlers[cls] = services.apply
        if schedules is not None:
            for cls in (R.ScheduleAdded, R.ScheduleRemoved, R.ScheduleFired):
                self._handlers[cls] = schedules.apply

    def apply(self, op: list[Any]) -> None:
        """Replay one record read from the snapshot or the journal."""
        rec = R.decode(op)
        handler = self._handlers.get(type(rec))
        if handler is None:
            raise AOFCorrupt(f"a {type(rec).__name__} record ({op[0]!r}) has no place among a broker's state")
        handler(rec)

    def _accept(self, rec: R.Accepted) -> None:
        try:
            job = Job.from_journal(rec.spec)
        except (TypeError, AttributeError) as exc:
            raise AOFCorrupt(f"a journaled job does not fit this version's job fields: {exc}") from None
        sched = self.sched
        entry = Entry(job, self.seq, rec.submitted_at)
        self.seq += 1
        entry.state = JobState.PENDING
        entry.refs = receives_objects(job)
        sched.jobs[job.id] = entry
        if job.idempotency_key is not None:
            sched.idempotency[job.idempotency_key] = job.id
        if job.dag is not None:
            sched.dags.setdefault(job.dag, {})[job.id] = None
            entry.order = sched.dag_order.setdefault(job.dag, entry.seq)
        sched.counters["submitted"] += 1

    def _blob(self, rec: R.Blob) -> None:
        self.sched.blobs[rec.sha] = [rec.content, 0]

    def _forget(self, rec: R.Forgotten) -> None:
        jid = rec.id
        finished = self.sched.finished
        if finished and finished[0] == jid:  # the usual case: the oldest ended job goes
            finished.popleft()
        elif jid in finished:
            finished.remove(jid)
        self.sched.forget(jid)
        self.inputs.pop(jid, None)

    def _edge(self, rec: R.Edge) -> None:
        e = self.sched.jobs.get(rec.child)
        if e is not None and rec.parent not in e.job.depends_on:
            e.job = dataclasses.replace(e.job, depends_on=(*e.job.depends_on, rec.parent))

    def _object(self, rec: R.ObjectAdded) -> None:
        self.sched.directory.add(
            rec.id, rec.size, kind=rec.kind, name=rec.name, producer=rec.producer, owner=rec.owner, ttl=rec.ttl_at,
            artifact=rec.artifact, replay=True,
        )  # fmt: skip

    def _released(self, rec: R.ObjectReleased) -> None:
        self.sched.directory.release(rec.id, rec.owner, replay=True)

    def _lease(self, rec: R.LastLease) -> None:
        self.max_lease = max(self.max_lease, int(rec.lease))

    def _order(self, rec: R.EndOrder) -> None:
        jobs = self.sched.jobs
        self.sched.finished.clear()
        self.sched.finished.extend(j for j in rec.ids if j in jobs)

    def _state(self, rec: R.Progress) -> None:
        sched = self.sched
        if rec.lease > self.max_lease:
            self.max_lease = rec.lease
        e = sched.jobs.get(rec.id)
        if e is None:  # forgotten in the same turn (its Forgotten record came first)
            self.skipped += 1
            return
        was_final = e.state in FINAL_STATES
        e.state = _STATES[rec.state]
        if was_final and e.state not in FINAL_STATES:  # run again (titan retry): not among the ended any more
            try:
                sched.finished.remove(e.job.id)
            except ValueError:
                pass
        e.attempts, e.lease, e.worker_name, e.lost, e.misses = rec.attempts, rec.lease, rec.worker, rec.lost, rec.misses
        e.queued_at, e.started_at, e.finished_at = rec.queued_at, rec.started_at, rec.finished_at
        e.not_before, e.pin, e.pin_soft = rec.not_before, rec.pin, rec.pin_soft  # not_before: wall time till finish()
        e.result, e.error, e.error_type, e.traceback = rec.result, rec.error, rec.error_type, rec.traceback
        e.exit_code, e.stdout, e.stderr = rec.exit_code, rec.stdout, rec.stderr
        e.level, e.fb_base, e.fetched = rec.level, rec.fb_base, rec.fetched
        if rec.inputs:
            self.inputs[e.job.id] = rec.inputs
        if e.state in FINAL_STATES and not was_final:
            if e.state is JobState.SUCCEEDED:
                sched.counters["succeeded"] += 1
            elif e.state is not JobState.CANCELLED:
                sched.counters["failed"] += 1
            sched.finished.append(e.job.id)  # forgetting is journaled (Forgotten), never re-decided here

    def finish(self) -> dict[str, int]:
        """Queue what was queued, hold what was held, wait for the workers of what was running."""
        sched = self.sched
        now, wall = sched.clock(), sched.wall()
        counts = {"queued": 0, "held": 0, "pending": 0, "orphaned": 0}
        self._count_blobs()
        sched.ranks.rebuild(sched.jobs.values())  # ranks are not journaled: computed afresh
        for e in list(sched.jobs.values()):
            if e.state in FINAL_STATES:
                e.not_before = 0.0
            else:
                counts[self._resume(e, now, wall)] += 1
        sched.restart_counters(self.seq, self.max_lease)
        return counts

    def _count_blobs(self) -> None:
        """Each content's holders: the jobs that have not succeeded (a failed one may run again)."""
        sched = self.sched
        for slot in sched.blobs.values():
            slot[1] = 0
        for e in sched.jobs.values():
            if e.job.blob is not None and e.state is not JobState.SUCCEEDED:
                held = sched.blobs.get(e.job.blob)
                if held is not None:
                    held[1] += 1
                elif e.state not in FINAL_STATES:
                    raise AOFCorrupt(f"job {e.job.id} needs blob {e.job.blob[:12]}..., which the journal lacks")
        for sha in [s for s, slot in sched.blobs.items() if slot[1] <= 0]:
            del sched.blobs[sha]

    def _resume(self, e: Entry, now: float, wall: float) -> str:
        """Make a job that had not ended runnable again; returns what it is now, for the start-up log."""
        sched = self.sched
        st = e.state
        nb_wall, e.not_before = e.not_before, 0.0
        known = self.inputs.get(e.job.id)
        if st is JobState.PENDING:
            sched.graph.wire_parents(e, known)
            return "pending"
        if e.job.depends_on:
            e.inputs = {**_inputs(sched, e), **(known or {})}
        if st is JobState.AWAITING:  # a gate: still waiting for its person, its deadline kept
            sched.timers.await_gate(e, max(0.001, nb_wall - wall) if nb_wall else None)
            return "queued"
        if st is JobState.RUNNING and e.job.kind == "service":
            if sched.service_nodes is not None:  # waiting for its service again (it came back from the journal)
                sched.service_nodes.resume(e)
            return "queued"
        if st is JobState.RUNNING:
            e.worker = None
            sched.orphans[e.job.id] = now + self.orphan_wait
            return "orphaned"
        if nb_wall > wall:
            sched.timers.hold(e, now + (nb_wall - wall))
            return "held"
        if e.pin is not None and e.pin_soft:
            e.pin = None  # its parent's worker is not known to be back: any eligible one will do
        queued_at = e.queued_at
        sched.queues.enqueue(e)
        e.queued_at = queued_at or e.queued_at
        return "queued"


def _inputs(sched: Scheduler, e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in e.job.depends_on:
        parent = sched.jobs.get(p)
        out[p] = parent.result if parent is not None and parent.state is JobState.SUCCEEDED else None
    return out


def capture(sched: Scheduler, kv: KVStore, services: Any = None, schedules: Any = None) -> list[list[Any]]:
    """Ops that rebuild the live state as it is now: the snapshot of a compaction.

    It runs inside a broker turn, so it must be quick: the cyclic GC is paused while it
    allocates (it would rescan the whole job table again and again)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        ops = _capture(sched, kv)
        if services is not None:
            ops.extend(services.capture())
        if schedules is not None:
            ops.extend(schedules.capture())
        return ops
    finally:
        if was_enabled:
            gc.enable()


def _capture(sched: Scheduler, kv: KVStore) -> list[list[Any]]:
    now, wall = sched.clock(), sched.wall()
    ops: list[list[Any]] = []
    blobs_done: set[str] = set()
    for e in sched.jobs.values():
        sha = e.job.blob
        if sha is not None and sha not in blobs_done and e.state is not JobState.SUCCEEDED and sha in sched.blobs:
            ops.append(R.encode(R.Blob(sha, sched.blobs[sha][0])))
            blobs_done.add(sha)
        ops.append(R.encode(R.Accepted(e.job.to_wire(), e.submitted_at)))
        ops.append(state_op(e, now, wall))
    ops.append(R.encode(R.EndOrder(list(sched.finished))))
    ops.append(R.encode(R.LastLease(sched.last_lease)))
    ops.extend(sched.directory.capture())
    ops.extend(kv.capture())
    return ops
