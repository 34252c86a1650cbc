"""The broker: three sockets and one poll loop over small named handlers.

::

    client (DEALER) -> ROUTER front    submit, status, cancel, watch, workers
    worker (DEALER) -> ROUTER back     ready, heartbeat, results, bye
    subscribers     <- PUB    events   stats, event.<kind>

Each turn of the loop drains every readable socket in batches, lets the scheduler
act once (release held jobs, expire workers, dispatch), then sends everything
the turn produced. Replies wait in an outbox until the end of the turn, so a
journal (when enabled) can make the whole turn durable with one fsync first.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from titan_zmq import protocol as P
from titan_zmq.aof.journal import DataDir, LoadReport
from titan_zmq.aof.kv import KVStore
from titan_zmq.broker.durable import Restorer, capture
from titan_zmq.broker.handlers import ClientRequests, WorkerMessages
from titan_zmq.broker.logs import LogStore
from titan_zmq.broker.metrics import Metrics
from titan_zmq.broker.object_plane import ObjectPlane
from titan_zmq.broker.replica import HeldTurns, Replica
from titan_zmq.broker.scheduler import Entry, Scheduler
from titan_zmq.broker.schedules import ScheduleManager
from titan_zmq.broker.service_nodes import ServiceNodes
from titan_zmq.broker.services import ServiceManager
from titan_zmq.broker.stats import StatsFeed, broker_stats
from titan_zmq.config import BrokerConfig, tcp_endpoint
from titan_zmq.errors import BrokerError, JobError, PayloadTooLarge, ProtocolError, TitanError
from titan_zmq.job import FINAL_STATES
from titan_zmq.process import Waker
from titan_zmq.security import HANDSHAKE_FAILURES, Guard, Keys, describe_failure

log = logging.getLogger(__name__)

DRAIN_BUDGET = 0.002  # s: one socket's messages handled per turn before dispatch and sends run
_HARD_SLACK = 64 * 1024  # frames this far above the limit still get a clear error, larger ones a disconnect


class Broker:
    """The titan_zmq broker. ``run()`` blocks; ``stop()`` may be called from any thread."""

    def __init__(
        self, config: BrokerConfig | None = None, clock: Callable[[], float] = time.monotonic,
        replica: Replica | None = None,
    ) -> None:  # fmt: skip
        self.config = config or BrokerConfig()
        self.clock = clock
        # In a group (titan_zmq.ha): the member that leads. Each turn's journal batch is shipped to the
        # followers, and its replies and leases wait in `_held` until a majority holds the batch.
        self.replica = replica
        self.term = replica.term if replica is not None else 0
        self._held = HeldTurns()
        self._end = (0, 0)  # the journal's end after the last turn that wrote to it
        cfg = self.config
        self.sched = Scheduler(
            clock, heartbeat_interval=cfg.heartbeat_interval, heartbeat_liveness=cfg.heartbeat_liveness,
            heartbeat_rate=cfg.heartbeat_rate, max_finished=cfg.max_finished_jobs, max_lost=cfg.max_lost,
            prefetch_below=cfg.prefetch_below, max_dag_jobs=cfg.max_dag_jobs,
            max_pending_per_client=cfg.max_pending_per_client, locality_wait=cfg.locality_wait,
            locality_min=int(cfg.locality_min_mb * (1 << 20)), object_ttl=cfg.object_ttl,
        )  # fmt: skip
        self.metrics = Metrics.for_broker(self.sched) if cfg.metrics_port >= 0 else None
        self.kv = KVStore()
        self.kv.max_value = cfg.max_kv_value
        self.services = ServiceManager(self.sched)
        self.schedules = ScheduleManager(lambda specs, blobs: self.sched.submit(specs, blobs))
        self.sched.gone_hooks.append(self.services.worker_gone)
        ServiceNodes(self.sched, self.services)  # DAG nodes that deploy services
        self.data: DataDir | None = None
        self.loaded: LoadReport | None = None
        if cfg.data_dir:
            self._open_data()
            assert self.data is not None
            self._end = (self.data.gen, self.data.journal_bytes)
        log_root = Path(cfg.data_dir) / "logs" if cfg.data_dir else None
        self.logs = LogStore(cfg.log_tail_lines, cfg.log_memory_lines, log_root, cfg.max_log_line)
        self.feed = StatsFeed(self.sched)
        self.objects = ObjectPlane(self)
        if self.data is not None:
            self.objects.restored()
        self.requests = ClientRequests(self)
        self.from_workers = WorkerMessages(self)
        self.ctx = zmq.Context()
        self.front = self._router()
        self.back = self._router()
        self.back.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # XPUB: the broker hears what subscribers want, and builds no event that nobody would get.
        self.events = self.ctx.socket(zmq.XPUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.setsockopt(zmq.SNDHWM, 10_000)
        self._subs: set[bytes] = set()  # topic prefixes someone subscribes to
        self._wanted: dict[bytes, bool] = {}  # topic -> whether a subscription matches it (cleared on change)
        self._track_changes()
        # CURVE (--keys): every socket encrypted; ZAP admits the allowed keys, a monitor logs refusals.
        self.keys = Keys(cfg.keys) if cfg.keys else None
        self.guard: Guard | None = None
        self._monitors: dict[zmq.Socket[bytes], str] = {}
        if self.keys is not None:
            self.guard = Guard(self.ctx, self.keys)
            for name, sock in (("front", self.front), ("back", self.back), ("events", self.events)):
                self.keys.serve(sock, name)
                self._monitors[sock.get_monitor_socket(HANDSHAKE_FAILURES)] = name
        self.ports: dict[str, int] = {}
        self._outbox: list[tuple[zmq.Socket[bytes], list[bytes]]] = []
        self._waker = Waker()
        self._stopping = threading.Event()
        self._next_beat = 0.0
        self._next_expiry = 0.0
        self._next_stats = 0.0
        self._closed = False
        self.started = time.time()
        self.epoch = os.urandom(8).hex()

    def _open_data(self) -> None:
        """Lock the data directory, replay it, and journal every change from now on."""
        cfg = self.config
        data = DataDir(cfg.data_dir, cfg.fsync, compact_ratio=cfg.compact_ratio,
                       compact_min_bytes=int(cfg.compact_min_mb * (1 << 20)))  # fmt: skip
        data.lock()
        try:
            restorer = Restorer(self.sched, self.kv, cfg.orphan_window, self.services, self.schedules)
            report = data.load(restorer.apply)
            counts = restorer.finish()
        except BaseException:
            data.unlock()
            raise
        self.data, self.loaded = data, report
        self.sched.journaled()
        if self.services.services:  # let workers report the replicas they still run before placing any
            self.services.hold_until = self.clock() + cfg.orphan_window
        if self.sched.objects:  # and the objects they hold, before an input is taken for lost
            self.sched.holders_settle = self.clock() + cfg.orphan_window
        gc.freeze()  # the replayed state lives on: keep the cyclic GC from rescanning it
        self.kv.journal = self._journal_op
        self.services.journal = self._journal_op
        self.schedules.journal = self._journal_op
        self.schedules.restored()  # catch-up runs for firings missed while the broker was down
        log.info(
            "data directory %s (fsync %s): replayed %d records in %.2fs: %d jobs (%d queued, %d held, "
            "%d waiting on parents, %d running before the restart), %d KV keys",
            cfg.data_dir, cfg.fsync, report.records, report.seconds, len(self.sched.jobs), counts["queued"],
            counts["held"], counts["pending"], counts["orphaned"], len(self.kv),
        )  # fmt: skip

    def _journal_op(self, op: list[Any]) -> None:
        ops = self.sched.ops
        if ops is not None:
            ops.append(op)

    def _commit(self) -> None:
        """Make this turn's changes durable (per the fsync policy) before anything is sent,
        then publish them (``event.job``; ``log.<id>`` ends for jobs with output)."""
        changed = self.sched.take_changes()
        if changed:
            self._publish_changes(changed)
        data = self.data
        if data is None:
            return
        ops = self.sched.take_ops(changed)
        if not ops:
            return
        data.append_batch(ops)
        t0 = time.perf_counter()
        if self.replica is None:
            data.commit()
            if self.metrics is not None:
                self.metrics.commit.observe(time.perf_counter() - t0)
        else:
            # A group: the followers may copy the batch while this member fsyncs it (under always), so that
            # the two fsyncs overlap; this member counts toward the majority once its own is done. The
            # position is taken before a compaction starts the next generation.
            data.commit(sync=False)
            self._end = (data.gen, data.journal_bytes)
            self.replica.advance(self._end, durable=False)
            if data.fsync == "always":
                data.sync()
            self.replica.advance(self._end, durable=True)
        if data.needs_compaction():
            data.compact(capture(self.sched, self.kv, self.services, self.schedules))

    def _publish_changes(self, changed: list[Entry]) -> None:
        if not self._subs:
            return
        # Published before the journal commit of the same turn: subscribers may see a change that a
        # crash in the next microseconds takes back. Replies and acks, which promise, wait for it.
        if self.wants(b"event.job"):
            self.publish(b"event.job", {"changes": [
                {"id": e.job.id, "state": e.state.value, "worker": e.worker_name, "attempts": e.attempts,
                 "dag": e.job.dag} for e in changed
            ]})  # fmt: skip
        tails = self.logs.tails
        for e in changed:
            if e.state in FINAL_STATES and e.job.id in tails:
                self.publish(b"log." + e.job.id.encode(), {"id": e.job.id, "end": e.state.value})

    def _router(self) -> zmq.Socket[bytes]:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size + _HARD_SLACK)
        return s

    # ---- life cycle -----------------------------------------------------------------

    def bind(self) -> dict[str, int]:
        """Bind the three sockets (port 0 picks a free port). Returns the ports bound."""
        host = self.config.host
        for name, sock in (("front", self.front), ("back", self.back), ("events", self.events)):
            port = getattr(self.config, name)
            if port == 0:
                port = sock.bind_to_random_port(tcp_endpoint(host, 0).rsplit(":", 1)[0])
            else:
                try:
                    sock.bind(tcp_endpoint(host, port))
                except zmq.ZMQError as exc:
                    raise TitanError(
                        f"cannot listen on {host}:{port} for the {name} socket ({exc}); "
                        f"is another broker running? choose another port with --{name}"
                    ) from None
            self.ports[name] = port
        self.ports["objects"] = self.objects.bind(host, self.config.relay_port)
        if self.metrics is not None:
            self.ports["metrics"] = self.metrics.serve(host, self.config.metrics_port)
        log.info(
            "broker listening on %s front=%d back=%d events=%d",
            host, self.ports["front"], self.ports["back"], self.ports["events"],
        )  # fmt: skip
        return dict(self.ports)

    def stop(self) -> None:
        """Ask the loop to finish its turn and return. Safe from signal handlers and threads."""
        self._stopping.set()
        self._waker.wake()

    def wake(self) -> None:
        """Make the loop take a turn now (a helper thread has something for it). Thread-safe."""
        self._waker.wake()

    def run(self) -> None:
        """Serve until ``stop()``."""
        if not self.ports:
            self.bind()
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        for mon in self._monitors:
            poller.register(mon, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                timeout_ms = self._timeout_ms()
                ready = dict(poller.poll(timeout_ms))
                if self._waker.fd in ready:
                    self._waker.drain()
                    if self._held:
                        self._release()
                if self._monitors:
                    self._refusals(ready)
                if self.events in ready:
                    self._subscriptions()
                # Workers first: their results free slots, and dispatch need not wait behind a
                # large submission being validated.
                if self.back in ready:
                    self._drain(self.back, self.handle_worker)
                    self._tick_flush()
                if self.front in ready:
                    if self.guard is None:
                        self._drain(self.front, self.handle_client)
                    else:
                        self._drain(self.front, self._handle_client_secure, recv=P.recv_frames_user)
                    self._tick_flush()
                elif self.back not in ready:  # a timer, the waker or a subscription: a turn of its own
                    self._tick_flush()
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.data is not None:
                try:
                    self._commit()  # changes of a turn cut short (or of the replay itself)
                    self.data.close()
                except TitanError as exc:  # the journal cannot be written: nothing more was acknowledged
                    log.error("%s", exc)
                    self.data.unlock()
        finally:
            self._closed = True
            self.objects.close()
            if self.metrics is not None:
                self.metrics.close()
            for mon in self._monitors:
                mon.close(0)
            for s in (self.front, self.back, self.events):
                s.close(0)
            if self.guard is not None:
                self.guard.stop()
            self.ctx.term()
            self._waker.close()

    def _tick_flush(self) -> None:
        """One turn's timers and sends. A bug here is logged and the broker carries on; a journal that
        cannot be written (TitanError) still stops it, since nothing more could be acknowledged."""
        try:
            self.tick()
            self.flush()
        except TitanError:
            raise
        except Exception:
            log.exception("internal error in a broker turn; the broker carries on (please report this bug)")
            self.sched.fx.clear()  # what it could not send is not retried forever

    def _refusals(self, ready: dict[Any, int]) -> None:
        for mon, name in self._monitors.items():
            if mon in ready:
                while True:
                    try:
                        event = recv_monitor_message(mon, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    log.warning("%s", describe_failure(event, name))

    def _handle_client_secure(self, received: tuple[list[bytes], str | None]) -> None:
        """``handle_client`` knowing the sender's key: a worker key may only say HELLO."""
        frames, user = received
        assert self.guard is not None
        if self.guard.is_worker_only(user) and not _is_hello(frames):
            self._error(self.front, frames[0], P.peek_rid(frames[1:]), P.E_FORBIDDEN,
                        "this connection authenticated with a worker key: it may only ask for the broker's "
                        "ports (HELLO); submit and query with a client key (client.key_secret)")  # fmt: skip
            return
        self.handle_client(frames)

    def _timeout_ms(self) -> int:
        now = self.clock()
        nxt = min(self._next_beat, self._next_expiry, self._next_stats)
        due = self.sched.next_deadline()
        if due is not None:
            nxt = min(nxt, due)
        return max(0, min(1000, int((nxt - now) * 1000) + 1))

    def _drain(
        self, sock: zmq.Socket[bytes], handler: Callable[[Any], None], budget: float = DRAIN_BUDGET,
        recv: Callable[[zmq.Socket[bytes]], Any] = P.recv_frames,
    ) -> None:  # fmt: skip
        """Hand ``handler`` what ``recv`` takes from ``sock``: at most ``batch`` messages, and no more
        than ``budget`` seconds (what is left waits a turn: a burst of submissions must not hold up
        dispatch)."""
        until = time.monotonic() + budget
        for _ in range(self.config.batch):
            if time.monotonic() >= until:
                return
            try:
                frames = recv(sock)
            except zmq.Again:
                return
            try:
                handler(frames)
            except Exception:  # a handler bug must never take the broker down
                log.exception("internal error handling a message; the broker carries on")

    # ---- timers -------------------------------------------------------------------------

    def tick(self) -> None:
        """Once per turn: release held jobs, expire workers, dispatch, heartbeat, stats."""
        sched = self.sched
        now = self.clock()
        due = sched.next_deadline()
        if due is not None and due <= now:  # a delay, backoff, pin, fallback wait or gate ran out
            sched.release_held()
            sched.expire_gates()
        if now >= self._next_expiry:
            # Read what workers sent before judging them: a long turn (a huge submission) must not
            # expire workers whose heartbeats are waiting unread. No time budget here.
            self._drain(self.back, self.handle_worker, budget=float("inf"))
            self._next_expiry = min(sched.expire_workers(), now + self.config.heartbeat_interval)
            if sched.orphans:
                sched.expire_orphans()
            if self.kv.expires:
                self.kv.sweep()
        sched.dispatch()
        if self.services.services:
            self.services.tick()
        if self.schedules.schedules:
            self.schedules.tick()
        self.objects.tick(now)
        if now >= self._next_beat:
            self._heartbeat(now)
            self._next_beat = now + self.config.heartbeat_interval
        if now >= self._next_stats:
            if self.wants(b"stats") or self.metrics is not None:
                s = self.stats()
                self.publish(b"stats", s)  # (sent only if someone subscribes)
                if self.metrics is not None:
                    self.metrics.publish(s)
            self._next_stats = now + self.config.stats_interval

    def _heartbeat(self, now: float) -> None:
        """To each worker sent nothing for an interval: a heartbeat with the interval asked now (``beat``)."""
        beat = self.sched.beat()
        frames = P.Heartbeat(interval=beat).encode()
        due = now - beat * 0.9
        for w in list(self.sched.workers.values()):
            if w.last_sent <= due:
                self.to_worker(w.ident, frames)
                w.told = beat

    def stats(self) -> dict[str, Any]:
        """The ``stats`` feed's picture of now (``stats.broker_stats``)."""
        return broker_stats(self)

    # ---- sending -----------------------------------------------------------------------

    def _reply(self, ident: bytes, msg: P.Message) -> None:
        self._outbox.append((self.front, [ident, *msg.encode()]))

    def _error(self, sock: zmq.Socket[bytes], ident: bytes, rid: int, code: str, text: str) -> None:
        self._outbox.append((sock, [ident, *P.Error(rid=rid, code=code, message=text).encode()]))

    def to_worker(self, ident: bytes, frames: list[bytes]) -> None:
        self._outbox.append((self.back, [ident, *frames]))
        w = self.sched.workers.get(ident)
        if w is not None:
            w.last_sent = self.clock()

    def _subscriptions(self) -> None:
        """Subscribe and unsubscribe messages from the events socket (XPUB passes each topic's
        first subscription and last unsubscription, so a set keeps what is wanted)."""
        while True:
            try:
                msg = self.events.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue  # not a subscription: SUB peers send nothing else
            if msg[0] == 1:
                self._subs.add(msg[1:])
            else:
                self._subs.discard(msg[1:])
            self._wanted.clear()
            self._track_changes()

    def _track_changes(self) -> None:
        """Job changes are collected for the journal and for subscribers: while there are neither,
        the scheduler need not collect them."""
        self.sched.track_changes = self.data is not None or bool(self._subs)

    def wants(self, topic: bytes) -> bool:
        """Whether any subscriber would receive ``topic`` (a subscription is a prefix of it)."""
        hit = self._wanted.get(topic)
        if hit is None:
            hit = any(topic.startswith(sub) for sub in self._subs)
            if len(self._wanted) > 10_000:  # per-job log topics: keep the cache bounded
                self._wanted.clear()
            self._wanted[topic] = hit
        return hit

    def publish(self, topic: bytes, body: Any) -> None:
        if not self.wants(topic):
            return
        try:
            self.events.send_multipart([topic, P.packb(body)], zmq.NOBLOCK)
        except zmq.Again:
            pass
        except (TypeError, ValueError, OverflowError) as exc:  # a value msgpack cannot carry: drop this event
            log.error("event %s not published: %s", topic[:60].decode(errors="replace"), exc)

    def flush(self) -> None:
        """Turn the scheduler's effects into messages and send the outbox."""
        self._commit()
        fx = self.sched.fx
        for ident, kills in fx.kill.items():  # kills first: a worker must stop an old lease before a new one
            kill = P.Kill(ids=[k[0] for k in kills], leases=[k[1] for k in kills], term=self.term)
            self.to_worker(ident, kill.encode())
        for ident in fx.assign.keys() | fx.acks.keys():
            acks = fx.acks.get(ident, [])
            msg = P.Assign(
                jobs=fx.assign.get(ident, []), blobs=fx.blobs.get(ident, {}),
                acks=[a[0] for a in acks], ack_leases=[a[1] for a in acks], term=self.term,
            )  # fmt: skip
            self.to_worker(ident, msg.encode())
        for ident in (fx.done.keys() | fx.ok.keys()) if fx.ok else fx.done:
            done = P.Done(records=fx.done.get(ident, []), ok=fx.ok.get(ident, []))
            self._outbox.append((self.front, [ident, *done.encode()]))
        for kind, body in fx.events:
            self.publish(b"event." + kind.encode(), body)
        if fx.free or fx.keep or fx.unkeep:
            self.objects.flush()
        fx.clear()
        svc = self.services
        for ident, starts in svc.start.items():
            for wire, blobs in starts:
                self.to_worker(ident, P.SvcStart(spec=wire, blobs=blobs).encode())
        for ident, stops in svc.stop_ids.items():
            for grace in sorted({s[1] for s in stops}):  # each service's own grace period
                self.to_worker(ident, P.SvcStop(ids=[s[0] for s in stops if s[1] == grace], grace=grace).encode())
        for body in svc.events:
            self.publish(b"event.service", body)
        svc.start, svc.stop_ids, svc.events = {}, {}, []
        if self.replica is not None:
            if self._outbox:
                self._held.hold(self._end, self._outbox)
                self._outbox = []
            self._release()
            return
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        self._send_all(outbox)

    def _send_all(self, outbox: list[tuple[zmq.Socket[bytes], list[bytes]]]) -> None:
        send = P.send_frames
        for sock, frames in outbox:
            try:
                send(sock, frames)
            except zmq.ZMQError as exc:
                self._undeliverable(sock, frames, exc)
        if self.sched.fx.assign or self.sched.fx.kill:  # re-queued work from an unreachable worker
            self.flush()

    def _release(self) -> None:
        """In a group: send the turns a majority now holds."""
        assert self.replica is not None
        out = self._held.release(self.replica.committed)
        if out:
            self._send_all(out)

    def _undeliverable(self, sock: zmq.Socket[bytes], frames: list[bytes], exc: zmq.ZMQError) -> None:
        ident = frames[0]
        if sock is self.back:
            reason = "unreachable" if exc.errno == errno.EHOSTUNREACH else f"send failed ({exc})"
            if ident in self.sched.workers:
                self.sched.worker_gone(ident, reason)
                self.sched.dispatch()
        else:
            log.debug("reply to a client that went away dropped (%s)", exc)

    # ---- client handlers ---------------------------------------------------------------

    def handle_client(self, frames: list[bytes]) -> None:
        """One message from a client on the front socket."""
        ident = frames[0]
        try:
            msg = P.decode(frames[1:], P.FRONT_COMMANDS, self.config.max_message_size)
        except PayloadTooLarge as exc:
            self._error(self.front, ident, P.peek_rid(frames[1:]), P.E_TOO_LARGE, str(exc))
            return
        except ProtocolError as exc:
            log.info("bad message from client %s: %s", ident.hex(), exc)
            self._error(self.front, ident, P.peek_rid(frames[1:]), P.E_PROTOCOL, str(exc))
            return
        rid: int = getattr(msg, "rid", 0)
        try:
            data = self.requests.handle(ident, msg)
        except (BrokerError, JobError) as exc:  # a refusal: its class names its code
            self._error(self.front, ident, rid, exc.code, str(exc))
        else:
            self._reply(ident, P.Reply(rid=rid, data=data, epoch=self.epoch))

    # ---- worker handlers ---------------------------------------------------------------

    def handle_worker(self, frames: list[bytes]) -> None:
        """One message from a worker on the back socket."""
        ident = frames[0]
        try:
            msg = P.decode(frames[1:], P.BACK_COMMANDS, self.config.max_message_size)
        except ProtocolError as exc:
            log.info("bad message from worker %s: %s", ident.hex(), exc)
            self._error(self.back, ident, 0, P.E_PROTOCOL, str(exc))
            return
        if isinstance(msg, P.Ready):
            self.from_workers.ready(ident, msg)
            return
        w = self.sched.workers.get(ident)
        if w is None:  # not registered (the broker restarted, or expired it): it must say READY first
            if not isinstance(msg, P.Bye):
                self.to_worker(ident, P.Reregister().encode())
            return
        self.sched.seen(w)
        handler = self.from_workers.table.get(type(msg))
        if handler is not None:
            handler(w, msg)


def _is_hello(frames: list[bytes]) -> bool:
    """Whether a front-socket message (identity first) is a HELLO."""
    return len(frames) >= 3 and frames[1] == P.VERSION and frames[2] == P.HELLO
