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

Approvals (our format): a ``type: approval`` entry is a gate of its own (``message``, ``timeout``,
``after``); or a job (or a service) asks with ``approval: "Ship it?"`` or ``approval: {message: ...,
placement: before | after, timeout: S}``. ``before`` (the default) puts a gate ``<id>.approval``
after the job's parents and the job after it (and its parents, whose results it still gets);
``after`` runs the job first, then the gate asks about its output, and every child of the job
waits for both the job (its inputs) and the gate. A rejection, or no answer within ``timeout``
seconds, fails the gate and cancels what waits for it.

Services (both formats): ``type: service`` (with ``port``, and in our format ``health`` and
``replicas``) is a DAG node (``Dag.deploy``): it starts once its parents succeeded, succeeds when
the service is healthy (its result names its addresses), releases its children, and keeps
running after the DAG: ``titan stop NAME`` ends it.

The original Titan format, read as its parser reads it: top level ``name``, ``project``
(default true: the YAML's folder travels as one archive and each ``file`` is an entry point that
must be inside it; false: ``file`` is a script beside the YAML or anywhere), ``version``
(accepted, unused), ``jobs``; per job ``id``, ``type`` (any case; anything but ``service`` is a
task), ``file``, ``args``, ``depends_on``, ``priority`` (default 1), ``delay`` (whole seconds),
``affinity``, ``requirement`` (a tag; ``GENERAL`` is any worker), ``port`` (services),
``hitl_message`` and ``max_wait_seconds`` (default 172800: 48 h): a gate ``<id>.approval`` after
the job (placement ``after``, see above). Values are coerced as the original does (``int()``,
``bool()``, ``str()``; see ``pipeline_jobs.py``). An id that is not one of ours (``Step 1``) is
mapped deterministically (``Step_1``; a short hash is added if that is taken), its ``depends_on``
follow, and the job keeps the written id as the label ``titan.name``. A key the original does
not read is a warning (file, line, key), logged and kept in ``Pipeline.warnings``;
``load_pipeline(path, strict=True)`` (``titan run --strict``) refuses it instead. Our own format
stays strict: an unknown key there is an error.

Every error names the file, the line and the key: ``pipeline.yaml:12: job 'train': unknown key
'retrys' (known: ...)``.

This module reads the file as a whole (top-level keys, ids, parents, cycles); each job's fields
are read by ``pipeline_jobs.py`` (both formats), over the nodes of ``pipeline_yaml.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from titan_zmq.client.dag import Dag
from titan_zmq.client.pipeline_jobs import HITL_WAIT, OWN_JOB, TITAN_JOB, own_job, titan_job, titan_raw_id  # noqa: F401
from titan_zmq.client.pipeline_yaml import ID_RE, YamlDoc, YamlJob, kind_of
from titan_zmq.errors import PipelineError

__all__ = ["Pipeline", "PipelineError", "load_pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pipeline:
    """A loaded pipeline: its name, the Dag to submit (services are nodes of it), the file it came
    from, and the warnings of its loading ("file:line: ..."; only the Titan format has any)."""

    name: str
    dag: Dag
    path: Path
    schedule: str | None = None  # a cron expression: `titan run` schedules the DAG instead of running it
    catchup: str = "skip"
    warnings: tuple[str, ...] = ()


OWN_TOP = ("name", "description", "jobs", "schedule", "catchup")
TITAN_TOP = ("name", "version", "project", "jobs", "schedule", "catchup")
_TITAN_JOB_MARKERS = ("file", "requirement")  # "type" is in both formats
_TITAN_TOP_MARKERS = ("version", "project")


def load_pipeline(
    path: str | Path, *, strict: bool = False, quiet: bool = False, text: str | None = None, where: str | None = None,
) -> Pipeline:  # fmt: skip
    """Load a YAML pipeline (our format or the Titan format) into a checked ``Dag``.

    Raises ``PipelineError`` naming the file, the line and the key for anything wrong: unknown keys
    (our format), wrong types, duplicate ids, unknown parents, cycles, missing scripts. What the
    Titan format ignores is a warning: logged (unless ``quiet``) and kept in ``Pipeline.warnings``;
    with ``strict``, a ``PipelineError`` that lists them. With ``text``, that is the pipeline (JSON is
    YAML too), and ``path`` anchors its relative paths; ``where`` names it in messages (else ``path``).
    """
    path = Path(path)
    doc = YamlDoc(path, _read(path) if text is None else text, where)
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
    _check_top(doc, top, titan)
    runs = _titan_runs(doc, top, jobs) if titan else _own_runs(jobs)
    name = _titan_name(doc, top) if titan else _name(doc, top)
    seen = {jid: job for jid, job, _ in runs}
    parents = {jid: list(options["after"]) for jid, _, options in runs}
    _check_parents(seen, parents)
    _check_cycles(seen, parents)
    dag = _dag(name, runs)
    schedule, catchup = _schedule(doc, top)
    if strict and doc.warnings:
        raise PipelineError("\n".join(doc.warnings) + "\n(refused: --strict / strict=True)")
    if not quiet:
        for w in doc.warnings:
            log.warning("%s", w)
    return Pipeline(name=name, dag=dag, path=path, schedule=schedule, catchup=catchup, warnings=tuple(doc.warnings))


def _own_runs(jobs: list[YamlJob]) -> list[tuple[str, YamlJob, dict[str, Any]]]:
    seen: dict[str, YamlJob] = {}
    runs = []
    for job in jobs:
        jid = _job_id(job, seen)
        runs.append((jid, job, own_job(job)))
    return runs


def _titan_runs(
    doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]], jobs: list[YamlJob]
) -> list[tuple[str, YamlJob, dict[str, Any]]]:
    """The Titan format's jobs, with their ids mapped to ours and the project folder (if any) applied."""
    project = _titan_project(doc, top)
    written = [titan_raw_id(job) for job in jobs]
    ids = titan_ids(written)
    seen: dict[str, YamlJob] = {}
    runs = []
    for job, raw in zip(jobs, written, strict=True):
        jid = ids[raw]
        if jid in seen:
            first = seen[jid].node.start_mark.line + 1
            raise job.fail("id", f"job id {raw!r} is used twice (first on line {first})")
        job.label = f"job '{raw}'"
        seen[jid] = job
        options = titan_job(job, ids, project)
        if jid != raw and "service" not in options:
            options["labels"] = {"titan.name": raw}
        runs.append((jid, job, options))
    return runs


_NOT_ID = re.compile(r"[^A-Za-z0-9_.:@-]+")
_NOT_SERVICE = re.compile(r"[^A-Za-z0-9_.-]+")
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def titan_ids(written: list[str]) -> dict[str, str]:
    """Our job id for each id as written: itself if it is valid, else its runs of other characters
    turned into ``_`` (``"Step 1"`` -> ``Step_1``), with ``-`` and 8 hex of its sha1 added if that
    is another job's id. The same file always gives the same ids."""
    out = {w: w for w in written if ID_RE.fullmatch(w)}
    taken = set(out)
    for w in written:
        if w in out:
            continue
        slug = _NOT_ID.sub("_", w).strip("_.:@-")[:100] or "job"
        if slug in taken:
            slug = f"{slug}-{hashlib.sha1(w.encode()).hexdigest()[:8]}"
        out[w] = slug
        taken.add(slug)
    return out


def _service_name(jid: str) -> str:
    """A service node's service name: its id, where that is a valid service name."""
    if _SERVICE_RE.fullmatch(jid):
        return jid
    return (_NOT_SERVICE.sub("_", jid).strip("_.-") or "service")[:64]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"{os.fspath(path)}: cannot read the pipeline: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{os.fspath(path)}: not a UTF-8 text file") from None


def _check_top(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]], titan: bool) -> None:
    known_top = TITAN_TOP if titan else OWN_TOP
    for key, (knode, _) in top.items():
        if key in known_top:
            continue
        if titan:  # the original ignores it: say so, and go on
            doc.warn(knode, f"top-level key '{key}' is not read by the Titan format; ignored "
                            f"(known: {', '.join(known_top)})")  # fmt: skip
        else:
            raise doc.fail(knode, f"unknown top-level key '{key}' (known: {', '.join(known_top)})")


def _job_id(job: YamlJob, seen: dict[str, YamlJob]) -> str:
    """The job's id, checked and new; from now on its label in messages, and in ``seen``."""
    jid = job.string("id")
    if jid is None:
        raise job.fail(None, "'id' is missing")
    if not ID_RE.fullmatch(jid):
        raise job.fail("id", f"id {jid!r} is invalid: 1-128 letters, digits and _.:@-, starting with a letter or digit")
    if jid in seen:
        first = seen[jid].node.start_mark.line + 1
        raise job.fail("id", f"job id '{jid}' is used twice (first on line {first})")
    job.label = f"job '{jid}'"
    seen[jid] = job
    return jid


def _parents_key(job: YamlJob) -> str:
    """The key the job names its parents with, for error lines."""
    return "after" if "after" in job.fields else "depends_on"


def _dag(name: str, runs: list[tuple[str, YamlJob, dict[str, Any]]]) -> Dag:
    """The Dag: jobs, service nodes (``Dag.deploy``) and approval gates. A gate placed ``before`` a
    job comes after the job's parents, and the job after both; a gate placed ``after`` a job comes
    after it, and every child of the job waits for both the job and the gate."""
    dag = Dag(name)
    ids = {jid for jid, _, _ in runs}
    gated_after = {jid for jid, _, o in runs if o.get("gate") and o["gate"]["placement"] == "after"}
    for jid, job, options in runs:
        after: list[str] = []
        for p in options.pop("after"):
            after += [p, f"{p}.approval"] if p in gated_after else [p]
        gate = options.pop("gate", None)
        gid = f"{jid}.approval"
        if gate is not None and gid in ids:
            raise job.fail(None, f"its approval gate would be '{gid}', which is the id of another job")
        if gate is not None and gate["placement"] == "before":
            dag.add(id=gid, after=after, **_gate_options(gate))
            after = [*after, gid]
        service = options.pop("service", None)
        if service is None:
            dag.add(id=jid, after=after, **options)
        else:
            dag.deploy(_service_name(jid), id=jid, after=after, **service)
        if gate is not None and gate["placement"] == "after":
            dag.add(id=gid, after=[jid], **_gate_options(gate))
    return dag


def _gate_options(gate: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"approval": gate["message"]}
    if gate.get("timeout") is not None:
        options["timeout"] = gate["timeout"]
    return options


def _check_parents(jobs: dict[str, YamlJob], parents: dict[str, list[str]]) -> None:
    for jid, ps in parents.items():
        job = jobs[jid]
        key = _parents_key(job)
        for p in ps:
            if p not in jobs:
                raise job.fail(key, f"'{key}' names an unknown job '{p}' (not in this file)")


def _schedule(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> tuple[str | None, str]:
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


def _jobs(doc: YamlDoc, node: yaml.Node) -> list[YamlJob]:
    out = []
    if isinstance(node, yaml.SequenceNode):
        for i, jnode in enumerate(node.value, 1):
            out.append(YamlJob(doc, f"job #{i}", jnode, doc.mapping(jnode, f"job #{i}")))
    elif isinstance(node, yaml.MappingNode):
        for key, (knode, jnode) in doc.mapping(node, "'jobs'").items():
            body = {} if doc.value(jnode) is None else doc.mapping(jnode, f"job '{key}'")
            job = YamlJob(doc, f"job '{key}'", knode, body)
            if "id" in body and job.get("id") != key:
                raise job.fail("id", f"'id' is {job.get('id')!r} but the job is listed as '{key}'")
            job.fields = {"id": (knode, knode), **body}
            out.append(job)
    else:
        raise doc.fail(node, f"'jobs' must be a list of jobs or a map of id -> job, got {kind_of(node)}")
    if not out:
        raise doc.fail(node, "'jobs' is empty")
    return out


def _name(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
    if "name" in top:
        vnode = top["name"][1]
        name = doc.value(vnode)
        if not isinstance(name, str) or not ID_RE.fullmatch(name):
            raise doc.fail(
                vnode, f"'name' {name!r} is not a valid DAG id: 1-128 letters, digits and _.:@-, starting with one"
            )
        return name
    name = doc.path.stem
    if not ID_RE.fullmatch(name):
        raise doc.fail(doc.root, f"no 'name', and the file name {name!r} is not a valid DAG id: give 'name'")
    return name


def _titan_name(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
    """The DAG id of a Titan file: its ``name`` (any text, mapped like an id), else the file's stem."""
    v = doc.value(top["name"][1]) if "name" in top else None
    if v is None or v == "":
        v = doc.path.stem
    if isinstance(v, (list, dict)):
        raise doc.fail(top["name"][1], f"'name' must be a name, got {v!r}")
    return titan_ids([str(v)])[str(v)]


def _titan_project(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> Path | None:
    """The project folder (the YAML's), unless ``project`` is false; read as the original reads it:
    absent is true, and any other value by its truth (``bool()``: the string "false" is true)."""
    if "version" in top:
        v = doc.value(top["version"][1])
        if isinstance(v, (list, dict)):
            raise doc.fail(top["version"][1], f"'version' must be a string or a number, got {v!r}")
    if "project" in top:
        vnode = top["project"][1]
        v = doc.value(vnode)
        if isinstance(v, str) and v.strip().lower() in ("false", "no", "off", "0", "n", "none", "null"):
            doc.warn(vnode, f"'project' is the string {v!r}, which the Titan format reads as true; write false")
        if not v:
            return None
    return Path(os.path.normpath(doc.path.resolve().parent))


def _check_cycles(jobs: dict[str, YamlJob], parents: dict[str, list[str]]) -> None:
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
                    key = _parents_key(job)
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
