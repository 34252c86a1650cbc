"""The journal's record kinds: one typed record each, written and read through the same definition.

On disk a record is the msgpack array ``[LETTER, *fields]`` (a KV write: ``["K", verb, *fields]``).
:func:`encode` gives that array for a record and :func:`decode` the record for an array. The table
:data:`KINDS` is the one place a letter (or a KV verb) is given a meaning, and each means one thing
in every file: snapshot and journal alike. This module imports nothing of the broker: it is the
vocabulary the broker, the KV store and the offline tools share.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from titan_zmq.errors import AOFCorrupt

# ---- framing (``aof.log`` and ``aof.journal``) ---------------------------------------------------


class Commit(NamedTuple):
    """The end of a batch: the ``n`` records before it are whole (``aof.log``)."""

    n: int


class Header(NamedTuple):
    """The first record of a snapshot file."""

    version: int
    gen: int
    time: float


class SnapshotEnd(NamedTuple):
    """The last record of a snapshot file: it holds ``records`` state records (a snapshot without one
    is incomplete). Snapshots written before this letter existed ended with ``["E", records]``."""

    records: int


# ---- jobs (``broker.durable``) -------------------------------------------------------------------


class Accepted(NamedTuple):
    """A job accepted: its wire spec, and the wall time it was submitted."""

    spec: dict[str, Any]
    submitted_at: float


class Blob(NamedTuple):
    """A script or project's content, before the first job that needs it."""

    sha: str
    content: bytes


class Progress(NamedTuple):
    """A job's progress after a turn that changed it (the last four fields came later: older
    journals lack them)."""

    id: str
    state: str
    attempts: int
    lease: int
    worker: str | None
    lost: int
    misses: int
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    not_before: float  # wall time; 0: none
    pin: str | None
    pin_soft: bool
    result: Any
    error: str | None
    error_type: str | None
    traceback: str | None
    exit_code: int | None
    stdout: str
    stderr: str
    inputs: dict[str, Any] | None = None
    level: int = 0
    fb_base: int = 0
    fetched: dict[str, Any] | None = None


class ObjectAdded(NamedTuple):
    """An object recorded, or one more owner of it (``owner`` None: a holder only)."""

    id: str
    size: int
    kind: str
    name: str | None
    producer: str | None
    owner: str | None
    ttl_at: float | None
    artifact: bool


class ObjectReleased(NamedTuple):
    """An owner of an object let it go (``*``: every owner, as a TTL does); with none left it is freed."""

    id: str
    owner: str


class Forgotten(NamedTuple):
    """An ended job dropped from memory (``max_finished_jobs``)."""

    id: str


class LastLease(NamedTuple):
    """The last lease id issued (snapshots: leases never repeat)."""

    lease: int


class EndOrder(NamedTuple):
    """Ended jobs in the order they ended (snapshots: who is forgotten next)."""

    ids: list[str]


class Edge(NamedTuple):
    """An edge added at run time: ``child`` waits for ``parent`` too."""

    parent: str
    child: str


# ---- the KV store (``aof.kv``) -------------------------------------------------------------------


class KvSet(NamedTuple):
    key: str
    value: Any
    deadline: float | None


class KvDel(NamedTuple):
    key: str


class KvSadd(NamedTuple):
    key: str
    members: list[Any]


class KvSrem(NamedTuple):
    key: str
    members: list[Any]


class KvExpire(NamedTuple):
    key: str
    deadline: float | None


class KvDone(NamedTuple):
    """A tokened KV operation was applied, with this result: the same token sent again (a client
    resending after a lost reply, or after a failover) gets the result, not a second application."""

    token: str
    result: Any


# ---- services and schedules (``broker.services``, ``broker.schedules``) ---------------------------


class ServiceDeployed(NamedTuple):
    spec: dict[str, Any]
    blob: Any


class ServiceStopped(NamedTuple):
    name: str


class ReplicaFailed(NamedTuple):
    """A replica failed for good: a restarted broker must not start it again."""

    service: str
    replica: str
    error: str | None


class ScheduleAdded(NamedTuple):
    name: str
    cron: str
    specs: list[dict[str, Any]]
    catchup: str
    blobs: dict[str, bytes] | None = None


class ScheduleRemoved(NamedTuple):
    name: str


class ScheduleFired(NamedTuple):
    name: str
    time: float


Record = (
    Commit | Header | SnapshotEnd | Accepted | Blob | Progress | Forgotten | LastLease | EndOrder | Edge
    | KvSet | KvDel | KvSadd | KvSrem | KvExpire | KvDone | ServiceDeployed | ServiceStopped | ReplicaFailed
    | ScheduleAdded | ScheduleRemoved | ScheduleFired | ObjectAdded | ObjectReleased
)  # fmt: skip

# The one table of letters. "K" is the KV store's, whose records are told apart by a verb.
KINDS: dict[str, type] = {
    "C": Commit, "H": Header, "N": SnapshotEnd,
    "A": Accepted, "B": Blob, "S": Progress, "F": Forgotten, "L": LastLease, "O": EndOrder, "E": Edge,
    "V": ServiceDeployed, "v": ServiceStopped, "X": ReplicaFailed,
    "Y": ScheduleAdded, "y": ScheduleRemoved, "Z": ScheduleFired,
    "G": ObjectAdded, "g": ObjectReleased,
}  # fmt: skip
KV = "K"
KV_VERBS: dict[str, type] = {"set": KvSet, "del": KvDel, "sadd": KvSadd, "srem": KvSrem, "exp": KvExpire,
                             "done": KvDone}  # fmt: skip
LEGACY_SNAPSHOT_END = "E"  # in a snapshot file only: what SnapshotEnd was written as before "N"

_PREFIX: dict[type, tuple[str, ...]] = {cls: (letter,) for letter, cls in KINDS.items()}
_PREFIX.update({cls: (KV, verb) for verb, cls in KV_VERBS.items()})
COMMIT = "C"


def letter(cls: type) -> str:
    """The letter a record kind is written with."""
    return _PREFIX[cls][0]


def encode(rec: Any) -> list[Any]:
    """The array a record is written as: its letter (and verb), then its fields."""
    return [*_PREFIX[type(rec)], *rec]


def decode(op: list[Any]) -> Any:
    """The record an array read from a journal or snapshot stands for; AOFCorrupt naming what
    does not fit (an unknown letter, a wrong number of fields)."""
    if not isinstance(op, list) or not op or not isinstance(op[0], str):
        raise AOFCorrupt(f"a journal record is not an array that starts with its kind: {str(op)[:80]}")
    kind = op[0]
    if kind == KV:
        cls = KV_VERBS.get(op[1]) if len(op) > 1 and isinstance(op[1], str) else None
        fields = op[2:]
        if cls is None:
            raise AOFCorrupt(
                f"unknown KV record {str(op[1:2])[:40]} in the journal; was it written by a newer titan_zmq?"
            )
    else:
        cls = KINDS.get(kind)
        fields = op[1:]
        if cls is None:
            raise AOFCorrupt(f"unknown journal record kind {kind!r}; was this journal written by a newer titan_zmq?")
    try:
        return cls(*fields)
    except TypeError:
        raise AOFCorrupt(
            f"a journal record {kind!r} ({cls.__name__}) has {len(fields)} field(s), which does not fit its "
            f"definition ({', '.join(cls._fields)})"  # type: ignore[attr-defined]
        ) from None
