"""Dag: a small builder for a graph of jobs, submitted in one message, all or nothing.

::

    dag = Dag("wordcount")
    maps = [dag.add("mr:count_words", args=[chunk]) for chunk in chunks]
    total = dag.add("mr:add_counts", after=maps)      # gets inputs={map_id: result, ...}
    run = client.submit_dag(dag)
    print(run.result(total))

A call job whose function has a parameter named ``inputs`` (or ``**kwargs``) receives its
parents' results as ``inputs={parent_id: result}``; shell and script jobs find them as JSON
in the file named by ``$TITAN_INPUTS``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from titan_zmq.client.handle import raise_for
from titan_zmq.errors import JobError
from titan_zmq.job import JobRecord, JobState, new_job_id

if TYPE_CHECKING:
    from titan_zmq.client.client import TitanClient


class Dag:
    """Jobs and the edges between them. ``add`` returns the job's id, for use in ``after``."""

    def __init__(self, name: str | None = None) -> None:
        self.id = name or f"dag-{new_job_id()}"
        self.nodes: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._seq = itertools.count(1)

    def add(
        self,
        call: str | Callable[..., Any] | None = None,
        *,
        shell: str | None = None,
        script: str | Path | None = None,
        after: Iterable[str] = (),
        id: str | None = None,
        on_failure: str | None = None,
        **options: Any,
    ) -> str:
        """Add a job that runs after the jobs in ``after`` succeed; options as for ``TitanClient.submit``."""
        jid = id or f"{self.id}.{next(self._seq)}"
        if jid in self._ids:
            raise JobError(f"job id {jid!r} is used twice in DAG {self.id}")
        self._ids.add(jid)
        node: dict[str, Any] = {"call": call, "shell": shell, "script": script, "id": jid, "options": options}
        node["after"] = list(after)
        if on_failure is not None:
            node["on_failure"] = on_failure
        self.nodes.append(node)
        return jid

    def deploy(
        self,
        name: str,
        *,
        shell: str | None = None,
        script: str | Path | None = None,
        project: str | Path | None = None,
        args: Iterable[Any] | None = None,
        after: Iterable[str] = (),
        id: str | None = None,
        on_failure: str | None = None,
        **options: Any,
    ) -> str:
        """Add a service node: once the jobs in ``after`` succeeded, the service ``name`` is deployed
        (options as for ``TitanClient.deploy``: ``port``, ``health``, ``replicas``, ``requires``...);
        the node succeeds when every replica passed its health check (its result is the service's
        address), and its children run then. The service keeps running after the DAG ends, until
        ``titan stop``. It fails like a job when the service cannot become healthy."""
        jid = id or f"{self.id}.{name}"
        if jid in self._ids:
            raise JobError(f"job id {jid!r} is used twice in DAG {self.id}")
        self._ids.add(jid)
        svc = {"name": name, "shell": shell, "script": script, "project": project, "args": args, **options}
        node: dict[str, Any] = {"call": None, "shell": None, "script": None, "id": jid, "options": {},
                                "deploy": svc, "after": list(after)}  # fmt: skip
        if on_failure is not None:
            node["on_failure"] = on_failure
        self.nodes.append(node)
        return jid

    def instance(self, run_id: str | None = None) -> Dag:
        """A copy for one run: DAG id ``run_id`` and every job id prefixed with ``run_id.``.

        Job ids are unique per broker, and resubmitting the same ids is taken as the same jobs
        (idempotence); a pipeline that is run again needs fresh ids.
        """
        run = Dag(run_id or f"{self.id}-{new_job_id()[:6]}")
        rename = {n["id"]: f"{run.id}.{n['id']}" for n in self.nodes}
        for node in self.nodes:
            copy = dict(node)
            copy["id"] = rename[node["id"]]
            copy["after"] = [rename.get(p, p) for p in node["after"]]
            files = node["options"].get("files")
            if files:  # input files name their parents' ids
                renamed = {k: [rename.get(j, j), f] for k, (j, f) in files.items()}
                copy["options"] = {**node["options"], "files": renamed}
            run.nodes.append(copy)
            run._ids.add(copy["id"])
        return run

    def specs(self, client: TitanClient) -> list[dict[str, Any]]:
        """The job specs as the broker takes them."""
        out = []
        for node in self.nodes:
            if "deploy" in node:
                spec = client.service_node(node["id"], **node["deploy"])
            else:
                spec = client.build(node["call"], shell=node["shell"], script=node["script"], id=node["id"],
                                    **node["options"])  # fmt: skip
            if node["after"]:
                spec["depends_on"] = node["after"]
            if "on_failure" in node:
                spec["on_failure"] = node["on_failure"]
            spec["dag"] = self.id
            out.append(spec)
        return out


class DagRun:
    """A submitted DAG: wait for all of it, or for one job's result."""

    def __init__(self, client: TitanClient, dag_id: str, ids: list[str]) -> None:
        self.client = client
        self.id = dag_id
        self.ids = ids

    def wait(self, timeout: float | None = None) -> dict[str, JobRecord]:
        """Block until every job of the DAG has ended; their final records by id."""
        return self.client.wait(self.ids, timeout)

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """One job's result (raises JobFailed and friends like ``JobHandle.result``)."""
        rec = self.client.wait([job_id], timeout)[job_id]
        raise_for(rec)
        return rec.result

    def ok(self, timeout: float | None = None) -> bool:
        return all(r.state is JobState.SUCCEEDED for r in self.wait(timeout).values())
