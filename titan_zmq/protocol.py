"""The wire protocol: frames, command codes and message bodies.

Every message is a multipart ZeroMQ message::

    [identity...] [b"TZ1"] [command: 1 byte] [body: msgpack map]

The identity frames are added and removed by ROUTER sockets; DEALER peers send
the last three frames only. Command codes and the version tag live here and
nowhere else. Bodies decode into frozen dataclasses; anything that does not fit
raises :class:`~titan_zmq.errors.ProtocolError`, whose text names the problem.

The bytes themselves (msgpack, frames on sockets, the checks of a field's type and of nesting)
are :mod:`titan_zmq.wire`'s; its names are re-exported here (``P.packb``, ``P.send_frames``...).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from titan_zmq.errors import (
    Conflict,
    Forbidden,
    JobError,
    KVTypeError,
    LimitExceeded,
    NotLeader,
    PayloadTooLarge,
    ProtocolError,
    UnknownJob,
)
from titan_zmq.wire import (  # peek_rid and the frame loops are re-exported: peers call P.<name>
    checker,
    packb,
    peek_rid,  # noqa: F401
    recv_frames,  # noqa: F401
    recv_frames_user,  # noqa: F401
    send_frames,  # noqa: F401
    too_deep,
    unpackb,
)

VERSION = b"TZ1"

# Client -> broker, on the front socket.
HELLO = b"\x01"
SUBMIT = b"\x02"
STATUS = b"\x03"
CANCEL = b"\x04"
WORKERS = b"\x05"
WATCH = b"\x06"
LIST = b"\x07"
KV = b"\x08"
LOGS = b"\x09"
DEPLOY = b"\x0a"
SERVICES = b"\x0b"
STOP = b"\x0c"
PRESSURE = b"\x0d"
NOTIFY = b"\x0e"
DRAIN = b"\x0f"
APPROVE = b"\x30"
SCHEDULE = b"\x31"
EDGE = b"\x32"
RETRY = b"\x33"
OBJECTS = b"\x34"

# Worker <-> broker, on the back socket.
READY = b"\x10"
HEARTBEAT = b"\x11"
RESULT = b"\x13"
BYE = b"\x14"
LOG = b"\x15"
SVC_STATE = b"\x16"
ASSIGN = b"\x20"
KILL = b"\x21"
REREGISTER = b"\x23"
SVC_START = b"\x24"
SVC_STOP = b"\x25"
OBJ_FREE = b"\x26"

# Broker -> client (and error replies to anyone).
REPLY = b"\x40"
ERROR = b"\x41"
DONE = b"\x42"

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
# Largest slots and prefetch a READY may announce: far above any real worker (4,096 slots, 1,000 per slot),
# and low enough that sums over all workers stay within the 64-bit integers msgpack can carry.
MAX_SLOTS = 1 << 20
MAX_PREFETCH = 1000 * MAX_SLOTS
# What a broker socket takes may nest at most MAX_DEPTH levels. msgpack packs (and unpacks) at most about
# 1,024: a value the broker was sent nested near that could not be sent on, published or journaled inside
# the few more levels of a reply, an event or a journal record. 512 leaves room for any of them.
MAX_DEPTH = 512

# Error codes carried by ERROR bodies are the ``code`` attributes of the classes in ``errors.py``
# (``errors.from_wire`` turns one back into its exception); these names are short aliases of them.
E_PROTOCOL = ProtocolError.code
E_TOO_LARGE = PayloadTooLarge.code
E_UNKNOWN_JOB = UnknownJob.code
E_BAD_JOB = JobError.code
E_CONFLICT = Conflict.code
E_KV_TYPE = KVTypeError.code
E_LIMIT = LimitExceeded.code  # a configured limit refused the request
E_FORBIDDEN = Forbidden.code  # the sender's key may not make this request
E_NOT_LEADER = NotLeader.code  # a follower of a group: the leader is in Error.leader


@dataclass(frozen=True)
class Message:
    """Base of all message bodies. Subclasses set ``CODE`` and declare fields."""

    CODE: ClassVar[bytes] = b""
    _spec: ClassVar[tuple[tuple[str, Callable[[Any], bool], str, bool], ...]] = ()

    @classmethod
    def _build_spec(cls) -> None:
        hints = typing.get_type_hints(cls)
        spec = []
        for f in dataclasses.fields(cls):
            check, name = checker(hints[f.name])
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            spec.append((f.name, check, name, required))
        cls._spec = tuple(spec)

    def encode(self) -> list[bytes]:
        """Frames for this message, without identity frames."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return [VERSION, self.CODE, packb(body)]

    @classmethod
    def from_body(cls, body: Any) -> Message:
        """Validate a decoded msgpack body and build the message."""
        name = cls.__name__.upper()
        if not isinstance(body, dict):
            raise ProtocolError(f"{name} body must be a msgpack map, got {type(body).__name__}")
        spec = cls._spec
        known = {s[0] for s in spec}
        extra = [k for k in body if k not in known]
        if extra:
            raise ProtocolError(f"{name} has unknown field(s) {sorted(map(str, extra))}")
        for fname, check, tname, required in spec:
            if fname in body:
                if not check(body[fname]):
                    got = type(body[fname]).__name__
                    raise ProtocolError(f"{name} field '{fname}' must be {tname}, got {got}")
            elif required:
                raise ProtocolError(f"{name} is missing the field '{fname}'")
        msg = cls(**body)
        msg.check()
        return msg

    def check(self) -> None:
        """Rules between fields, past each field's type; raise ProtocolError. None by default."""


# ---- client <-> broker ------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """Ask the broker for its version and the ports of its other sockets."""

    CODE = HELLO
    rid: int = 0


@dataclass(frozen=True)
class Submit(Message):
    """Submit jobs. ``blobs`` carries script contents keyed by sha256.

    Jobs that differ only in id and arguments (``map``) may come as one ``template`` (every other
    field) and ``items``, each ``[id, args]``, instead of ``jobs``: each key is sent and checked
    once, not once per job."""

    CODE = SUBMIT
    rid: int
    jobs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    watch: bool = False
    lean: bool = False  # with watch: a job that succeeds is announced in Done.ok, as [id, result]
    template: dict[str, Any] = field(default_factory=dict)
    items: list[Any] = field(default_factory=list)

    def check(self) -> None:
        if self.items and self.jobs:
            raise ProtocolError("SUBMIT carries either 'jobs' or 'template' and 'items', not both")
        if bool(self.items) != bool(self.template):
            raise ProtocolError("SUBMIT 'template' and 'items' go together: the template's fields, one job per item")


@dataclass(frozen=True)
class Status(Message):
    """Ask for the records of the given job ids."""

    CODE = STATUS
    rid: int
    ids: list[str]


@dataclass(frozen=True)
class Cancel(Message):
    """Cancel a queued or running job."""

    CODE = CANCEL
    rid: int
    id: str


@dataclass(frozen=True)
class Workers(Message):
    """List the connected workers."""

    CODE = WORKERS
    rid: int


@dataclass(frozen=True)
class Watch(Message):
    """Ask to be sent DONE when these jobs end; ended ones come back at once."""

    CODE = WATCH
    rid: int
    ids: list[str]


@dataclass(frozen=True)
class List(Message):
    """List jobs, newest first, optionally of one state."""

    CODE = LIST
    rid: int
    state: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class Kv(Message):
    """A KV store operation: ``op`` (get, set, incr, ...) on ``key`` with ``args``."""

    CODE = KV
    rid: int
    op: str
    key: str = ""
    args: list[Any] = field(default_factory=list)
    token: str = ""  # with an op of KV_TOKENED: the same token sent again gets the first answer back


# KV writes whose answer (or effect) differs when applied twice: clients send each with a token of its own.
KV_TOKENED = frozenset({"incr", "cas", "sadd", "srem", "delete"})


@dataclass(frozen=True)
class Logs(Message):
    """Read a job's log lines numbered after ``after`` (at most ``limit``)."""

    CODE = LOGS
    rid: int
    id: str
    after: int = 0
    limit: int = 1000


@dataclass(frozen=True)
class Deploy(Message):
    """Deploy (or replace) a long-running service; ``blobs`` carries its script or project."""

    CODE = DEPLOY
    rid: int
    spec: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Services(Message):
    """List services (or one, by ``name``)."""

    CODE = SERVICES
    rid: int
    name: str | None = None


@dataclass(frozen=True)
class Stop(Message):
    """Stop a service: SIGTERM, then SIGKILL after its grace period."""

    CODE = STOP
    rid: int
    name: str


@dataclass(frozen=True)
class Pressure(Message):
    """How loaded the pool of workers with ``tags`` is (for a node agent's autoscaling)."""

    CODE = PRESSURE
    rid: int
    tags: list[str] = field(default_factory=list)


CLIENT_EVENTS = ("autoscale", "mcp")  # the event.<kind> a client may ask to publish


@dataclass(frozen=True)
class Notify(Message):
    """Ask the broker to publish ``event.<kind>``: a node agent's scaling decisions, the MCP server's audit."""

    CODE = NOTIFY
    rid: int
    kind: str
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Approve(Message):
    """A person's decision on an approval gate (``approve`` false rejects it)."""

    CODE = APPROVE
    rid: int
    id: str
    approve: bool
    by: str = ""
    note: str = ""


@dataclass(frozen=True)
class Schedule(Message):
    """Schedules: ``op`` add (name, cron, jobs, catchup, blobs), rm (name) or ls."""

    CODE = SCHEDULE
    rid: int
    op: str
    name: str = ""
    cron: str = ""
    jobs: list[dict[str, Any]] = field(default_factory=list)
    catchup: str = "skip"
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge(Message):
    """Make job ``child`` (not started yet) wait for job ``parent`` too."""

    CODE = EDGE
    rid: int
    parent: str
    child: str


@dataclass(frozen=True)
class Retry(Message):
    """Run ended jobs again: ``ids`` (each with what was cancelled because of it), or a ``dag``'s
    jobs that did not succeed, or with ``from_job`` that job and everything after it in the DAG."""

    CODE = RETRY
    rid: int
    ids: list[str] = field(default_factory=list)
    dag: str | None = None
    from_job: str | None = None


@dataclass(frozen=True)
class Objects(Message):
    """The object directory: ``verb`` is locate, add, place, release or list (see broker/handlers.py)."""

    CODE = OBJECTS
    rid: int
    verb: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Drain(Message):
    """A worker stops taking jobs; it leaves once those it holds are done."""

    CODE = DRAIN


@dataclass(frozen=True)
class Reply(Message):
    """A successful answer to the request ``rid``."""

    CODE = REPLY
    rid: int
    data: Any = None
    epoch: str = ""  # the broker's run: a change tells the client its watches were lost with a restart


@dataclass(frozen=True)
class Error(Message):
    """A refused request: ``code`` is machine readable, ``message`` says what to do."""

    CODE = ERROR
    rid: int
    code: str
    message: str
    leader: str = ""  # code not_leader: the group leader's front address (HOST:PORT), "" when none is known


@dataclass(frozen=True)
class Done(Message):
    """Pushed to a watching client: the final records of jobs that ended."""

    CODE = DONE
    records: list[dict[str, Any]] = field(default_factory=list)
    ok: list[Any] = field(default_factory=list)  # [id, result] of each success a lean watcher (map) hears of


# ---- worker <-> broker ------------------------------------------------------------


@dataclass(frozen=True)
class Ready(Message):
    """A worker (re)joins: who it is, what it can do, what it still runs."""

    CODE = READY
    name: str
    host: str
    tags: list[str]
    slots: int
    pid: int
    running: list[str] = field(default_factory=list)
    leases: list[int] = field(default_factory=list)  # the lease of each job in ``running``
    cached: list[str] = field(default_factory=list)
    prefetch: int = 0  # jobs it will hold beyond its slots while its jobs are short
    seen_lease: int = 0  # the highest lease it had received when it sent this
    services: list[str] = field(default_factory=list)  # service replicas it runs
    draining: bool = False  # it takes no new jobs
    address: str = ""  # the IP others reach its services on (the one facing the broker)
    objects: dict[str, Any] = field(default_factory=dict)  # {endpoint, held: [[id, size]...]}: its object store

    def check(self) -> None:
        if self.slots > MAX_SLOTS or self.prefetch > MAX_PREFETCH:
            raise ProtocolError(
                f"READY announces {self.slots} slots and a prefetch of {self.prefetch}; "
                f"at most {MAX_SLOTS} and {MAX_PREFETCH}"
            )
        if len(self.leases) > len(self.running):
            raise ProtocolError(
                f"READY has {len(self.leases)} leases for {len(self.running)} running jobs; "
                "'leases' gives the lease of each job in 'running', in order"
            )
        for what, text in (("name", self.name), ("host", self.host), ("address", self.address)):
            if len(text) > 256 or not text.isprintable():
                raise ProtocolError(f"READY: the worker's {what} must be printable and at most 256 characters")


@dataclass(frozen=True)
class Heartbeat(Message):
    """Liveness, both ways; any message counts as one too. A worker's carries its ``load``
    (cpu percent, memory percent, load average) about once a second, and the objects its store
    evicted since the last one (``dropped``: it holds them no more)."""

    CODE = HEARTBEAT
    load: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    interval: float = 0.0  # the broker's: the heartbeat interval it asks of the worker now (0: as before)


@dataclass(frozen=True)
class Result(Message):
    """Outcomes of finished attempts, a batch at a time."""

    CODE = RESULT
    results: list[dict[str, Any]] = field(default_factory=list)
    # Successes with nothing else to say (no output, no exit code), as [id, lease, runtime, result].
    ok: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Bye(Message):
    """A worker leaves; the jobs it names were stopped and go back to the queue."""

    CODE = BYE
    running: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Log(Message):
    """Jobs' output lines, batched: each ``[job_id, unix time, "out" or "err", text]``."""

    CODE = LOG
    lines: list[list[Any]]


@dataclass(frozen=True)
class SvcState(Message):
    """Changes of state of service replicas on a worker (starting, running, exited, ...)."""

    CODE = SVC_STATE
    states: list[dict[str, Any]]


@dataclass(frozen=True)
class SvcStart(Message):
    """Run a service replica (its spec carries id, name, kind, target, port, health)."""

    CODE = SVC_START
    spec: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class SvcStop(Message):
    """Stop service replicas: SIGTERM, then SIGKILL after ``grace`` seconds."""

    CODE = SVC_STOP
    ids: list[str]
    grace: float = 10.0


@dataclass(frozen=True)
class ObjFree(Message):
    """Objects nobody refers to any more: the worker may delete its copies."""

    CODE = OBJ_FREE
    ids: list[str]


@dataclass(frozen=True)
class Assign(Message):
    """Jobs for a worker (at most its free slots), the scripts it lacks (``blobs``), and the ids of
    results the broker now holds (``acks``: the worker may forget them). Acks ride along with new
    work so that a finished job usually costs one message each way."""

    CODE = ASSIGN
    jobs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    acks: list[str] = field(default_factory=list)
    ack_leases: list[int] = field(default_factory=list)  # the lease of each acknowledged result
    term: int = 0  # the sending leader's epoch (a group; 0 alone): a worker drops an Assign from an older one


@dataclass(frozen=True)
class Kill(Message):
    """Stop these running jobs (cancelled, or leased elsewhere)."""

    CODE = KILL
    ids: list[str]
    leases: list[int] = field(default_factory=list)  # kill only that lease of each job (0: any)
    reason: str = "cancelled"
    term: int = 0  # the sending leader's epoch, as in Assign


@dataclass(frozen=True)
class Reregister(Message):
    """The broker does not know this worker (it restarted): send READY again."""

    CODE = REREGISTER


MESSAGES: dict[bytes, type[Message]] = {}
for _cls in (
    Hello, Submit, Status, Cancel, Workers, Watch, List, Kv, Logs, Deploy, Services, Stop, Pressure, Notify, Approve,
    Schedule, Edge, Retry, Reply, Error, Done, Ready, Heartbeat, Result, Bye, Log, SvcState, Drain, Assign, Kill,
    Reregister, SvcStart, SvcStop, Objects, ObjFree,
):  # fmt: skip
    _cls._build_spec()
    MESSAGES[_cls.CODE] = _cls

FRONT_COMMANDS = frozenset(
    {HELLO, SUBMIT, STATUS, CANCEL, WORKERS, WATCH, LIST, KV, LOGS, DEPLOY, SERVICES, STOP, PRESSURE, NOTIFY, APPROVE,
     SCHEDULE, EDGE, RETRY, OBJECTS}
)
BACK_COMMANDS = frozenset({READY, HEARTBEAT, RESULT, BYE, LOG, SVC_STATE, DRAIN})


def decode(
    frames: list[bytes], allowed: frozenset[bytes] | None = None, max_size: int = 0, max_depth: int | None = None
) -> Message:
    """Decode ``[VERSION, command, body]`` into a message.

    ``allowed`` restricts the commands a socket accepts; ``max_size`` refuses
    bodies above that many bytes (0: no limit); ``max_depth`` refuses bodies nested
    deeper than that many levels (None: :data:`MAX_DEPTH` on a broker socket, that is
    with ``allowed`` given, else only msgpack's own limit).
    """
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames [version, command, body], got {len(frames)}")
    version, code, body = frames
    if version != VERSION:
        shown = version[:16]
        raise ProtocolError(f"unknown protocol version {shown!r}; this broker speaks {VERSION.decode()}")
    cls = MESSAGES.get(code)
    if cls is None or (allowed is not None and code not in allowed):
        raise ProtocolError(f"unknown command {code.hex() if code else '(empty)'} on this socket")
    if max_size and len(body) > max_size:
        raise PayloadTooLarge(
            f"message of {len(body)} bytes exceeds the limit of {max_size} bytes; "
            "send large data through the KV store or raise max_message_size"
        )
    value = unpackb(body)
    if max_depth is None:
        max_depth = MAX_DEPTH if allowed is not None else 0
    if max_depth and too_deep(body, value, max_depth):
        raise ProtocolError(
            f"{cls.__name__.upper()} body nests deeper than {max_depth} levels of lists and maps; flatten the data"
        )
    return cls.from_body(value)
