"""The baselines of the ``objects`` scenario (:mod:`benchmarks.objects`), each measured in the same run:

- **a raw pyzmq stream** (:func:`raw_stream`): as many bytes as titan's transfer, between two processes of their
  own: a ROUTER sending them from memory in 4 MiB frames (titan's chunk size), zero copy, to a DEALER that
  receives and drops them, or (``into``) writes each frame into a file, as titan's worker does.
- **the peers' MapReduce** (:data:`PEER_RUNNERS`): the same functions (:mod:`benchmarks.objects_jobs`) and the
  same graph in Dask (``distributed.LocalCluster``, 4 processes x 1 thread, futures passed to tasks) and Ray
  (``ray.init(num_cpus=4)``, object refs passed to tasks), each with its own data movement and an untimed run
  first. Their processes are reaped as :mod:`benchmarks.peers` reaps its own.

Every process started here is stopped when the measurement ends, however it ends.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from multiprocessing.connection import Connection
from typing import Any

import zmq

from benchmarks.ceiling import _child_setup, stop_process  # die with the benchmark; SIGTERM, then SIGKILL
from benchmarks.objects_jobs import (
    _TIMEOUT,
    WORKERS,
    MiB,
    combine,
    combine_args,
    expected_sum,
    make_partition,
    new_seed,
    reduce_partition,
)
from benchmarks.report import median

HOST = "127.0.0.1"
FRAME = 4 * MiB  # the raw stream's frames: titan's chunk size
_HWM = 8  # frames queued at each end of the raw stream (titan's fetcher keeps 4 chunks in flight, 8 queued)


# ---- the baseline: a raw pyzmq stream ---------------------------------------------------------------------


def _sender_main(conn: Connection, nbytes: int) -> None:
    """Bind a ROUTER, make the bytes, say the port; on a receiver's request, stream them in FRAME-byte frames."""
    _child_setup()
    data = memoryview(make_partition(nbytes + 7, 1)).cast("B")[:nbytes]  # made (its pages touched) before the clock
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, _HWM)  # a full queue blocks the send (ROUTER_MANDATORY): nothing is dropped
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    conn.send(sock.bind_to_random_port(f"tcp://{HOST}"))
    ident, _ = sock.recv_multipart()
    for off in range(0, data.nbytes, FRAME):
        sock.send_multipart([ident, data[off : off + FRAME]], copy=False)
    conn.recv()  # the receiver has every byte: the frames may go now


def _receiver_main(conn: Connection, port: int, nbytes: int, path: str | None) -> None:
    """Connect a DEALER, ask for the bytes, receive them all (dropping them, or writing them to ``path``);
    send the seconds from the request to the last byte."""
    _child_setup()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RCVHWM, _HWM)
    sock.connect(f"tcp://{HOST}:{port}")
    if not sock.poll(10_000, zmq.POLLOUT):
        conn.send(None)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600) if path else -1
    got = 0
    start = time.perf_counter()
    sock.send(b"go")
    while got < nbytes:
        if not sock.poll(30_000):
            conn.send(None)
            return
        buf = sock.recv(copy=False).buffer
        if fd >= 0:
            off = got
            view = memoryview(buf)
            while view.nbytes:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n
        got += buf.nbytes
    elapsed = time.perf_counter() - start
    if fd >= 0:
        os.close(fd)
    conn.send(elapsed)


def raw_stream(nbytes: int, into: str | None = None, timeout: float = 120.0) -> float:
    """Seconds a raw pyzmq stream takes to carry ``nbytes`` from one process to another (FRAME-byte frames,
    zero copy, from memory): from the receiver's request to its last byte. With ``into``, a folder, the
    receiver writes the bytes into a file there (deleted after)."""
    mp = multiprocessing.get_context("spawn")  # fresh interpreters: no ZeroMQ state crosses a fork
    procs = []
    s_parent, s_child = mp.Pipe()
    r_parent, r_child = mp.Pipe()
    path = None
    if into is not None:
        fd, path = tempfile.mkstemp(prefix="raw-", dir=into)
        os.close(fd)
    try:
        sender = mp.Process(target=_sender_main, args=(s_child, nbytes), name="raw-sender", daemon=True)
        procs.append(sender)
        sender.start()
        port = _wait(s_parent, sender, 60.0)
        receiver = mp.Process(target=_receiver_main, args=(r_child, port, nbytes, path), name="raw-receiver",
                              daemon=True)  # fmt: skip
        procs.append(receiver)
        receiver.start()
        elapsed = _wait(r_parent, receiver, timeout)
        if elapsed is None:
            raise RuntimeError("the raw stream's receiver did not connect, or stalled")
        s_parent.send("done")
        return float(elapsed)
    finally:
        for p in reversed(procs):
            stop_process(p)
        for c in (s_parent, s_child, r_parent, r_child):
            c.close()
        if path is not None:
            os.unlink(path)


def _wait(conn: Connection, proc: Any, timeout: float) -> Any:
    """What ``proc`` sends on ``conn``; RuntimeError if it exits first, TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"the raw stream's {proc.name} exited with {proc.exitcode}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the raw stream's {proc.name} sent nothing within {timeout:g} s")
    return conn.recv()


# ---- the peers: the same MapReduce in Dask and Ray -------------------------------------------------------


def mapreduce_dask(partitions: int, nbytes: int, runs: int, timeout: float = _TIMEOUT) -> dict[str, Any]:
    """The same MapReduce on a Dask LocalCluster of 4 processes x 1 thread: futures passed to tasks."""
    from distributed import Client, LocalCluster

    from benchmarks import peers

    # The reaper outermost: it ends last, once the cluster has closed (it kills only what outlives that).
    with peers._Reaper() as reaper, ExitStack() as stack, peers._on_pythonpath():
        quiet = logging.getLogger("distributed")
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.WARNING)
        cl = stack.enter_context(LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host=HOST,
                                              dashboard_address=None, silence_logs=logging.ERROR))  # fmt: skip
        client = stack.enter_context(Client(cl))
        stack.callback(reaper.snapshot)  # before the cluster closes: its processes are still descendants then

        def moved() -> int:
            def incoming(dask_worker: Any) -> int:
                return sum(int(d.get("total", 0)) for d in dask_worker.transfer_incoming_log)

            return sum(client.run(incoming).values())

        def once(n: int) -> tuple[float, int]:
            seeds = [new_seed() for _ in range(partitions)]
            before = moved()
            t0 = time.perf_counter()
            maps = [client.submit(make_partition, n, s, pure=False) for s in seeds]
            reds = [client.submit(reduce_partition, m, pure=False) for m in maps]
            total = client.submit(combine, reds, pure=False).result(timeout=timeout)
            elapsed = time.perf_counter() - t0
            if total != combine([expected_sum(n, s) for s in seeds]):
                raise RuntimeError(f"dask's MapReduce returned {total!r}")
            del maps, reds
            return elapsed, moved() - before

        once(nbytes)  # an untimed run at full size: the workers import numpy and the jobs' module, and warm up
        res = [once(nbytes) for _ in range(runs)]
        return {
            "seconds": median([r[0] for r in res]), "runs_s": [r[0] for r in res],
            "bytes_moved": median([r[1] for r in res]), "versions": peers._versions("dask", "distributed"),
            "setup": f"distributed.LocalCluster: {WORKERS} worker processes x 1 thread",
        }  # fmt: skip


def mapreduce_ray(partitions: int, nbytes: int, runs: int, timeout: float = _TIMEOUT) -> dict[str, Any]:
    """The same MapReduce on a local Ray instance with num_cpus=4: object refs passed to tasks."""
    import ray

    from benchmarks import peers

    store = max(256 * MiB, 3 * partitions * nbytes)
    with peers._Reaper() as reaper:
        try:
            with peers._on_pythonpath():
                ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, object_store_memory=store,
                         log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
            make_r, reduce_r, combine_r = (ray.remote(f) for f in (make_partition, reduce_partition, combine_args))

            def once(n: int) -> float:
                seeds = [new_seed() for _ in range(partitions)]
                t0 = time.perf_counter()
                maps = [make_r.remote(n, s) for s in seeds]
                reds = [reduce_r.remote(m) for m in maps]
                total = ray.get(combine_r.remote(*reds), timeout=timeout)
                elapsed = time.perf_counter() - t0
                if total != combine([expected_sum(n, s) for s in seeds]):
                    raise RuntimeError(f"ray's MapReduce returned {total!r}")
                return elapsed

            once(nbytes)  # untimed, as for the others
            res = [once(nbytes) for _ in range(runs)]
        finally:
            reaper.snapshot()
            ray.shutdown()
    return {
        "seconds": median(res), "runs_s": res, "bytes_moved": None, "versions": peers._versions("ray"),
        "setup": f"local instance, num_cpus={WORKERS}, object store {store // MiB} MiB (shared memory: one node "
                 "moves nothing)",
    }  # fmt: skip


PEER_RUNNERS: dict[str, Callable[[int, int, int], dict[str, Any]]] = {"dask": mapreduce_dask, "ray": mapreduce_ray}
