"""``TitanClient`` and ``TitanJob`` as the original Titan SDK names them, over titan_zmq's client.

Each original call, and what it does here:

* ``submit_dag(name, jobs, agent_run_id=None)`` / ``submit_job(job)``: one DAG of ours, checked
  whole before any of it runs; answers ``"DAG_ACCEPTED"``. Every run gets FRESH job ids
  (``<name>-<6 hex>.<job id>``: our broker takes a resubmitted id for the same job), and the
  original ids keep working in every call below, in this process and in others (jobs included):
  the layer records ``original id -> our id`` in the KV store, under ``titan.compat.id:<id>``.
* ``submit_yaml(path, agent_run_id=None, wait=False, poll_interval=2, timeout=300)``: the file
  through :func:`titan_zmq.client.pipeline.load_pipeline`; ``"DAG_ACCEPTED"``, or ``False`` when
  ``wait`` ran out of ``timeout``. Waiting is pushed by the broker (``poll_interval`` is unused).
* ``get_job_status(id)``: ``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``DEAD``,
  ``CANCELLED`` (``REJECTED`` for a rejected approval gate), ``"NULL"`` for an unknown id. The
  ``DAG-`` prefix the original's master adds is accepted and ignored.
* ``fetch_logs(id)``: the job's output lines, joined by newlines (``""`` if none).
* ``store_put`` (``"OK"``), ``store_get`` (``"NULL"`` when missing), ``store_sadd`` (1 new, 0 not),
  ``store_smembers`` (a list of strings): our KV store, same keys (no hidden ``user:`` prefix, so
  jobs of ours read what these write). Values are stored as strings, as the original does.
  ``store_put("titan:hitl:status:<gate>", "APPROVED"|"REJECTED")``, the original's way to decide
  a human-in-the-loop gate, approves or rejects our gate as well.
* ``get_service_address`` / ``get_service_url`` / ``list_services`` / ``stop_service``: our services
  (``stop_service`` answers ``"STOPPED: DAG-<id>"`` or ``"ERROR: ... not found"``).
* ``upload_file``, ``upload_project_folder``, ``publish_artifact``, ``get_artifact``,
  ``fetch_artifact``, ``deploy_script`` and ``TitanJob(is_archive=True)``: the original's artifact
  store, over our data plane (see :mod:`titan_zmq.compat.artifacts`: names map to objects).

``TitanJob`` arguments: ``args`` one string (split like a shell command line) or a list;
``requirement`` ``GENERAL`` (any worker) or a tag, lower-cased (``GPU`` -> workers tagged ``gpu``);
``parents`` ids in the same submission or earlier ones; ``priority`` as given (higher first, as
ours); ``delay`` in MILLISECONDS (ours: seconds); ``affinity=True`` -> ``affinity="parent"``;
``job_type="SERVICE"``/``"DEPLOY_PAYLOAD"`` with ``port`` -> a service node; ``hitl_message`` -> an
approval gate ``hitl-gate-<id>`` after the job, holding its children, rejected after
``max_wait_seconds``. A ``.sh`` file runs as a shell job; any other as a Python script.

Retries: the original retries a failed job 3 times (4 attempts), then it is ``DEAD``. Jobs sent
through this layer get ``retries=3`` (ours otherwise: 0), with no backoff (the original re-queues at
once); ``TitanClient(retries=..., backoff=...)`` and ``TitanJob(..., retries=...)`` change that.

Differences: connection failures raise :class:`~titan_zmq.errors.BrokerUnavailable` (the original
returns ``"CONNECTION_ERROR: ..."`` strings); ``to_string()`` (the original's wire format), the
dashboard manifest and ``agent_run_id``'s Agent Runs view do not exist (``agent_run_id`` becomes
the label ``agent_run`` on each job). Extensions: ``TitanClient(broker=...)``, ``native`` (our
client), ``resolve(id)``, ``wait(ids, timeout)``, ``cancel_job``, ``approve``, ``reject``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titan_zmq.client import Dag
from titan_zmq.client import TitanClient as NativeClient
from titan_zmq.client.pipeline_jobs import TITAN_RETRIES
from titan_zmq.compat import convert as C
from titan_zmq.compat.artifacts import Artifacts
from titan_zmq.config import parse_address
from titan_zmq.errors import BadRequest, Conflict, JobError, UnknownJob, UnknownService, WaitTimeout
from titan_zmq.job import JobRecord, new_job_id

log = logging.getLogger(__name__)

DEFAULT_RETRIES = TITAN_RETRIES  # the original's promise: 3 retries, then DEAD
ID_KEY = "titan.compat.id:"  # KV prefix: original job id -> our job id of its latest run
HITL_KEY = "titan:hitl:status:"  # the original's KV key a gate's decision is written to
class TitanJob:
    """One job of a DAG, with the original's constructor (the file is read now, as there)."""

    def __init__(
        self,
        job_id: str,
        filename: str,
        job_type: str = "RUN_PAYLOAD",
        args: str | list[Any] | None = None,
        parents: list[str] | None = None,
        port: int = 0,
        is_archive: bool = False,
        priority: int = 1,
        delay: float = 0,
        affinity: bool = False,
        requirement: str | None = "GENERAL",
        hitl_message: str | None = None,
        max_wait_seconds: float = 172800,
        *,
        retries: int | None = None,
    ) -> None:
        self.id = str(job_id)
        self.filename = filename
        self.job_type = job_type
        self.args = args if args else ""
        self.parents = list(parents) if parents else []
        self.port = port
        self.is_archive = is_archive
        self.priority = priority
        self.delay = delay
        self.affinity = affinity
        self.requirement = requirement
        self.hitl_message = hitl_message
        self.max_wait_seconds = max_wait_seconds
        self.retries = retries  # an extension: None takes the client's (3)
        self.path: Path | None = None
        if not is_archive:
            path = Path(filename)
            if not path.is_file():
                raise FileNotFoundError(
                    f"job {self.id}: file {filename!r} not found (relative paths start at {os.getcwd()})"
                )
            self.path = path.resolve()

    def __repr__(self) -> str:
        return f"TitanJob({self.id!r}, {self.filename!r})"

    @property
    def is_service(self) -> bool:
        return self.job_type in C.SERVICE_TYPES


@dataclass
class _Gate:
    """A human-in-the-loop gate the original's ``hitl_message`` puts after a job."""

    id: str
    message: str
    parents: list[str]
    timeout: float


class TitanClient:
    """The original SDK's client. ``broker``, ``retries``, ``backoff``, ``timeout`` and ``keys`` are extensions."""

    def __init__(
        self,
        broker: str | None = None,
        *,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.0,
        timeout: float = 10.0,
        keys: str | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.address = C.broker_address(broker)
        self.native = NativeClient(self.address, timeout=timeout, keys=keys)
        self.artifacts = Artifacts(self.native)

    def close(self) -> None:
        self.artifacts.close()
        self.native.close()

    def __enter__(self) -> TitanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ids ------------------------------------------------------------------------------

    def resolve(self, job_id: str) -> str:
        """Our id for an original one (``DAG-`` prefix or not): of its latest run, else ``job_id`` itself."""
        uid = C.strip_dag_prefix(str(job_id))
        # Asked every time, not cached: another process may have run the same DAG again since.
        found = self.native.kv.get(ID_KEY + uid)
        return found if isinstance(found, str) else uid

    def _remember(self, ids: dict[str, str]) -> None:
        for uid, real in ids.items():
            self.native.kv.set(ID_KEY + uid, real)

    # ---- submitting -----------------------------------------------------------------------

    def submit_job(self, job: TitanJob) -> str:
        """Submit one job (a DAG of one, named after it)."""
        return self.submit_dag(job.id, [job])

    def submit_dag(self, name: str, jobs: list[TitanJob], agent_run_id: str | None = None) -> str:
        """Submit ``jobs`` as one DAG named ``name``, with fresh ids; ``"DAG_ACCEPTED"``."""
        items = _with_gates(list(jobs))
        dag = Dag(f"{C.safe_id(name, 50)}-{new_job_id()[:6]}")
        real: dict[str, str] = {}
        for item in items:
            if item.id in real:
                raise JobError(f"submit_dag {name!r}: job id {item.id!r} is used twice")
            real[item.id] = f"{dag.id}.{C.safe_id(item.id)}"
        labels = {"agent_run": str(agent_run_id)} if agent_run_id else None
        for item in items:
            parents = [real.get(p) or self.resolve(p) for p in item.parents]
            self._add(dag, item, real[item.id], parents, labels)
        self._remember(real)
        self.native.submit_dag(dag)
        log.info("DAG %s submitted as %s (%d job(s))", name, dag.id, len(items))
        return "DAG_ACCEPTED"

    def _add(
        self, dag: Dag, item: TitanJob | _Gate, real: str, parents: list[str], labels: dict[str, str] | None
    ) -> None:
        if isinstance(item, _Gate):
            dag.add(approval=item.message, id=real, after=parents, timeout=item.timeout or None, labels=labels)
            return
        command: dict[str, Any]
        if item.is_archive:  # a project uploaded with upload_project_folder
            folder, entry = self.artifacts.project(item.filename)
            command = {"project": folder, "script": entry}
        else:
            assert item.path is not None
            command = {"script": item.path}
            if item.path.suffix in (".sh", ".bash"):
                command = {"shell": item.path.read_text()}
        requires = C.requirement_tags(item.requirement)
        if item.is_service:
            dag.deploy(C.safe_id(item.id), **command, args=C.split_args(item.args) or None, id=real, after=parents,
                       port=item.port or None, health="tcp" if item.port else None, requires=requires)  # fmt: skip
            return
        dag.add(
            **command, id=real, after=parents, args=C.split_args(item.args), requires=requires,
            priority=item.priority, delay=C.delay_seconds(item.delay), affinity="parent" if item.affinity else None,
            retries=self.retries if item.retries is None else item.retries, backoff=self.backoff, labels=labels,
        )  # fmt: skip

    def submit_yaml(
        self,
        yaml_path: str,
        agent_run_id: str | None = None,
        wait: bool = False,
        poll_interval: float = 2,
        timeout: float = 300,
    ) -> str | bool:
        """Load a YAML pipeline and submit it (its services are nodes of the DAG); with ``wait``, block
        until every job ended: ``False`` if that took longer than ``timeout`` seconds."""
        from titan_zmq.client.pipeline import load_pipeline

        pipeline = load_pipeline(yaml_path)
        if not pipeline.dag.nodes:
            return "DAG_ACCEPTED"
        run = pipeline.dag.instance(f"{C.safe_id(pipeline.name, 50)}-{new_job_id()[:6]}")
        for node in run.nodes:
            opts = dict(node["options"])
            if "deploy" not in node and opts.get("approval") is None and opts.get("retries") is None:
                opts["retries"] = self.retries
                opts.setdefault("backoff", self.backoff)
            if agent_run_id:
                opts["labels"] = {**(opts.get("labels") or {}), "agent_run": str(agent_run_id)}
            node["options"] = opts
        self._remember({_written_id(old): new["id"] for old, new in zip(pipeline.dag.nodes, run.nodes, strict=True)})
        handle = self.native.submit_dag(run)
        if wait:
            try:
                handle.wait(timeout)
            except WaitTimeout:
                return False
        return "DAG_ACCEPTED"

    # ---- asking -------------------------------------------------------------------------

    def _record(self, job_id: str) -> JobRecord | None:
        try:
            return self.native.status(self.resolve(job_id))
        except (UnknownJob, BadRequest, JobError):  # unknown, not an id of ours, or a DAG's id
            return None

    def get_job_status(self, job_id: str) -> str:
        """The job's state in the original's words; ``"NULL"`` if no such job."""
        rec = self._record(job_id)
        return C.UNKNOWN if rec is None else C.state_name(rec)

    def fetch_logs(self, job_id: str) -> str:
        """The job's output so far, one line per line; ``""`` if none (or no such job)."""
        try:
            return "\n".join(line.text for line in self.native.logs(self.resolve(job_id)))
        except (UnknownJob, BadRequest):
            return ""

    def wait(self, job_ids: list[str], timeout: float | None = None) -> dict[str, str]:
        """(Extension) Block until the jobs ended; their final states in the original's words, by the ids given."""
        ours = {jid: self.resolve(jid) for jid in job_ids}
        recs = self.native.wait(list(ours.values()), timeout)
        return {jid: C.state_name(recs[real]) for jid, real in ours.items()}

    def cancel_job(self, job_id: str) -> str:
        """(Extension) Cancel a job that has not ended: its state afterwards, in the original's words."""
        return C.state_name(self.native.cancel(self.resolve(job_id)))

    def approve(self, job_id: str, note: str = "") -> str:
        """(Extension) Approve a human-in-the-loop gate (``hitl-gate-<id>``)."""
        return C.state_name(self.native.approve(self.resolve(job_id), note))

    def reject(self, job_id: str, note: str = "") -> str:
        """(Extension) Reject a human-in-the-loop gate: the jobs after it are cancelled."""
        return C.state_name(self.native.reject(self.resolve(job_id), note))

    # ---- the KV store ---------------------------------------------------------------------

    def store_put(self, key: str, value: Any) -> str:
        """Store ``value`` (as a string) under ``key``; ``"OK"``."""
        self.native.kv.set(key, str(value))
        if key.startswith(HITL_KEY) and str(value).upper() in ("APPROVED", "REJECTED"):
            self._decide_gate(key[len(HITL_KEY) :], str(value).upper() == "APPROVED")
        return "OK"

    def _decide_gate(self, gate: str, approve: bool) -> None:
        try:
            real = self.resolve(gate)
            self.native.approve(real) if approve else self.native.reject(real)
        except (UnknownJob, BadRequest, Conflict) as exc:  # not a gate of ours, or decided already
            log.debug("HITL decision for %s not applied: %s", gate, exc)

    def store_get(self, key: str) -> str:
        """The string under ``key``; ``"NULL"`` if there is none."""
        value = self.native.kv.get(key)
        if value is None:
            return C.UNKNOWN
        return value if isinstance(value, str) else str(value)

    def store_sadd(self, key: str, member: Any) -> int:
        """Add ``member`` (as a string) to the set at ``key``: 1 if it is new, 0 if it was there."""
        return int(self.native.kv.sadd(key, str(member)))

    def store_smembers(self, key: str) -> list[str]:
        """The members of the set at ``key`` (``[]`` if none)."""
        return [m if isinstance(m, str) else str(m) for m in self.native.kv.smembers(key)]

    # ---- services -------------------------------------------------------------------------

    def get_service_address(self, service_id: str) -> tuple[str, int] | None:
        """``(host, port)`` of a running replica of the service; None if unknown or none is running."""
        try:
            (rec,) = self.native.services(_service_name(service_id))
        except (UnknownService, BadRequest, ValueError):
            return None
        for replica in rec.get("replicas", []):
            if replica.get("state") == "running" and replica.get("address"):
                return parse_address(str(replica["address"]))
        return None

    def get_service_url(self, service_id: str, scheme: str = "http") -> str | None:
        addr = self.get_service_address(service_id)
        return None if addr is None else f"{scheme}://{addr[0]}:{addr[1]}"

    def list_services(self) -> list[str]:
        """The names of the services that are running."""
        return [str(s["name"]) for s in self.native.services() if s.get("state") == "running"]

    def stop_service(self, service_id: str) -> str:
        """Stop a service by the job id it was deployed under (``DAG-`` prefix or not)."""
        if not service_id:
            raise ValueError("stop_service requires a non-empty service_id")
        name = _service_name(service_id)
        try:
            self.native.stop_service(name)
        except (UnknownService, BadRequest):
            return f"ERROR: service DAG-{name} not found"
        return f"STOPPED: DAG-{name}"

    # ---- the original's artifact store, over the data plane (compat/artifacts.py) ------------

    def upload_file(self, filepath: str) -> str:
        return self.artifacts.upload_file(filepath)

    def upload_project_folder(self, folder_path: str, project_name: str | None = None) -> str:
        folder = Path(folder_path)
        if not folder.is_dir():
            return f"ERROR: Folder not found at: {folder_path}"
        return self.artifacts.upload_file(folder_path, f"{project_name or folder.resolve().name}.zip")

    def publish_artifact(self, key: str, filename: str) -> bool:
        result = self.upload_file(filename)
        if result != "UPLOAD_SUCCESS":
            log.warning("publish_artifact: upload failed: %s", result)
            return False
        self.store_put(key, os.path.basename(filename))
        return True

    def get_artifact(self, key: str, save_path: str | None = None) -> bool:
        filename = self.store_get(key)
        if not filename or filename in ("NULL", "CLEARED"):
            return False
        return self.fetch_artifact(filename, save_path or f"/tmp/{filename}")

    def fetch_artifact(self, filename: str, save_path: str | None = None) -> bool:
        return self.artifacts.fetch(filename, save_path)

    def deploy_script(self, filepath: str) -> str:
        result = self.artifacts.upload_file(filepath)
        return "DEPLOY_SUCCESS" if result == "UPLOAD_SUCCESS" else result


def _written_id(node: dict[str, Any]) -> str:
    """The id a pipeline's YAML gave a node (the loader keeps one it had to change as ``titan.name``)."""
    labels = node.get("options", {}).get("labels") or {}
    return str(labels.get("titan.name") or node["id"])


def _service_name(service_id: str) -> str:
    return C.safe_id(C.strip_dag_prefix(str(service_id)))


def _with_gates(jobs: list[TitanJob]) -> list[TitanJob | _Gate]:
    """The jobs, each with ``hitl_message`` followed by its gate; children in the batch wait on the gate."""
    gates = {j.id: f"hitl-gate-{j.id}" for j in jobs if j.hitl_message}
    out: list[TitanJob | _Gate] = []
    for job in jobs:
        job.parents = [gates.get(p, p) for p in job.parents]
        out.append(job)
        if job.id in gates:
            out.append(_Gate(gates[job.id], str(job.hitl_message), [job.id], float(job.max_wait_seconds or 0)))
    return out
