"""A worker's objects: its store, its object server, and the fetching of jobs' inputs.

A job whose ASSIGN names objects (``objects: {id: [size, [[holder, endpoint], ...]]}``) starts
once every one of them is in this worker's store: those held elsewhere are fetched in a thread
pool, straight from a holder (or through the broker's relay when the holder cannot be reached),
so the worker's loop never waits on a transfer. A job whose inputs cannot be fetched from any
holder ends ``input_lost`` (the broker queues it again, or makes the inputs again). Objects a
job uses are pinned until it ends; copies fetched here are evicted first when space runs out.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from titan_zmq.config import WorkerConfig
from titan_zmq.errors import ObjectStoreFull, TitanError
from titan_zmq.job import Outcome
from titan_zmq.objects.codec import ObjectRef, extract
from titan_zmq.objects.store import MiB, ObjectStore
from titan_zmq.objects.transfer import Fetcher, ObjectServer, Sink, Source

log = logging.getLogger(__name__)

BROKER = "@broker"  # the broker's own store, reached at its relay


class WorkerObjects:
    def __init__(self, cfg: WorkerConfig, ctx: zmq.Context[Any], address: str, wake: Any, keys: Any = None) -> None:
        self.cfg, self.ctx, self.address, self.wake, self.keys = cfg, ctx, address, wake, keys
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.name)
        root = Path(cfg.cache_dir) / "objects" / safe
        limit = cfg.object_store_mb * MiB
        self.store = ObjectStore(root, limit=limit, memory_limit=cfg.object_memory_mb * MiB, memory_object_max=MiB,
                                 limit_name="object_store_mb (--object-store)")  # fmt: skip
        self.env = {
            "TITAN_OBJECT_DIR": str(root), "TITAN_OBJECT_LIMIT": str(limit),
            "TITAN_OBJECT_MEMORY_MAX": str(MiB if cfg.object_memory_mb else 0),
            "TITAN_INLINE_MAX": str(cfg.inline_max_kb * 1024),
        }  # fmt: skip
        self.server: ObjectServer | None = None
        self.relay = ""
        self.fetcher = Fetcher(ctx, setup=self._curve if keys is not None else None)
        self._pool: ThreadPoolExecutor | None = None
        self.fetching: dict[str, dict[str, Any]] = {}  # jobs waiting for their inputs, by id
        self._cancelled: set[str] = set()
        self._done: deque[tuple[dict[str, Any], dict[str, Any] | None]] = deque()  # (job, failure) from fetch threads
        self._pins: dict[str, list[str]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}  # jobs running in folders of their own (files in and out)
        self.work_root = Path(cfg.cache_dir) / "work" / safe
        self._lock = threading.Lock()

    # ---- the server ------------------------------------------------------------------------------

    def serve(self, broker_host: str, relay_port: int) -> None:
        """(Re)start the object server once the broker told its relay port."""
        from titan_zmq.config import tcp_endpoint

        relay = tcp_endpoint(broker_host, relay_port) if relay_port else ""
        if self.server is not None and relay == self.relay:
            return
        if self.server is not None:
            self.server.stop()
            self.server.join(timeout=2)
        self.relay = relay
        # Under CURVE only the relay is used: its socket is encrypted, a worker's own port would not be.
        direct = self.cfg.object_direct and self.keys is None
        try:
            self.server = ObjectServer(self.ctx, self.store, self.cfg.name, self.address if direct else None,
                                       self.address, relay or None, self._curve)  # fmt: skip
        except zmq.ZMQError as exc:
            log.warning("cannot serve objects on %s (%s); serving through the broker's relay only", self.address, exc)
            self.server = ObjectServer(self.ctx, self.store, self.cfg.name, None, self.address, relay or None,
                                       self._curve)  # fmt: skip
        self.server.start()

    def _curve(self, sock: zmq.Socket[Any], *_: Any) -> None:
        """Under CURVE: the worker's key pair, for the relay (the only route there is then)."""
        if self.keys is not None:
            self.keys.connect(sock, "worker")

    def announce(self) -> dict[str, Any]:
        """For READY: where others fetch from, and what the store holds."""
        endpoint = self.server.endpoint if self.server is not None else None
        self.store.scan()  # objects its jobs stored (ctx.put) that nobody fetched yet
        return {"endpoint": endpoint or "", "held": [[oid, size] for oid, size in self.store.inventory().items()]}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            self.server.stop()
            self.server.join(timeout=2)

    # ---- inputs ----------------------------------------------------------------------------------

    def prepare(self, job: dict[str, Any]) -> bool:
        """True if the job can start now (its objects are here, and pinned); otherwise its inputs are
        being fetched, and it comes back from :meth:`take_ready`. A job with input or output files
        gets a folder of its own to run in."""
        if job.get("outputs") or job.get("files"):
            folder = self.work_root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job['id'])}-{job.get('lease', 0)}"
            folder.mkdir(parents=True, exist_ok=True)
            job["cwd"] = str(folder)
            self._jobs[job["id"]] = job
        objects = job.get("objects")
        if not isinstance(objects, dict) or not objects:
            return True
        missing = {oid: spec for oid, spec in objects.items() if self.store.adopt(oid, held=False) is None}
        if not missing:
            self._ready(job, {oid: {"from": "local"} for oid in objects})
            return True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="titan-fetch")
        self.fetching[job["id"]] = job
        self._pool.submit(self._fetch_all, job, missing)
        return False

    def _sources(self, holders: list[Any]) -> list[Source]:
        out = []
        for h in holders:
            if not isinstance(h, list) or not h or h[0] == self.cfg.name:
                continue
            name, endpoint = str(h[0]), str(h[1] or "") if len(h) > 1 else ""
            if name == BROKER:
                out.append(Source(name, self.relay or None, None))
            else:
                out.append(Source(name, endpoint or None, self.relay or None))
        return out

    def _fetch_all(self, job: dict[str, Any], missing: dict[str, Any]) -> None:
        fetched: dict[str, Any] = {oid: {"from": "local"} for oid in job["objects"] if oid not in missing}
        lost: dict[str, list[str]] = {}
        errors = []
        for oid, spec in missing.items():
            tmp = None
            try:
                size, holders = int(spec[0]), list(spec[1])
                sources = self._sources(holders)
                self.store.reserve(size)
                tmp = self.store.tmp_path()
                sink = Sink(size, tmp)
                try:
                    stats = self.fetcher.fetch(oid, size, sources, sink)
                finally:
                    sink.close()
                self.store.commit(tmp, oid, size, held=False)
                tmp = None
                fetched[oid] = {"from": stats.holder, "route": stats.route, "bytes": size}
            except ObjectStoreFull as exc:
                errors.append(str(exc))
                lost[oid] = []
            except (TitanError, OSError, ValueError, TypeError, IndexError) as exc:
                errors.append(str(exc))
                lost[oid] = [str(h[0]) for h in spec[1] if isinstance(h, list) and h] if isinstance(spec, list) else []
            finally:
                if tmp is not None:  # a fetch that failed leaves nothing behind
                    Path(tmp).unlink(missing_ok=True)
        failure = None
        if lost:
            failure = {"lost": lost, "error": "; ".join(errors)[:2000]}
        else:
            self._ready(job, fetched)
        with self._lock:
            self._done.append((job, failure))
        self.wake()

    def _ready(self, job: dict[str, Any], fetched: dict[str, Any]) -> None:
        paths = {}
        for oid in job["objects"]:
            self.store.pin(oid)
            paths[oid] = self.store.path(oid)
        self._pins[job["id"]] = list(job["objects"])
        job["object_paths"] = paths
        job["fetched"] = fetched
        if job.get("files") and job.get("cwd"):  # input files: written into its folder, named in its env
            env = dict(job.get("env") or {})
            for name, (oid, rel) in job["files"].items():
                target = Path(job["cwd"]) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                view = self.store.view(oid)
                if view is not None:
                    extract(view, target)
                env[f"TITAN_INPUT_{name.upper()}"] = str(target)
            job["env"] = env

    def take_ready(self) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Jobs whose fetches ended: (job, None) to start, or (job, failure) to report."""
        out = []
        with self._lock:
            while self._done:
                job, failure = self._done.popleft()
                if self.fetching.pop(job["id"], None) is None or job["id"] in self._cancelled:
                    self._cancelled.discard(job["id"])
                    self.finished(job["id"])
                    continue
                out.append((job, failure))
        return out

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Stop waiting for a job's inputs (KILL): its outcome, or None if it was not fetching."""
        job = self.fetching.pop(job_id, None)
        if job is None:
            return None
        self._cancelled.add(job_id)
        return {"id": job_id, "lease": job.get("lease", 0), "outcome": Outcome.CANCELLED}

    def held(self) -> dict[str, int]:
        return {jid: int(job.get("lease", 0)) for jid, job in self.fetching.items()}

    @property
    def busy(self) -> bool:
        """Whether any job holds objects or a folder here (its end must be seen by :meth:`done`)."""
        return bool(self._pins or self._jobs)

    def finished(self, job_id: str) -> None:
        for oid in self._pins.pop(job_id, ()):
            self.store.unpin(oid)

    def done(self, res: dict[str, Any]) -> None:
        """A job ended: its objects are unpinned; a job that succeeded publishes its output files
        (its result is then ``{"outputs": {path: ref}}``); its folder goes."""
        jid = res["id"]
        self.finished(jid)
        job = self._jobs.pop(jid, None)
        if job is None or not job.get("cwd"):
            return
        folder = Path(job["cwd"])
        try:
            if res.get("outcome") == Outcome.SUCCEEDED and job.get("outputs"):
                self._publish(res, folder, list(job["outputs"]))
        finally:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

    def _publish(self, res: dict[str, Any], folder: Path, outputs: list[str]) -> None:
        from titan_zmq.objects.codec import KIND_NAMES, encode_path

        published: dict[str, Any] = {}
        for rel in outputs:
            path = folder / rel
            if not path.exists():
                res.update(outcome=Outcome.FAILED, error_type="OutputMissing",
                           error=f"the job succeeded but did not write its declared output {rel!r}")  # fmt: skip
                return
            try:
                enc = encode_path(path, self.store.root)
                kind, name = KIND_NAMES[enc.kind], enc.meta.get("name")
                oid, size = self.store.put(enc)
            except TitanError as exc:
                res.update(outcome=Outcome.FAILED, error_type=type(exc).__name__,
                           error=f"its output {rel!r} could not be stored: {exc}")  # fmt: skip
                return
            published[rel] = ObjectRef(oid, size, kind, name)
        result = res.get("result")
        res["result"] = {**(result if isinstance(result, dict) else {}), "outputs": published}

    # ---- results -----------------------------------------------------------------------------------

    def absorb(self, res: dict[str, Any]) -> None:
        """A result stored by its job process: take it into the store; the result is its reference."""
        obj = res.pop("object")
        try:
            if "data" in obj:
                oid, size = self.store.put_bytes(obj["data"])
            else:
                oid, size = str(obj["id"]), int(obj["size"])
                if self.store.adopt(oid) is None:
                    raise TitanError(f"the job's result object {oid} is missing from the store's folder")
                if self.store.used > self.store.limit:
                    self.store.delete(oid)
                    raise ObjectStoreFull(
                        f"the result of {size:,} bytes does not fit in the object store ({self.store.used - size:,} "
                        f"of {self.store.limit:,} bytes in use, object_store_mb); free objects or raise it"
                    )
        except TitanError as exc:
            res.update(outcome=Outcome.FAILED, error=str(exc), error_type=type(exc).__name__, result=None)
            return
        res["result"] = ObjectRef(oid, size, str(obj.get("kind") or "value"))

    def free(self, ids: list[str]) -> None:
        """The broker freed these objects: delete the copies here (one a running job still uses is only
        released: evicted first when space runs out)."""
        for oid in ids:
            self.store.release(oid)
            if not self._in_use(oid):
                self.store.delete(oid)

    def _in_use(self, oid: str) -> bool:
        return any(oid in pins for pins in self._pins.values())
