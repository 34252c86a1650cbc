"""The jobs of a YAML pipeline, in either format, as the options ``Dag.add`` takes.

:func:`own_job` reads a job of our own format (a job, a service or an approval gate),
:func:`titan_job` one of the Titan format; both put the job's parents in ``after`` and a
service's own settings in ``service``. See ``pipeline.py`` for the formats.
"""

from __future__ import annotations

import shlex
from typing import Any

from titan_zmq.client.pipeline_yaml import CALL_RE, TAG_RE, YamlJob
from titan_zmq.errors import ExprError

OWN_JOB = (
    "id", "call", "shell", "script", "args", "kwargs", "env", "requires", "priority", "delay", "timeout",
    "retries", "backoff", "after", "depends_on", "on_failure", "labels", "node", "affinity", "affinity_wait",
    "type", "port", "health", "replicas", "message", "fallback", "wait", "when",
)  # fmt: skip
TITAN_JOB = (
    "id", "type", "file", "args", "depends_on", "priority", "delay", "affinity", "requirement", "port",
    "hitl_message",
)  # fmt: skip


def _common(job: YamlJob, options: dict[str, Any]) -> None:
    """args, priority, delay and parents: the same in both formats."""
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
    options["after"] = _after(job)
    return options


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


def titan_job(job: YamlJob) -> dict[str, Any]:
    """The submit options of a job in the Titan format (``gate``: its approval question, if any)."""
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
        if not isinstance(requirement, str) or not TAG_RE.fullmatch(requirement.strip()):
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
