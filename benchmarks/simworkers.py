"""Simulated workers for the scale benchmark: many per process, each a real worker on the wire.

``python -m benchmarks.simworkers --broker HOST:PORT --count K [--prefix P] [--slots S]`` runs K workers
in one process, one poll loop over their sockets. Each is what the broker sees of a real worker
(``titan_zmq/worker/connection.py``), without executing anything:

- one DEALER to the broker's back port with an identity of its own (``NAME/8 hex``), found as the real
  worker finds it: a ``HELLO`` on the front port, which also gives the broker's heartbeat interval;
- a ``READY`` with the fields the real one sends (name, host, tags, slots, pid, prefetch window of 64
  jobs per slot, address, an object store holding nothing), sent again on ``REREGISTER``;
- heartbeats at the real one's pace: one carrying the host's load every second (or every two intervals),
  and an empty one whenever nothing was sent for an interval; the broker's heartbeats set the interval;
- every job of an ``ASSIGN`` answered at once by one ``RESULT`` of bare successes
  (``[id, lease, runtime, None]``), each result kept until an ``ASSIGN`` acknowledges it.

:func:`start_swarms` starts as many such processes as a count of workers needs. SIGTERM (or SIGINT)
makes a process say ``BYE`` for each of its workers and exit.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from titan_zmq import protocol as P
from titan_zmq.client.cluster_commands import ask
from titan_zmq.config import tcp_endpoint
from titan_zmq.errors import ProtocolError
from titan_zmq.process import die_with_parent, stop_processes
from titan_zmq.worker.connection import host_load

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PER_PROCESS = 250  # simulated workers in one process: one poll loop over this many sockets
RUNTIME = 1e-4  # seconds each simulated job reports (a no-op call job's runtime; opens the prefetch window)
PREFETCH = 64  # jobs per slot a worker may hold beyond its slots while its jobs are short (WorkerConfig's default)
LOAD_EVERY = 1.0  # seconds between heartbeats that carry the host's load (the real worker's _LOAD_EVERY)
_SLACK = 0.0005  # seconds early a heartbeat may go (the poll waits whole milliseconds)


def hello(host: str, front: int, timeout: float = 30.0) -> dict[str, Any]:
    """Ask the broker's front port for its ports and settings, as a worker does before connecting."""
    info = ask(f"{host}:{front}", timeout)
    if info is None:
        raise TimeoutError(f"broker {host}:{front} did not answer HELLO in {timeout:g}s")
    return info


class SimWorker:
    """One simulated worker: its socket, what it last sent, and the results not yet acknowledged."""

    __slots__ = ("beat", "ident", "last_load", "last_sent", "name", "seen_lease", "sock", "unacked")

    def __init__(self, name: str, sock: zmq.Socket[bytes]) -> None:
        self.name = name
        self.ident = f"{name}/{uuid.uuid4().hex[:8]}".encode()
        self.sock = sock
        self.last_sent = 0.0
        self.last_load = 0.0
        self.seen_lease = 0
        self.beat = 0.5  # its heartbeat interval: the broker's (HELLO, then each of its heartbeats)
        self.unacked: dict[str, int] = {}  # job id -> lease of a result the broker has not acknowledged


class Swarm:
    """``count`` simulated workers of one process, served by one poll loop (:meth:`run`)."""

    def __init__(self, broker: str, count: int, prefix: str = "sim", slots: int = 1, prefetch: int = PREFETCH) -> None:
        host, _, port = broker.rpartition(":")
        self.host, self.front = host or "127.0.0.1", int(port)
        self.count, self.prefix, self.slots, self.prefetch = count, prefix, slots, prefetch
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.ctx.setsockopt(zmq.MAX_SOCKETS, max(1024, count + 64))
        self.workers: list[SimWorker] = []
        self.by_sock: dict[zmq.Socket[bytes], SimWorker] = {}
        self.stopping = False
        self.beat = 0.5
        self.jobs_done = 0
        self._hostname = socket.gethostname()
        self._plain = P.Heartbeat().encode()
        self._with_load: list[bytes] = []  # the load heartbeat, read from the host at most once a second
        self._load_at = -LOAD_EVERY

    def attach(self) -> None:
        """Find the back port (HELLO), connect every worker and send each one's READY."""
        info = hello(self.host, self.front)
        self.beat = float(info.get("heartbeat_interval") or 0.5)
        back = tcp_endpoint(self.host, int(info["back"]))
        now = time.monotonic()
        for i in range(self.count):
            s = self.ctx.socket(zmq.DEALER)
            w = SimWorker(f"{self.prefix}-{i}", s)
            w.beat = self.beat
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, w.ident)
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            s.setsockopt(zmq.SNDHWM, 100_000)
            s.setsockopt(zmq.RCVHWM, 100_000)
            s.connect(back)
            self.workers.append(w)
            self.by_sock[s] = w
            self.ready(w)
            # Spread their phases over one period, as workers that did not all start at once would be.
            w.last_sent = now - self.beat * i / self.count
            w.last_load = now - LOAD_EVERY * i / self.count
        log.info("%d simulated workers attached to %s", self.count, back)

    def ready(self, w: SimWorker) -> None:
        """Announce ``w`` as the real worker does, then send again the results it still holds."""
        held = w.unacked
        self._send(w, P.Ready(
            name=w.name, host=self._hostname, tags=["cpu"], slots=self.slots, pid=os.getpid(), running=list(held),
            leases=list(held.values()), seen_lease=w.seen_lease, prefetch=self.prefetch * self.slots,
            address="127.0.0.1", objects={"endpoint": "", "held": []},
        ).encode())  # fmt: skip
        if held:
            self._send(w, P.Result(ok=[[jid, lease, RUNTIME, None] for jid, lease in held.items()]).encode())

    def _send(self, w: SimWorker, frames: list[bytes]) -> None:
        try:
            P.send_frames(w.sock, frames)
        except zmq.Again:
            log.warning("%s: outgoing queue full; a message dropped", w.name)
        w.last_sent = time.monotonic()

    def run(self) -> None:
        """Serve until :attr:`stopping` is set (SIGTERM), then say BYE for every worker."""
        poller = zmq.Poller()
        for w in self.workers:
            poller.register(w.sock, zmq.POLLIN)
        by_sock = self.by_sock
        # Each worker's next heartbeat, soonest first: each is sent when it is due, not in bursts, as
        # workers that each run their own loop would send them.
        due = [(self._due(w), i) for i, w in enumerate(self.workers)]
        heapq.heapify(due)
        try:
            while not self.stopping:
                wait = max(0.0, due[0][0] - time.monotonic()) if due else 0.1
                for sock, _ in poller.poll(math.ceil(wait * 1000)):
                    self._drain(by_sock[sock])
                self._beats(due, time.monotonic())
        finally:
            self.close()

    def _due(self, w: SimWorker) -> float:
        """When ``w``'s next heartbeat is due (sooner if it sent nothing for an interval)."""
        return min(w.last_load + max(LOAD_EVERY, 2 * w.beat), w.last_sent + w.beat)

    def _beats(self, due: list[tuple[float, int]], now: float) -> None:
        """The heartbeats due by ``now``: the load one each second, else an empty one after a silent
        interval (as the real worker's loop decides); a worker that sent something since is due later."""
        if now - self._load_at >= LOAD_EVERY:  # one reading of the host a second, shared by the workers
            self._with_load = P.Heartbeat(load=host_load(), dropped=[]).encode()
            self._load_at = now
        soon = now + _SLACK
        workers = self.workers
        while due and due[0][0] <= soon:
            i = due[0][1]
            w = workers[i]
            if now - w.last_load >= max(LOAD_EVERY, 2 * w.beat) - _SLACK:
                w.last_load = now
                self._send(w, self._with_load)
            elif now - w.last_sent >= w.beat - _SLACK:
                self._send(w, self._plain)
            heapq.heapreplace(due, (self._due(w), i))

    def _drain(self, w: SimWorker) -> None:
        """Every message the broker sent ``w``."""
        sock = w.sock
        while True:
            try:
                frames = P.recv_frames(sock)
            except zmq.Again:
                return
            try:
                msg = P.decode(frames)
            except ProtocolError as exc:
                log.error("%s: malformed message from the broker dropped: %s", w.name, exc)
                continue
            if isinstance(msg, P.Heartbeat):  # the broker's: its pace, as the real worker takes it
                if msg.interval > 0:
                    w.beat = msg.interval
            elif isinstance(msg, P.Assign):
                self._assign(w, msg)
            elif isinstance(msg, P.Reregister):
                self.ready(w)
            elif isinstance(msg, P.Error):
                log.error("%s: the broker refused a message: %s", w.name, msg.message)

    def _assign(self, w: SimWorker, msg: P.Assign) -> None:
        """Acknowledged results are forgotten; each new job succeeds at once, all in one RESULT."""
        held = w.unacked
        leases = msg.ack_leases + [0] * (len(msg.acks) - len(msg.ack_leases))
        for jid, lease in zip(msg.acks, leases, strict=False):
            if jid in held and (not lease or held[jid] == lease):
                del held[jid]
        ok = []
        for job in msg.jobs:
            jid, lease = job["id"], int(job.get("lease", 0))
            w.seen_lease = max(w.seen_lease, lease)
            held[jid] = lease
            ok.append([jid, lease, RUNTIME, None])
        if ok:
            self.jobs_done += len(ok)
            self._send(w, P.Result(ok=ok).encode())

    def close(self) -> None:
        """Say BYE for every worker (as a worker leaving does), then close the sockets."""
        bye = P.Bye().encode()
        for w in self.workers:
            try:
                P.send_frames(w.sock, bye)
            except zmq.ZMQError:
                pass
            w.sock.close(linger=200)
        self.workers.clear()
        self.by_sock.clear()
        self.ctx.term()
        log.info("simulated workers %s-*: %d job(s) answered", self.prefix, self.jobs_done)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def start_swarms(
    broker: str, count: int, per_process: int = PER_PROCESS, slots: int = 1, log_dir: Path | None = None,
    prefix: str = "sim",
) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    """Start ``count`` simulated workers connected to ``broker`` (HOST:FRONT), in as few processes of at
    most ``per_process`` workers as that takes (sharing them out evenly). The caller stops them."""
    procs = max(1, math.ceil(count / per_process))
    sizes = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    out: list[subprocess.Popen[bytes]] = []
    try:
        for i, n in enumerate(sizes):
            err = open(log_dir / f"sim{i}.log", "ab") if log_dir is not None else None  # noqa: SIM115
            try:
                out.append(subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.simworkers", "--broker", broker, "--count", str(n),
                     "--prefix", f"{prefix}{i}", "--slots", str(slots)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err or subprocess.DEVNULL,
                    env=_env(), cwd=ROOT, preexec_fn=die_with_parent,
                ))  # fmt: skip
            finally:
                if err is not None:
                    err.close()
    except BaseException:
        stop_processes(out)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.simworkers", description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True, help="the broker's front address, HOST:PORT")
    p.add_argument("--count", type=int, required=True, help="simulated workers in this process")
    p.add_argument("--prefix", default="sim", help="worker names are PREFIX-0, PREFIX-1, ...")
    p.add_argument("--slots", type=int, default=1, help="slots each worker announces (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)  # fmt: skip
    swarm = Swarm(args.broker, args.count, args.prefix, args.slots)

    def stop(signum: int, frame: FrameType | None) -> None:
        swarm.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    swarm.attach()
    swarm.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
