"""The job model: what a job is (`Job`), where it stands (`JobState`), what happened (`JobRecord`)."""

from __future__ import annotations

import dataclasses
import enum
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

from titan_zmq.errors import ExprError, JobError


class JobState(str, enum.Enum):
    """The life of a job. Final states never change again."""

    PENDING = "pending"  # waiting on parents (DAGs)
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # between attempts, waiting out its backoff
    AWAITING = "awaiting_approval"  # an approval gate: a person approves or rejects it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # retries spent

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})


class Outcome(str, enum.Enum):
    """How one attempt of a job ended, as a worker reports it (RESULT's ``outcome``) and the broker
    applies it. The wire carries the value; a ``str`` enum compares equal to it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the worker stopped it while shutting down
    CACHE_MISS = "cache_miss"  # the worker lacked a script blob it was thought to hold
    RETURNED = "returned"  # a prefetched job waited too long for a slot there and came back unstarted
    INPUT_LOST = "input_lost"  # the worker could not fetch an object the job receives from any holder

    def __str__(self) -> str:
        return self.value


OUTCOMES = frozenset(o.value for o in Outcome)

# approval: runs nowhere, target is the question asked. service: a DAG node that deploys a service;
# target is the service's name and kwargs its spec (as ``titan deploy`` sends it), checked by the broker.
KINDS = ("call", "shell", "script", "archive", "approval", "service")
RUN_NOWHERE = frozenset({"approval", "service"})  # kinds that are never leased to a worker

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a well-formed job id (1-128 letters, digits and ``_.:@-``, a letter or digit first)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
_CALL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

MAX_BACKOFF = 300.0


def new_job_id() -> str:
    """A fresh job id: 16 hex digits (64 random bits)."""
    return os.urandom(8).hex()  # a quarter of uuid4's cost


def new_job_ids(n: int) -> list[str]:
    """``n`` fresh job ids from one read of the random source (a system call per id costs more
    than the rest of making a small job: map() makes one per item)."""
    raw = os.urandom(8 * n).hex()
    return [raw[i : i + 16] for i in range(0, 16 * n, 16)]


def check_tags(tags: Any, what: str = "requires") -> frozenset[str]:
    """Validate a collection of capability tags."""
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t.strip()]
    if not isinstance(tags, (list, tuple, set, frozenset)):
        raise JobError(f"'{what}' must be a list of tags, got {type(tags).__name__}")
    out = set()
    for t in tags:
        if not isinstance(t, str) or not _TAG_RE.fullmatch(t.strip()):
            raise JobError(f"'{what}' has an invalid tag {t!r}: use letters, digits and _.:=+- (at most 64 characters)")
        out.add(t.strip())
    return frozenset(out)


def _num(d: dict[str, Any], key: str, default: Any, lo: float, hi: float, integer: bool = False) -> Any:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise JobError(f"'{key}' must be a number, got {type(v).__name__}")
    if integer and not isinstance(v, int):
        if float(v).is_integer():
            v = int(v)
        else:
            raise JobError(f"'{key}' must be a whole number, got {v}")
    if not lo <= v <= hi:
        raise JobError(f"'{key}' must be between {lo:g} and {hi:g}, got {v}")
    return v


@dataclass(frozen=True, slots=True)
class Job:
    """A job specification, as submitted. Immutable; the broker keeps its progress apart.

    Slots: the broker holds one per queued job (about 200 bytes with slots, over 1 KiB with a dict)."""

    id: str
    kind: str
    target: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    priority: int = 0
    delay: float = 0.0
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    idempotency_key: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    blob: str | None = None  # sha256 of a script (kind script) or of a __main__ module (kind call)
    depends_on: tuple[str, ...] = ()  # parents: it runs once they all succeeded, with their results
    dag: str | None = None  # the DAG it belongs to
    on_failure: str = "stop"  # "continue": its children run even if it fails for good
    node: str | None = None  # run only on the worker of this name
    affinity: str | None = None  # "parent": where its parent ran, else anywhere after affinity_wait; "strict": wait
    affinity_wait: float = 5.0
    # Fallbacks, tried in turn when it fails for good or finds no eligible worker in time: each
    # {"requires": [...], "timeout": s, "wait": s} (requires replaces the job's; wait: seconds to
    # wait for an eligible worker before the next fallback).
    fallback: tuple[dict[str, Any], ...] = ()
    wait: float | None = None  # seconds to wait for an eligible worker before its first fallback
    when: str | None = None  # a condition on its parents' results (titan_zmq.expr); false: it is skipped
    # Files (shell and script jobs; they then run in a folder of their own): ``outputs`` are paths in it
    # published as artifacts when it succeeds; ``files`` are {name: [parent id, output path]}, put there first.
    outputs: tuple[str, ...] = ()
    files: dict[str, list[str]] = field(default_factory=dict)
    estimate: float | None = None  # its expected runtime in seconds, a hint for critical-path dispatch

    WIRE_FIELDS = (
        "id", "kind", "target", "args", "kwargs", "env", "requires", "priority", "delay",
        "timeout", "retries", "backoff", "idempotency_key", "labels", "blob", "depends_on", "dag", "on_failure",
        "node", "affinity", "affinity_wait", "fallback", "wait", "when", "outputs", "files", "estimate",
    )  # fmt: skip

    def to_wire(self) -> dict[str, Any]:  # noqa: C901 - one flat pass per job on the hot path; helpers cost a call per field
        """The job as a msgpack-ready map (only fields that differ from the defaults)."""
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "target": self.target}
        if self.args:
            d["args"] = list(self.args)
        if self.kwargs:
            d["kwargs"] = self.kwargs
        if self.env:
            d["env"] = self.env
        if self.requires:
            d["requires"] = sorted(self.requires)
        if self.priority:  # one test per field: a getattr loop costs more, once per lease
            d["priority"] = self.priority
        if self.delay:
            d["delay"] = self.delay
        if self.timeout:
            d["timeout"] = self.timeout
        if self.retries:
            d["retries"] = self.retries
        if self.idempotency_key:
            d["idempotency_key"] = self.idempotency_key
        if self.blob:
            d["blob"] = self.blob
        if self.backoff != 1.0:
            d["backoff"] = self.backoff
        if self.labels:
            d["labels"] = self.labels
        if self.depends_on:
            d["depends_on"] = list(self.depends_on)
        if self.dag is not None:
            d["dag"] = self.dag
        if self.on_failure != "stop":
            d["on_failure"] = self.on_failure
        if self.node is not None:
            d["node"] = self.node
        if self.affinity is not None:
            d["affinity"] = self.affinity
        if self.affinity is not None or self.affinity_wait != 5.0:
            d["affinity_wait"] = self.affinity_wait
        if self.fallback:
            d["fallback"] = [dict(f) for f in self.fallback]
        if self.wait is not None:
            d["wait"] = self.wait
        if self.when is not None:
            d["when"] = self.when
        if self.outputs:
            d["outputs"] = list(self.outputs)
        if self.files:
            d["files"] = self.files
        if self.estimate is not None:
            d["estimate"] = self.estimate
        return d

    def level(self, n: int) -> tuple[frozenset[str], float | None, float | None]:
        """(requires, timeout, wait) at fallback level ``n`` (0: the job as written)."""
        if n <= 0 or not self.fallback:
            return self.requires, self.timeout, self.wait
        f = self.fallback[min(n, len(self.fallback)) - 1]
        req = frozenset(f["requires"]) if "requires" in f else self.requires
        return req, f.get("timeout", self.timeout), f.get("wait")

    @classmethod
    def from_journal(cls, d: dict[str, Any]) -> Job:
        """Rebuild a job from ``to_wire()`` output the broker journaled after validating it (fast: replay)."""
        kw = dict(d)
        if "requires" in kw:
            kw["requires"] = frozenset(kw["requires"])
        if "depends_on" in kw:
            kw["depends_on"] = tuple(kw["depends_on"])
        if "fallback" in kw:
            kw["fallback"] = tuple(kw["fallback"])
        if "outputs" in kw:
            kw["outputs"] = tuple(kw["outputs"])
        return _build(**kw)

    @classmethod
    def from_wire(cls, d: Any) -> Job:  # noqa: C901 - every submitted job's check, one flat pass; a call per field costs more
        """Validate a job map from the wire; raise JobError naming the field at fault."""
        if not isinstance(d, dict):
            raise JobError(f"a job must be a map, got {type(d).__name__}")
        unknown = d.keys() - _WIRE_SET
        if unknown:
            raise JobError(f"unknown job field(s) {sorted(map(str, unknown))}; known: {', '.join(cls.WIRE_FIELDS)}")
        jid = d.get("id")
        if not isinstance(jid, str) or not _ID_RE.fullmatch(jid):
            raise JobError(
                f"job id {jid!r} is invalid: 1-128 characters of letters, digits and _.:@-, "
                "starting with a letter or digit"
            )
        kind = d.get("kind")
        if kind not in KINDS:
            raise JobError(f"job {jid}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        target = d.get("target")
        if not isinstance(target, str) or not target.strip():
            raise JobError(f"job {jid}: 'target' must be a non-empty string")
        if kind == "approval" and (d.get("args") or d.get("kwargs")):
            raise JobError(f"job {jid}: an approval gate takes no args; its target is the question it asks")
        if kind == "call" and not _CALL_RE.fullmatch(target):
            raise JobError(f"job {jid}: call target {target!r} must look like 'package.module:function'")
        args = _args(jid, kind, d.get("args") or [])
        kwargs = d.get("kwargs") or {}
        if not isinstance(kwargs, dict) or (kwargs and not all(isinstance(k, str) for k in kwargs)):
            raise JobError(f"job {jid}: 'kwargs' must be a map with string keys")
        if kind == "service":
            if kwargs.get("name") != target or args:
                raise JobError(f"job {jid}: a service node names its service in 'target' and gives its spec "
                               "(with the same 'name') in 'kwargs', and takes no 'args'")  # fmt: skip
        elif kwargs and kind != "call":
            raise JobError(f"job {jid}: only call jobs take 'kwargs'; pass arguments to a {kind} job in 'args'")
        env = d.get("env") or {}
        if not isinstance(env, dict) or (
            env and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise JobError(f"job {jid}: 'env' must be a map of strings to strings")
        labels = d.get("labels") or {}
        if not isinstance(labels, dict) or (
            labels and not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise JobError(f"job {jid}: 'labels' must be a map of strings to strings")
        if d.keys() <= _BASIC and kind not in ("script", "archive"):  # nothing else to check (most jobs)
            values = _DEFAULTS.copy()
            values[0], values[1], values[2], values[3] = jid, kind, target, args
            values[_KWARGS], values[_ENV], values[_LABELS] = kwargs, env, labels
            return _build_from(values)
        timeout = _num(d, "timeout", None, 0.001, 365 * 86400.0)
        blob = d.get("blob")
        if blob is not None and (not isinstance(blob, str) or not _SHA_RE.fullmatch(blob)):
            raise JobError(f"job {jid}: 'blob' must be a sha256 hex digest")
        if kind in ("script", "archive") and blob is None:
            article = "an" if kind == "archive" else "a"
            raise JobError(
                f"job {jid}: {article} {kind} job needs its content ('blob' sha256 and the bytes in 'blobs')"
            )
        if kind == "archive" and (target.startswith("/") or ".." in target.replace("\\", "/").split("/")):
            raise JobError(f"job {jid}: the entry point {target!r} must be a path inside the project folder")
        parents = d.get("depends_on") or []
        if not isinstance(parents, list) or (
            parents and not all(isinstance(p, str) and _ID_RE.fullmatch(p) for p in parents)
        ):
            raise JobError(f"job {jid}: 'depends_on' must be a list of job ids")
        if jid in parents:
            raise JobError(f"job {jid} depends on itself")
        if len(parents) > 1 and len(set(parents)) != len(parents):
            raise JobError(f"job {jid}: 'depends_on' names a parent twice")
        dag = d.get("dag")
        if dag is not None and (not isinstance(dag, str) or not _ID_RE.fullmatch(dag)):
            raise JobError(f"job {jid}: 'dag' must be an id (letters, digits and _.:@-)")
        on_failure = d.get("on_failure") or "stop"
        if on_failure not in ("stop", "continue"):
            raise JobError(f"job {jid}: 'on_failure' must be 'stop' or 'continue', got {on_failure!r}")
        node = d.get("node")
        if node is not None and (not isinstance(node, str) or not 0 < len(node) <= 256):
            raise JobError(f"job {jid}: 'node' must be a worker's name")
        affinity = d.get("affinity")
        if affinity not in (None, "parent", "strict"):
            raise JobError(f"job {jid}: 'affinity' must be 'parent' (soft) or 'strict', got {affinity!r}")
        if affinity is not None and not parents:
            raise JobError(f"job {jid}: affinity '{affinity}' places a job where its parent ran, but it has no parent")
        key = d.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise JobError(f"job {jid}: 'idempotency_key' must be a string of 1 to 256 characters")
        return _build(
            id=jid,
            kind=kind,
            target=target,
            args=args,
            kwargs=kwargs,
            env=env,
            requires=check_tags(d["requires"]) if d.get("requires") else _NO_TAGS,
            priority=_num(d, "priority", 0, -(2**31), 2**31, integer=True),
            delay=float(_num(d, "delay", 0.0, 0.0, 365 * 86400.0)),
            timeout=None if timeout is None else float(timeout),
            retries=_num(d, "retries", 0, 0, 1000, integer=True),
            backoff=float(_num(d, "backoff", 1.0, 0.0, 3600.0)),
            idempotency_key=key,
            labels=labels,
            blob=blob,
            depends_on=tuple(parents),
            dag=dag,
            on_failure=on_failure,
            node=node,
            affinity=affinity,
            affinity_wait=float(_num(d, "affinity_wait", 5.0, 0.0, 86400.0)),
            fallback=_fallback(jid, d.get("fallback")),
            wait=None if d.get("wait") is None else float(_num(d, "wait", None, 0.01, 86400.0)),
            when=_when(jid, d.get("when"), parents),
            outputs=_outputs(jid, kind, d.get("outputs")),
            files=_files(jid, kind, d.get("files"), parents),
            estimate=None if d.get("estimate") is None else float(_num(d, "estimate", None, 0.0, 365 * 86400.0)),
        )

    @classmethod
    def from_template(cls, template: Any, items: Any) -> list[Job]:
        """Validate jobs given as one ``template`` (every field but ``id`` and ``args``) and
        ``items``, each ``[id, args]``; raise JobError naming the item at fault. The template is
        checked once: each job then costs the checks of its id and arguments."""
        if not isinstance(template, dict):
            raise JobError(f"a job template must be a map of job fields, got {type(template).__name__}")
        if "id" in template or "args" in template:
            raise JobError("a job template holds the fields its jobs share; each item gives its own id and args")
        if template.get("idempotency_key") is not None:
            raise JobError("an idempotency key names one job, not a template's many: submit such jobs one by one")
        if not isinstance(items, list):
            raise JobError(f"template items must be a list of [id, args], got {type(items).__name__}")
        base = cls.from_wire({**template, "id": "template"})
        values = [getattr(base, name) for name in _FIELD_NAMES]
        kind = base.kind
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, list) or len(item) != 2:
                raise JobError(f"template item #{i} must be a list [id, args], got {str(item)[:80]}")
            jid, args = item
            if not isinstance(jid, str) or not _ID_RE.fullmatch(jid):
                raise JobError(
                    f"template item #{i}: job id {jid!r} is invalid: 1-128 characters of letters, digits "
                    "and _.:@-, starting with a letter or digit"
                )
            if kind == "approval" and args:
                raise JobError(f"job {jid}: an approval gate takes no args; its target is the question it asks")
            if jid in base.depends_on:
                raise JobError(f"job {jid} depends on itself")
            values[0] = jid
            values[3] = _args(jid, kind, args)
            out.append(_build_from(values))
        return out


def _args(jid: str, kind: str, args: Any) -> list[Any]:
    """A job's validated arguments: any msgpack values for a call, else strings (numbers become strings)."""
    if not isinstance(args, list):
        raise JobError(f"job {jid}: 'args' must be a list, got {type(args).__name__}")
    if kind == "call":
        return args
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            raise JobError(f"job {jid}: arguments of a {kind} job must be strings or numbers, got {a!r}")
    return [a if isinstance(a, str) else str(a) for a in args]


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _relative(jid: str, what: str, path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.replace("\\", "/").split("/"):
        raise JobError(f"job {jid}: {what} {path!r} must be a relative path inside the job's folder")
    return path


def _outputs(jid: str, kind: str, raw: Any) -> tuple[str, ...]:
    if not raw:
        return ()
    if kind not in ("shell", "script"):
        raise JobError(f"job {jid}: 'outputs' are files of shell and script jobs; a {kind} job returns objects")
    if not isinstance(raw, list) or len(raw) > 100:
        raise JobError(f"job {jid}: 'outputs' must be a list (at most 100) of relative paths")
    return tuple(_relative(jid, "output", p) for p in raw)


def _files(jid: str, kind: str, raw: Any, parents: list[str]) -> dict[str, list[str]]:
    if not raw:
        return {}
    if kind not in ("shell", "script"):
        raise JobError(f"job {jid}: input files are for shell and script jobs; a {kind} job receives objects")
    if not isinstance(raw, dict) or len(raw) > 100:
        raise JobError(f"job {jid}: 'files' must be a map (at most 100) of name: [parent id, path]")
    out = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise JobError(f"job {jid}: input name {name!r} must be a word (letters, digits, _)")
        if not isinstance(spec, list) or len(spec) != 2 or spec[0] not in parents:
            raise JobError(f"job {jid}: input {name} must name one of its parents and a path it outputs, "
                           f"[parent, path]; got {spec!r}")  # fmt: skip
        out[name] = [spec[0], _relative(jid, f"input {name}", spec[1])]
    return out


def _when(jid: str, raw: Any, parents: list[str]) -> str | None:
    if raw is None:
        return None
    from titan_zmq.expr import parse

    if not parents:
        raise JobError(f"job {jid}: 'when' is a condition on parents' results, and it has no parents")
    try:
        parse(raw)
    except ExprError as exc:
        raise JobError(f"job {jid}: {exc}") from None
    return str(raw)


def _fallback(jid: str, raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw) or len(raw) > 20:
        raise JobError(f"job {jid}: 'fallback' must be a list (at most 20) of maps with requires, timeout, wait")
    out = []
    for i, f in enumerate(raw):
        extra = set(f) - {"requires", "timeout", "wait"}
        if extra:
            raise JobError(f"job {jid}: fallback #{i + 1} has unknown key(s) {sorted(map(str, extra))}; "
                           "use requires, timeout, wait")  # fmt: skip
        item: dict[str, Any] = {}
        if "requires" in f:
            item["requires"] = sorted(check_tags(f["requires"], f"fallback #{i + 1} requires"))
        for key in ("timeout", "wait"):
            if key in f:
                item[key] = float(_num(f, key, None, 0.001, 365 * 86400.0))
        out.append(item)
    return tuple(out)


def backoff_delay(base: float, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with ±50% jitter."""
    if base <= 0:
        return 0.0
    raw = min(MAX_BACKOFF, base * (2 ** max(0, attempt - 1)))
    return raw * (rng or random).uniform(0.5, 1.5)


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of a job as the broker knows it, as clients see it."""

    id: str
    kind: str
    target: str
    state: JobState
    attempts: int = 0
    worker: str | None = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    requires: list[str] = field(default_factory=list)
    priority: int = 0
    retries: int = 0
    submitted_at: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    waiting: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    dag: str | None = None
    fetched: dict[str, Any] | None = None  # where each input object came from: {id: {from, route, bytes}}

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCEEDED

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        names = _RECORD_FIELDS
        kw = {k: v for k, v in d.items() if k in names}
        kw["state"] = JobState(kw["state"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d


def _mutable_twin(cls: type) -> type:
    """A plain (not frozen) dataclass with the same fields and slots as ``cls``: the same memory layout."""
    ns: dict[str, Any] = {"__annotations__": {f.name: f.type for f in dataclasses.fields(cls)}}
    for f in dataclasses.fields(cls):
        ns[f.name] = field(default=f.default, default_factory=f.default_factory)
    return dataclass(slots=True)(type(f"_{cls.__name__}Builder", (), ns))


_JobBuilder = _mutable_twin(Job)


def _build(**fields: Any) -> Job:
    """A Job from validated fields, for the broker, which builds one per accepted job. A frozen
    dataclass's ``__init__`` sets every one of the 24 fields through ``object.__setattr__``: 4.5 us
    a job here. Its twin's plain ``__init__`` takes 1.4 us, and since both have the same slots the
    object then becomes the frozen Job it is (immutable from then on, equal to ``Job(**fields)``)."""
    job = _JobBuilder(**fields)
    job.__class__ = Job
    return job


def _build_from(values: list[Any]) -> Job:
    """Like :func:`_build`, from every field's value in declaration order (``_FIELD_NAMES``):
    matching 24 keywords costs more than the rest of building the job (2.5 us against 0.6)."""
    job = _JobBuilder(*values)
    job.__class__ = Job
    return job


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Job))  # id, kind, target, args first
# Every field's default, in order, for plain jobs (their kwargs, env and labels are always given).
_DEFAULTS: list[Any] = [None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(Job)]
_KWARGS, _ENV, _LABELS = (_FIELD_NAMES.index(n) for n in ("kwargs", "env", "labels"))
_DEFAULTS[_FIELD_NAMES.index("files")] = {}  # shared: a job's files are never changed in place
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))
_WIRE_SET = frozenset(Job.WIRE_FIELDS)
_BASIC = frozenset({"id", "kind", "target", "args", "kwargs", "env", "labels"})  # all a plain job has
_NO_TAGS: frozenset[str] = frozenset()
