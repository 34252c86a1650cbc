"""The raw pyzmq forwarding ceiling: what one Python hop between a client and a worker can carry.

Three processes, the shape of a titan_zmq run without any of its logic::

    client DEALER  ->  ROUTER front | forwarder | ROUTER back  <-  echo DEALER
    (this process)       (its own process, only forwards)          (its own process)

The client sends msgpack bodies shaped like a small ``call`` job and decodes every reply; the
forwarder never decodes anything: it swaps identity frames and passes the body on; the echo
worker sends each body straight back. Any broker written in Python on pyzmq pays at least this
per message, so its throughput cannot exceed these figures on the same machine.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack
import zmq

from benchmarks.noop import TARGET
from titan_zmq.process import die_with_parent
from titan_zmq.protocol import recv_frames, send_frames  # the same zero-copy loops titan uses

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY = b"READY"  # the echo worker's first message: "route to me"
_HWM = 100_000  # as titan_zmq's broker, worker and client set
_BATCH = 1000  # messages drained per socket per turn, like the broker's config.batch
_START_TIMEOUT = 20.0


def job_body(i: int) -> bytes:
    """A msgpack body shaped like a small titan job."""
    job = {"id": os.urandom(8).hex(), "kind": "call", "target": TARGET, "args": [i]}
    return msgpack.packb(job, use_bin_type=True)


def _child_setup() -> None:
    """In a ceiling process: die with the benchmark, leave Ctrl-C to it (it stops us with SIGTERM)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, _HWM)
    s.setsockopt(zmq.RCVHWM, _HWM)
    return s


def _forward(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send, or drop the message of a peer that left (EHOSTUNREACH) or whose queue is full."""
    try:
        send_frames(sock, frames)
    except zmq.ZMQError as exc:
        log.debug("ceiling forwarder dropped a message: %s", exc)


def forwarder_main(conn: Connection) -> None:
    """The forwarder process: bind two ROUTERs on random ports, report them on ``conn``, forward."""
    _child_setup()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = _socket(ctx, zmq.ROUTER)
    back = _socket(ctx, zmq.ROUTER)
    for s in (front, back):
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    ports = {"front": front.bind_to_random_port(f"tcp://{HOST}"), "back": back.bind_to_random_port(f"tcp://{HOST}")}
    conn.send(ports)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    worker: bytes | None = None
    while True:
        for sock, _ in poller.poll(1000):
            if sock is front:
                for _ in range(_BATCH):
                    try:
                        frames = recv_frames(front)  # [client, body]
                    except zmq.Again:
                        break
                    if worker is None:
                        continue  # the parent waits for "ready" before it sends, so this does not happen
                    _forward(back, [worker, *frames])
            else:
                for _ in range(_BATCH):
                    try:
                        frames = recv_frames(back)  # [worker, client, body] or [worker, READY]
                    except zmq.Again:
                        break
                    if len(frames) == 2 and frames[1] == READY:
                        if worker is None:
                            conn.send("ready")
                        worker = frames[0]
                        continue
                    _forward(front, frames[1:])


def echo_main(back_port: int) -> None:
    """The echo worker process: announce itself, then send every message straight back."""
    _child_setup()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(f"tcp://{HOST}:{back_port}")
    sock.send(READY)
    while True:
        if not sock.poll(1000):
            continue
        for _ in range(_BATCH):
            try:
                frames = recv_frames(sock)  # [client, body]
            except zmq.Again:
                break
            _forward(sock, frames)


def stop_process(proc: BaseProcess, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaped."""
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        log.warning("%s (pid %d) ignored SIGTERM; killing it", proc.name, proc.pid)
        proc.kill()
        proc.join(timeout)
    if not proc.is_alive():
        proc.close()


@dataclass
class Forwarding:
    """A running forwarder and echo worker; ``front`` is the port a client connects to."""

    front: int
    procs: list[BaseProcess]

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.is_alive():
                raise RuntimeError(f"ceiling process {p.name} exited with {p.exitcode}")


@contextmanager
def forwarding() -> Iterator[Forwarding]:
    """Start the forwarder and the echo worker; stop both when the block ends, however it ends."""
    mp = multiprocessing.get_context("spawn")  # a fresh interpreter: no ZeroMQ state crosses a fork
    procs: list[BaseProcess] = []
    parent, child = mp.Pipe(duplex=False)
    try:
        fwd = mp.Process(target=forwarder_main, args=(child,), name="ceiling-forwarder", daemon=True)
        procs.append(fwd)
        fwd.start()
        child.close()
        ports = _expect(parent, fwd, "its ports")
        echo = mp.Process(target=echo_main, args=(ports["back"],), name="ceiling-echo", daemon=True)
        procs.append(echo)
        echo.start()
        if _expect(parent, fwd, "the echo worker") != "ready":
            raise RuntimeError("the ceiling forwarder sent something unexpected")
        log.info("ceiling: forwarder pid %d on %s, echo pid %d", fwd.pid, ports, echo.pid)
        yield Forwarding(front=ports["front"], procs=procs)
    finally:
        parent.close()
        for p in reversed(procs):
            stop_process(p)


def _expect(conn: Connection, proc: BaseProcess, what: str) -> Any:
    deadline = time.monotonic() + _START_TIMEOUT
    while not conn.poll(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"the ceiling forwarder exited with {proc.exitcode} before sending {what}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the ceiling forwarder did not send {what} within {_START_TIMEOUT:g}s")
    try:
        return conn.recv()
    except EOFError:
        proc.join(1.0)
        raise RuntimeError(f"the ceiling forwarder exited with {proc.exitcode} before sending {what}") from None


def _client(ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> zmq.Socket[bytes]:
    sock = _socket(ctx, zmq.DEALER)
    sock.connect(f"tcp://{HOST}:{port}")
    return sock


def throughput(fwd: Forwarding, messages: int, window: int, stall: float = 30.0) -> float:
    """Messages per second through the forwarder and back, at most ``window`` in flight.

    Raises when no reply comes for ``stall`` seconds, or when a ceiling process died.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _client(ctx, fwd.front)
    try:
        _roundtrip(sock, job_body(0), stall)  # the connection is up before the clock starts
        packb, unpackb, urandom = msgpack.packb, msgpack.unpackb, os.urandom
        nb = zmq.NOBLOCK
        sent = received = 0
        start = time.perf_counter()
        quiet = 0
        while received < messages:
            while sent < messages and sent - received < window:
                job = {"id": urandom(8).hex(), "kind": "call", "target": TARGET, "args": [sent]}
                sock.send(packb(job, use_bin_type=True), nb)
                sent += 1
            if not sock.poll(1000):
                fwd.check_alive()
                quiet += 1
                if quiet >= stall:
                    raise TimeoutError(f"ceiling: {messages - received} message(s) unanswered for {stall:g}s")
                continue
            quiet = 0
            while True:
                try:
                    body = sock.recv(nb)
                except zmq.Again:
                    break
                unpackb(body, raw=False)
                received += 1
        return messages / (time.perf_counter() - start)
    finally:
        sock.close(0)
        ctx.term()


def latencies(fwd: Forwarding, samples: int, warmup: int = 50, timeout: float = 10.0) -> list[float]:
    """Round-trip times in seconds, one message in flight at a time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _client(ctx, fwd.front)
    try:
        out = []
        for i in range(warmup + samples):
            t0 = time.perf_counter()
            _roundtrip(sock, job_body(i), timeout)
            if i >= warmup:
                out.append(time.perf_counter() - t0)
        return out
    finally:
        sock.close(0)
        ctx.term()


def _roundtrip(sock: zmq.Socket[bytes], body: bytes, timeout: float) -> None:
    sock.send(body)
    if not sock.poll(int(timeout * 1000)):
        raise TimeoutError(f"ceiling: no echo within {timeout:g}s")
    msgpack.unpackb(sock.recv(), raw=False)
