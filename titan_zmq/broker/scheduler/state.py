"""The state every part of the scheduler shares: the job table, the workers, the effects of a turn,
and the two ways a change leaves it (change tracking for events, ops for the journal).

Each part (admission, graph, timers, dispatch, outcomes, membership, records) is a :class:`Part`:
it holds this one state object and reaches its peers through it (``st.queues.enqueue(e)``), so a
rule has one home and every path that applies it calls the same code.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from titan_zmq.aof.records import Progress, encode
from titan_zmq.errors import UnknownJob
from titan_zmq.job import Job, JobState

if TYPE_CHECKING:
    from titan_zmq.broker.scheduler.admission import Admission
    from titan_zmq.broker.scheduler.dispatch import Dispatch
    from titan_zmq.broker.scheduler.graph import Graph
    from titan_zmq.broker.scheduler.membership import Membership
    from titan_zmq.broker.scheduler.objects import ObjectInfo, Objects
    from titan_zmq.broker.scheduler.outcomes import Outcomes
    from titan_zmq.broker.scheduler.pool import Pool
    from titan_zmq.broker.scheduler.ranks import Ranks
    from titan_zmq.broker.scheduler.records import Records
    from titan_zmq.broker.scheduler.rerun import Rerun
    from titan_zmq.broker.scheduler.timers import Timers

EWMA = 0.2  # weight of the newest runtime in a worker's average

# A ready queue's key: (required tags, the worker name it is pinned to, or None); its items
# are (-priority, order, -rank, seq, job id) heap entries: priority first, then arrival (a DAG's
# jobs share their DAG's), then the critical path (``ranks.py``), then FIFO.
QueueKey = tuple[frozenset[str], "str | None"]
QueueItem = tuple[int, int, float, int, str]


class Entry:
    """The broker's mutable view of one job: its spec and its progress."""

    __slots__ = (
        "attempts",
        "children",
        "error",
        "error_type",
        "exit_code",
        "fb_base",
        "fetched",
        "finished_at",
        "inputs",
        "job",
        "lean",
        "lease",
        "level",
        "lost",
        "misses",
        "not_before",
        "order",
        "owner",
        "pin",
        "pin_soft",
        "placed",
        "queue",
        "queued_at",
        "rank",
        "refs",
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
        self.queue: list[QueueItem] | None = None  # the ready queue it was last put on
        self.refs = False  # its arguments hold object references (it receives their values)
        self.placed = False  # placement by locality was considered for this attempt
        self.fetched: dict[str, Any] | None = None  # where each input object came from, for its last attempt
        self.order = seq  # its place among arrivals: its DAG's first sequence number, or its own
        self.rank = 0.0  # the longest expected path from it to its DAG's end (ranks.py); 0: a plain job


def state_op(e: Entry, now: float, wall: float) -> list[Any]:
    """The journal op that restores ``e``'s progress (a :class:`~titan_zmq.aof.records.Progress`)."""
    nb = wall + (e.not_before - now) if e.not_before else 0.0
    return encode(Progress(
        e.job.id, e.state.value, e.attempts, e.lease, e.worker_name, e.lost, e.misses,
        e.queued_at, e.started_at, e.finished_at, nb, e.pin, e.pin_soft,
        e.result, e.error, e.error_type, e.traceback, e.exit_code, e.stdout, e.stderr, e.inputs, e.level, e.fb_base,
        e.fetched,
    ))  # fmt: skip


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
    endpoint: str = ""  # its object server, "" when it is reached through the broker's relay only
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
    filed: int = 0  # the number of its latest filing in the pool of free workers (pool.py)
    told: float = 0.0  # the heartbeat interval the broker last asked of it
    seen_at: float = 0.0  # when the broker last heard from it (monotonic)
    long_jobs: set[str] = field(default_factory=set)  # jobs leased to it expected to run long (may be stale)

    def behind_long(self) -> bool:
        """Whether a job it holds now is expected to run long: then nothing waits in its window."""
        if self.long_jobs:
            self.long_jobs.intersection_update(self.running)
        return bool(self.long_jobs)

    @property
    def free(self) -> int:
        """Credit: free slots, plus the prefetch window while its jobs are short."""
        if self.draining:
            return 0
        return self.slots + self.window - len(self.running)

    def observe(self, runtime: float, horizon: float) -> None:
        """A job of it ran ``runtime`` seconds: fold that into its average and resize its window."""
        self.ewma = runtime if self.ewma is None else self.ewma + EWMA * (runtime - self.ewma)
        self.adapt(horizon)

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
            "last_heartbeat_age": max(0.0, now - self.seen_at),
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
    free: dict[bytes, list[str]] = field(default_factory=dict)  # objects workers may delete
    keep: list[str] = field(default_factory=list)  # artifacts the broker's keeper copies to its store
    unkeep: list[str] = field(default_factory=list)  # objects freed from the broker's store

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
        self.free.clear()
        self.keep.clear()
        self.unkeep.clear()


def fmt_tags(tags: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(tags)) + "}"


class ServiceNodes(Protocol):
    """What deploys a DAG's service nodes (the broker's ServiceManager)."""

    def check(self, spec: dict[str, Any]) -> None:
        """Raise JobError/BrokerError if ``spec`` is not a service spec that can be deployed."""

    def start(self, entry: Entry) -> None:
        """Deploy the node's service; report back with ``Outcomes.service_up`` or ``service_failed``."""

    def resume(self, entry: Entry) -> None:
        """After a restart: wait again for the service of a node that was waiting for it."""

    def cancel(self, entry: Entry) -> None:
        """The node was cancelled before its service became healthy: stop the service it deployed."""


class State:
    """Jobs, queues, timers and workers, and the settings that bound them."""

    # The parts; the Scheduler sets them, and each part reaches its peers through here.
    admission: Admission
    graph: Graph
    timers: Timers
    queues: Dispatch
    outcomes: Outcomes
    membership: Membership
    records: Records
    rerun: Rerun
    directory: Objects
    ranks: Ranks
    pool: Pool

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        heartbeat_interval: float = 0.5,
        heartbeat_liveness: int = 5,
        heartbeat_rate: float = 0.0,
        max_finished: int = 100_000,
        max_lost: int = 3,
        prefetch_below: float = 0.05,
        max_dag_jobs: int = 100_000,
        max_pending_per_client: int = 1_000_000,
        locality_wait: float = 1.0,
        locality_min: int = 1024 * 1024,
        object_ttl: float = 3600.0,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.interval = heartbeat_interval
        self.liveness = heartbeat_liveness
        self.beat_rate = heartbeat_rate  # at most this many heartbeats a second from all workers (0: no bound)
        self.max_finished = max_finished
        self.max_lost = max_lost
        self.prefetch_below = prefetch_below
        self.max_dag_jobs = max_dag_jobs
        self.max_pending_per_client = max_pending_per_client
        self.rng = rng or random.Random()
        # The object directory (``objects.py``): by id; ids by owner token; worker object servers by name.
        self.objects: dict[str, ObjectInfo] = {}
        self.owned: dict[str, set[str]] = {}
        self.endpoints: dict[str, str] = {}
        self.dag_left: dict[str, int] = {}  # unfinished jobs of DAGs that own objects (counted down)
        self.locality_wait = locality_wait  # 0: placement by locality off
        self.locality_min = locality_min
        self.object_ttl = object_ttl
        self.keeps_artifacts = False  # the broker copies published artifacts to its data directory
        self.holders_settle = 0.0  # after a restart: until then, inputs with no holder wait (workers re-announce)
        self.jobs: dict[str, Entry] = {}
        self.workers: dict[bytes, WorkerInfo] = {}
        self.pending: dict[bytes, int] = {}  # unfinished jobs by the client connection that submitted them
        self.blobs: dict[str, list[Any]] = {}  # sha -> [content, refcount]
        self.idempotency: dict[str, str] = {}
        self.dags: dict[str, dict[str, None]] = {}  # DAG id -> its job ids, in submission order
        self.dag_order: dict[str, int] = {}  # DAG id -> the sequence number of its first job (its arrival)
        self.queues_by_key: dict[QueueKey, list[QueueItem]] = {}  # ready queues by placement
        self.finished: deque[str] = deque()  # ended jobs, oldest first: who is forgotten next
        # Timers, heaps of (when, seq, id, ...) on the monotonic clock (see ``timers``).
        self.held: list[tuple[float, int, str]] = []  # delayed and retrying jobs: when they may run
        self.unpin: list[tuple[float, int, str]] = []  # soft affinity: when a pinned job may go anywhere
        self.gates: list[tuple[float, int, str]] = []  # approval gates with a timeout: when they are rejected
        self.fb_waits: list[tuple[float, int, str, int]] = []  # (deadline, seq, id, level): fallback waits
        self.seq: Iterator[int] = itertools.count()
        self.leases: Iterator[int] = itertools.count(1)
        self.last_lease = 0
        self.fx = Effects()
        self.counters = {"submitted": 0, "succeeded": 0, "failed": 0, "dispatched": 0, "retried": 0}
        # Latencies for the metrics exporter (broker/metrics.py Buckets), when one runs.
        self.dispatch_hist: Any = None
        self.runtime_hist: Any = None
        # After a restart: jobs that were running, by when their worker must have come back.
        self.orphans: dict[str, float] = {}
        self.gone_hooks: list[Callable[[bytes], None]] = []  # told when a worker is removed
        self.service_nodes: ServiceNodes | None = None  # set by the broker
        # Jobs whose state changed this turn (journaled and published). The broker turns tracking off
        # while nothing would read the changes (no journal, no subscriber to job events).
        self.dirty: dict[str, Entry] = {}
        self.track_changes = True
        # When journaling (a data directory is set): this turn's ops other than job progress, in order.
        self.ops: list[list[Any]] | None = None
        self._wire()

    def _wire(self) -> None:
        """Set the parts (the Scheduler does: a bare State has none)."""

    # ---- how a change leaves the scheduler ---------------------------------------------

    def touch(self, entry: Entry) -> None:
        """``entry`` changed this turn: journal its progress and publish it (when anyone would read it)."""
        if self.track_changes:
            self.dirty[entry.job.id] = entry

    def journal(self, op: list[Any]) -> None:
        """Append a journal op to this turn's (a no-op without a data directory)."""
        if self.ops is not None:
            self.ops.append(op)

    def journaled(self) -> None:
        """Record every state change from now on; the broker takes them with ``take_ops()``."""
        self.ops = []

    def take_changes(self) -> list[Entry]:
        """The jobs whose state changed since the last call."""
        if not self.dirty:
            return []
        out = list(self.dirty.values())
        self.dirty.clear()
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

    # ---- lookups and counters ---------------------------------------------------------------

    def entry(self, jid: str) -> Entry:
        """The job ``jid``, or :class:`UnknownJob` naming why it may be missing."""
        e = self.jobs.get(jid)
        if e is None:
            raise UnknownJob(
                f"unknown job id {jid!r}: it was never submitted to this broker, or it ended long ago "
                "and was forgotten (max_finished_jobs)"
            )
        return e

    def restart_counters(self, seq: int, lease: int) -> None:
        """After a replay: go on numbering jobs from ``seq`` and leases after ``lease`` (they never repeat)."""
        self.seq = itertools.count(seq)
        self.leases = itertools.count(lease + 1)
        self.last_lease = lease

    def release_blob(self, sha: str) -> None:
        """A job no longer needs the content ``sha``: drop it when no job holds it. A job holds its
        content until it succeeds or is forgotten (a failed one may be run again: ``titan retry``)."""
        slot = self.blobs.get(sha)
        if slot is not None:
            slot[1] -= 1
            if slot[1] <= 0:
                del self.blobs[sha]

    def own(self, entry: Entry, owner: bytes) -> None:
        """``owner`` submitted the unfinished job ``entry``: it counts against that client's limit."""
        entry.owner = owner
        self.pending[owner] = self.pending.get(owner, 0) + 1



class Part:
    """A part of the scheduler: one responsibility over the shared :class:`State`."""

    def __init__(self, st: State) -> None:
        self.st = st
