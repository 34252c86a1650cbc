"""The jobs of a YAML pipeline, in either format, as the options ``Dag.add`` takes.

:func:`own_job` reads a job of our own format (a job, a service or an approval gate),
:func:`titan_job` one of the Titan format; both put the job's parents in ``after``, a service's
``Dag.deploy`` keywords in ``service``, and an approval asked before or after the job in ``gate``
(``{"message", "placement", "timeout"}``). See ``pipeline.py`` for the formats.

The Titan format is read as the original reads it: numbers with ``int()`` (``priority: "10"`` is
10, ``delay: 1.5`` is 1 second), flags with ``bool()`` (``affinity: "false"`` is true: a warning
says so), ``args`` with ``str()`` then split like a shell, ``type`` in any case (anything but
``service`` is a task). A key the original does not read is a warning, not an error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from titan_zmq.client.pipeline_yaml import CALL_RE, TAG_RE, YamlJob
from titan_zmq.errors import ExprError

# The original retries a failed job three times, at once, then it is dead (its dead-letter list,
# `titan dead` here). Titan-format jobs and the compatibility layer get that as their default;
# our own format keeps explicit retries (0 unless given).
TITAN_RETRIES = 3

OWN_JOB = (
    "id", "call", "shell", "script", "args", "kwargs", "env", "requires", "priority", "delay", "timeout",
    "retries", "backoff", "after", "depends_on", "on_failure", "labels", "node", "affinity", "affinity_wait",
    "type", "port", "health", "replicas", "message", "fallback", "wait", "when", "approval", "outputs", "inputs",
    "estimate",
)  # fmt: skip
TITAN_JOB = (  # the keys the original reads; any other is a warning
    "id", "type", "file", "args", "depends_on", "priority", "delay", "affinity", "requirement", "port",
    "hitl_message", "max_wait_seconds",
)  # fmt: skip
HITL_WAIT = 172800  # the original's default max_wait_seconds: 48 hours
_PLACEMENTS = ("before", "after")
_FALSE_WORDS = ("false", "no", "off", "0", "n", "none", "null")


def _common(job: YamlJob, options: dict[str, Any]) -> None:
    """priority and delay of a job in our format."""
    for key, value in (
        ("priority", job.integer("priority", -(2**31), 2**31)),
        ("delay", job.number("delay", 0.0, 365 * 86400.0)),
    ):
        if value is not None:
            options[key] = value


def _scalar_args(job: YamlJob, args: list[Any]) -> list[Any]:
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            raise job.fail("args", f"'args' of a shell or script job must be strings or numbers, got {a!r}")
    return [a if isinstance(a, str) else str(a) for a in args]


def _command(job: YamlJob, kind: str, options: dict[str, Any]) -> None:
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


def own_job(job: YamlJob) -> dict[str, Any]:
    """The submit options of a job in our own format (``after``: its parents; ``service``: a service's)."""
    job.check_keys(OWN_JOB, "own")
    jtype = job.get("type")
    if jtype not in (None, "run", "service", "approval"):
        raise job.fail("type", f"'type' must be 'run' (a job, the default), 'service' or 'approval', got {jtype!r}")
    if jtype == "service":
        return _own_service(job)
    if jtype == "approval":
        return _own_approval(job)
    kind = _own_kind(job)
    options: dict[str, Any] = {}
    if kind == "call":
        _call(job, options)
    else:
        _command(job, kind, options)
    _kwargs(job, kind, options)
    for key in ("env", "labels"):
        m = job.str_map(key)
        if m is not None:
            options[key] = m
    requires = job.tags("requires")
    if requires:
        options["requires"] = requires
    _common(job, options)
    _when(job, options)
    fallback = job.get("fallback")
    if fallback is not None:
        if not isinstance(fallback, list) or not all(isinstance(f, dict) for f in fallback):
            raise job.fail("fallback", "'fallback' must be a list of maps with requires, timeout and wait")
        options["fallback"] = fallback
    for key, value in (
        ("wait", job.number("wait", 0.01, 86400.0)),
        ("estimate", job.number("estimate", 0.0, 365 * 86400.0)),
        ("timeout", job.number("timeout", 0.001, 365 * 86400.0)),
        ("retries", job.integer("retries", 0, 1000)),
        ("backoff", job.number("backoff", 0.0, 3600.0)),
        ("affinity_wait", job.number("affinity_wait", 0.0, 86400.0)),
        ("node", job.string("node")),
        ("affinity", job.choice("affinity", ("parent", "strict"), "'parent' (soft) or 'strict'")),
        ("on_failure", job.choice("on_failure", ("stop", "continue"), "'stop' or 'continue'")),
    ):
        if value is not None:
            options[key] = value
    _own_gate(job, options)
    options["after"] = _after(job)
    _files(job, kind, options)
    return options


def _files(job: YamlJob, kind: str, options: dict[str, Any]) -> None:
    """``outputs: [model.pkl]`` (files it publishes) and ``inputs: {data: prepare/out.csv}`` (a
    parent's output, put in its folder; its path in ``$TITAN_INPUT_DATA``). An input's job comes
    before it, as if named in ``after``."""
    outputs = job.get("outputs")
    inputs = job.get("inputs")
    if (outputs or inputs) and kind == "call":
        raise job.fail("outputs" if outputs else "inputs", "'outputs' and 'inputs' are files of shell and script "
                       "jobs; a call job returns and receives objects")  # fmt: skip
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(p, str) and p for p in outputs):
            raise job.fail("outputs", f"'outputs' must be a list of file paths, got {outputs!r}")
        options["outputs"] = list(outputs)
    if inputs is None:
        return
    if not isinstance(inputs, dict):
        raise job.fail("inputs", f"'inputs' must map names to JOB/PATH (a parent's output), got {inputs!r}")
    files: dict[str, list[str]] = {}
    for name, source in inputs.items():
        parent, sep, path = str(source).partition("/")
        if not sep or not parent or not path:
            raise job.fail("inputs", f"input {name!r}: {source!r} is not JOB/PATH (the job that outputs it, its path)")
        files[str(name)] = [parent, path]
        if parent not in options["after"]:
            options["after"].append(parent)
    options["files"] = files


def _own_gate(job: YamlJob, options: dict[str, Any]) -> None:
    """``approval:`` on a job or a service: a question, or ``{message, placement, timeout}``.
    ``placement: before`` (the default) asks before the job runs; ``after`` asks once it has run,
    about its output, before its children run."""
    v = job.get("approval")
    if v is None:
        return
    if isinstance(v, str):
        v = {"message": v}
    if not isinstance(v, dict):
        raise job.fail("approval", f"'approval' must be a question or a map (message, placement, timeout), got {v!r}")
    unknown = sorted(str(k) for k in v if k not in ("message", "placement", "timeout"))
    if unknown:
        raise job.fail("approval", f"'approval': unknown key '{unknown[0]}' (known: message, placement, timeout)")
    message, placement, timeout = v.get("message"), v.get("placement", "before"), v.get("timeout")
    if not isinstance(message, str) or not message.strip():
        raise job.fail("approval", f"'approval' needs a 'message': the question a person answers, got {message!r}")
    if placement not in _PLACEMENTS:
        raise job.fail("approval", f"'approval': 'placement' must be 'before' or 'after', got {placement!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise job.fail("approval", f"'approval': 'timeout' must be a number of seconds > 0, got {timeout!r}")
    timeout = None if timeout is None else float(timeout)
    options["gate"] = {"message": message, "placement": placement, "timeout": timeout}


def _own_kind(job: YamlJob) -> str:
    """What a job (not a service or a gate) runs: the one of call:, shell: and script: it gives."""
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
    return given[0]


def _call(job: YamlJob, options: dict[str, Any]) -> None:
    """``call:`` and its ``args`` (any msgpack values)."""
    target = job.string("call")
    assert target is not None
    if not CALL_RE.fullmatch(target):
        raise job.fail("call", f"'call' {target!r} must look like 'package.module:function'")
    options["call"] = target
    args = job.get("args")
    if args is not None:
        if not isinstance(args, list):
            raise job.fail("args", f"'args' must be a list, got {args!r}")
        options["args"] = args


def _kwargs(job: YamlJob, kind: str, options: dict[str, Any]) -> None:
    kwargs = job.get("kwargs")
    if kwargs is None:
        return
    if kind != "call":
        raise job.fail("kwargs", f"only call jobs take 'kwargs'; pass arguments to a {kind} job in 'args'", True)
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise job.fail("kwargs", f"'kwargs' must be a map with string keys, got {kwargs!r}")
    options["kwargs"] = kwargs


def _when(job: YamlJob, options: dict[str, Any]) -> None:
    """``when:``, a condition on the parents' results, checked here (it is evaluated by the broker)."""
    when = job.get("when")
    if when is None:
        return
    from titan_zmq.expr import parse

    try:
        parse(when)
    except ExprError as exc:
        raise job.fail("when", str(exc)) from None
    options["when"] = when


def _after(job: YamlJob) -> list[str]:
    """The parents of a job or a gate of our own format: 'after' or 'depends_on', not both."""
    if job.has("after") and job.has("depends_on"):
        raise job.fail("depends_on", "give 'after' or 'depends_on', not both", at_key=True)
    return job.id_list("after") or job.id_list("depends_on") or []


def _only(job: YamlJob, allowed: set[str], what: str) -> None:
    for key in job.fields:
        if key not in allowed:
            raise job.fail(key, f"'{key}' does not apply to {what} (known: {', '.join(sorted(allowed))})", True)


def _own_approval(job: YamlJob) -> dict[str, Any]:
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
    options["after"] = _after(job)
    return options


def _own_service(job: YamlJob) -> dict[str, Any]:
    """A service node: ``Dag.deploy`` keywords in ``service``; it starts once its parents succeeded."""
    _only(job, {"id", "type", "shell", "script", "args", "env", "requires", "port", "health", "replicas", "after",
                "depends_on", "approval"}, "a service")  # fmt: skip
    given = [k for k in ("shell", "script") if job.has(k)]
    if len(given) != 1:
        raise job.fail(None, "a service needs exactly one of shell: or script:")
    service: dict[str, Any] = {}
    _command(job, given[0], service)
    health = job.string("health")
    if health is not None and health != "tcp" and not health.startswith("http:/"):
        raise job.fail("health", f"'health' must be 'tcp' or 'http:/path', got {health!r}")
    for key, value in (("port", job.integer("port", 1, 65535)), ("health", health),
                       ("replicas", job.integer("replicas", 1, 1000)), ("env", job.str_map("env")),
                       ("requires", job.tags("requires") or None)):  # fmt: skip
        if value is not None:
            service[key] = value
    options: dict[str, Any] = {"service": service}
    _own_gate(job, options)
    options["after"] = _after(job)
    return options


# ---- the Titan format ---------------------------------------------------------------------------


def titan_raw_id(job: YamlJob) -> str:
    """The job's id as written (the original refuses a job without one; a number is its text)."""
    v = job.get("id")
    if v is None or v == "" or v is False:
        raise job.fail(None, "'id' is missing")
    if isinstance(v, (list, dict)):
        raise job.fail("id", f"'id' must be a name, got {v!r}")
    return str(v)


def titan_job(job: YamlJob, ids: dict[str, str], project: Path | None) -> dict[str, Any]:
    """The options of a job in the Titan format: a task, or a service (``service``); ``gate``: the
    approval asked after it (``hitl_message``). ``ids`` maps the ids as written to ours; with a
    ``project`` folder, ``file`` is an entry point inside it."""
    for key in job.fields:
        if key not in TITAN_JOB:
            job.warn(key, f"key '{key}' is not read by the Titan format; ignored (known: {', '.join(TITAN_JOB)})", True)
    service = _titan_type(job) == "service"
    options: dict[str, Any] = _titan_file(job, project)
    args = _titan_args(job)
    if args is not None:
        options["args"] = args
    requirement = _titan_requirement(job)
    port = _titan_int(job, "port", None, 1, 65535)
    if service:
        if not port:
            raise job.fail("port", "a Titan service needs a 'port' (the port it listens on)")
        for key in ("priority", "delay", "affinity"):
            if job.has(key):
                job.warn(key, f"'{key}' does not apply to a service node; ignored", True)
        options.update(port=port, health="tcp")
        if requirement:
            options["requires"] = requirement
        options = {"service": options}
    else:
        if job.has("port"):
            job.warn("port", "'port' is only read for 'type: service'; ignored on a task", True)
        _titan_task(job, options, requirement)
    _titan_gate(job, options)
    options["after"] = _titan_parents(job, ids)
    return options


def _titan_task(job: YamlJob, options: dict[str, Any], requirement: list[str] | None) -> None:
    if requirement:
        options["requires"] = requirement
    options["priority"] = _titan_int(job, "priority", 1, -(2**31), 2**31)  # the original's default is 1
    options["retries"], options["backoff"] = TITAN_RETRIES, 0.0  # its implicit retries, at once
    delay = _titan_int(job, "delay", 0, 0, 365 * 86400)
    if delay:
        options["delay"] = float(delay)
    if _titan_bool(job, "affinity"):
        options["affinity"] = "parent"  # the original's affinity: where the parent ran (soft)


def _titan_type(job: YamlJob) -> str:
    v = job.get("type")
    t = "run" if v is None else str(v).strip().lower()
    if t not in ("run", "service"):
        job.warn("type", f"'type' {v!r} runs as a task (the Titan format treats everything but 'service' so)")
    return "service" if t == "service" else "run"


def _titan_int(job: YamlJob, key: str, default: int | None, lo: int, hi: int) -> int | None:
    """A whole number as the original reads it: ``int()`` of the value (a string of digits, a
    number, whose fraction it drops, a bool); absent or null: ``default``."""
    v = job.get(key)
    if v is None:
        return default
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        why = f"'{key}' must be a whole number (the Titan format reads it with int()), got {v!r}"
        raise job.fail(key, why) from None
    if isinstance(v, float) and v != n:
        job.warn(key, f"'{key}' {v!r} is read as {n}, as the Titan format does (int())")
    if not lo <= n <= hi:
        raise job.fail(key, f"'{key}' must be between {lo} and {hi}, got {n}")
    return n


def _titan_bool(job: YamlJob, key: str) -> bool:
    """A flag as the original reads it: ``bool()`` of the value, so any non-empty string is true."""
    v = job.get(key)
    if isinstance(v, str) and v.strip().lower() in _FALSE_WORDS:
        job.warn(key, f"'{key}' is the string {v!r}, which the Titan format reads as true (bool()); "
                      "write false without quotes")  # fmt: skip
    return bool(v)


def _titan_args(job: YamlJob) -> list[str] | None:
    """``args`` as the original reads it: ``str()`` of the value (``args: 5`` is "5"), split like a
    shell; a list is one argument per item (ours). Null or empty: none."""
    v = job.get("args")
    if v is None or v == "":
        return None
    if isinstance(v, list):
        return _scalar_args(job, v)
    if isinstance(v, dict):
        raise job.fail("args", f"'args' must be a string (or a list), got {v!r}")
    try:
        return shlex.split(str(v))
    except ValueError as exc:
        raise job.fail("args", f"'args' {str(v)!r} cannot be split into arguments: {exc}") from None


def _titan_requirement(job: YamlJob) -> list[str] | None:
    """``requirement``: a capability tag, matched in lower case; GENERAL (the default) is any worker."""
    v = job.get("requirement")
    if v is None:
        return None
    tag = str(v).strip()
    if isinstance(v, (list, dict, bool)) or not TAG_RE.fullmatch(tag):
        raise job.fail("requirement", f"'requirement' must be a capability tag such as GENERAL or GPU, got {v!r}")
    tag = tag.lower()  # the original writes GPU; our workers' tags are lower case
    return None if tag == "general" else [tag]


def _titan_file(job: YamlJob, project: Path | None) -> dict[str, Any]:
    """``file``: beside the YAML; with a project folder, an entry point that must be inside it."""
    v = job.get("file")
    if not v or isinstance(v, (list, dict, bool)):
        raise job.fail(None if not v else "file", "'file' is missing: a Titan job runs a Python file")
    rel = str(v)
    if project is None:
        path = job.expand("file", rel)
        path = path if path.is_absolute() else job.doc.path.resolve().parent / path
        if not path.is_file():
            raise job.fail("file", f"'file': no such file {rel!r} (looked for {path})")
        return {"script": str(path)}
    path = Path(os.path.normpath(project / job.expand("file", rel)))
    if not path.is_relative_to(project):
        why = (f"'file' {rel!r} is outside the project folder {project}: with 'project: true' (the default) "
               "only that folder travels; move the file into it, or set project: false")  # fmt: skip
        raise job.fail("file", why)
    if not path.is_file():
        raise job.fail("file", f"'file': no such file {rel!r} (looked for {path})")
    return {"script": path.relative_to(project).as_posix(), "project": str(project)}


def _titan_parents(job: YamlJob, ids: dict[str, str]) -> list[str]:
    """``depends_on``: ids as written (one, or a list), mapped as the jobs' own ids are."""
    v = job.get("depends_on")
    if v is None:
        return []
    out: list[str] = []
    for p in v if isinstance(v, list) else [v]:
        if p is None or isinstance(p, (list, dict)):
            raise job.fail("depends_on", f"'depends_on' must be a list of job ids, got {v!r}")
        jid = ids.get(str(p), str(p))
        if jid not in out:
            out.append(jid)
    return out


def _titan_gate(job: YamlJob, options: dict[str, Any]) -> None:
    """``hitl_message``: a person approves the job's output before its children run (the gate comes
    after the job, as in the original); ``max_wait_seconds``: how long it waits, then it is rejected."""
    v = job.get("hitl_message")
    wait = _titan_int(job, "max_wait_seconds", HITL_WAIT, 1, 10 * 365 * 86400)
    if not v:
        if job.has("max_wait_seconds"):
            job.warn("max_wait_seconds", "'max_wait_seconds' has no effect without 'hitl_message'; ignored", True)
        return
    if isinstance(v, (list, dict)):
        raise job.fail("hitl_message", f"'hitl_message' must be a message, got {v!r}")
    options["gate"] = {"message": str(v), "placement": "after", "timeout": float(wait or HITL_WAIT)}
