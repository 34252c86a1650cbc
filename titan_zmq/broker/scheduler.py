"""The scheduler: the job table, ready queues by capability, placement, retries and leases.

It holds no sockets. The broker loop feeds it decoded messages and sends what it
returns, so every rule here is testable with a fake clock and no network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from titan_zmq.errors import BadRequest, Conflict, JobError, LimitExceeded, UnknownJob
from titan_zmq.job import FINAL_STATES, Job, JobState, backoff_delay

log = logging.getLogger(__name__)

# Outcomes a worker reports for an attempt.
OUT_SUCCEEDED = "succeeded"
OUT_FAILED = "failed"
OUT_TIMEOUT = "timeout"
OUT_CANCELLED = "cancelled"
OUT_INTERRUPTED = "interrupted"  # the worker stopped it while shutting down
OUT_CACHE_MISS = "cache_miss"  # the worker lacked a script blob it was thought to hold
OUT_RETURNED = "returned"  # a prefetched job waited too long for a slot there and came back unstarted
OUTCOMES = frozenset(
    {OUT_SUCCEEDED, OUT_FAILED, OUT_TIMEOUT, OUT_CANCELLED, OUT_INTERRUPTED, OUT_CACHE_MISS, OUT_RETURNED}
)
_EWMA = 0.2  # weight of the newest runtime in a worker's average
_MAX_MISSES = 3  # a job whose content workers fail to store this often fails


class Entry:
    """The broker's mutable view of one job: its spec and its progress."""

    __slots__ = (
        "attempts",
        "children",
        "error",
        "error_type",
        "exit_code",
        "fb_base",
        "finished_at",
        "inputs",
        "job",
        "lean",
        "lease",
        "level",
        "lost",
        "misses",
        "not_before",
        "owner",
        "pin",
        "pin_soft",
        "queued_at",
        "result",
        "seq",
        "started_at",
        "state",
        "stderr",
        "stdout",
        "submitted_at",
        "traceback",
        "waiting_on",
        "watchers",
        "wire",
        "worker",
        "worker_name",
    )  # fmt: skip

    def __init__(self, job: Job, seq: int, now_wall: float) -> None:
        self.job = job
        self.seq = seq
        self.state = JobState.QUEUED
        self.attempts = 0
        self.lease = 0  # id of its current (or last) lease; results of other leases are stale
        self.lost = 0
        self.misses = 0
        self.owner: bytes | None = None  # the client connection that submitted it, while it is unfinished
        self.worker: bytes | None = None  # identity of the worker holding the lease
        self.worker_name: str | None = None
        self.result: Any = None
        self.error: str | None = None
        self.error_type: str | None = None
        self.traceback: str | None = None
        self.exit_code: int | None = None
        self.stdout = ""
        self.stderr = ""
        self.submitted_at = now_wall
        self.queued_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.not_before = 0.0  # monotonic time before which it may not run (delay, backoff)
        self.watchers: list[bytes] | None = None
        self.lean: bytes | None = None  # the watcher (a map) that hears of a success as [id, result] only
        self.children: list[str] | None = None  # jobs waiting on this one
        self.inputs: dict[str, Any] | None = None  # parents' results, for a job with parents
        self.waiting_on = 0  # parents not ended yet
        self.pin: str | None = job.node  # the worker it must (or, if pin_soft, should) run on
        self.pin_soft = False
        self.level = 0  # fallback level: 0 the job as written, n its n-th fallback
        self.fb_base = 0  # attempts made before this level (retries count per level)
        # The wire map of every field but id and args, shared by the jobs of one template (None: to_wire()).
        self.wire: dict[str, Any] | None = None


def state_op(e: Entry, now: float, wall: float) -> list[Any]:
    """The journal op that restores ``e``'s progress (``["S", id, ...]``; see ``broker.durable``)."""
    nb = wall + (e.not_before - now) if e.not_before else 0.0
    return [
        "S", e.job.id, e.state.value, e.attempts, e.lease, e.worker_name, e.lost, e.misses,
        e.queued_at, e.started_at, e.finished_at, nb, e.pin, e.pin_soft,
        e.result, e.error, e.error_type, e.traceback, e.exit_code, e.stdout, e.stderr, e.inputs, e.level, e.fb_base,
    ]  # fmt: skip


@dataclass
class WorkerInfo:
    """A connected worker as the broker sees it."""

    ident: bytes
    name: str
    host: str
    tags: frozenset[str]
    slots: int
    pid: int
    deadline: float
    joined_at: float
    running: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    last_sent: float = 0.0
    done: int = 0
    failed: int = 0
    prefetch: int = 0  # extra jobs it will hold beyond its slots
    ewma: float | None = None  # average runtime of its recent jobs, seconds
    short: bool = False  # its recent jobs are short: its prefetch window is open
    window: int = 0  # jobs it may hold beyond its slots now (0 while its jobs are not short)
    load: dict[str, Any] = field(default_factory=dict)  # its machine's cpu/mem, from heartbeats
    draining: bool = False  # takes no new jobs (a node agent is scaling it down)
    address: str = ""  # where its services are reached (its IP facing the broker)

    @property
    def free(self) -> int:
        """Credit: free slots, plus the prefetch window while its jobs are short."""
        if self.draining:
            return 0
        return self.slots + self.window - len(self.running)

    def adapt(self, horizon: float) -> None:
        """Size the prefetch window from its jobs' average runtime: enough to keep each slot busy
        for about ``horizon`` seconds, at most what it announced, and none while its jobs are long."""
        ewma = self.ewma
        if ewma is not None and ewma < horizon:
            self.short, self.window = True, min(self.prefetch, int(self.slots * horizon / max(ewma, 1e-6)))
        else:
            self.short, self.window = False, 0

    def describe(self, now: float, interval: float, liveness: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "tags": sorted(self.tags),
            "slots": self.slots,
            "used": min(len(self.running), self.slots),
            "held": len(self.running),
            "running": sorted(self.running),
            "pid": self.pid,
            "done": self.done,
            "failed": self.failed,
            "last_heartbeat_age": max(0.0, interval * liveness - (self.deadline - now)),
            "uptime": max(0.0, now - self.joined_at),
            "cpu": self.load.get("cpu"),
            "mem": self.load.get("mem"),
            "load1": self.load.get("load1"),
            "draining": self.draining,
        }


@dataclass
class Effects:
    """What the broker must send after the scheduler changed state."""

    assign: dict[bytes, list[dict[str, Any]]] = field(default_factory=dict)
    blobs: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    acks: dict[bytes, list[tuple[str, int]]] = field(default_factory=dict)
    kill: dict[bytes, list[tuple[str, int]]] = field(default_factory=dict)
    done: dict[bytes, list[dict[str, Any]]] = field(default_factory=dict)
    ok: dict[bytes, list[list[Any]]] = field(default_factory=dict)  # [id, result] of successes, for lean watchers
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add_kill(self, ident: bytes, job_id: str, lease: int = 0) -> None:
        """Tell a worker to stop ``job_id`` (only its lease ``lease``; 0: whatever it holds)."""
        self.kill.setdefault(ident, []).append((job_id, lease))

    def clear(self) -> None:
        self.assign.clear()
        self.blobs.clear()
        self.acks.clear()
        self.kill.clear()
        self.done.clear()
        self.ok.clear()
        self.events.clear()


def _least_loaded(ws: list[WorkerInfo], blob: str | None) -> WorkerInfo:
    """Where a job whose content is ``blob`` goes among ``ws`` (see :func:`_load`)."""
    w = ws[0]
    best = _load(w, blob)
    for x in ws[1:]:
        k = _load(x, blob)
        if k < best:
            w, best = x, k
    return w


def _load(w: WorkerInfo, blob: str | None) -> tuple[float, bool, int, int]:
    """How busy ``w`` is, for placing a job whose content is ``blob``: least loaded first; among
    equals, one that already holds the content, then one with fewer jobs held and done."""
    held = len(w.running)
    return held / w.slots, blob is not None and blob not in w.cached, held, w.done


def _plain(job: Job) -> bool:
    """Whether a new job goes straight to a queue: no parents, delay, condition, gate, fallback, pin,
    content to keep, idempotency key or DAG to note."""
    return not (
        job.depends_on or job.delay > 0 or job.kind == "approval" or job.fallback or job.wait is not None
        or job.node is not None or job.blob is not None or job.idempotency_key is not None or job.dag is not None
    )  # fmt: skip


def _fmt_tags(tags: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(tags)) + "}"


class Scheduler:
    """Jobs, queues and workers; the rules of dispatch, retry and failure."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        heartbeat_interval: float = 0.5,
        heartbeat_liveness: int = 5,
        max_finished: int = 100_000,
        max_lost: int = 3,
        prefetch_below: float = 0.05,
        max_dag_jobs: int = 100_000,
        max_pending_per_client: int = 1_000_000,
        rng: random.Random | None = None,
    ) -> None:
        self.prefetch_below = prefetch_below
        self.max_dag_jobs = max_dag_jobs
        self.max_pending_per_client = max_pending_per_client
        self.pending: dict[bytes, int] = {}  # unfinished jobs by the client connection that submitted them
        self.clock = clock
        self.wall = wall
        self.interval = heartbeat_interval
        self.liveness = heartbeat_liveness
        self.max_finished = max_finished
        self.max_lost = max_lost
        self.rng = rng or random.Random()
        self.jobs: dict[str, Entry] = {}
        self.workers: dict[bytes, WorkerInfo] = {}
        self.blobs: dict[str, list[Any]] = {}  # sha -> [content, refcount]
        self.idempotency: dict[str, str] = {}
        self.dags: dict[str, dict[str, None]] = {}  # DAG id -> its job ids, in submission order
        # Ready queues by placement: (required tags, pinned worker name or None).
        self._queues: dict[tuple[frozenset[str], str | None], list[tuple[int, int, str]]] = {}
        self._unpin: list[tuple[float, int, str]] = []  # soft affinity: when a pinned job may go anywhere
        self._held: list[tuple[float, int, str]] = []  # (not_before, seq, id): delayed and retrying
        self._gates: list[tuple[float, int, str]] = []  # (deadline, seq, id): approval gates with a timeout
        self._fb_waits: list[tuple[float, int, str, int]] = []  # (deadline, seq, id, level): fallback waits
        self._finished: deque[str] = deque()
        self._seq = itertools.count()
        self._leases = itertools.count(1)
        self.last_lease = 0
        self.fx = Effects()
        self.counters = {"submitted": 0, "succeeded": 0, "failed": 0, "dispatched": 0}
        # Jobs whose state changed this turn (journaled and published), and, when journaling (a data
        # directory is set), the turn's other journal ops in order.
        self._dirty: dict[str, Entry] = {}
        # Whether changes are kept for take_changes(); the broker turns it off while nothing would
        # read them (no journal, no subscriber to job events).
        self.track_changes = True
        self.ops: list[list[Any]] | None = None
        # After a restart: jobs that were running, by when their worker must have come back.
        self.orphans: dict[str, float] = {}
        self.gone_hooks: list[Callable[[bytes], None]] = []  # told when a worker is removed

    # ---- journaling -----------------------------------------------------------------

    def journaled(self) -> None:
        """Record every state change from now on; the broker takes them with ``take_ops()``."""
        self.ops = []

    def _touch(self, entry: Entry) -> None:
        if self.track_changes:
            self._dirty[entry.job.id] = entry

    def take_changes(self) -> list[Entry]:
        """The jobs whose state changed since the last call."""
        if not self._dirty:
            return []
        out = list(self._dirty.values())
        self._dirty.clear()
        return out

    def take_ops(self, changed: list[Entry] | None = None) -> list[list[Any]]:
        """This turn's journal ops: accepted jobs and blobs in order, then each changed job's state."""
        if changed is None:
            changed = self.take_changes()
        ops = self.ops
        if ops is None:
            return []
        if changed:
            now, wall = self.clock(), self.wall()
            ops.extend(state_op(e, now, wall) for e in changed)
        self.ops = []
        return ops

    # ---- submission ---------------------------------------------------------------

    def submit(
        self, specs: list[dict[str, Any]], blobs: dict[str, bytes], watcher: bytes | None = None,
        owner: bytes | None = None, lean: bool = False,
    ) -> list[str]:  # fmt: skip
        """Validate and accept a batch of jobs, all or nothing. Returns the job ids.

        ``owner`` is the client connection submitting them: its unfinished jobs count against
        ``max_pending_per_client``. With ``lean``, ``watcher`` hears of a success as its id and
        result only (``map`` needs no more)."""
        jobs: list[Job] = []
        for i, spec in enumerate(specs):
            try:
                jobs.append(Job.from_wire(spec))
            except JobError as exc:
                raise JobError(f"job #{i} of the batch: {exc}") from None
        return self._admit(jobs, blobs, watcher, owner, lean)

    def submit_items(
        self, template: dict[str, Any], items: list[Any], blobs: dict[str, bytes], watcher: bytes | None = None,
        owner: bytes | None = None, lean: bool = False,
    ) -> list[str]:  # fmt: skip
        """Like :meth:`submit`, for jobs given as a template and ``[id, args]`` items (see Job.from_template)."""
        return self._admit(Job.from_template(template, items), blobs, watcher, owner, lean, uniform=True)

    def _admit(
        self, jobs: list[Job], blobs: dict[str, bytes], watcher: bytes | None, owner: bytes | None, lean: bool,
        uniform: bool = False,
    ) -> list[str]:  # fmt: skip
        """Accept validated jobs, all or nothing: the checks between them and against the broker first.
        ``uniform``: they differ only in id and args (a template's), so one of them tells if all are plain."""
        seen: set[str] = set()
        known_jobs = self.jobs
        resubmitted = False
        for job in jobs:
            jid = job.id
            if jid in seen:
                raise JobError(f"job id {jid!r} appears twice in one submission")
            seen.add(jid)
            if job.blob is not None and job.blob not in blobs and job.blob not in self.blobs:
                raise JobError(f"job {jid}: its content (blob {job.blob[:12]}...) was not sent with it")
            existing = known_jobs.get(jid)
            if existing is not None:
                if existing.job != job:
                    raise Conflict(f"job id {jid!r} is already taken by a different job; choose another id")
                resubmitted = True
        for sha, content in blobs.items():
            if hashlib.sha256(content).hexdigest() != sha:
                raise JobError(f"blob {sha[:12]}... does not match its sha256; the content was damaged")
        if any(job.depends_on for job in jobs):
            jobs = self._check_graph(jobs)
        self._check_limits(jobs, owner)
        if not resubmitted and (all(map(_plain, jobs[:1] if uniform else jobs))):
            self._accept_plain(jobs, watcher, owner, lean, uniform)
            return [job.id for job in jobs]
        ids = []
        for job in jobs:
            known = known_jobs.get(job.id)
            if known is None and job.idempotency_key is not None:
                prior = self.idempotency.get(job.idempotency_key)
                known = known_jobs.get(prior) if prior else None
            if known is not None:  # idempotent resubmission: same job, same answer
                ids.append(known.job.id)
                if watcher is not None:
                    for rec in self.watch(watcher, [known.job.id]):  # already ended: say so now
                        self.fx.done.setdefault(watcher, []).append(rec)
                continue
            entry = self._accept(job, blobs, watcher)
            if lean and watcher is not None:
                entry.lean = watcher
            if owner is not None and not entry.state.final:
                entry.owner = owner
                self.pending[owner] = self.pending.get(owner, 0) + 1
            ids.append(job.id)
        return ids

    def _accept_plain(
        self, jobs: list[Job], watcher: bytes | None, owner: bytes | None, lean: bool, uniform: bool = False
    ) -> None:
        """What :meth:`_accept` and :meth:`_enqueue` do, for new jobs that go straight to a queue (see
        ``_plain``), without the tests that cannot apply to them: most jobs, at tens of thousands a second.
        ``uniform`` jobs (a template's) share one wire map of the fields they have in common."""
        shared = None
        if uniform and jobs:
            shared = jobs[0].to_wire()
            del shared["id"]
            shared.pop("args", None)
        wall = self.wall()
        seq = self._seq
        table = self.jobs
        ops = self.ops
        dirty = self._dirty if self.track_changes else None
        lean_to = watcher if lean else None
        queues = self._queues
        push = heapq.heappush
        for job in jobs:
            jid = job.id
            entry = Entry(job, next(seq), wall)
            table[jid] = entry
            if ops is not None:
                ops.append(["A", job.to_wire(), wall])
            if dirty is not None:
                dirty[jid] = entry
            if watcher is not None:
                entry.watchers = [watcher]
                entry.lean = lean_to
            entry.owner = owner
            entry.queued_at = wall
            entry.wire = shared
            key = (job.requires, None)
            q = queues.get(key)
            if q is None:
                q = queues[key] = []
            push(q, (-job.priority, entry.seq, jid))
        self.counters["submitted"] += len(jobs)
        if owner is not None and jobs:
            self.pending[owner] = self.pending.get(owner, 0) + len(jobs)

    def _check_limits(self, jobs: list[Job], owner: bytes | None) -> None:
        """Refuse a batch that would take a DAG past ``max_dag_jobs`` or a client past ``max_pending_per_client``."""
        new = [job for job in jobs if job.id not in self.jobs]
        per_dag: dict[str, int] = {}
        for job in new:
            if job.dag is not None:
                per_dag[job.dag] = per_dag.get(job.dag, 0) + 1
        for dag, n in per_dag.items():
            have = len(self.dags.get(dag, ()))
            if have + n > self.max_dag_jobs:
                raise LimitExceeded(
                    f"DAG {dag!r} would hold {have + n} jobs, over the limit of {self.max_dag_jobs} (max_dag_jobs); "
                    "split the work into several DAGs, or raise max_dag_jobs (TITAN_MAX_DAG_JOBS)"
                )
        if owner is not None and new:
            have = self.pending.get(owner, 0)
            if have + len(new) > self.max_pending_per_client:
                raise LimitExceeded(
                    f"this client already has {have} unfinished jobs; {len(new)} more would pass the limit of "
                    f"{self.max_pending_per_client} (max_pending_per_client): wait for some to finish, or raise "
                    "max_pending_per_client (TITAN_MAX_PENDING_PER_CLIENT)"
                )

    def _check_graph(self, jobs: list[Job]) -> list[Job]:
        """Refuse unknown parents and cycles; return the batch parents-first."""
        batch = {job.id: job for job in jobs}
        for job in jobs:
            for p in job.depends_on:
                if p not in batch and p not in self.jobs:
                    raise JobError(
                        f"job {job.id} depends on {p!r}, which is neither in this submission nor known to the broker"
                    )
        # Kahn's algorithm over the edges inside the batch (known jobs cannot depend on new ones).
        indeg = {jid: sum(1 for p in job.depends_on if p in batch) for jid, job in batch.items()}
        kids: dict[str, list[str]] = {}
        for job in jobs:
            for p in job.depends_on:
                if p in batch:
                    kids.setdefault(p, []).append(job.id)
        ready = deque(jid for jid in batch if indeg[jid] == 0)  # FIFO: keeps the submission order
        order: list[Job] = []
        while ready:
            jid = ready.popleft()
            order.append(batch[jid])
            for c in kids.get(jid, ()):
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        if len(order) < len(jobs):
            raise JobError(f"the jobs form a cycle: {' -> '.join(_find_cycle(batch, indeg))}; a DAG has none")
        return order

    def _accept(self, job: Job, blobs: dict[str, bytes], watcher: bytes | None) -> Entry:
        entry = Entry(job, next(self._seq), self.wall())
        self.jobs[job.id] = entry
        if self.ops is not None:
            if job.blob is not None and job.blob not in self.blobs:
                self.ops.append(["B", job.blob, blobs[job.blob]])
            self.ops.append(["A", job.to_wire(), entry.submitted_at])
            self._touch(entry)
        if job.idempotency_key is not None:
            self.idempotency[job.idempotency_key] = job.id
        if job.dag is not None:
            self.dags.setdefault(job.dag, {})[job.id] = None
        if job.blob is not None:
            slot = self.blobs.get(job.blob)
            if slot is None:
                self.blobs[job.blob] = [blobs[job.blob], 1]
            else:
                slot[1] += 1
        if watcher is not None:
            entry.watchers = [watcher]
        self.counters["submitted"] += 1
        if job.depends_on:
            self._wire_parents(entry)
        else:
            self._start_waiting(entry)
        return entry

    def _start_waiting(self, entry: Entry) -> None:
        """A job with nothing left to wait for: hold it for its delay, else queue it (or skip it,
        when its condition on its parents' results is false)."""
        if entry.job.when is not None:
            from titan_zmq.expr import ExprError, evaluate

            try:
                go = evaluate(entry.job.when, entry.inputs or {})
            except ExprError as exc:
                entry.error, entry.error_type = str(exc), "ConditionError"
                self._finish(entry, JobState.FAILED)
                return
            if not go:
                entry.error = f"skipped: its condition is false ({entry.job.when})"
                entry.error_type = "Skipped"
                self._finish(entry, JobState.CANCELLED)
                return
        if entry.job.affinity is not None and entry.pin is None:
            for p in entry.job.depends_on:  # where its (first placed) parent ran
                parent = self.jobs.get(p)
                if parent is not None and parent.worker_name:
                    entry.pin = parent.worker_name
                    entry.pin_soft = entry.job.affinity == "parent"
                    break
        if entry.job.delay > 0:
            entry.state = JobState.QUEUED
            self._hold(entry, self.clock() + entry.job.delay)
        else:
            self._enqueue(entry)

    def _wire_parents(self, entry: Entry, known: dict[str, Any] | None = None) -> None:
        """Level-triggered: parents that already ended count now; the others will tell it when they end.

        ``known``: parents' results already taken (after a restart, from the journal: such a parent
        may have been forgotten since)."""
        entry.state = JobState.PENDING
        entry.inputs = dict(known) if known else {}
        waiting = 0
        doomed = None
        for p in entry.job.depends_on:
            if p in entry.inputs:
                continue
            parent = self.jobs.get(p)
            if parent is None:
                entry.error = f"upstream job {p} is no longer known to the broker (max_finished_jobs)"
                self._finish(entry, JobState.CANCELLED)
                return
            if parent.state is JobState.SUCCEEDED:
                entry.inputs[p] = parent.result
            elif parent.state in FINAL_STATES:
                if parent.job.on_failure == "continue":
                    entry.inputs[p] = None
                elif doomed is None:
                    doomed = parent
            else:
                waiting += 1
                if parent.children is None:
                    parent.children = []
                parent.children.append(entry.job.id)
        entry.waiting_on = waiting
        if doomed is not None:
            entry.error = f"upstream job {doomed.job.id} {doomed.state.value}"
            self._finish(entry, JobState.CANCELLED)
        elif waiting == 0:
            self._start_waiting(entry)

    def _release_children(self, entry: Entry) -> None:
        """A job ended: release or cancel what waited on it, down the graph (iteratively: chains can be long)."""
        work = [entry]
        while work:
            done = work.pop()
            kids, done.children = done.children, None
            if not kids:
                continue
            ok = done.state is JobState.SUCCEEDED or done.job.on_failure == "continue"
            for cid in kids:
                child = self.jobs.get(cid)
                if child is None or child.state is not JobState.PENDING:
                    continue
                if ok:
                    if child.inputs is not None:
                        child.inputs[done.job.id] = done.result if done.state is JobState.SUCCEEDED else None
                    self._touch(child)  # its inputs changed: journal them (the parent may be forgotten)
                    child.waiting_on -= 1
                    if child.waiting_on <= 0:
                        self._start_waiting(child)
                else:
                    child.error = f"upstream job {done.job.id} {done.state.value}"
                    self._finish(child, JobState.CANCELLED, propagate=False)
                    work.append(child)

    # ---- queues -------------------------------------------------------------------

    def _enqueue(self, entry: Entry) -> None:
        self._touch(entry)
        if entry.job.kind == "approval":  # a gate runs nowhere: it waits for a person
            self._await(entry, entry.job.timeout)
            return
        entry.state = JobState.QUEUED
        entry.not_before = 0.0
        entry.queued_at = self.wall()
        requires, _, wait = entry.job.level(entry.level)
        if wait is not None and entry.level < len(entry.job.fallback):
            heapq.heappush(self._fb_waits, (self.clock() + wait, entry.seq, entry.job.id, entry.level))
        key = (requires, entry.pin)
        if entry.pin is not None and entry.pin_soft:
            heapq.heappush(self._unpin, (self.clock() + entry.job.affinity_wait, entry.seq, entry.job.id))
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = []
        heapq.heappush(q, (-entry.job.priority, entry.seq, entry.job.id))

    def add_edge(self, parent: str, child: str) -> dict[str, Any]:
        """Make ``child`` wait for ``parent`` as well. The child must not have started; no cycle."""
        p, c = self.entry(parent), self.entry(child)
        if c.state not in (JobState.PENDING, JobState.QUEUED) or c.lease:
            raise Conflict(f"cannot add an edge into job {child}: it is {c.state.value} "
                              f"{'(it ran before)' if c.lease else ''}".rstrip())  # fmt: skip
        if parent == child or parent in c.job.depends_on:
            raise Conflict(f"job {child} already depends on {parent}" if parent != child else
                              f"job {child} cannot depend on itself")  # fmt: skip
        seen, work = set(), [parent]  # is the child an ancestor of the parent?
        while work:
            jid = work.pop()
            if jid == child:
                raise JobError(f"an edge {parent} -> {child} closes a cycle: {child} is an ancestor of {parent}")
            if jid not in seen:
                seen.add(jid)
                anc = self.jobs.get(jid)
                if anc is not None:
                    work.extend(anc.job.depends_on)
        if self.ops is not None:
            self.ops.append(["E", parent, child])
        self._edge(p, c)
        return self.record(c)

    def _edge(self, p: Entry, c: Entry) -> None:
        c.job = dataclasses.replace(c.job, depends_on=(*c.job.depends_on, p.job.id))
        c.wire = None  # its fields are no longer its template's
        self._touch(c)
        if c.state is JobState.QUEUED:  # its queue item goes stale: it waits on this parent now
            c.not_before = 0.0
            self._wire_parents(c, dict(c.inputs or {}) or None)
            return
        if c.inputs is None:
            c.inputs = {}
        if p.state is JobState.SUCCEEDED or (p.state in FINAL_STATES and p.job.on_failure == "continue"):
            c.inputs[p.job.id] = p.result if p.state is JobState.SUCCEEDED else None
        elif p.state in FINAL_STATES:
            c.error = f"upstream job {p.job.id} {p.state.value}"
            self._finish(c, JobState.CANCELLED)
        else:
            c.waiting_on += 1
            if p.children is None:
                p.children = []
            p.children.append(c.job.id)

    def _await(self, entry: Entry, timeout: float | None) -> None:
        entry.state = JobState.AWAITING
        entry.queued_at = entry.queued_at or self.wall()
        entry.not_before = 0.0
        if timeout:
            entry.not_before = self.clock() + timeout  # for a gate: when it is rejected for want of an answer
            heapq.heappush(self._gates, (entry.not_before, entry.seq, entry.job.id))

    def decide(self, jid: str, approve: bool, by: str, note: str = "") -> dict[str, Any]:
        """Approve or reject an approval gate (a person's decision, journaled with who made it)."""
        entry = self.entry(jid)
        if entry.job.kind != "approval":
            raise BadRequest(f"job {jid} is not an approval gate (it is a {entry.job.kind} job)")
        if entry.state is not JobState.AWAITING:
            raise Conflict(f"approval gate {jid} is {entry.state.value}, not awaiting a decision")
        self._decided(entry, approve, by, note)
        return self.record(entry)

    def _decided(self, entry: Entry, approve: bool, by: str, note: str) -> None:
        entry.attempts = 1
        entry.worker_name = None
        entry.result = {"approved": approve, "by": by, "note": note, "at": self.wall()}
        if approve:
            self._finish(entry, JobState.SUCCEEDED)
        else:
            entry.error = f"rejected by {by}" + (f": {note}" if note else "")
            entry.error_type = "Rejected"
            self._finish(entry, JobState.FAILED)

    def expire_gates(self) -> None:
        """Reject approval gates whose time to answer is over."""
        now = self.clock()
        gates = self._gates
        while gates and gates[0][0] <= now:
            _, _, jid = heapq.heappop(gates)
            e = self.jobs.get(jid)
            if e is not None and e.state is JobState.AWAITING and e.not_before and e.not_before <= now:
                self._decided(e, False, "timeout", f"no decision within {e.job.timeout:g}s")

    def _hold(self, entry: Entry, until: float) -> None:
        self._touch(entry)
        entry.not_before = until
        heapq.heappush(self._held, (until, entry.seq, entry.job.id))

    def release_held(self) -> float | None:
        """Queue jobs whose delay or backoff is over; return when the next one is due."""
        now = self.clock()
        unpin = self._unpin
        while unpin and unpin[0][0] <= now:
            _, _, jid = heapq.heappop(unpin)
            entry = self.jobs.get(jid)
            if entry is not None and entry.state is JobState.QUEUED and entry.pin is not None and entry.pin_soft:
                entry.pin = None  # waited long enough for its parent's worker: any eligible one will do
                self._enqueue(entry)
        held = self._held
        while held and held[0][0] <= now:
            _, _, jid = heapq.heappop(held)
            entry = self.jobs.get(jid)
            if (
                entry is not None
                and entry.state in (JobState.QUEUED, JobState.RETRYING)
                and entry.not_before  # a stale item of a job held again later must not release it early
                and entry.not_before <= now
            ):
                self._enqueue(entry)
        waits = self._fb_waits
        while waits and waits[0][0] <= now:
            _, _, jid, level = heapq.heappop(waits)
            entry = self.jobs.get(jid)
            if entry is None or entry.state is not JobState.QUEUED or entry.level != level:
                continue
            req = entry.job.level(level)[0]
            if not any(req <= w.tags for w in self.workers.values()):
                self._fall_back(entry, f"no worker with tags {_fmt_tags(req or {'cpu'})} within its wait")
        nxt = [h[0][0] for h in (held, unpin, waits) if h]
        return min(nxt) if nxt else None

    def _head(self, q: list[tuple[int, int, str]]) -> tuple[int, int, str] | None:
        """The first live entry of a queue, dropping cancelled or adopted ones."""
        while q:
            item = q[0]
            e = self.jobs.get(item[2])
            if e is not None and e.state is JobState.QUEUED and not e.not_before and e.seq == item[1]:
                return item
            heapq.heappop(q)
        return None

    def queued_count(self) -> int:
        return sum(1 for e in self.jobs.values() if e.state in (JobState.QUEUED, JobState.RETRYING))

    # ---- dispatch -----------------------------------------------------------------

    def dispatch(self) -> int:
        """Lease queued jobs to free workers: priority first, FIFO within it, least loaded worker."""
        free = [w for w in self.workers.values() if w.free > 0]
        if not free or not self._queues:
            return 0
        eligible: dict[tuple[frozenset[str], str | None], list[WorkerInfo]] = {}
        for key in list(self._queues):
            if self._head(self._queues[key]) is None:
                del self._queues[key]
                continue
            tags, pin = key
            eligible[key] = [w for w in free if tags <= w.tags and (pin is None or w.name == pin)]
        n = 0
        now_wall = self.wall()
        live = [key for key, ws in eligible.items() if ws]
        if len(live) == 1:  # one queue has workers to go to: no heads to compare
            n = self._drain_queue(self._queues[live[0]], eligible[live[0]], now_wall)
            eligible.clear()
        while eligible:
            best_key = None
            best_item: tuple[int, int, str] | None = None
            for key, ws in eligible.items():
                if not ws:
                    continue
                item = self._head(self._queues[key])
                if item is None:
                    ws.clear()
                    continue
                if best_item is None or item < best_item:
                    best_key, best_item = key, item
            if best_key is None or best_item is None:
                break
            heapq.heappop(self._queues[best_key])
            ws = eligible[best_key]
            entry = self.jobs[best_item[2]]
            w = ws[0] if len(ws) == 1 else _least_loaded(ws, entry.job.blob)
            self._lease(entry, w, now_wall)
            n += 1
            if w.free <= 0:
                for lst in eligible.values():
                    if w in lst:
                        lst.remove(w)
        self.counters["dispatched"] += n
        return n

    def _drain_queue(self, q: list[tuple[int, int, str]], ws: list[WorkerInfo], now_wall: float) -> int:
        """What :meth:`dispatch` does when only queue ``q`` has free workers (``ws``) to go to: lease
        its jobs in order, each to the least loaded of them, until they are full or it is empty."""
        jobs = self.jobs
        pop = heapq.heappop
        queued = JobState.QUEUED
        n = 0
        while ws and q:
            item = pop(q)
            e = jobs.get(item[2])
            if e is None or e.state is not queued or e.not_before or e.seq != item[1]:
                continue  # cancelled, held or queued again since: a stale item
            w = ws[0] if len(ws) == 1 else _least_loaded(ws, e.job.blob)
            self._lease(e, w, now_wall)
            n += 1
            if w.free <= 0:
                ws.remove(w)
        return n

    def _lease(self, entry: Entry, w: WorkerInfo, now_wall: float) -> None:
        if self.track_changes:
            self._dirty[entry.job.id] = entry
        entry.state = JobState.RUNNING
        entry.attempts += 1
        entry.worker = w.ident
        entry.worker_name = w.name
        entry.started_at = now_wall
        job = entry.job
        w.running.add(job.id)
        entry.lease = self.last_lease = next(self._leases)
        if entry.wire is not None:  # a template's job: its shared fields, then its own
            wire = entry.wire.copy()
            wire["id"] = job.id
            if job.args:
                wire["args"] = job.args
        else:
            wire = job.to_wire()
        if entry.level:  # a fallback: its requirements and timeout
            req, timeout, _ = entry.job.level(entry.level)
            wire["requires"] = sorted(req)
            if timeout is not None:
                wire["timeout"] = timeout
        wire["attempt"] = entry.attempts
        wire["lease"] = entry.lease
        if entry.inputs is not None:
            wire["inputs"] = entry.inputs
        self.fx.assign.setdefault(w.ident, []).append(wire)
        sha = entry.job.blob
        if sha is not None and sha not in w.cached:
            self.fx.blobs.setdefault(w.ident, {})[sha] = self.blobs[sha][0]
            w.cached.add(sha)

    # ---- results ------------------------------------------------------------------

    def on_result(self, w: WorkerInfo, res: dict[str, Any]) -> str | None:
        """Apply one attempt's outcome from worker ``w``. Returns the id to acknowledge."""
        get = res.get
        jid = get("id")
        outcome = get("outcome")
        entry = self.jobs.get(jid) if type(jid) is str else None
        if (
            outcome == OUT_SUCCEEDED and entry is not None and entry.state is JobState.RUNNING
            and entry.worker == w.ident and get("lease") == entry.lease
        ):  # fmt: skip
            self._succeeded(w, entry, get("runtime"), get("result"), res)  # the current attempt succeeded
            return jid
        if not isinstance(jid, str) or outcome not in OUTCOMES:
            log.warning("worker %s sent a malformed result %r; dropped", w.name, str(res)[:200])
            return jid if isinstance(jid, str) else None
        entry = self.jobs.get(jid)
        lease = get("lease")
        if entry is None or entry.worker != w.ident or entry.state is not JobState.RUNNING or lease == entry.lease:
            w.running.discard(jid)  # (an old lease's reply must not free the slot its new lease holds)
        runtime = get("runtime")
        if outcome == OUT_RETURNED:  # jobs there got long: close its window until they are short again
            w.ewma = max(w.ewma or 0.0, self.prefetch_below)
            w.adapt(self.prefetch_below)
        elif isinstance(runtime, (int, float)) and outcome in (OUT_SUCCEEDED, OUT_FAILED, OUT_TIMEOUT):
            w.ewma = runtime if w.ewma is None else w.ewma + _EWMA * (runtime - w.ewma)
            w.adapt(self.prefetch_below)
        if entry is None:
            log.warning("worker %s reported job %s, which the broker does not know; acknowledged", w.name, jid)
            return jid
        this_lease = entry.worker == w.ident and lease == entry.lease
        mine = this_lease and entry.state is JobState.RUNNING
        if entry.state in FINAL_STATES:
            if entry.state is JobState.CANCELLED and this_lease:
                self._fill_output(entry, res)
            return jid
        if outcome == OUT_RETURNED:
            if mine:
                entry.attempts -= 1  # it never started
                entry.worker = entry.worker_name = None
                self._enqueue(entry)
            return jid
        if not mine:
            # A stale attempt: the job was re-queued or leased elsewhere meanwhile. A success still
            # counts (the work is done, so it is not run again); a failure yields to the newer attempt.
            if outcome != OUT_SUCCEEDED:
                return jid
            if entry.state is JobState.RUNNING and entry.worker is not None and entry.worker in self.workers:
                other = self.workers[entry.worker]
                other.running.discard(jid)
                self.fx.add_kill(other.ident, jid, entry.lease)
        self._fill_output(entry, res)
        entry.worker_name = w.name
        if isinstance(runtime, (int, float)) and runtime >= 0:
            # It may have waited in the worker's prefetch queue: it started ``runtime`` ago.
            entry.started_at = max(entry.started_at or 0.0, self.wall() - runtime)
        if outcome == OUT_SUCCEEDED:
            w.done += 1
            entry.result = res.get("result")
            entry.error = entry.error_type = entry.traceback = None
            self._finish(entry, JobState.SUCCEEDED)
        elif outcome == OUT_CACHE_MISS:
            if entry.job.blob is not None:
                w.cached.discard(entry.job.blob)
            entry.misses += 1
            entry.worker = None
            if entry.misses > _MAX_MISSES:
                entry.error = f"workers could not store its content {entry.misses} times (is a disk full?)"
                entry.error_type = "CacheMiss"
                self._finish(entry, JobState.FAILED)
            else:
                entry.attempts -= 1
                self._enqueue(entry)
        elif outcome == OUT_INTERRUPTED:
            entry.error = f"attempt {entry.attempts} interrupted: worker {w.name} shut down"
            entry.worker = None
            self._enqueue(entry)
        elif outcome == OUT_CANCELLED:
            entry.error = res.get("error") or "cancelled on the worker"
            self._finish(entry, JobState.CANCELLED)
        else:
            w.failed += 1
            entry.error = res.get("error") or outcome
            entry.error_type = res.get("error_type") or ("Timeout" if outcome == OUT_TIMEOUT else "Error")
            entry.traceback = res.get("traceback")
            self._fail_attempt(entry)
        return jid

    def on_success(self, w: WorkerInfo, jid: Any, lease: Any, runtime: Any, result: Any) -> str | None:
        """:meth:`on_result` for a success with no output or exit code to record (the worker sends
        those as ``[id, lease, runtime, result]``). Returns the id to acknowledge."""
        entry = self.jobs.get(jid) if type(jid) is str else None
        if entry is not None and entry.state is JobState.RUNNING and entry.worker == w.ident and lease == entry.lease:
            self._succeeded(w, entry, runtime, result, None)
            return jid
        res = {"id": jid, "lease": lease, "outcome": OUT_SUCCEEDED, "runtime": runtime, "result": result}
        return self.on_result(w, res)

    def _succeeded(
        self, w: WorkerInfo, entry: Entry, runtime: Any, result: Any, res: dict[str, Any] | None
    ) -> None:
        """What :meth:`on_result` does when the current attempt of a running job succeeded; ``res``
        holds its output and exit code, if it has any."""
        w.running.discard(entry.job.id)
        if isinstance(runtime, (int, float)):
            w.ewma = runtime if w.ewma is None else w.ewma + _EWMA * (runtime - w.ewma)
            w.adapt(self.prefetch_below)
            if runtime >= 0:  # it may have waited in the worker's prefetch queue: it started ``runtime`` ago
                entry.started_at = max(entry.started_at or 0.0, self.wall() - runtime)
        if res is None:  # what _fill_output does (_finish marks it changed)
            entry.exit_code, entry.stdout, entry.stderr = None, "", ""
        else:
            get = res.get
            entry.exit_code = get("exit_code")
            entry.stdout = get("stdout") or ""
            entry.stderr = get("stderr") or ""
        entry.worker_name = w.name
        w.done += 1
        entry.result = result
        entry.error = entry.error_type = entry.traceback = None
        self._finish(entry, JobState.SUCCEEDED)

    def _fill_output(self, entry: Entry, res: dict[str, Any]) -> None:
        self._touch(entry)
        entry.exit_code = res.get("exit_code")
        entry.stdout = res.get("stdout") or ""
        entry.stderr = res.get("stderr") or ""

    def _fail_attempt(self, entry: Entry) -> None:
        tries = entry.attempts - entry.fb_base
        if tries <= entry.job.retries:
            entry.state = JobState.RETRYING
            entry.worker = None
            self._hold(entry, self.clock() + backoff_delay(entry.job.backoff, tries, self.rng))
        elif entry.level < len(entry.job.fallback):
            self._fall_back(entry, f"failed: {entry.error}")
        else:
            self._finish(entry, JobState.DEAD if entry.job.retries else JobState.FAILED)

    def _fall_back(self, entry: Entry, why: str) -> None:
        """Queue the job again under its next fallback's requirements."""
        entry.level += 1
        entry.fb_base = entry.attempts
        entry.worker = None
        req, _timeout, _ = entry.job.level(entry.level)
        entry.error = f"at level {entry.level - 1} {why}; fallback {entry.level}: requires {_fmt_tags(req or {'cpu'})}"
        log.info("job %s falls back: %s", entry.job.id, entry.error)
        self._enqueue(entry)

    def _finish(self, entry: Entry, state: JobState, propagate: bool = True) -> None:
        self._touch(entry)
        if entry.owner is not None:
            left = self.pending.get(entry.owner, 1) - 1
            if left > 0:
                self.pending[entry.owner] = left
            else:
                self.pending.pop(entry.owner, None)
            entry.owner = None
        entry.state = state
        entry.finished_at = self.wall()
        entry.not_before = 0.0
        if state is JobState.SUCCEEDED:
            self.counters["succeeded"] += 1
        elif state is not JobState.CANCELLED:
            self.counters["failed"] += 1
        sha = entry.job.blob
        if sha is not None:
            slot = self.blobs.get(sha)
            if slot is not None:
                slot[1] -= 1
                if slot[1] <= 0:
                    del self.blobs[sha]
        if entry.watchers:
            full = None
            for ident in entry.watchers:  # id and result only, for the map that asked for that
                if ident == entry.lean and state is JobState.SUCCEEDED:
                    self.fx.ok.setdefault(ident, []).append([entry.job.id, entry.result])
                    continue
                full = full or self.final_record(entry)
                self.fx.done.setdefault(ident, []).append(full)
            entry.watchers = None
            entry.lean = None
        self._finished.append(entry.job.id)
        entry.inputs = None
        if propagate and entry.children:
            self._release_children(entry)
        while len(self._finished) > self.max_finished:
            self.forget(self._finished.popleft())

    def forget(self, jid: str) -> None:
        """Drop an ended job from memory (the oldest go first, past ``max_finished``)."""
        old = self.jobs.pop(jid, None)
        if old is None:
            return
        if self.ops is not None:
            self.ops.append(["F", jid])
        key = old.job.idempotency_key
        if key is not None and self.idempotency.get(key) == jid:
            del self.idempotency[key]
        if old.job.dag is not None:
            members = self.dags.get(old.job.dag)
            if members is not None:
                members.pop(jid, None)
                if not members:
                    del self.dags[old.job.dag]

    # ---- cancel, watch, status -----------------------------------------------------

    def entry(self, jid: str) -> Entry:
        e = self.jobs.get(jid)
        if e is None:
            raise UnknownJob(
                f"unknown job id {jid!r}: it was never submitted to this broker, or it ended long ago "
                "and was forgotten (max_finished_jobs)"
            )
        return e

    def dag_records(self, dag_id: str) -> list[dict[str, Any]] | None:
        """Records of a DAG's jobs, or None when no DAG has that id."""
        members = self.dags.get(dag_id)
        if members is None:
            return None
        return [self.record(self.jobs[j]) for j in members if j in self.jobs]

    def cancel_dag(self, dag_id: str) -> dict[str, Any]:
        """Cancel every job of a DAG that has not ended. Returns the DAG's records."""
        members = self.dags.get(dag_id)
        if members is None:
            raise UnknownJob(f"unknown job or DAG id {dag_id!r}")
        for jid in list(members):
            e = self.jobs.get(jid)
            if e is not None and e.state not in FINAL_STATES:
                self.cancel(jid)
        return {"dag": dag_id, "records": self.dag_records(dag_id)}

    def cancel(self, jid: str) -> dict[str, Any]:
        if jid not in self.jobs and jid in self.dags:
            return self.cancel_dag(jid)
        entry = self.entry(jid)
        if entry.state in FINAL_STATES:
            return self.record(entry)
        if entry.state is JobState.RUNNING and entry.worker is not None:
            self.fx.add_kill(entry.worker, jid, entry.lease)
        entry.error = "cancelled by request"
        self._finish(entry, JobState.CANCELLED)
        return self.record(entry)

    def watch(self, ident: bytes, ids: list[str]) -> list[dict[str, Any]]:
        """Register ``ident`` for DONE of ``ids``; return records of those already ended."""
        ended = []
        for jid in ids:
            entry = self.entry(jid)
            if entry.state in FINAL_STATES:
                ended.append(self.record(entry))
            elif entry.watchers is None:
                entry.watchers = [ident]
            elif ident not in entry.watchers:
                entry.watchers.append(ident)
        return ended

    def waiting_reason(self, entry: Entry) -> str | None:
        st = entry.state
        now = self.clock()
        if st is JobState.RETRYING:
            return f"retry {entry.attempts + 1} of {entry.job.retries + 1} in {max(0.0, entry.not_before - now):.1f}s"
        if st is JobState.PENDING:
            return f"waiting for {entry.waiting_on} parent job(s)"
        if st is JobState.AWAITING:
            left = f"; rejected in {max(0.0, entry.not_before - now):.0f}s" if entry.not_before else ""
            return f"awaiting approval: {entry.job.target} (titan approve {entry.job.id}){left}"
        if st is JobState.RUNNING and entry.worker is None:
            return f"running on {entry.worker_name} before the broker restarted; waiting for it to reconnect"
        if st is not JobState.QUEUED:
            return None
        if entry.not_before > now:
            return f"delayed: runs in {entry.not_before - now:.1f}s"
        req = entry.job.level(entry.level)[0]
        if entry.pin is not None:
            soft = f" (any worker after {entry.job.affinity_wait:g}s)" if entry.pin_soft else ""
            if not any(w.name == entry.pin and req <= w.tags for w in self.workers.values()):
                return f"waiting for worker {entry.pin}{soft}"
            return f"waiting for a free slot on worker {entry.pin}{soft}"
        eligible = [w for w in self.workers.values() if req <= w.tags]
        if not eligible:
            need = req or frozenset({"cpu"})
            return f"waiting for a worker with tags {_fmt_tags(need)}"
        if all(w.free <= 0 for w in eligible):
            return f"waiting for a free slot: {len(eligible)} eligible worker(s) busy"
        return "queued: being dispatched"

    def record(self, entry: Entry) -> dict[str, Any]:
        j = entry.job
        return {
            "id": j.id,
            "kind": j.kind,
            "target": j.target,
            "state": entry.state.value,
            "attempts": entry.attempts,
            "worker": entry.worker_name,
            "result": entry.result,
            "error": entry.error,
            "error_type": entry.error_type,
            "traceback": entry.traceback,
            "exit_code": entry.exit_code,
            "stdout": entry.stdout,
            "stderr": entry.stderr,
            "requires": sorted(j.requires),
            "priority": j.priority,
            "retries": j.retries,
            "submitted_at": entry.submitted_at,
            "queued_at": entry.queued_at,
            "started_at": entry.started_at,
            "finished_at": entry.finished_at,
            "waiting": self.waiting_reason(entry),
            "labels": j.labels,
            "depends_on": list(j.depends_on),
            "dag": j.dag,
        }

    def final_record(self, entry: Entry) -> dict[str, Any]:
        """The record pushed to a watching client when the job ends: :meth:`record` without the
        fields that hold the client's JobRecord default (it fills those in again), so a short job's
        record is a few bytes to pack, send and unpack. The result always goes, whatever it is."""
        j = entry.job
        rec: dict[str, Any] = {"id": j.id, "kind": j.kind, "target": j.target, "state": entry.state._value_,
                               "attempts": entry.attempts, "result": entry.result}  # fmt: skip
        for key, value in (
            ("worker", entry.worker_name), ("error", entry.error), ("error_type", entry.error_type),
            ("traceback", entry.traceback), ("exit_code", entry.exit_code), ("submitted_at", entry.submitted_at),
            ("queued_at", entry.queued_at), ("started_at", entry.started_at), ("finished_at", entry.finished_at),
            ("dag", j.dag),
        ):  # fmt: skip
            if value is not None:  # their default is None
                rec[key] = value
        if entry.stdout:  # default ""
            rec["stdout"] = entry.stdout
        if entry.stderr:
            rec["stderr"] = entry.stderr
        if j.labels:  # default {}
            rec["labels"] = j.labels
        if j.requires:
            rec["requires"] = sorted(j.requires)
        if j.priority:
            rec["priority"] = j.priority
        if j.retries:
            rec["retries"] = j.retries
        if j.depends_on:
            rec["depends_on"] = list(j.depends_on)
        return rec

    def list_jobs(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        if state is not None and state not in {s.value for s in JobState}:
            raise BadRequest(f"unknown state {state!r}; one of {', '.join(s.value for s in JobState)}")
        out = []
        for entry in reversed(self.jobs.values()):
            if state is None or entry.state.value == state:
                out.append(self.record(entry))
                if len(out) >= limit:
                    break
        return out

    # ---- workers --------------------------------------------------------------------

    def worker_ready(self, ident: bytes, info: dict[str, Any]) -> WorkerInfo:
        """A worker joins or re-joins. Reconcile the jobs it says it still holds."""
        now = self.clock()
        tags = frozenset(info["tags"]) | {"cpu"}
        w = self.workers.get(ident)
        if w is None:
            w = WorkerInfo(
                ident=ident, name=info["name"], host=info["host"], tags=tags, slots=max(1, info["slots"]),
                pid=info["pid"], deadline=now + self.interval * self.liveness, joined_at=now,
            )  # fmt: skip
            self.workers[ident] = w
            self.fx.events.append(("worker", {"name": w.name, "host": w.host, "state": "joined"}))
            log.info("worker %s joined from %s with tags %s and %d slots", w.name, w.host, _fmt_tags(tags), w.slots)
        else:
            w.name, w.host, w.tags, w.slots, w.pid = (
                info["name"],
                info["host"],
                tags,
                max(1, info["slots"]),
                info["pid"],
            )
        w.cached = set(info.get("cached") or ())
        w.draining = bool(info.get("draining"))
        w.address = str(info.get("address") or w.host)
        w.prefetch = max(0, int(info.get("prefetch") or 0))
        w.adapt(self.prefetch_below)
        running = list(info.get("running") or ())
        leases = list(info.get("leases") or ())
        held_lease = dict(zip(running, leases + [0] * (len(running) - len(leases)), strict=True))
        held = set(running)
        seen = int(info.get("seen_lease") or 0)
        # Jobs the broker leased to it that it no longer holds were lost with its previous session,
        # unless their lease is newer than anything it had seen when it sent this (still in flight).
        for jid in list(w.running - held):
            e = self.jobs.get(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker == ident and e.lease > seen:
                continue
            w.running.discard(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker == ident:
                self._lost(e, w.name)
        if self.orphans:
            self._orphans_of(w, held, seen)
        for jid in held:
            e = self.jobs.get(jid)
            if e is None:
                log.warning("worker %s holds job %s, unknown to this broker; told to stop it", w.name, jid)
                self.fx.add_kill(ident, jid)
            elif e.state in FINAL_STATES:
                self.fx.add_kill(ident, jid)  # harmless if it is only a held result
                w.running.add(jid)
            elif (e.state is JobState.RUNNING and e.worker not in (None, ident)) or e.state is JobState.RETRYING:
                # Leased elsewhere, or its failure here is known and its retry waits out a backoff.
                self.fx.add_kill(ident, jid)
                w.running.add(jid)
            else:
                # Queued again, still leased to it, or running there when the broker restarted:
                # it runs there, so let it finish there.
                self._touch(e)
                self.orphans.pop(jid, None)
                e.state = JobState.RUNNING
                e.not_before = 0.0
                e.worker = ident
                e.worker_name = w.name
                if held_lease[jid]:
                    e.lease = held_lease[jid]
                if e.attempts == 0:
                    e.attempts = 1
                w.running.add(jid)
        return w

    def _orphans_of(self, w: WorkerInfo, held: set[str], seen: int) -> None:
        """After a restart, worker ``w`` is back: its jobs from before that it no longer holds
        were lost there (or, with a lease it never saw, never reached it): queue them now."""
        for jid in [j for j in self.orphans if j not in held]:
            e = self.jobs.get(jid)
            if e is None or e.state is not JobState.RUNNING or e.worker is not None:
                del self.orphans[jid]
            elif e.worker_name == w.name:
                del self.orphans[jid]
                if e.lease > seen:  # the broker stopped before its ASSIGN got there
                    e.attempts = max(0, e.attempts - 1)
                    self._enqueue(e)
                else:
                    self._lost(e, w.name, "while the broker was down")

    def expire_orphans(self) -> None:
        """Re-run jobs whose worker did not come back in time after a restart (attempt counted)."""
        now = self.clock()
        for jid, deadline in list(self.orphans.items()):
            if deadline > now:
                continue
            del self.orphans[jid]
            e = self.jobs.get(jid)
            if e is not None and e.state is JobState.RUNNING and e.worker is None:
                self._lost(e, e.worker_name or "?", "and did not come back after the broker restarted")

    def seen(self, w: WorkerInfo) -> None:
        w.deadline = self.clock() + self.interval * self.liveness

    def worker_gone(self, ident: bytes, reason: str, stopped: Iterable[str] = ()) -> None:
        """Forget a worker; re-queue the jobs it held. ``stopped`` ones were stopped cleanly."""
        w = self.workers.pop(ident, None)
        if w is None:
            return
        for hook in self.gone_hooks:
            hook(ident)
        log.warning("worker %s removed: %s; %d job(s) go back to the queue", w.name, reason, len(w.running))
        clean = set(stopped)
        for jid in sorted(w.running):
            e = self.jobs.get(jid)
            if e is None or e.state is not JobState.RUNNING or e.worker != ident:
                continue
            if jid in clean:
                e.error = f"attempt {e.attempts} interrupted: worker {w.name} shut down"
                e.worker = None
                self._enqueue(e)
            else:
                self._lost(e, w.name)
        self.fx.events.append(("worker", {"name": w.name, "host": w.host, "state": "left", "reason": reason}))

    def _lost(self, e: Entry, name: str, how: str = "") -> None:
        e.lost += 1
        e.worker = None
        e.error = f"worker {name} was lost during attempt {e.attempts}" + (f" {how}" if how else "")
        e.error_type = "WorkerLost"
        if e.lost > self.max_lost:
            e.error = f"worker lost {e.lost} times while running this job (max_lost={self.max_lost})"
            self._finish(e, JobState.DEAD)
        else:
            self._enqueue(e)

    def expire_workers(self) -> float:
        """Remove workers silent past their deadline. Returns the earliest remaining deadline."""
        now = self.clock()
        nxt = now + self.interval * self.liveness
        for ident, w in list(self.workers.items()):
            if now >= w.deadline:
                self.worker_gone(ident, f"no heartbeat for {self.interval * self.liveness:.1f}s")
            else:
                nxt = min(nxt, w.deadline)
        return nxt

    def pressure(self, tags: Iterable[str]) -> dict[str, int]:
        """Load of the pool of workers that have ``tags``: the jobs only it (or it best) serves that wait,
        and its free slots. A pool with extra tags (gpu) counts only jobs that need one of them, so it
        scales apart from the plain cpu pool."""
        pool = frozenset(tags) | {"cpu"}
        extra = pool - {"cpu"}
        now = self.clock()
        queued = 0
        for e in self.jobs.values():
            if (e.state is JobState.QUEUED or e.state is JobState.RETRYING) and e.not_before <= now:
                req = e.job.level(e.level)[0]
                if req <= pool and (not extra or req & extra):
                    queued += 1
        members = [w for w in self.workers.values() if pool <= w.tags and not w.draining]
        return {
            "queued": queued,
            "free": sum(max(0, w.slots - len(w.running)) for w in members),
            "running": sum(len(w.running) for w in members),
            "slots": sum(w.slots for w in members),
            "workers": len(members),
        }

    def stats(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for e in self.jobs.values():
            states[e.state.value] = states.get(e.state.value, 0) + 1
        return {
            "workers": len(self.workers),
            "slots": sum(w.slots for w in self.workers.values()),
            "busy": sum(len(w.running) for w in self.workers.values()),
            "jobs": states,
            **self.counters,
        }


def _find_cycle(batch: dict[str, Job], indeg: dict[str, int]) -> list[str]:
    """One cycle among the jobs Kahn's algorithm could not order, as a path a -> b -> a."""
    left = {jid for jid, d in indeg.items() if d > 0}
    start = min(left)
    path = [start]
    seen = {start: 0}
    node = start
    while True:
        node = next(p for p in batch[node].depends_on if p in left)
        if node in seen:
            cycle = [*path[seen[node] :], node]
            return list(reversed(cycle))  # parent -> child order
        seen[node] = len(path)
        path.append(node)
