"""The worker: one DEALER to the broker's back socket, one poll loop, jobs in other processes.

The loop never runs a job itself, so it always answers heartbeats. It finds the broker's
back port by asking the front port (``HELLO``), announces itself (``READY``), runs what it
is assigned, and keeps every result until the broker acknowledges it. When the broker
goes silent it drops the connection, asks again with backoff, and re-announces the jobs
it still runs and the results it still holds.

Given the members of a broker group, it connects to the leader only (``worker/discovery.py``),
and leaves it at once when it answers ``not_leader`` or its connection drops; an ``ASSIGN`` or
``KILL`` from an older leader than one already seen is dropped (``Fence``).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from titan_zmq import protocol as P
from titan_zmq.config import WorkerConfig, tcp_endpoint
from titan_zmq.errors import ProtocolError
from titan_zmq.job import Outcome
from titan_zmq.members import Members
from titan_zmq.process import Waker
from titan_zmq.security import Keys
from titan_zmq.worker.cache import BlobCache
from titan_zmq.worker.discovery import Fence, disconnected, discover, unwatch, watch_disconnects
from titan_zmq.worker.executors import Executor
from titan_zmq.worker.gpu import gpu_tags
from titan_zmq.worker.objects import WorkerObjects
from titan_zmq.worker.services import ServiceRunner

log = logging.getLogger(__name__)

_RESULT_LINGER = 0.002  # seconds a finished result may wait for others to share its message
_LINGER_BELOW = 0.05  # s: only results of jobs shorter than this wait (a long job's slot is wanted at once)
_LOG_LINGER = 0.05  # seconds output lines may wait for more to share their message
_LOAD_EVERY = 1.0  # seconds between load reports (cpu, memory) in heartbeats
_Handlers = Mapping[zmq.Socket[bytes], Callable[[], None] | None]  # sockets polled, and what to do when readable


def facing_ip(host: str, port: int) -> str:
    """The local IP address this machine uses to reach ``host`` (where its services are reachable)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))  # UDP: picks a route, sends nothing
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


def host_load() -> dict[str, Any]:
    """CPU and memory use of this machine, for the broker's stats."""
    import psutil

    return {
        "cpu": psutil.cpu_percent(interval=None),
        "mem": psutil.virtual_memory().percent,
        "load1": os.getloadavg()[0],
        "ncpu": os.cpu_count() or 1,
    }


_BARE = frozenset({"id", "attempt", "lease", "outcome", "runtime", "result"})  # a success with nothing else to say
_SUCCEEDED = Outcome.SUCCEEDED  # bound once: Outcome.SUCCEEDED is a class attribute lookup, once per result


def result_message(results: list[dict[str, Any]]) -> P.Result:
    """RESULT for these outcomes: successes with no output or exit code as ``[id, lease, runtime,
    result]`` (most of them, packed and read without a map each), the others whole."""
    ok, full = [], []
    for r in results:
        if r["outcome"] == _SUCCEEDED and r.keys() == _BARE:
            ok.append([r["id"], r["lease"], r["runtime"], r["result"]])
        else:
            full.append(r)
    return P.Result(results=full, ok=ok)


def send_now(outgoing: list[dict[str, Any]], finished: list[dict[str, Any]], busy: bool, waited: float) -> bool:
    """Whether the results waiting in ``outgoing`` go now (``finished``: those of this turn): with
    nothing else running (``busy`` False), for a job that ran long, when many wait, or once they
    waited ``_RESULT_LINGER``; else they wait for others to share their message."""
    return (not busy or len(outgoing) >= 256 or waited >= _RESULT_LINGER
            or any((r.get("runtime") or 0.0) >= _LINGER_BELOW for r in finished))  # fmt: skip


class Worker:
    """A titan_zmq worker. ``run()`` blocks until ``stop()``."""

    def __init__(self, config: WorkerConfig | None = None) -> None:
        self.config = cfg = config or WorkerConfig()
        cfg.validate()
        self.members = Members.parse(cfg.broker)  # a broker, or the members of a group
        self.host, self.front_port = self.members.current()  # the one in use (the leader)
        self.grouped = self.members.grouped  # also once a HELLO answer names a group
        self.fence = Fence()
        tags = set(cfg.tags) | {"cpu"}
        if cfg.gpu_probe:
            tags |= set(gpu_tags())
        self.tags = sorted(tags)
        self.identity = f"{cfg.name}/{uuid.uuid4().hex[:8]}".encode()
        self.cache = BlobCache(cfg.cache_dir)
        env = dict(os.environ)
        # Every member of a group: a job's client finds the leader among them.
        env.update({"TITAN_BROKER": cfg.broker, "TITAN_WORKER": cfg.name, "PYTHONUNBUFFERED": "1"})
        # CURVE: the worker's own key pair; its jobs' clients use the client pair, when this host has one.
        self.keys = Keys(cfg.keys) if cfg.keys else None
        if self.keys is not None:
            self.keys.pair("worker")  # fails now, with the fix, rather than at the first connection
            env["TITAN_KEYS"] = str(self.keys.root)
        self.address = cfg.advertise or facing_ip(self.host, self.front_port)
        self.ctx = zmq.Context()
        self._waker = Waker()
        self.objects = WorkerObjects(cfg, self.ctx, self.address, self._waker.wake, self.keys)
        env.update(self.objects.env)  # where its jobs store results and objects
        self.executor = Executor(
            self.cache, env, slots=cfg.slots, output_tail=cfg.output_tail, memory_mb=cfg.job_memory_mb,
            prefetch_wait=cfg.prefetch_wait, fork_server=cfg.fork_server, pipeline=cfg.prefetch,
        )  # fmt: skip
        self.services = ServiceRunner(self.cache, env, self.executor.logs, cfg.output_tail)
        self.draining = False  # takes no new jobs; leaves when those it holds are done
        self._drain_sent = False
        self.sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # in a group: says when the connection drops
        self._lost = ""  # why the connection must be dropped now (not_leader, disconnected), or ""
        self._relapses = 0  # connections lost right after they were made (backoff before the next)
        self._connected_at = 0.0
        self.unacked: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._last_load = 0.0
        self._outgoing: list[dict[str, Any]] = []  # results not sent yet (grouped, see _serve)
        self._outgoing_since = 0.0
        self.jobs_done = 0
        self.seen_lease = 0  # highest lease received from the broker
        self.beat = cfg.heartbeat_interval  # heartbeat period; the broker's, once it said
        self.max_message = cfg.max_message_size  # the broker's limit, once it said
        self.silence = cfg.heartbeat_interval * cfg.heartbeat_liveness  # broker silence before reconnecting
        self._broker_liveness = cfg.heartbeat_liveness  # the broker's, once it said

    @property
    def term(self) -> int:
        """The highest leader epoch seen (0: none; a broker on its own)."""
        return self.fence.term

    @property
    def fenced(self) -> int:
        """ASSIGN and KILL messages dropped because an older leader sent them."""
        return self.fence.fenced

    # ---- life cycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Finish the current turn, stop running jobs (they go back to the queue) and leave."""
        self._stopping.set()
        self._waker.wake()

    def drain(self) -> None:
        """Take no new jobs, finish those held, then leave (a node agent scaling down). Signal-safe."""
        self.draining = True
        self._waker.wake()

    def run(self) -> None:
        log.info(
            "worker %s starting with tags %s and %d slots", self.config.name, ",".join(self.tags), self.config.slots
        )
        try:
            while not self._stopping.is_set():
                if self.sock is None and not self._connect():
                    continue
                self._serve()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.services.shutdown()
        stopped = self.executor.shutdown()
        finished = self.executor.take_finished()
        stopped_ids = [r["id"] for r in finished if r["outcome"] == Outcome.INTERRUPTED]
        done = [r for r in finished if r["outcome"] != Outcome.INTERRUPTED]
        if self.sock is not None:
            for r in done:
                self.unacked[r["id"]] = r
            if self.unacked:
                self._send_results(list(self.unacked.values()), bare=False)
            states = self.services.take_states()
            if states:
                self._send(P.SvcState(states=states))
            self._send(P.Bye(running=stopped_ids or stopped))
            if self._monitor is not None:
                unwatch(self.sock, self._monitor)
                self._monitor = None
            self.sock.setsockopt(zmq.LINGER, 1000)
            self.sock.close()
            self.sock = None
        self.objects.close()
        self.ctx.term()
        self._waker.close()
        fenced = f"; {self.fenced} message(s) from old leaders dropped" if self.fenced else ""
        log.info("worker %s stopped (%d job(s) done%s)", self.config.name, self.jobs_done, fenced)

    # ---- connecting -------------------------------------------------------------------

    def _turn(
        self, poller: zmq.Poller, watched: set[int], socks: _Handlers, wait: float
    ) -> tuple[bool, list[dict[str, Any]]]:
        """One poll over ``socks``, the waker and the job pipes (``watched`` kept in step with the
        executor's); a socket's callback runs when it is readable; then the executor runs and what
        finished is kept in ``unacked``. Returns (one of ``socks`` was readable, results finished)."""
        ex = self.executor
        fds = set(ex.fds())
        for fd in watched - fds:
            poller.unregister(fd)
        for fd in fds - watched:
            poller.register(fd, zmq.POLLIN)
        watched.clear()
        watched.update(fds)
        ready = False
        for item, _ in poller.poll(max(0, int(wait * 1000)) + 1):
            if item in socks:
                ready = True
                on_sock = socks[item]
                if on_sock is not None:
                    on_sock()
            elif item == self._waker.fd:
                self._waker.drain()
            else:
                ex.on_readable(int(item))
        objects = self.objects
        if objects.fetching:
            self._fetched(objects.take_ready())
        ex.poll()
        if self.services.replicas:
            self.services.poll()
        finished = ex.take_finished()
        for r in finished:
            if "object" in r:  # a result its job stored as an object: the result is its reference
                objects.absorb(r)
            if objects.busy:
                objects.done(r)
            self.unacked[r["id"]] = r
        self.jobs_done += len(finished)
        return ready, finished

    def _fetched(self, ready: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        """Jobs whose input objects were fetched start; those whose inputs could not be, are reported."""
        ex = self.executor
        for job, failure in ready:
            if failure is None:
                ex.submit(job, fill=False)
            else:
                ex.finished.append({"id": job["id"], "lease": job.get("lease", 0), "attempt": job.get("attempt", 1),
                                    "outcome": Outcome.INPUT_LOST, "runtime": 0.0, **failure})  # fmt: skip
        if ready:
            ex.fill()

    def _poller(self, socks: _Handlers) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        return poller

    def _wait(self, socks: _Handlers, timeout: float) -> bool:
        """Wait up to ``timeout`` s for one of ``socks`` to be readable (True), running jobs meanwhile.

        Used while the broker is away: timeouts are still enforced, output still read and
        results kept (they go out with the next READY).
        """
        ex = self.executor
        deadline = time.monotonic() + timeout
        poller = self._poller(socks)
        watched: set[int] = set()
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            nxt = ex.next_wakeup()
            ready, _ = self._turn(poller, watched, socks, left if nxt is None else min(left, nxt))
            if ready:
                return True
            if time.monotonic() >= deadline:
                return False
        return False

    def _discover(self, timeout: float) -> dict[str, Any] | None:
        """Ask the members' front sockets for the leader's ports and settings (a lone broker's);
        None if none answered so in time. The member that did is the one in use."""
        setup = None if self.keys is None else functools.partial(self.keys.connect, role="worker")
        found = discover(self.ctx, self.members, self._wait, timeout, term=self.fence.term, setup=setup,
                         stopping=self._stopping.is_set)  # fmt: skip
        if found is None:
            return None
        member, info = found
        self.members.prefer(member)
        self.members.new_round()
        self.host, self.front_port = member
        group = info.get("group")
        if isinstance(group, dict):
            self.grouped = True
            self.fence.see(int(group.get("epoch") or 0))
        return info

    def _connect(self) -> bool:
        delay = 0.1
        if self._relapses:  # the last connections were lost as soon as made: do not spin on them
            self._wait({}, min(0.05 * 2**self._relapses, 2.0) * random.uniform(0.8, 1.2))
        while not self._stopping.is_set():
            info = self._discover(timeout=max(1.0, self.config.heartbeat_interval * 2))
            if info is not None:
                break
            if len(self.members) == 1:
                log.warning("broker at %s:%d not answering; retrying in %.1fs", self.host, self.front_port, delay)
            else:
                log.warning("no leader among the brokers %s answered; retrying in %.1fs", self.members.spec(), delay)
            self._wait({}, delay)
            delay = min(delay * 2, 2.0) * random.uniform(0.8, 1.2)  # a restarted broker waits for us (orphan_wait)
        else:
            return False
        # Heartbeat at the broker's pace, and allow it the larger of its window and ours.
        cfg = self.config
        self.objects.serve(self.host, int(info.get("objects") or 0))
        self.max_message = min(int(info.get("max_message_size") or cfg.max_message_size), cfg.max_message_size)
        self._broker_liveness = int(info.get("heartbeat_liveness") or cfg.heartbeat_liveness)
        self._pace(float(info.get("heartbeat_interval") or cfg.heartbeat_interval))
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, self.identity)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size + (1 << 20))
        if self.keys is not None:
            self.keys.connect(s, "worker")
        if self.grouped:  # a leader that dies is left at once, not after the silence window
            self._monitor = watch_disconnects(s)
        s.connect(tcp_endpoint(self.host, int(info["back"])))
        self.sock = s
        self._lost = ""
        self._connected_at = time.monotonic()
        self._register()
        group = info.get("group")
        lead = f"; leader at epoch {self.term}" if isinstance(group, dict) else ""
        fenced = f"; {self.fenced} message(s) from old leaders dropped so far" if self.fenced else ""
        log.info("connected to broker %s:%d (back port %s%s%s)", self.host, self.front_port, info["back"], lead, fenced)
        return True

    def _drop(self, why: str) -> None:
        """Leave the broker in use (the loop finds one again)."""
        log.warning("%s; reconnecting", why)
        assert self.sock is not None
        if self._monitor is not None:
            unwatch(self.sock, self._monitor)
            self._monitor = None
        self.sock.close()
        self.sock = None
        self._relapses = self._relapses + 1 if time.monotonic() - self._connected_at < 1.0 else 0

    def _on_monitor(self) -> None:
        if self._monitor is not None and disconnected(self._monitor):
            self._lost = f"connection to broker {self.host}:{self.front_port} dropped (or refused)"

    def _register(self) -> None:
        """Announce ourselves, then resend every result not yet acknowledged."""
        held = self.executor.held()
        held.update(self.objects.held())
        for jid, res in self.unacked.items():
            held.setdefault(jid, int(res.get("lease", 0)))
        self._send(
            P.Ready(
                name=self.config.name,
                host=socket.gethostname(),
                tags=self.tags,
                slots=self.config.slots,
                pid=os.getpid(),
                running=list(held),
                leases=list(held.values()),
                seen_lease=self.seen_lease,
                cached=self.cache.shas(),
                prefetch=self.config.prefetch * self.config.slots,
                services=self.services.running(),
                draining=self.draining,
                address=self.address,
                objects=self.objects.announce(),
            )
        )
        self._drain_sent = self.draining
        self.services.report_all()
        self._outgoing = []  # every unacknowledged result goes now
        if self.unacked:
            self._send_results(list(self.unacked.values()), bare=False)
        self._last_heard = time.monotonic()

    def _send_results(self, results: list[dict[str, Any]], bare: bool = True) -> None:
        """RESULT for these outcomes, split so that no message passes the broker's size limit (it
        would drop the connection, and the results would never be acknowledged): a result that is
        too large on its own is replaced by the failure that says so."""
        msg = result_message(results) if bare else P.Result(results=results)
        frames = msg.encode()
        if len(frames[-1]) <= self.max_message:
            self._send_frames(frames)
            return
        if len(results) > 1:
            half = len(results) // 2
            self._send_results(results[:half], bare)
            self._send_results(results[half:], bare)
            return
        r = results[0]
        size = len(frames[-1])
        fail: dict[str, Any] = {k: r[k] for k in ("id", "attempt", "lease", "runtime") if k in r}
        fail.update(outcome=Outcome.FAILED, error_type="ResultTooLarge", error=(
            f"its outcome is {size:,} bytes, over the broker's limit of {self.max_message:,} (max_message_size); "
            f"return less, or a large value (kept on the worker as an object above inline_max_kb)"))  # fmt: skip
        if r.get("id") in self.unacked:
            self.unacked[r["id"]] = fail
        self._send(P.Result(results=[fail]))

    def _send(self, msg: P.Message) -> None:
        self._send_frames(msg.encode())

    def _send_frames(self, frames: list[bytes]) -> None:
        assert self.sock is not None
        try:
            P.send_frames(self.sock, frames)
        except zmq.Again:
            log.warning("outgoing queue to the broker is full; a message (command %r) dropped", frames[1])
        self._last_sent = time.monotonic()

    # ---- serving ----------------------------------------------------------------------

    def _serve(self) -> None:
        """Run the loop on the current connection until it is lost or we stop."""
        sock = self.sock
        assert sock is not None
        socks: _Handlers = {sock: self._drain} if self._monitor is None else {
            sock: self._drain, self._monitor: self._on_monitor}  # fmt: skip
        poller = self._poller(socks)
        watched: set[int] = set()
        ex = self.executor
        while not self._stopping.is_set():
            beat, silence = self.beat, self.silence  # the broker may ask for another pace at any heartbeat
            now = time.monotonic()
            wait = beat - (now - self._last_sent)
            nxt = ex.next_wakeup()
            if nxt is not None:
                wait = min(wait, nxt)
            if self._outgoing:
                wait = min(wait, self._outgoing_since + _RESULT_LINGER - now)
            logs = ex.logs
            if logs.lines:
                wait = min(wait, logs.since + _LOG_LINGER - now)
            if self.services.replicas:
                wait = min(wait, 0.2)  # health probes and exits of services are polled
            _, finished = self._turn(poller, watched, socks, wait)
            now = time.monotonic()
            # Not the leader, gone, or silent: what finished is in unacked, and goes again with READY.
            if self._lost or now - self._last_heard > silence:
                self._drop(self._lost or f"broker silent for {now - self._last_heard:.1f}s")
                return
            if finished:
                if not self._outgoing:
                    self._outgoing_since = now
                self._outgoing.extend(finished)
            # Output lines go before the results of their jobs (one socket keeps the order).
            if logs.lines and (finished or len(logs.lines) >= 500 or now - logs.since >= _LOG_LINGER):
                self._send(P.Log(lines=logs.take()))
            if self.services.states:
                self._send(P.SvcState(states=self.services.take_states()))
            if self.draining:
                self._draining()
            # Group results: while other jobs still run, wait up to _RESULT_LINGER for their results
            # to share one message; with nothing else running, or for a job that ran long (its slot
            # is worth more than a shared message), send at once.
            if self._outgoing and send_now(self._outgoing, finished, bool(ex.tasks), now - self._outgoing_since):
                self._send_results(self._outgoing)
                self._outgoing = []
            if now - self._last_load >= max(_LOAD_EVERY, 2 * beat):  # also under load, when heartbeats are not needed
                self._last_load = now
                self._send(P.Heartbeat(load=host_load(), dropped=self.objects.store.take_evictions()))
            elif now - self._last_sent >= beat:
                self._send(P.Heartbeat())

    def _pace(self, beat: float) -> None:
        """Heartbeat every ``beat`` seconds, as the broker asks; allow it the larger of its window and ours."""
        cfg = self.config
        if beat != self.beat:
            log.info("heartbeat interval now %.2fs (the broker asks it)", beat)
        self.beat = beat
        self.silence = max(beat * self._broker_liveness, cfg.heartbeat_interval * cfg.heartbeat_liveness)

    def _draining(self) -> None:
        """While draining: tell the broker once and hand back the jobs not started; leave once none is held."""
        ex = self.executor
        if not self._drain_sent:
            self._send(P.Drain())
            self._drain_sent = True
            for res in ex.take_waiting():
                self.unacked[res["id"]] = res
                self._outgoing.append(res)
        if not ex.tasks and not ex.waiting and not self._outgoing and not self.unacked:
            log.info("worker %s drained: no job left; leaving", self.config.name)
            self._stopping.set()

    def _drain(self) -> None:
        """Read and handle every message the broker has sent (the socket is readable)."""
        assert self.sock is not None
        while True:
            try:
                frames = P.recv_frames(self.sock)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                msg = P.decode(frames)
            except ProtocolError as exc:
                log.error("malformed message from the broker dropped: %s", exc)
                continue
            self.handle(msg)

    def _cache_blobs(self, blobs: dict[str, bytes]) -> None:
        for sha, content in blobs.items():
            try:
                self.cache.put(sha, content)
            except Exception as exc:  # a job that needs it reports a cache miss and runs elsewhere
                log.error("could not cache blob %s: %s", sha[:12], exc)

    def handle(self, msg: P.Message) -> None:  # noqa: C901 - one dispatch on message type; Assign (every job) inline
        """One message from the broker."""
        if isinstance(msg, P.Assign):
            if msg.term != self.fence.term and msg.term and not self.fence.admit(msg.term, "ASSIGN",
                                                                                f" of {len(msg.jobs)} job(s)"):
                return
            self._cache_blobs(msg.blobs)
            leases = msg.ack_leases + [0] * (len(msg.acks) - len(msg.ack_leases))
            for jid, lease in zip(msg.acks, leases, strict=False):
                held = self.unacked.get(jid)
                if held is not None and (not lease or held.get("lease", 0) == lease):
                    del self.unacked[jid]
            for job in msg.jobs:
                lease = int(job.get("lease", 0))
                self.seen_lease = max(self.seen_lease, lease)
                jid = job["id"]
                have = self.executor.lease_of(jid)
                fetching = self.objects.fetching.get(jid)
                if have == lease or (fetching is not None and fetching.get("lease") == lease):
                    continue  # already has this very lease: a duplicate after a reconnect
                if have is not None:  # an older lease of the same job: the broker wants this one
                    self.executor.kill(jid, Outcome.INTERRUPTED)
                if fetching is not None:
                    self.objects.cancel(jid)
                if ("objects" in job or "outputs" in job or "files" in job) and not self.objects.prepare(job):
                    continue  # its inputs are being fetched: it starts when they are here
                self.executor.submit(job, fill=False)
            if msg.jobs:
                self.executor.fill()  # the whole batch: one write per call executor
        elif isinstance(msg, P.Kill):
            if msg.term != self.fence.term and msg.term and not self.fence.admit(msg.term, "KILL",
                                                                                f" of {len(msg.ids)} job(s)"):
                return
            # The kill reason maps 1:1 to the attempt's outcome: "cancelled" (Kill's default) ends it
            # cancelled; any other reason (the job was leased elsewhere) ends it interrupted.
            reason = Outcome.CANCELLED if msg.reason == Outcome.CANCELLED else Outcome.INTERRUPTED
            leases = msg.leases + [0] * (len(msg.ids) - len(msg.leases))
            for jid, lease in zip(msg.ids, leases, strict=False):
                if jid in self.objects.fetching:  # still fetching its inputs: it never starts
                    stopped = self.objects.cancel(jid)
                    if stopped is not None and (not lease or stopped["lease"] == lease):
                        stopped["outcome"] = reason
                        self.executor.finished.append(stopped)
                    continue
                if lease and self.executor.lease_of(jid) != lease:
                    continue  # it holds another lease of that job (or none): not the one meant
                if self.executor.kill(jid, reason):
                    log.info("job %s killed: %s", jid, msg.reason)
        elif isinstance(msg, P.SvcStart):
            self._cache_blobs(msg.blobs)
            self.services.start(msg.spec)
        elif isinstance(msg, P.SvcStop):
            for rid in msg.ids:
                self.services.stop(rid, msg.grace)
        elif isinstance(msg, P.ObjFree):
            self.objects.free(msg.ids)
        elif isinstance(msg, P.Reregister):
            log.info("broker asked us to register again (it restarted)")
            self._register()
        elif isinstance(msg, P.Heartbeat):
            if msg.interval > 0 and msg.interval != self.beat:
                self._pace(msg.interval)
        elif isinstance(msg, P.Error):
            if msg.code == P.E_NOT_LEADER:  # a follower (the leader changed): find the leader at once
                self.members.redirect(msg.leader)
                self._lost = f"broker {self.host}:{self.front_port} is not the leader ({msg.leader or 'none'} is)"
                return
            log.error("broker refused a message: %s", msg.message)
