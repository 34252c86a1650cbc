"""The MCP tools: their names, argument schemas and descriptions, written for a model to act on.

Each method of :class:`Tools` is one tool: its signature is the tool's JSON schema (with a
description per argument), its docstring the tool's description. The work is ``calls.Calls``'s;
``server.py`` wraps every tool with the audit (log + ``event.mcp``) and turns titan's errors into
MCP tool errors. ``WRITES`` names the tools that change the cluster (refused by ``--read-only``).
(No ``from __future__ import annotations`` here: the SDK reads these signatures at run time.)
"""

from typing import Annotated, Any

from pydantic import Field

from titan_zmq.mcp.calls import Calls

JobId = Annotated[str, Field(description="a job id, as submit_job or list_jobs gave it")]
JobOrDag = Annotated[str, Field(description="a job id, or a DAG id (then: all of its jobs)")]
Function = Annotated[str | None, Field(
    description="a Python function the workers can import, as 'package.module:function' (e.g. 'math:sqrt')")]
Shell = Annotated[str | None, Field(description="a shell command line, run with /bin/sh on a worker")]
Script = Annotated[str | None, Field(description="the full text of a Python script to run on a worker")]
Args = Annotated[list[Any] | None, Field(
    description="positional arguments: the function's (JSON values), or a command's or script's argv (strings)")]
Kwargs = Annotated[dict[str, Any] | None, Field(description="keyword arguments of the function (JSON values)")]
Requires = Annotated[list[str] | None, Field(
    description="capability tags the worker must have, e.g. ['gpu']; list_workers shows each worker's tags")]
Timeout = Annotated[float | None, Field(description="seconds the job may run before it is killed", gt=0)]
Retries = Annotated[int | None, Field(description="times a failed job is run again (default 0)", ge=0, le=100)]
Priority = Annotated[int | None, Field(description="higher runs first (default 0)")]
Env = Annotated[dict[str, str] | None, Field(description="environment variables for the job")]
Labels = Annotated[dict[str, str] | None, Field(description="free-form labels kept on the job's record")]
NewId = Annotated[str | None, Field(
    description="the job's id (letters, digits, _.:@-); the same id sent twice is one job. Default: a new id")]

WRITES = frozenset({
    "submit_job", "submit_dag", "spawn_job", "cancel", "kv_set", "approve_gate", "reject_gate",
    "deploy_service", "stop_service",
})  # fmt: skip


def _listed(what: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A list as one JSON object (``{what: [...], "count": n}``): one text block, even when empty."""
    return {what: items, "count": len(items)}


class Tools:
    """The tool methods, bound to one :class:`Calls`."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def ping(self) -> dict[str, Any]:
        """Check that the titan broker answers: its address, version, how many workers and slots it
        has, and what this server allows (its policy). Call this first."""
        return self.calls.ping()

    def submit_job(
        self, function: Function = None, shell: Shell = None, script: Script = None, args: Args = None,
        kwargs: Kwargs = None, requires: Requires = None, timeout: Timeout = None, retries: Retries = None,
        priority: Priority = None, env: Env = None, labels: Labels = None, id: NewId = None,
        script_name: Annotated[str, Field(description="the file name a script runs as")] = "agent_script.py",
    ) -> dict[str, Any]:  # fmt: skip
        """Submit one job to the grid and return its id at once (it runs on a worker that has the
        required tags). Give exactly one of: function (a Python function by 'module:function' name),
        shell (a command line) or script (a Python script's text). Then call wait_result(job_id) for
        its result, and job_logs(job_id) for what it printed."""
        return self.calls.submit_job(function=function, shell=shell, script=script, script_name=script_name,
                                     args=args, kwargs=kwargs, requires=requires, timeout=timeout, retries=retries,
                                     priority=priority, env=env, labels=labels, id=id)  # fmt: skip

    def submit_dag(
        self,
        pipeline: Annotated[str, Field(description=(
            "the DAG as YAML or JSON text: {name: ..., jobs: [{id: a, call: 'mod:fn', args: [...]}, "
            "{id: b, shell: 'echo hi', after: [a]}, {id: ok, type: approval, message: 'Ship it?', after: [b]}]}. "
            "Job keys: id, call, shell, script, args, kwargs, requires, after, timeout, retries, env, when; "
            "type: service or approval. The original Titan's pipeline format is read too."))],
        name: Annotated[str | None, Field(description="the run's DAG id (default: the pipeline's name + a suffix)")]
        = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Submit a whole DAG (a pipeline) in one go: it is checked first (unknown parents, cycles,
        bad keys are refused, naming the line), then every job runs once its parents succeeded.
        Returns the DAG id and its job ids; wait_result(dag_id) waits for all of them."""
        return self.calls.submit_dag(pipeline, name)

    def wait_result(
        self, job_id: JobOrDag,
        timeout: Annotated[float, Field(description="seconds to wait at most (up to 300)", ge=0, le=300)] = 30.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Wait for a job (or every job of a DAG) to end, up to timeout seconds. A job that ended gives
        ok and its result, or ok=false with its error and the remote traceback. One still running gives
        done=false: call again to keep waiting."""
        return self.calls.wait(job_id, timeout)

    def job_status(self, job_id: JobOrDag) -> dict[str, Any]:
        """Where a job stands now (state, worker, attempts, error), or a DAG's jobs and their states."""
        return self.calls.status(job_id)

    def job_logs(
        self, job_id: JobId,
        after: Annotated[int, Field(description="return lines after this line number (0: from the start); "
                                                "pass the last answer's 'next' to read on", ge=0)] = 0,
        tail: Annotated[int | None, Field(description="instead: only the last N lines", ge=1, le=2000)] = None,
        limit: Annotated[int, Field(description="at most this many lines", ge=1, le=2000)] = 200,
    ) -> dict[str, Any]:  # fmt: skip
        """What a job (or a service replica) printed: numbered lines with their stream (out or err),
        from an offset or the last N. 'ended' says whether more can come."""
        return self.calls.logs(job_id, after=after, tail=tail, limit=limit)

    def cancel(self, job_id: JobOrDag) -> dict[str, Any]:
        """Cancel a job that is queued or running (its processes are killed), or every job of a DAG."""
        return self.calls.cancel(job_id)

    def list_workers(self) -> dict[str, Any]:
        """The connected workers: name, host, capability tags, slots and how many are in use."""
        return _listed("workers", self.calls.list_workers())

    def list_jobs(
        self,
        state: Annotated[str | None, Field(description=(
            "only jobs in this state: queued, running, succeeded, failed, cancelled, dead, waiting, "
            "awaiting_approval, retrying"))] = None,
        limit: Annotated[int, Field(description="at most this many, newest first", ge=1, le=10000)] = 50,
    ) -> dict[str, Any]:  # fmt: skip
        """The newest jobs, optionally only those in one state."""
        return _listed("jobs", self.calls.list_jobs(state, limit))

    def list_dags(
        self, limit: Annotated[int, Field(description="at most this many DAGs, newest first", ge=1, le=1000)] = 20,
    ) -> dict[str, Any]:  # fmt: skip
        """The DAGs among the newest 5,000 jobs: id, job count, jobs per state, whether all ended."""
        return _listed("dags", self.calls.list_dags(limit))

    def list_gates(self) -> dict[str, Any]:
        """Approval gates waiting for a decision: id, the question asked, the DAG, the jobs before it."""
        return _listed("gates", self.calls.list_gates())

    def approve_gate(
        self, job_id: Annotated[str, Field(description="the approval gate's job id (list_gates shows them)")],
        note: Annotated[str, Field(description="why, kept on the record")] = "",
    ) -> dict[str, Any]:  # fmt: skip
        """Approve an approval gate: the jobs after it run."""
        return self.calls.decide(job_id, True, note)

    def reject_gate(
        self, job_id: Annotated[str, Field(description="the approval gate's job id (list_gates shows them)")],
        note: Annotated[str, Field(description="why, kept on the record")] = "",
    ) -> dict[str, Any]:  # fmt: skip
        """Reject an approval gate: the jobs after it do not run."""
        return self.calls.decide(job_id, False, note)

    def kv_get(self, key: Annotated[str, Field(description="the key")]) -> dict[str, Any]:
        """Read a key of the cluster's key-value store (shared by all jobs): found, and its value."""
        return self.calls.kv_get(key)

    def kv_set(
        self, key: Annotated[str, Field(description="the key")],
        value: Annotated[Any, Field(description="any JSON value")],
        ttl: Annotated[float | None, Field(description="seconds until it expires (default: never)", gt=0)] = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Write a key of the cluster's key-value store (journaled: it survives a broker restart)."""
        return self.calls.kv_set(key, value, ttl)

    def kv_list(self, prefix: Annotated[str, Field(description="only keys that start with it")] = "") -> dict[str, Any]:
        """The keys of the key-value store, optionally under a prefix."""
        return self.calls.kv_list(prefix)

    def deploy_service(
        self, name: Annotated[str, Field(description="the service's name (letters, digits, _.-)")],
        shell: Shell = None, script: Script = None, args: Args = None,
        port: Annotated[int | None, Field(description="its port (default: the broker picks one, given as $PORT)")]
        = None,
        health: Annotated[str | None, Field(description="'tcp' (the port accepts) or 'http:/path' (answers 2xx)")]
        = None,
        replicas: Annotated[int | None, Field(description="how many copies to run (default 1)", ge=1, le=100)] = None,
        requires: Requires = None, env: Env = None,
        wait: Annotated[float, Field(description="seconds to wait until healthy (0: return at once)", ge=0, le=300)]
        = 30.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Deploy a long-running service (a command line or a Python script) on the grid; it is
        restarted if it crashes. Returns its record: replicas with host, port and state."""
        return self.calls.deploy_service(name, shell=shell, script=script, args=args, port=port, health=health,
                                         replicas=replicas, requires=requires, env=env, wait=wait)  # fmt: skip

    def list_services(self, name: Annotated[str | None, Field(description="only this service")] = None,
                      ) -> dict[str, Any]:  # fmt: skip
        """The services: state, and each replica's host, port, pid, restarts and uptime."""
        return _listed("services", self.calls.list_services(name))

    def stop_service(self, name: Annotated[str, Field(description="the service's name")]) -> dict[str, Any]:
        """Stop a service: each replica gets SIGTERM, then SIGKILL after its grace period."""
        return self.calls.stop_service(name)

    def spawn_job(
        self, dag: Annotated[str, Field(description="the id of a DAG that is still running")],
        after: Annotated[list[str] | None, Field(description="jobs of that DAG to run after (their results "
                                                             "come to a function as 'inputs')")] = None,
        function: Function = None, shell: Shell = None, script: Script = None, args: Args = None,
        kwargs: Kwargs = None, requires: Requires = None, timeout: Timeout = None, retries: Retries = None,
        id: NewId = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Add a job to a running DAG (a dynamic DAG: branch, fan out, add a fix-up step). It runs
        once the jobs in 'after' succeeded, and the DAG ends only when it has ended too."""
        return self.calls.spawn_job(
            dag, after=after, function=function, shell=shell, script=script, args=args, kwargs=kwargs,
            requires=requires, timeout=timeout, retries=retries, id=id,
        )  # fmt: skip

    def names(self) -> list[str]:
        """Every tool's name, in the order they are listed."""
        return [n for n in TOOL_ORDER if callable(getattr(self, n, None))]


TOOL_ORDER = (
    "ping", "submit_job", "submit_dag", "wait_result", "job_status", "job_logs", "cancel", "list_workers",
    "list_jobs", "list_dags", "list_gates", "approve_gate", "reject_gate", "kv_get", "kv_set", "kv_list",
    "deploy_service", "list_services", "stop_service", "spawn_job",
)  # fmt: skip
