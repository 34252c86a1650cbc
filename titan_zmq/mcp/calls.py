"""What the MCP tools do, on the titan side: plain methods that take JSON-like arguments and return
JSON-like dicts, with no MCP dependency (``server.py`` registers them as tools).

Each thread gets its own :class:`~titan_zmq.client.TitanClient` (the SDK runs synchronous tools in
worker threads, and a wait for a result blocks its thread only). Every call that would change the
cluster passes the :class:`~titan_zmq.policy.Policy` first, so a refused call sends nothing.
Errors are titan's own (:class:`~titan_zmq.errors.TitanError`), with the words the CLI prints.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from titan_zmq import protocol as P
from titan_zmq.client import TitanClient
from titan_zmq.client.handle import raise_for
from titan_zmq.errors import JobError, JobFailed, TitanError, UnknownJob, WaitTimeout
from titan_zmq.job import JobRecord
from titan_zmq.policy import OPEN, Policy

MAX_WAIT = 300.0  # seconds one wait_result call may block (an agent calls again to wait longer)
MAX_LOG_LINES = 2000
MAX_RESULT_FETCH = 1 << 20  # a result kept as an object is fetched up to this size, else its reference comes back
_RECORD_KEYS = (
    "id", "state", "kind", "target", "worker", "attempts", "error", "error_type", "exit_code", "requires", "dag",
    "depends_on", "waiting", "labels", "submitted_at", "started_at", "finished_at",
)  # fmt: skip


def record_summary(rec: JobRecord | dict[str, Any]) -> dict[str, Any]:
    """The fields of a job's record an agent reads (no result, output or traceback: those have tools)."""
    d = rec.to_dict() if isinstance(rec, JobRecord) else rec
    return {k: d.get(k) for k in _RECORD_KEYS if d.get(k) not in (None, [], {}, "")}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options a tool call gave (its unset arguments arrive as None or empty)."""
    return {k: v for k, v in options.items() if v not in (None, [], {})}


@contextlib.contextmanager
def _script_file(script: str | None, name: str) -> Iterator[Path | None]:
    """A script's text as a file named ``name`` while the job or service is built (None without a script)."""
    if script is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="titan-mcp-") as tmp:
        path = Path(tmp) / Path(name).name
        path.write_text(script, encoding="utf-8")
        yield path


class Calls:
    """The titan operations behind the tools, for one broker (or group), key folder and policy."""

    def __init__(
        self, broker: str | None = None, keys: str | os.PathLike[str] | None = None, policy: Policy = OPEN,
        timeout: float = 10.0, workdir: str | os.PathLike[str] | None = None,
    ) -> None:  # fmt: skip
        self.broker, self.keys, self.policy, self.timeout = broker, keys, policy, timeout
        self.workdir = Path(workdir or os.getcwd())  # where a DAG's relative script paths are read from
        self._local = threading.local()
        self._clients: list[TitanClient] = []
        self._lock = threading.Lock()

    @property
    def client(self) -> TitanClient:
        """This thread's client (opened on first use)."""
        c: TitanClient | None = getattr(self._local, "client", None)
        if c is None:
            c = TitanClient(self.broker, timeout=self.timeout, keys=self.keys)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()

    # ---- reads -------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        info = self.client.hello()
        workers = self.client.workers()
        out = {"broker": self.client.address, "version": info.get("version"), "workers": len(workers),
               "slots": sum(int(w.get("slots") or 0) for w in workers), "policy": self.policy.describe()}  # fmt: skip
        if info.get("group"):
            out["group"] = info["group"]
        return out

    def status(self, job_id: str) -> dict[str, Any]:
        """A job's record, or a DAG's: its jobs and how many are in each state."""
        data = self.client.request(P.Status, ids=[job_id])
        if "dag" in data:
            return self._dag_summary(data["dag"], data["records"])
        return record_summary(data["records"][0])

    def _dag_summary(self, dag_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        states: dict[str, int] = {}
        for r in records:
            states[r["state"]] = states.get(r["state"], 0) + 1
        done = all(JobRecord.from_dict(r).state.final for r in records)
        return {"dag": dag_id, "done": done, "ok": done and all(r["state"] == "succeeded" for r in records),
                "states": states, "jobs": [record_summary(r) for r in records]}  # fmt: skip

    def wait(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Block up to ``timeout`` seconds for a job (or every job of a DAG) to end. A job's answer has
        its result, or its error and traceback; one still running says so (``done: false``)."""
        timeout = max(0.0, min(float(timeout), MAX_WAIT))
        data = self.client.request(P.Status, ids=[job_id])
        ids = [r["id"] for r in data["records"]]
        try:
            recs = self.client.wait(ids, timeout)
        except WaitTimeout:
            now = self.status(job_id)
            state = now.get("states") or now.get("state")
            return {**now, "done": False, "message": f"{job_id} has not ended after {timeout:g}s (now {state}); "
                    "call wait_result again to keep waiting"}  # fmt: skip
        if "dag" in data:
            return self._dag_summary(data["dag"], [r.to_dict() for r in recs.values()])
        return self._final(recs[job_id])

    def _final(self, rec: JobRecord) -> dict[str, Any]:
        out = record_summary(rec)
        out["done"] = True
        try:
            raise_for(rec)
        except JobFailed as exc:
            out["ok"], out["message"] = False, str(exc)
            return out
        out["ok"] = True
        out["result"] = self._result(rec.result)
        return out

    def _result(self, result: Any) -> Any:
        from titan_zmq.objects.codec import as_ref

        ref = as_ref(result)
        if ref is None:
            return result
        if ref.kind in ("value", "bytes") and ref.size <= MAX_RESULT_FETCH:
            return self.client.fetch_result(result)
        note = "kept in the object store (too large, or a file): 'titan get ID' on a host that reaches it"
        return {"object": ref.id, "kind": ref.kind, "size": ref.size, "name": ref.name, "note": note}

    def logs(self, job_id: str, after: int = 0, tail: int | None = None, limit: int = 200) -> dict[str, Any]:
        """A job's output lines after line ``after`` (at most ``limit``), or its last ``tail`` lines.
        ``next`` is the offset to ask from next time; ``ended`` whether the job has ended."""
        limit = max(1, min(int(limit), MAX_LOG_LINES))
        keep: collections.deque[list[Any]] | list[list[Any]]
        keep = collections.deque(maxlen=max(1, min(int(tail), MAX_LOG_LINES))) if tail else []
        pos, data = max(0, int(after)), {}
        while True:
            data = self.client.request(P.Logs, id=job_id, after=pos, limit=1000 if tail else limit - len(keep))
            keep.extend(data["lines"])
            if data["lines"]:
                pos = int(data["lines"][-1][0])
            if not data["more"] or (not tail and len(keep) >= limit):
                break
        lines = [{"n": n, "stream": s, "text": t} for n, _, s, t in keep]
        return {"id": job_id, "lines": lines, "next": pos, "more": bool(data["more"]) and not tail,
                "state": data.get("state"), "ended": bool(data.get("ended"))}  # fmt: skip

    def log_text(self, job_id: str) -> str:
        """A job's whole log as text (``[err] `` before lines written to stderr): the log resource."""
        out, pos = [], 0
        while True:
            data = self.client.request(P.Logs, id=job_id, after=pos, limit=1000)
            for n, _, stream, text in data["lines"]:
                out.append(("[err] " if stream == "err" else "") + text)
                pos = int(n)
            if not data["more"]:
                return "\n".join(out) + ("\n" if out else "")

    def list_workers(self) -> list[dict[str, Any]]:
        keys = ("name", "host", "tags", "slots", "used", "running", "done", "draining", "last_heartbeat_age")
        return [{k: w.get(k) for k in keys if k in w} for w in self.client.workers()]

    def list_jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [record_summary(r) for r in self.client.jobs(state=state or None, limit=max(1, min(limit, 10_000)))]

    def list_dags(self, limit: int = 20, scan: int = 5000) -> list[dict[str, Any]]:
        """The DAGs among the newest ``scan`` jobs, newest first: id, job count, states, done."""
        dags: dict[str, dict[str, Any]] = {}
        for r in self.client.jobs(limit=scan):
            if not r.dag:
                continue
            d = dags.setdefault(r.dag, {"dag": r.dag, "jobs": 0, "states": {}, "done": True})
            d["jobs"] += 1
            d["states"][r.state.value] = d["states"].get(r.state.value, 0) + 1
            d["done"] = d["done"] and r.state.final
        return list(dags.values())[: max(1, limit)]

    def list_gates(self) -> list[dict[str, Any]]:
        gates = [g for g in self.client.jobs("awaiting_approval", limit=10_000) if g.kind == "approval"]
        return [{"id": g.id, "question": g.target, "dag": g.dag, "after": g.depends_on, "waiting": g.waiting}
                for g in gates]  # fmt: skip

    def list_services(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.client.services(name or None)

    def kv_get(self, key: str) -> dict[str, Any]:
        missing = {"titan.missing": os.urandom(8).hex()}  # comes back only for a key that is not there
        value = self.client.kv.get(key, missing)
        found = value != missing
        return {"key": key, "found": found, "value": value if found else None}

    def kv_list(self, prefix: str = "") -> dict[str, Any]:
        return {"prefix": prefix, "keys": sorted(self.client.kv.keys(prefix))}

    # ---- writes: each passes the policy first ----------------------------------------------------------

    def submit_job(self, *, function: str | None = None, shell: str | None = None, script: str | None = None,
                   script_name: str = "agent_script.py", **options: Any) -> dict[str, Any]:  # fmt: skip
        """Submit one job: a function by name, a command line, or a Python script's text."""
        spec = self._spec(function, shell, script, script_name, options)
        self.policy.check_specs([spec])
        handle = self.client.submit_specs([spec])[0]
        return {"id": handle.id, "state": "submitted",
                "next": "wait_result(job_id) for its result; job_logs(job_id) for its output"}  # fmt: skip

    def _spec(self, function: str | None, shell: str | None, script: str | None, script_name: str,
              options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        options = _given(options)
        if script is None:
            return self.client.build(function, shell=shell, **options)
        if function is not None or shell is not None:
            raise JobError("give exactly one of function, shell or script")
        if not Path(script_name).name.endswith(".py"):
            raise JobError(f"script_name must be a Python file name ending in .py, got {script_name!r}")
        with _script_file(script, script_name) as path:
            return self.client.build(script=path, **options)

    def submit_dag(self, pipeline: str, name: str | None = None) -> dict[str, Any]:
        """Submit a DAG written as YAML or JSON (a pipeline file's text, either format), as one run."""
        from titan_zmq.client.pipeline import load_pipeline

        self.policy.check_write("submitting a DAG")
        loaded = load_pipeline(self.workdir / "pipeline.yaml", text=pipeline, quiet=True, where="pipeline")
        if loaded.schedule:
            raise JobError("this pipeline has a 'schedule': submit_dag runs a DAG once; "
                           "schedule it with 'titan run FILE' (or remove 'schedule')")  # fmt: skip
        dag = loaded.dag.instance(name or None)
        specs = dag.specs(self.client)
        self.policy.check_specs(specs)
        ids = [h.id for h in self.client.submit_specs(specs)]
        return {"dag": dag.id, "name": loaded.name, "jobs": ids, "warnings": list(loaded.warnings),
                "next": "wait_result(dag) waits for every job; job_status(dag) shows where it stands"}  # fmt: skip

    def spawn_job(self, dag: str, *, after: list[str] | None = None, function: str | None = None,
                  shell: str | None = None, script: str | None = None, script_name: str = "agent_script.py",
                  **options: Any) -> dict[str, Any]:  # fmt: skip
        """Add a job to a DAG that has not ended: it runs after the jobs in ``after`` succeed."""
        self.policy.check_write("spawning a job")
        data = self.client.request(P.Status, ids=[dag])
        if "dag" not in data:
            raise UnknownJob(f"{dag!r} is a job, not a DAG: give a DAG's id (job_status shows a job's 'dag')")
        summary = self._dag_summary(dag, data["records"])
        if summary["done"]:
            raise JobError(f"DAG {dag} has ended ({summary['states']}); spawn into a DAG that is still running, "
                           "or submit_dag a new one")  # fmt: skip
        members = {r["id"] for r in data["records"]}
        strangers = [p for p in after or [] if p not in members]
        if strangers:
            raise UnknownJob(f"{', '.join(map(repr, strangers))} not in DAG {dag}: 'after' names jobs of the same DAG")
        spec = self._spec(function, shell, script, script_name, options)
        if not options.get("id"):
            spec["id"] = f"{dag}.{spec['id'][:10]}"
        spec["dag"] = dag
        if after:
            spec["depends_on"] = list(after)
        self.policy.check_specs([spec])
        return {"id": self.client.submit_specs([spec])[0].id, "dag": dag, "after": list(after or [])}

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.policy.check_write("cancelling")
        data = self.client.request(P.Cancel, id=job_id)
        if "records" in data:
            return {"dag": job_id, "cancelled": [r["id"] for r in data["records"]]}
        return record_summary(data)

    def kv_set(self, key: str, value: Any, ttl: float | None = None) -> dict[str, Any]:
        self.policy.check_write("writing to the KV store")
        self.client.kv.set(key, value, ttl=ttl)
        return {"key": key, "stored": True, "ttl": ttl}

    def decide(self, job_id: str, approve: bool, note: str = "", by: str = "mcp-agent") -> dict[str, Any]:
        self.policy.check_write("approving" if approve else "rejecting")
        rec = self.client.approve(job_id, note, by) if approve else self.client.reject(job_id, note, by)
        return record_summary(rec)

    def deploy_service(
        self, name: str, *, shell: str | None = None, script: str | None = None, script_name: str = "service.py",
        wait: float = 30.0, **options: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Deploy a service from a command line or a Python script's text; wait until every replica is healthy."""
        with _script_file(script, script_name) as path:
            spec, blobs = self.client.service_spec(name, shell=shell, script=path, **_given(options))
        self.policy.check_service(spec)
        return self.client.deploy_spec(spec, blobs, wait=max(0.0, min(float(wait), MAX_WAIT)) or None)

    def stop_service(self, name: str) -> dict[str, Any]:
        self.policy.check_write("stopping a service")
        return self.client.stop_service(name)


__all__ = ["Calls", "TitanError", "record_summary"]
