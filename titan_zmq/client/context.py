"""The in-job context: ``titan_zmq.current()`` inside a running job.

::

    import titan_zmq

    def plan(n):
        ctx = titan_zmq.current()                  # bound to this job and its DAG
        parts = [ctx.spawn("mypkg:work", args=[i]) for i in range(n)]   # fan out
        ctx.spawn("mypkg:merge", after=parts)      # fan in: runs once every part succeeded
        ctx.kv.incr("plans")

A job adds jobs to its own DAG (a job outside any DAG starts one, ``<job id>:dag``). Every
spawn is a normal submission: checked (unknown parents, cycles) and journaled. The broker
address, job id, DAG id, attempt and iteration come from the environment the worker sets:
``TITAN_BROKER``, ``TITAN_JOB_ID``, ``TITAN_DAG_ID``, ``TITAN_ATTEMPT``, ``TITAN_ITERATION``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from titan_zmq.client.client import TitanClient
from titan_zmq.client.kv import KV
from titan_zmq.errors import IterationLimit, TitanError
from titan_zmq.job import new_job_id
from titan_zmq.objects.codec import ObjectRef

ITERATION_LABEL = "titan.iteration"


class JobContext:
    """What a running job knows about itself, and how it grows its DAG."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        job_id = env.get("TITAN_JOB_ID")
        if not job_id:
            raise TitanError("titan_zmq.current() works inside a running job only (TITAN_JOB_ID is not set)")
        self.job_id: str = job_id
        # A job outside any DAG starts one for what it spawns: "<job id>:dag".
        self.dag_id: str = env.get("TITAN_DAG_ID") or f"{job_id}:dag"
        self.attempt = int(env.get("TITAN_ATTEMPT") or 1)
        self.iteration = int(env.get("TITAN_ITERATION") or 0)
        self.worker = env.get("TITAN_WORKER")
        self._broker = env.get("TITAN_BROKER")
        self._client: TitanClient | None = None

    @property
    def client(self) -> TitanClient:
        """A client to the broker that runs this job (opened on first use)."""
        if self._client is None:
            self._client = TitanClient(self._broker)
        return self._client

    @property
    def kv(self) -> KV:
        return self.client.kv

    def _spec(
        self, call: str | Callable[..., Any] | None, after: Iterable[str], options: dict[str, Any]
    ) -> dict[str, Any]:
        jid = options.pop("id", None) or f"{self.dag_id}.{new_job_id()[:10]}"
        spec = self.client.build(call, id=jid, **options)
        spec["dag"] = self.dag_id
        parents = list(after)
        if parents:
            spec["depends_on"] = parents
        return spec

    def spawn(self, call: str | Callable[..., Any] | None = None, *, after: Iterable[str] = (), **options: Any) -> str:
        """Add a job to this DAG (options as for ``TitanClient.submit``); it runs after the jobs in
        ``after`` succeed (their results come as ``inputs``). Returns its id."""
        return self.spawn_many([self._spec(call, after, options)])[0]

    def spawn_many(self, specs: list[dict[str, Any]]) -> list[str]:
        """Add several jobs (built with ``TitanClient.build``) in one submission: all or none."""
        for spec in specs:
            spec.setdefault("dag", self.dag_id)
        return [h.id for h in self.client.submit_specs(specs, watch=False)]

    def add_edge(self, parent: str, child: str) -> None:
        """Make job ``child`` (not started yet) wait for ``parent`` too. Refused for a child that
        started or ended, and for an edge that would close a cycle."""
        from titan_zmq import protocol as P

        self.client.request(P.Edge, parent=parent, child=child)

    def successor(
        self, call: str | Callable[..., Any] | None = None, *, max_iterations: int, after_me: bool = True,
        **options: Any,
    ) -> str:  # fmt: skip
        """Spawn the next round of a feedback loop (``iteration`` + 1), after this job by default.
        Raises IterationLimit once ``max_iterations`` rounds have run."""
        nxt = self.iteration + 1
        if nxt >= max_iterations:
            raise IterationLimit(
                f"job {self.job_id} is iteration {self.iteration} of at most {max_iterations}; no successor spawned"
            )
        labels = dict(options.pop("labels", None) or {})
        labels[ITERATION_LABEL] = str(nxt)
        after = [self.job_id] if after_me else []
        return self.spawn(call, after=after, labels=labels, **options)

    # ---- objects ---------------------------------------------------------------------------------

    def put(self, value: Any, *, ttl: float | None = None) -> ObjectRef:
        """Store ``value`` in this worker's object store (no copy leaves the host until someone
        needs it); returns its reference. It lives as long as this job's DAG (or ``ttl`` seconds)."""
        from titan_zmq.objects.codec import encode_value

        return self._keep(encode_value(value), ttl, artifact=False)

    def publish(self, path: str | os.PathLike[str], *, ttl: float | None = None) -> ObjectRef:
        """Publish a file or folder as an artifact: held here, and copied to the broker's data
        directory when it has one, so it outlives this worker."""
        from titan_zmq.objects.codec import encode_path

        return self._keep(encode_path(path, self._store_dir()), ttl, artifact=True)

    def _store_dir(self) -> str:
        folder = os.environ.get("TITAN_OBJECT_DIR")
        if not folder or not self.worker:
            raise TitanError("ctx.put and ctx.publish need a worker's object store (TITAN_OBJECT_DIR is not set); "
                             "outside a job, use TitanClient.put or upload")  # fmt: skip
        return folder

    def _keep(self, enc: Any, ttl: float | None, artifact: bool) -> ObjectRef:
        from titan_zmq.errors import ObjectStoreFull
        from titan_zmq.objects.codec import KIND_NAMES, write_object

        folder = self._store_dir()
        limit = int(os.environ.get("TITAN_OBJECT_LIMIT") or 0)
        if limit and enc.size > limit:
            enc.discard()
            raise ObjectStoreFull(f"an object of {enc.size:,} bytes is larger than the worker's object store limit "
                                  f"of {limit:,} bytes (object_store_mb)")  # fmt: skip
        kind, name = KIND_NAMES[enc.kind], enc.meta.get("name")
        oid, size, _ = write_object(enc, folder)
        owner = f"dag:{self.dag_id}" if os.environ.get("TITAN_DAG_ID") else f"job:{self.job_id}"
        from titan_zmq import protocol as P

        self.client.request(P.Objects, verb="add", args={
            "id": oid, "size": size, "kind": kind, "name": name, "holder": self.worker, "owner": owner,
            "producer": self.job_id, "ttl": ttl, "artifact": artifact,
        })  # fmt: skip
        return ObjectRef(oid, size, kind, name)

    def get(self, ref: Any) -> Any:
        """The value of an object: read in place when this worker holds it, else fetched."""
        from titan_zmq.objects.codec import as_ref

        r = as_ref(ref)
        folder = os.environ.get("TITAN_OBJECT_DIR")
        if r is not None and folder and os.path.exists(os.path.join(folder, r.id)):
            from titan_zmq.worker.child_objects import load

            return load(os.path.join(folder, r.id))
        return self.client.get(ref)

    def download(self, ref: Any, dest: str | os.PathLike[str]) -> Any:
        """Write a file or folder object out to ``dest``."""
        return self.client.download(ref, dest)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


_CURRENT: JobContext | None = None


def current() -> JobContext:
    """The context of the running job (one per process; rebuilt when the job changes)."""
    global _CURRENT
    job_id = os.environ.get("TITAN_JOB_ID")
    if _CURRENT is None or _CURRENT.job_id != job_id:
        _CURRENT = JobContext()
    return _CURRENT
