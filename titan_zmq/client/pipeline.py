"""YAML pipelines: load a file in our own format or in the Titan format into a ``Dag``.

::

    pipeline = load_pipeline("yaml_pipelines/diamond.yaml")
    run = client.submit_dag(pipeline.dag)

Our own format::

    name: nightly                     # the DAG's id (default: the file's stem)
    jobs:                             # a list of jobs, or a map of id -> job
      - id: prepare
        shell: "echo hello"           # exactly one of call: / shell: / script:
      - id: train
        call: mypkg.train:main        # module:function
        kwargs: {epochs: 3}           # call jobs only
        after: [prepare]              # or depends_on
        requires: [gpu]               # a list or "gpu,highmem"
        priority: 5
        retries: 2
      - id: report
        script: scripts/report.py     # relative to the YAML's folder
        args: [--verbose]
        depends_on: [train]
        on_failure: continue          # stop (default) | continue

The Titan format (``version``, ``project``, per job ``type``, ``file``, ``requirement``...) loads
into the same model: ``file`` becomes a script job, ``requirement`` a capability tag (``GENERAL``:
any worker). ``hitl_message`` puts an approval gate (``<id>.approval``) before the job.

``type: service`` (both formats; with ``port``, and in our format ``health`` and ``replicas``)
deploys a long-running service instead of running a job. ``titan run`` deploys a pipeline's
services first and waits until they are healthy; a job ``after`` a service then simply runs
(the service is up), and finds it with ``client.service_address(name)``. Services keep running
after the pipeline: ``titan stop NAME`` ends them.

Every error names the file, the line and the key: ``pipeline.yaml:12: job 'train': unknown key
'retrys' (known: ...)``.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from titan_zmq.client.dag import Dag
from titan_zmq.errors import PipelineError

__all__ = ["Pipeline", "PipelineError", "load_pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A loaded pipeline: its name, the Dag to submit, and the file it came from."""

    name: str
    dag: Dag
    path: Path
    services: dict[str, dict[str, Any]]  # name -> TitanClient.deploy() keywords, deployed before the DAG
    schedule: str | None = None  # a cron expression: `titan run` schedules the DAG instead of running it
    catchup: str = "skip"


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_CALL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,63}$")

OWN_TOP = ("name", "description", "jobs", "schedule", "catchup")
OWN_JOB = (
    "id", "call", "shell", "script", "args", "kwargs", "env", "requires", "priority", "delay", "timeout",
    "retries", "backoff", "after", "depends_on", "on_failure", "labels", "node", "affinity", "affinity_wait",
    "type", "port", "health", "replicas", "message", "fallback", "wait", "when",
)  # fmt: skip
TITAN_TOP = ("name", "version", "project", "jobs", "schedule", "catchup")
TITAN_JOB = (
    "id", "type", "file", "args", "depends_on", "priority", "delay", "affinity", "requirement", "port",
    "hitl_message",
)  # fmt: skip
_TITAN_JOB_MARKERS = ("file", "requirement")  # "type" is in both formats
_TITAN_TOP_MARKERS = ("version", "project")


# ---- YAML nodes with their lines ---------------------------------------------------------------


class _Doc:
    """The composed YAML document: nodes (with lines) and their values (built by yaml's SafeLoader)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.where = os.fspath(path)
        self._loader = yaml.SafeLoader(text)
        try:
            self.root = self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "invalid YAML"
            raise PipelineError(f"{self.where}:{line}: invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise PipelineError(f"{self.where}: invalid YAML: {exc}") from None

    def fail(self, node: yaml.Node | None, message: str) -> PipelineError:
        line = node.start_mark.line + 1 if node is not None else 1
        return PipelineError(f"{self.where}:{line}: {message}")

    def value(self, node: yaml.Node) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(node, f"invalid value: {exc}") from None

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """``{key: (key_node, value_node)}`` of a mapping node; duplicate or non-string keys refused."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a map, got {_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode)
            if not isinstance(key, str):
                raise self.fail(knode, f"{what}: keys must be strings, got {key!r}")
            if key in out:
                first = out[key][0].start_mark.line + 1
                raise self.fail(knode, f"{what}: key '{key}' is given twice (first on line {first})")
            out[key] = (knode, vnode)
        return out


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a map"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value) if node.value != "" else "nothing"


class _Job:
    """One job's raw fields, with the nodes for error lines."""

    def __init__(self, doc: _Doc, label: str, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]]):
        self.doc = doc
        self.label = label  # "job 'x'" or "job #3"
        self.node = node
        self.fields = fields

    def has(self, key: str) -> bool:
        return key in self.fields and self.doc.value(self.fields[key][1]) is not None

    def vnode(self, key: str) -> yaml.Node:
        return self.fields[key][1]

    def knode(self, key: str) -> yaml.Node:
        return self.fields[key][0]

    def get(self, key: str) -> Any:
        return self.doc.value(self.fields[key][1]) if key in self.fields else None

    def fail(self, key: str | None, message: str, at_key: bool = False) -> PipelineError:
        node = self.node
        if key is not None and key in self.fields:
            node = self.knode(key) if at_key else self.vnode(key)
        return self.doc.fail(node, f"{self.label}: {message}")

    def check_keys(self, known: tuple[str, ...], fmt: str) -> None:
        for key in self.fields:
            if key not in known:
                hint = f" in the {fmt} format" if fmt == "Titan" else ""
                raise self.fail(key, f"unknown key '{key}'{hint} (known: {', '.join(known)})", at_key=True)

    # ---- typed getters (None when absent or null) ----

    def string(self, key: str) -> str | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"'{key}' must be a non-empty string, got {v!r}")
        return v

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"'{key}' must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"'{key}' must be between {lo} and {hi}, got {v}")
        return v

    def number(self, key: str, lo: float, hi: float, unit: str = "seconds") -> float | None:
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"'{key}' must be a number of {unit}, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"'{key}' must be between {lo:g} and {hi:g} {unit}, got {v}")
        return float(v)

    def boolean(self, key: str) -> bool | None:
        v = self.get(key)
        if v is not None and not isinstance(v, bool):
            raise self.fail(key, f"'{key}' must be true or false, got {v!r}")
        return v

    def str_map(self, key: str) -> dict[str, str] | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, f"'{key}' must be a map of names to strings, got {v!r}")
        out = {}
        for k, val in v.items():
            if not isinstance(k, str):
                raise self.fail(key, f"'{key}': names must be strings, got {k!r}")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.fail(key, f"'{key}': value of '{k}' must be a string or a number, got {val!r}")
            out[k] = str(val)
        return out

    def id_list(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is None:
            return None
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise self.fail(key, f"'{key}' must be a list of job ids, got {v!r}")
        for p in items:
            if not _ID_RE.fullmatch(p):
                raise self.fail(key, f"'{key}' names an invalid job id {p!r}")
        if len(set(items)) != len(items):
            raise self.fail(key, f"'{key}' names a parent twice")
        return list(items)

    def tags(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is None:
            return None
        items = [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise self.fail(key, f"'{key}' must be a list of tags or a comma-separated string, got {v!r}")
        for t in items:
            if not _TAG_RE.fullmatch(t.strip()):
                raise self.fail(key, f"'{key}' has an invalid tag {t!r}: use letters, digits and _.:=+-")
        return sorted({t.strip() for t in items})

    def script_path(self, key: str) -> str | None:
        rel = self.string(key)
        if rel is None:
            return None
        path = Path(rel).expanduser()
        if not path.is_absolute():
            path = self.doc.path.resolve().parent / path
        if not path.is_file():
            raise self.fail(key, f"'{key}': no such file {rel!r} (looked for {path})")
        return str(path)


# ---- loading ---------------------------------------------------------------------------------


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a YAML pipeline (our format or the Titan format) into a checked ``Dag``.

    Raises ``PipelineError`` naming the file, the line and the key for anything wrong: unknown keys,
    wrong types, duplicate ids, unknown parents, cycles, missing scripts, unsupported Titan features.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"{os.fspath(path)}: cannot read the pipeline: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{os.fspath(path)}: not a UTF-8 text file") from None
    doc = _Doc(path, text)
    if doc.root is None:
        raise PipelineError(f"{doc.where}:1: the pipeline is empty; give 'name' and 'jobs'")
    top = doc.mapping(doc.root, "the pipeline")
    jobs_node = top["jobs"][1] if "jobs" in top else None
    if jobs_node is None or doc.value(jobs_node) is None:
        raise doc.fail(doc.root, "the pipeline has no 'jobs'")
    jobs = _jobs(doc, jobs_node)
    titan = any(k in top for k in _TITAN_TOP_MARKERS) or any(
        any(k in j.fields for k in _TITAN_JOB_MARKERS) for j in jobs
    )
    known_top = TITAN_TOP if titan else OWN_TOP
    for key, (knode, _) in top.items():
        if key not in known_top:
            fmt = " in the Titan format" if titan else ""
            raise doc.fail(knode, f"unknown top-level key '{key}'{fmt} (known: {', '.join(known_top)})")
    name = _name(doc, top)
    project = _titan_top(doc, top) if titan else False
    dag = Dag(name)
    seen: dict[str, _Job] = {}
    parents: dict[str, list[str]] = {}
    services: dict[str, dict[str, Any]] = {}
    jobs_after: list[tuple[str, dict[str, Any]]] = []
    for job in jobs:
        jid = job.string("id")
        if jid is None:
            raise job.fail(None, "'id' is missing")
        if not _ID_RE.fullmatch(jid):
            raise job.fail(
                "id", f"id {jid!r} is invalid: 1-128 letters, digits and _.:@-, starting with a letter or digit"
            )
        if jid in seen:
            first = seen[jid].node.start_mark.line + 1
            raise job.fail("id", f"job id '{jid}' is used twice (first on line {first})")
        job.label = f"job '{jid}'"
        seen[jid] = job
        options = _titan_job(job) if titan else _own_job(job)
        if project:  # the YAML's folder travels as one archive; each file is an entry point in it
            folder = doc.path.resolve().parent
            options["script"] = Path(options["script"]).resolve().relative_to(folder).as_posix()
            options["project"] = str(folder)
        parents[jid] = options.pop("after")
        service = options.pop("service", None)
        if service is not None:
            if parents[jid]:
                key = "after" if "after" in job.fields else "depends_on"
                raise job.fail(key, "a service starts before every job of the pipeline; it cannot wait for jobs")
            services[jid] = {**options, **service}
        else:
            jobs_after.append((jid, options))
    for jid, options in jobs_after:  # a job after a service: the service is up before the DAG starts
        after = [p for p in parents[jid] if p not in services]
        gate = options.pop("gate", None)
        if gate is not None:  # hitl_message: the job waits for a person's approval, after its parents
            gid = f"{jid}.approval"
            dag.add(id=gid, after=after, approval=gate)
            after = [gid]
        dag.add(id=jid, after=after, **options)
    for jid, ps in parents.items():
        job = seen[jid]
        key = "after" if "after" in job.fields else "depends_on"
        for p in ps:
            if p not in seen:
                raise job.fail(key, f"'{key}' names an unknown job '{p}' (not in this file)")
    _check_cycles(seen, parents)
    if not jobs_after and not services:
        raise doc.fail(jobs_node, "the pipeline has no jobs")
    schedule, catchup = _schedule(doc, top)
    return Pipeline(name=name, dag=dag, path=path, services=services, schedule=schedule, catchup=catchup)


def _schedule(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> tuple[str | None, str]:
    cron = None
    if "schedule" in top:
        vnode = top["schedule"][1]
        cron = doc.value(vnode)
        from croniter import croniter

        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise doc.fail(vnode, f"'schedule' {cron!r} is not a cron expression (e.g. '0 3 * * *'; quote it)")
    catchup = "skip"
    if "catchup" in top:
        vnode = top["catchup"][1]
        catchup = doc.value(vnode)
        if catchup not in ("skip", "once"):
            raise doc.fail(vnode, f"'catchup' must be 'skip' or 'once', got {catchup!r}")
    return cron, catchup


def _jobs(doc: _Doc, node: yaml.Node) -> list[_Job]:
    out = []
    if isinstance(node, yaml.SequenceNode):
        for i, jnode in enumerate(node.value, 1):
            out.append(_Job(doc, f"job #{i}", jnode, doc.mapping(jnode, f"job #{i}")))
    elif isinstance(node, yaml.MappingNode):
        for key, (knode, jnode) in doc.mapping(node, "'jobs'").items():
            body = {} if doc.value(jnode) is None else doc.mapping(jnode, f"job '{key}'")
            job = _Job(doc, f"job '{key}'", knode, body)
            if "id" in body and job.get("id") != key:
                raise job.fail("id", f"'id' is {job.get('id')!r} but the job is listed as '{key}'")
            job.fields = {"id": (knode, knode), **body}
            out.append(job)
    else:
        raise doc.fail(node, f"'jobs' must be a list of jobs or a map of id -> job, got {_kind(node)}")
    if not out:
        raise doc.fail(node, "'jobs' is empty")
    return out


def _name(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
    if "name" in top:
        vnode = top["name"][1]
        name = doc.value(vnode)
        if not isinstance(name, str) or not _ID_RE.fullmatch(name):
            raise doc.fail(
                vnode, f"'name' {name!r} is not a valid DAG id: 1-128 letters, digits and _.:@-, starting with one"
            )
        return name
    name = doc.path.stem
    if not _ID_RE.fullmatch(name):
        raise doc.fail(doc.root, f"no 'name', and the file name {name!r} is not a valid DAG id: give 'name'")
    return name


def _titan_top(doc: _Doc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> bool:
    """Check Titan's top-level keys; return whether the YAML's folder ships as a project."""
    if "version" in top:
        v = doc.value(top["version"][1])
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise doc.fail(top["version"][1], f"'version' must be a string or a number, got {v!r}")
    if "project" in top:
        v = doc.value(top["project"][1])
        if v is not None and not isinstance(v, bool):
            raise doc.fail(top["project"][1], f"'project' must be true or false, got {v!r}")
        return bool(v)
    return False


def _common(job: _Job, options: dict[str, Any]) -> None:
    """args, priority, delay and parents: the same in both formats."""
    for key, value in (
        ("priority", job.integer("priority", -(2**31), 2**31)),
        ("delay", job.number("delay", 0.0, 365 * 86400.0)),
    ):
        if value is not None:
            options[key] = value


def _scalar_args(job: _Job, args: list[Any]) -> list[Any]:
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            raise job.fail("args", f"'args' of a shell or script job must be strings or numbers, got {a!r}")
    return [a if isinstance(a, str) else str(a) for a in args]


def _command(job: _Job, kind: str, options: dict[str, Any]) -> None:
    """``shell:`` or ``script:`` and its ``args`` (a call's args are set by the caller)."""
    if kind == "shell":
        options["shell"] = job.string("shell")
    else:
        options["script"] = job.script_path("script")
    args = job.get("args")
    if args is not None:
        if not isinstance(args, list):
            raise job.fail("args", f"'args' must be a list, got {args!r}")
        options["args"] = _scalar_args(job, args)


def _own_job(job: _Job) -> dict[str, Any]:
    job.check_keys(OWN_JOB, "own")
    jtype = job.get("type")
    if jtype not in (None, "run", "service", "approval"):
        raise job.fail("type", f"'type' must be 'run' (a job, the default), 'service' or 'approval', got {jtype!r}")
    if jtype == "service":
        return _own_service(job)
    if jtype == "approval":
        return _own_approval(job)
    if job.has("message"):
        raise job.fail("message", "'message' is only for 'type: approval' entries", at_key=True)
    for key in ("port", "health", "replicas"):
        if job.has(key):
            raise job.fail(key, f"'{key}' is only for 'type: service' entries", at_key=True)
    given = [k for k in ("call", "shell", "script") if job.has(k)]
    if len(given) != 1:
        got = ", ".join(given) if given else "none"
        extra = max(given, key=lambda k: job.knode(k).start_mark.line) if given else None  # the second written
        raise job.fail(extra, f"give exactly one of call:, shell: or script: (got {got})", at_key=True)
    kind = given[0]
    options: dict[str, Any] = {}
    if kind == "call":
        target = job.string("call")
        assert target is not None
        if not _CALL_RE.fullmatch(target):
            raise job.fail("call", f"'call' {target!r} must look like 'package.module:function'")
        options["call"] = target
        args = job.get("args")
        if args is not None:
            if not isinstance(args, list):
                raise job.fail("args", f"'args' must be a list, got {args!r}")
            options["args"] = args  # any msgpack values
    else:
        _command(job, kind, options)
    kwargs = job.get("kwargs")
    if kwargs is not None:
        if kind != "call":
            raise job.fail("kwargs", f"only call jobs take 'kwargs'; pass arguments to a {kind} job in 'args'", True)
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise job.fail("kwargs", f"'kwargs' must be a map with string keys, got {kwargs!r}")
        options["kwargs"] = kwargs
    for key in ("env", "labels"):
        m = job.str_map(key)
        if m is not None:
            options[key] = m
    requires = job.tags("requires")
    if requires:
        options["requires"] = requires
    _common(job, options)
    when = job.get("when")
    if when is not None:
        from titan_zmq.expr import ExprError, parse

        try:
            parse(when)
        except ExprError as exc:
            raise job.fail("when", str(exc)) from None
        options["when"] = when
    fallback = job.get("fallback")
    if fallback is not None:
        if not isinstance(fallback, list) or not all(isinstance(f, dict) for f in fallback):
            raise job.fail("fallback", "'fallback' must be a list of maps with requires, timeout and wait")
        options["fallback"] = fallback
    for key, value in (
        ("wait", job.number("wait", 0.01, 86400.0)),
        ("timeout", job.number("timeout", 0.001, 365 * 86400.0)),
        ("retries", job.integer("retries", 0, 1000)),
        ("backoff", job.number("backoff", 0.0, 3600.0)),
        ("affinity_wait", job.number("affinity_wait", 0.0, 86400.0)),
        ("node", job.string("node")),
    ):
        if value is not None:
            options[key] = value
    affinity = job.get("affinity")
    if affinity is not None:
        if affinity not in ("parent", "strict"):
            raise job.fail("affinity", f"'affinity' must be 'parent' (soft) or 'strict', got {affinity!r}")
        options["affinity"] = affinity
    on_failure = job.get("on_failure")
    if on_failure is not None:
        if on_failure not in ("stop", "continue"):
            raise job.fail("on_failure", f"'on_failure' must be 'stop' or 'continue', got {on_failure!r}")
        options["on_failure"] = on_failure
    if job.has("after") and job.has("depends_on"):
        raise job.fail("depends_on", "give 'after' or 'depends_on', not both", at_key=True)
    options["after"] = job.id_list("after") or job.id_list("depends_on") or []
    return options


def _only(job: _Job, allowed: set[str], what: str) -> None:
    for key in job.fields:
        if key not in allowed:
            raise job.fail(key, f"'{key}' does not apply to {what} (known: {', '.join(sorted(allowed))})", True)


def _own_approval(job: _Job) -> dict[str, Any]:
    """An approval gate: ``message`` is the question; ``timeout`` rejects it when nobody answers."""
    _only(job, {"id", "type", "message", "timeout", "after", "depends_on", "labels"}, "an approval gate")
    message = job.string("message")
    if not message:
        raise job.fail(None, "an approval gate needs a 'message': the question the person answers")
    options: dict[str, Any] = {"approval": message}
    timeout = job.number("timeout", 0.001, 365 * 86400.0)
    if timeout is not None:
        options["timeout"] = timeout
    labels = job.str_map("labels")
    if labels:
        options["labels"] = labels
    if job.has("after") and job.has("depends_on"):
        raise job.fail("depends_on", "give 'after' or 'depends_on', not both", at_key=True)
    options["after"] = job.id_list("after") or job.id_list("depends_on") or []
    return options


def _own_service(job: _Job) -> dict[str, Any]:
    _only(job, {"id", "type", "shell", "script", "args", "env", "requires", "port", "health", "replicas", "after",
                "depends_on"}, "a service")  # fmt: skip
    given = [k for k in ("shell", "script") if job.has(k)]
    if len(given) != 1:
        raise job.fail(None, "a service needs exactly one of shell: or script:")
    options: dict[str, Any] = {}
    _command(job, given[0], options)
    env = job.str_map("env")
    health = job.string("health")
    if health is not None and health != "tcp" and not health.startswith("http:/"):
        raise job.fail("health", f"'health' must be 'tcp' or 'http:/path', got {health!r}")
    options["service"] = {"port": job.integer("port", 1, 65535), "health": health,
                          "replicas": job.integer("replicas", 1, 1000), "env": env,
                          "requires": job.tags("requires") or None}  # fmt: skip
    options["after"] = job.id_list("after") or job.id_list("depends_on") or []
    return options


def _titan_job(job: _Job) -> dict[str, Any]:
    job.check_keys(TITAN_JOB, "Titan")
    jtype = job.get("type")
    if jtype is not None and jtype not in ("run", "service"):
        raise job.fail("type", f"'type' must be 'run' or 'service', got {jtype!r}")
    hitl = job.string("hitl_message")
    if hitl is not None and jtype == "service":
        raise job.fail("hitl_message", "a service cannot wait for approval", True)
    port = job.integer("port", 1, 65535)
    if port is not None and jtype != "service":
        raise job.fail("port", "'port' is only for 'type: service' jobs", at_key=True)
    if not job.has("file"):
        raise job.fail(None, "'file' is missing: a Titan 'run' job runs a Python file")
    options: dict[str, Any] = {"script": job.script_path("file")}
    if job.boolean("affinity"):
        options["affinity"] = "parent"  # Titan's affinity: where the parent ran (soft)
    args = job.get("args")
    if args is not None:
        if isinstance(args, str):
            args = shlex.split(args)
        if not isinstance(args, list):
            raise job.fail("args", f"'args' must be a list or a string, got {args!r}")
        options["args"] = _scalar_args(job, args)
    requirement = job.get("requirement")
    if requirement is not None:
        if not isinstance(requirement, str) or not _TAG_RE.fullmatch(requirement.strip()):
            raise job.fail(
                "requirement", f"'requirement' must be a capability tag such as GENERAL or GPU, got {requirement!r}"
            )
        tag = requirement.strip().lower()  # Titan writes GPU; our workers' tags are lower case
        if tag != "general":
            options["requires"] = [tag]
    _common(job, options)
    options["after"] = job.id_list("depends_on") or []
    if hitl:  # Titan's human in the loop: a gate before the job, asking hitl_message
        options["gate"] = hitl
    if jtype == "service":
        options["service"] = {"port": port, "health": "tcp"}
        for key in ("priority", "delay", "affinity"):
            options.pop(key, None)
    return options


def _check_cycles(jobs: dict[str, _Job], parents: dict[str, list[str]]) -> None:
    """Refuse a cycle, naming it and the line of the job where it closes."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in parents:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path = [start]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            ps = parents[node]
            if i < len(ps):
                stack[-1] = (node, i + 1)
                p = ps[i]
                if state.get(p) == 1:
                    cycle = [*path[path.index(p) :], p]
                    job = jobs[node]
                    key = "after" if "after" in job.fields else "depends_on"
                    # Edges point child -> parent here; show them in run order (parent -> child).
                    shown = " -> ".join(reversed(cycle))
                    raise job.fail(key, f"'{key}' closes a cycle: {shown}")
                if p not in state:
                    state[p] = 1
                    stack.append((p, 0))
                    path.append(p)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
