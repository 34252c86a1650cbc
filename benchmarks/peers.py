"""Peer systems on titan's no-op workload, so that titan's figures can be read as ratios against theirs.

Every peer runs the same function as titan, ``benchmarks.noop.noop`` (it returns its argument), with 4-way
parallelism, as titan's default cluster has (2 workers x 2 slots: 4 call executors):

- **ray**: a local instance, ``ray.init(num_cpus=4)``: the GCS, a raylet and up to 4 worker processes.
  Bulk: one ``f.remote(i)`` per task, then one ``ray.get`` of the list of refs.
- **dask**: ``distributed.LocalCluster``, 2 worker processes x 2 threads, and a ``Client``.
  Bulk: ``client.map(noop, values, pure=False)``, then ``client.gather``.
- **dramatiq**: a ``dramatiq`` worker command, 2 processes x 2 threads, Redis broker and Redis results backend.
  Bulk: ``group(messages).run()``, then each message's result.
- **celery**: a ``celery worker``, prefork pool of 4 child processes, Redis broker and result backend. Gossip,
  mingle and heartbeat are off: they coordinate several workers, and there is one.
  Bulk: ``group(task.s(i) ...).apply_async().get()``.

Dramatiq and Celery each get their own ``redis-server``, on a free 127.0.0.1 port, with no persistence. Their
tasks are declared in benchmarks/peer_tasks.py, which the worker processes import from the repository root.

The figures are those titan reports:

- throughput: N tasks submitted at once, every result awaited and checked (``== list(range(N))``), in tasks/s.
  Before it, an untimed warm-up of 300 tasks starts the workers and proves they are up.
- latency: one task in flight at a time, from submit to result, timed after 10 untimed; nearest-rank p50/p99.

Everything a peer starts is stopped when :func:`measure` returns or raises, on Ctrl-C too: ``ray.shutdown()``,
``cluster.close()``, and SIGTERM, then SIGKILL, to the process group of each subprocess. As a safety net, any
process that descends from this one, was started during the measurement, and outlives the peer's own shutdown by
10 s is killed: Ctrl-C in the middle of ``ray.init`` leaves Ray's agents running otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

from benchmarks.noop import noop
from benchmarks.report import percentile

log = logging.getLogger(__name__)

PEERS: tuple[str, ...] = ("ray", "dask", "dramatiq", "celery")

ROOT = Path(__file__).resolve().parent.parent  # the repository root: worker processes import benchmarks from it
PARALLELISM = 4  # titan's default: 2 workers x 2 slots
WARMUP_JOBS = 300
WARMUP_LATENCY = 10
CHUNK = 5000  # tasks per bulk submission call: the deadline is checked between them
SLICE = 2.0  # seconds one wait on a worker subprocess blocks before checking that the worker is still alive
STOP_GRACE = 10.0  # seconds a process has to exit after SIGTERM (or its library's shutdown), before SIGKILL

_NEEDS = {  # the modules each peer imports
    "ray": ("ray",), "dask": ("dask", "distributed"), "dramatiq": ("dramatiq", "redis"), "celery": ("celery", "redis"),
}  # fmt: skip


@dataclass(frozen=True)
class _Peer:
    """A started peer: ``bulk(values, deadline)`` runs noop on every value at once, ``one(value, deadline)`` once."""

    bulk: Callable[[list[int], float], list[Any]]
    one: Callable[[int, float], Any]
    setup: str
    versions: str


def _known(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}: the peers are {', '.join(PEERS)}")


def unavailable(name: str) -> str | None:
    """None when peer ``name`` can run here, else why not, in one line. ValueError for an unknown name."""
    _known(name)
    for module in _NEEDS[name]:  # setup.cfg's "peers" extra installs them
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install .[peers])"
    if name in ("dramatiq", "celery") and shutil.which("redis-server") is None:
        return "redis-server not found on PATH (apt-get install redis-server)"
    return None


def measure(name: str, jobs: int, samples: int, timeout: float = 300.0) -> dict[str, Any]:
    """Throughput of ``jobs`` no-op tasks at once and latency of ``samples`` one at a time, on peer ``name``.

    Returns ``jobs_per_s``, ``latency_p50_ms``, ``latency_p99_ms``, ``setup`` and ``versions``. All but the
    shutdown is bounded by ``timeout`` seconds (checked every ``CHUNK`` tasks submitted). Raises ValueError for
    an unknown peer or a count below 1, and RuntimeError when the peer cannot run here, fails, returns wrong
    results or times out.
    """
    reason = unavailable(name)  # ValueError for an unknown name
    if jobs < 1 or samples < 1:
        raise ValueError("jobs and samples must be at least 1")
    if reason is not None:
        raise RuntimeError(f"{name} cannot run here: {reason}")
    deadline = time.monotonic() + timeout
    try:
        with _Reaper() as reaper, _RUNNERS[name](deadline, reaper) as peer:
            log.info("%s: up (%s); warm-up of %d tasks", name, peer.setup, WARMUP_JOBS)
            _expect(name, "warm-up", peer.bulk(list(range(WARMUP_JOBS)), deadline), WARMUP_JOBS)
            log.info("%s: %d tasks at once", name, jobs)
            start = time.perf_counter()
            got = peer.bulk(list(range(jobs)), deadline)
            elapsed = time.perf_counter() - start
            _expect(name, "throughput run", got, jobs)
            log.info("%s: %d tasks one at a time", name, WARMUP_LATENCY + samples)
            latencies = []
            for i in range(WARMUP_LATENCY + samples):
                t0 = time.perf_counter()
                value = peer.one(i, deadline)
                dt = time.perf_counter() - t0
                if value != i:
                    raise RuntimeError(f"{name}: a task returned {value!r}, expected {i}")
                if i >= WARMUP_LATENCY:
                    latencies.append(dt)
            log.info("%s: stopping", name)
    except Exception as e:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{name} timed out after {timeout:g} s ({type(e).__name__}: {e})") from e
        if isinstance(e, RuntimeError):
            raise
        raise RuntimeError(f"{name} failed: {type(e).__name__}: {e}") from e
    return {
        "jobs_per_s": jobs / elapsed,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "setup": peer.setup,
        "versions": peer.versions,
    }


def _expect(name: str, what: str, got: list[Any], n: int) -> None:
    if got != list(range(n)):
        raise RuntimeError(f"{name}: the {what} returned wrong results ({len(got)} results for {n} tasks)")


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("out of time")
    return left


def _chunks(values: list[int], deadline: float) -> Iterator[list[int]]:
    """``values`` in chunks of ``CHUNK``, TimeoutError before one once ``deadline`` has passed."""
    for i in range(0, len(values), CHUNK):
        _left(deadline)
        yield values[i : i + CHUNK]


def _versions(*dists: str) -> str:
    return ", ".join(f"{d} {version(d)}" for d in dists)


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


@contextmanager
def _on_pythonpath() -> Iterator[None]:
    """The repository root on ``$PYTHONPATH`` during the block, for the processes a library starts in it."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _pythonpath()
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


_MP_HELPERS = ("from multiprocessing.resource_tracker", "from multiprocessing.forkserver")


class _Reaper:
    """Kills what the block started and left behind: the processes descending from this one, when the block ends
    or at :meth:`snapshot` (before a library's shutdown, while they are still descendants), that were not there
    when it began, and that have not exited ``STOP_GRACE`` seconds after the block."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.started: dict[int, psutil.Process] = {}

    def snapshot(self) -> None:
        for p in psutil.Process().children(recursive=True):
            try:  # multiprocessing's helpers serve this process until it exits (dask starts the resource tracker)
                helper = any(a.startswith(_MP_HELPERS) for a in p.cmdline())
            except psutil.Error:
                continue
            if p.pid not in self.before and not helper:
                self.started[p.pid] = p

    def __enter__(self) -> _Reaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.snapshot()
        _, alive = psutil.wait_procs(list(self.started.values()), timeout=STOP_GRACE)
        for p in alive:
            log.warning("killing pid %d, left running by the peer", p.pid)
            with suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=STOP_GRACE)


# --- ray and dask: the library starts and stops its own processes ---


@contextmanager
def _ray(deadline: float, reaper: _Reaper) -> Iterator[_Peer]:
    import ray

    try:
        with _on_pythonpath():  # the raylet, and the workers it starts, import benchmarks.noop
            ray.init(
                address="local", num_cpus=PARALLELISM, include_dashboard=False, object_store_memory=128 * 2**20,
                log_to_driver=False, logging_level=logging.WARNING,
            )  # fmt: skip
        f = ray.remote(noop)

        def bulk(values: list[int], deadline: float) -> list[Any]:
            refs = [f.remote(v) for chunk in _chunks(values, deadline) for v in chunk]
            return list(ray.get(refs, timeout=_left(deadline)))

        def one(value: int, deadline: float) -> Any:
            return ray.get(f.remote(value), timeout=_left(deadline))

        setup = f"local instance: num_cpus={PARALLELISM} (up to {PARALLELISM} worker processes), no dashboard"
        yield _Peer(bulk, one, setup, _versions("ray"))
    finally:
        reaper.snapshot()
        ray.shutdown()


@contextmanager
def _dask(deadline: float, reaper: _Reaper) -> Iterator[_Peer]:
    from distributed import Client, LocalCluster, wait

    with ExitStack() as stack, _on_pythonpath():
        quiet = logging.getLogger("distributed")  # its INFO lines, on closing the cluster above all
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.WARNING)
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None,
                silence_logs=logging.ERROR, timeout=_left(deadline),
            )
        )  # fmt: skip
        client = stack.enter_context(Client(cluster, timeout=_left(deadline)))
        stack.callback(reaper.snapshot)  # before the cluster closes: its processes are still descendants then

        def bulk(values: list[int], deadline: float) -> list[Any]:
            futures = [f for chunk in _chunks(values, deadline) for f in client.map(noop, chunk, pure=False)]
            wait(futures, timeout=_left(deadline))
            return list(client.gather(futures))

        def one(value: int, deadline: float) -> Any:
            return client.submit(noop, value, pure=False).result(timeout=_left(deadline))

        setup = "LocalCluster: 2 worker processes x 2 threads, scheduler in this process"
        yield _Peer(bulk, one, setup, _versions("dask", "distributed"))


# --- dramatiq and celery: a redis-server and a worker command, as subprocesses ---


@dataclass(frozen=True)
class _Child:
    what: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self, deadline: float) -> None:
        """RuntimeError if the process has exited; TimeoutError if ``deadline`` has passed."""
        code = self.proc.poll()
        if code is not None:
            try:
                tail = " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
            except OSError:
                tail = ""
            raise RuntimeError(f"the {self.what} exited with status {code}: {tail or 'no output'}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no reply from the {self.what}")


@contextmanager
def _child(what: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[_Child]:
    """``cmd`` started in a session of its own, output to ``log_path``; its whole process group stopped after."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    log.info("started the %s, pid %d", what, proc.pid)
    try:
        yield _Child(what, proc, log_path)
    finally:
        try:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("the %s did not stop within %g s of SIGTERM", what, STOP_GRACE)
        finally:
            with suppress(ProcessLookupError):  # whatever is left of the group: worker children that outlived it
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def _redis_and_worker(what: str, cmd: list[str], deadline: float) -> Iterator[tuple[_Child, str, str]]:
    """A ``redis-server`` on a free loopback port, without persistence; once it answers, ``cmd`` with
    ``$TITAN_PEER_REDIS_URL`` set to it. Yields (the worker, the URL, the server's version)."""
    import redis

    from benchmarks.peer_tasks import URL_ENV

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="titan-peer-")))
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(tmp), "--daemonize", "no", "--loglevel", "warning"]
        server = stack.enter_context(_child("redis-server", argv, tmp / "redis.log"))
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5.0, socket_connect_timeout=1.0)
        stack.callback(client.close)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                server.check(deadline)
                time.sleep(0.02)  # a poll interval: the loop ends when the server answers
        url, server_version = f"redis://127.0.0.1:{port}/0", str(client.info("server")["redis_version"])
        env = {**os.environ, "PYTHONPATH": _pythonpath(), URL_ENV: url}
        yield stack.enter_context(_child(what, cmd, tmp / "worker.log", env)), url, server_version


@contextmanager
def _dramatiq(deadline: float, reaper: _Reaper) -> Iterator[_Peer]:
    import dramatiq
    from dramatiq.results import ResultTimeout

    from benchmarks.peer_tasks import TASK_NAME, dramatiq_broker

    cmd = [sys.executable, "-m", "dramatiq", "benchmarks.peer_tasks:dramatiq_worker_setup", "-p", "2", "-t", "2"]
    with ExitStack() as stack:
        worker, url, redis_version = stack.enter_context(_redis_and_worker("dramatiq worker", cmd, deadline))
        broker = dramatiq_broker(url)
        stack.callback(broker.close)
        actor = broker.get_actor(TASK_NAME)
        backend = broker.get_results_backend()

        def result(message: Any, deadline: float) -> Any:
            while True:
                try:  # whole seconds: the Redis backend does not block for less than one
                    return message.get_result(backend=backend, block=True, timeout=1000 * max(1, int(SLICE)))
                except ResultTimeout:
                    worker.check(deadline)

        def bulk(values: list[int], deadline: float) -> list[Any]:
            groups = [dramatiq.group(map(actor.message, c), broker=broker).run() for c in _chunks(values, deadline)]
            return [result(m, deadline) for g in groups for m in g.children]

        def one(value: int, deadline: float) -> Any:
            return result(actor.send(value), deadline)

        setup = "dramatiq worker: 2 processes x 2 threads; Redis broker + Redis results"
        yield _Peer(bulk, one, setup, f"{_versions('dramatiq', 'redis')}, redis-server {redis_version}")


@contextmanager
def _celery(deadline: float, reaper: _Reaper) -> Iterator[_Peer]:
    from celery import group
    from celery.exceptions import TimeoutError as CeleryTimeout

    from benchmarks.peer_tasks import TASK_NAME, celery_app

    cmd = [sys.executable, "-c", f"from benchmarks.peer_tasks import celery_worker; celery_worker({PARALLELISM})"]
    with ExitStack() as stack:
        worker, url, redis_version = stack.enter_context(_redis_and_worker("celery worker", cmd, deadline))
        app = celery_app(url)
        stack.callback(_close_celery, app)
        task = app.tasks[TASK_NAME]

        def result(pending: Any, deadline: float) -> Any:
            while True:
                try:
                    return pending.get(timeout=min(SLICE, _left(deadline)))
                except CeleryTimeout:
                    worker.check(deadline)

        def bulk(values: list[int], deadline: float) -> list[Any]:
            groups = [group([task.s(v) for v in chunk]).apply_async() for chunk in _chunks(values, deadline)]
            return [r for g in groups for r in result(g, deadline)]

        def one(value: int, deadline: float) -> Any:
            return result(task.delay(value), deadline)

        setup = f"celery worker: prefork, {PARALLELISM} processes; Redis broker + Redis result backend"
        yield _Peer(bulk, one, setup, f"{_versions('celery', 'kombu', 'redis')}, redis-server {redis_version}")


def _close_celery(app: Any) -> None:
    """Close ``app`` while Redis still runs. Results still referenced (by a traceback, say) would otherwise
    unsubscribe from Redis when collected, after it has stopped, and retry for some 20 s before giving up."""
    consumer = app.backend.result_consumer
    consumer.subscribed_to.clear()
    consumer.stop()
    app.close()


_RUNNERS: dict[str, Callable[[float, _Reaper], Any]] = {
    "ray": _ray, "dask": _dask, "dramatiq": _dramatiq, "celery": _celery,
}  # fmt: skip
