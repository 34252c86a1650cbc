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

This module reads the file as a whole (top-level keys, ids, parents, cycles); each job's fields
are read by ``pipeline_jobs.py`` (both formats), over the nodes of ``pipeline_yaml.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from titan_zmq.client.dag import Dag
from titan_zmq.client.pipeline_jobs import OWN_JOB, TITAN_JOB, own_job, titan_job  # noqa: F401 - keys re-exported
from titan_zmq.client.pipeline_yaml import ID_RE, YamlDoc, YamlJob, kind_of
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


OWN_TOP = ("name", "description", "jobs", "schedule", "catchup")
TITAN_TOP = ("name", "version", "project", "jobs", "schedule", "catchup")
_TITAN_JOB_MARKERS = ("file", "requirement")  # "type" is in both formats
_TITAN_TOP_MARKERS = ("version", "project")


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a YAML pipeline (our format or the Titan format) into a checked ``Dag``.

    Raises ``PipelineError`` naming the file, the line and the key for anything wrong: unknown keys,
    wrong types, duplicate ids, unknown parents, cycles, missing scripts, unsupported Titan features.
    """
    path = Path(path)
    doc = YamlDoc(path, _read(path))
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
    name = _name(doc, top)
    project = _titan_top(doc, top) if titan else False
    seen: dict[str, YamlJob] = {}
    parents: dict[str, list[str]] = {}
    services: dict[str, dict[str, Any]] = {}
    runs: list[tuple[str, dict[str, Any]]] = []  # the jobs that run, with their options
    for job in jobs:
        jid = _job_id(job, seen)
        options = titan_job(job) if titan else own_job(job)
        if project:  # the YAML's folder travels as one archive; each file is an entry point in it
            folder = doc.path.resolve().parent
            options["script"] = Path(options["script"]).resolve().relative_to(folder).as_posix()
            options["project"] = str(folder)
        parents[jid] = options.pop("after")
        service = options.pop("service", None)
        if service is None:
            runs.append((jid, options))
        elif parents[jid]:
            why = "a service starts before every job of the pipeline; it cannot wait for jobs"
            raise job.fail(_parents_key(job), why)
        else:
            services[jid] = {**options, **service}
    dag = _dag(name, runs, parents, services)
    _check_parents(seen, parents)
    _check_cycles(seen, parents)
    if not runs and not services:
        raise doc.fail(jobs_node, "the pipeline has no jobs")
    schedule, catchup = _schedule(doc, top)
    return Pipeline(name=name, dag=dag, path=path, services=services, schedule=schedule, catchup=catchup)


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
        if key not in known_top:
            fmt = " in the Titan format" if titan else ""
            raise doc.fail(knode, f"unknown top-level key '{key}'{fmt} (known: {', '.join(known_top)})")


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


def _dag(
    name: str, runs: list[tuple[str, dict[str, Any]]], parents: dict[str, list[str]], services: dict[str, Any]
) -> Dag:
    """The Dag of the jobs that run: a job after a service simply runs (the service is up before the
    DAG starts), and a job with an approval question (``gate``) waits for a gate after its parents."""
    dag = Dag(name)
    for jid, options in runs:
        after = [p for p in parents[jid] if p not in services]
        gate = options.pop("gate", None)
        if gate is not None:  # hitl_message: the job waits for a person's approval, after its parents
            gid = f"{jid}.approval"
            dag.add(id=gid, after=after, approval=gate)
            after = [gid]
        dag.add(id=jid, after=after, **options)
    return dag


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


def _titan_top(doc: YamlDoc, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> bool:
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
