"""The broker's request handlers: a table from message type to a named handler, for each socket
(the ZeroMQ guide's ``mdbroker.py`` style). The loop decodes a message, looks its type up here,
and sends what the handler returns; no handler touches a socket.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from titan_zmq import protocol as P
from titan_zmq.broker.scheduler import WorkerInfo
from titan_zmq.errors import BadRequest, ProtocolError, UnknownJob
from titan_zmq.job import FINAL_STATES

if TYPE_CHECKING:
    from titan_zmq.broker.loop import Broker

log = logging.getLogger(__name__)


class _Known:
    """Ids whose output lines the broker keeps: jobs and service replicas."""

    def __init__(self, broker: Broker) -> None:
        self.jobs, self.services = broker.sched.jobs, broker.services

    def __contains__(self, jid: object) -> bool:
        return jid in self.jobs or (isinstance(jid, str) and self.services.replica(jid) is not None)


class ClientRequests:
    """What the front socket's requests do. Each handler returns the reply's data, or raises a
    BrokerError/JobError that the loop sends back as an ERROR with the error's code."""

    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.table: dict[type[P.Message], Callable[[bytes, Any], Any]] = {
            P.Submit: self.submit, P.Watch: self.watch, P.Status: self.status, P.Cancel: self.cancel,
            P.Workers: self.workers, P.List: self.list_jobs, P.Kv: self.kv, P.Logs: self.logs,
            P.Deploy: self.deploy, P.Services: self.services, P.Stop: self.stop, P.Edge: self.edge,
            P.Schedule: self.schedule, P.Approve: self.approve, P.Pressure: self.pressure,
            P.Notify: self.notify, P.Hello: self.hello, P.Retry: self.retry, P.Objects: broker.objects.request,
        }  # fmt: skip

    def handle(self, ident: bytes, msg: P.Message) -> Any:
        handler = self.table.get(type(msg))
        if handler is None:
            raise ProtocolError(f"{type(msg).__name__} is not a client request")
        return handler(ident, msg)

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, ident: bytes, msg: P.Submit) -> Any:
        sched = self.b.sched
        watcher = ident if msg.watch else None
        if msg.items:
            ids = sched.submit_items(msg.template, msg.items, msg.blobs, watcher, owner=ident, lean=msg.lean)
        else:
            ids = sched.submit(msg.jobs, msg.blobs, watcher, owner=ident, lean=msg.lean)
        return {"ids": ids}

    def watch(self, ident: bytes, msg: P.Watch) -> Any:
        return {"done": self.b.sched.watch(ident, msg.ids)}

    def status(self, ident: bytes, msg: P.Status) -> Any:
        sched = self.b.sched
        if len(msg.ids) == 1:
            dag = sched.dag_records(msg.ids[0]) if msg.ids[0] not in sched.jobs else None
            if dag is not None:
                return {"records": dag, "missing": [], "dag": msg.ids[0]}
            return {"records": [sched.record(sched.entry(msg.ids[0]))], "missing": []}
        found = [sched.record(sched.jobs[j]) for j in msg.ids if j in sched.jobs]
        return {"records": found, "missing": [j for j in msg.ids if j not in sched.jobs]}

    def cancel(self, ident: bytes, msg: P.Cancel) -> Any:
        return self.b.sched.cancel(msg.id)

    def list_jobs(self, ident: bytes, msg: P.List) -> Any:
        return self.b.sched.list_jobs(msg.state, max(1, min(msg.limit, 10_000)))

    def edge(self, ident: bytes, msg: P.Edge) -> Any:
        return self.b.sched.add_edge(msg.parent, msg.child)

    def retry(self, ident: bytes, msg: P.Retry) -> Any:
        return self.b.sched.retry(msg.ids, msg.dag, msg.from_job)

    def approve(self, ident: bytes, msg: P.Approve) -> Any:
        by = msg.by.strip() or "unknown"
        return self.b.sched.decide(msg.id, msg.approve, by[:200], msg.note[:2000])

    def logs(self, ident: bytes, msg: P.Logs) -> Any:
        b = self.b
        entry = b.sched.jobs.get(msg.id)
        replica = b.services.replica(msg.id) if entry is None else None
        if entry is None and replica is None and not b.logs.has(msg.id):
            raise UnknownJob(f"unknown job id {msg.id!r}: no such job or service replica, and no log kept for it")
        lines, more = b.logs.read(msg.id, max(0, msg.after), max(1, min(msg.limit, 10_000)))
        if entry is not None:
            state, ended = entry.state.value, entry.state in FINAL_STATES
        elif replica is not None:
            state, ended = replica.state, replica.state in ("stopped", "failed")
        else:
            state, ended = None, True
        return {"lines": [list(line) for line in lines], "more": more, "state": state, "ended": ended}

    # ---- the grid -------------------------------------------------------------------------------

    def workers(self, ident: bytes, msg: P.Workers) -> Any:
        b = self.b
        now, cfg = b.clock(), b.config
        return [w.describe(now, cfg.heartbeat_interval, cfg.heartbeat_liveness) for w in b.sched.workers.values()]

    def pressure(self, ident: bytes, msg: P.Pressure) -> Any:
        return self.b.sched.pressure(msg.tags)

    def kv(self, ident: bytes, msg: P.Kv) -> Any:
        return self.b.kv.request(msg.op, msg.key, msg.args, msg.token if msg.op in P.KV_TOKENED else "")

    def deploy(self, ident: bytes, msg: P.Deploy) -> Any:
        return self.b.services.deploy(msg.spec, msg.blobs)

    def services(self, ident: bytes, msg: P.Services) -> Any:
        return self.b.services.records(msg.name)

    def stop(self, ident: bytes, msg: P.Stop) -> Any:
        return self.b.services.stop(msg.name)

    def schedule(self, ident: bytes, msg: P.Schedule) -> Any:
        schedules = self.b.schedules
        if msg.op == "add":
            return schedules.add(msg.name, msg.cron, msg.jobs, msg.catchup, msg.blobs)
        if msg.op == "rm":
            return schedules.remove(msg.name)
        if msg.op == "ls":
            return schedules.describe_all()
        raise BadRequest(f"unknown schedule operation {msg.op!r}; one of add, rm, ls")

    def notify(self, ident: bytes, msg: P.Notify) -> Any:
        if msg.kind not in P.CLIENT_EVENTS:
            raise BadRequest(f"cannot publish event.{msg.kind}: clients publish only "
                             + ", ".join(f"event.{k}" for k in P.CLIENT_EVENTS))  # fmt: skip
        self.b.publish(b"event." + msg.kind.encode(), msg.body)
        return None

    def hello(self, ident: bytes, msg: P.Hello) -> Any:
        b = self.b
        cfg = b.config
        return {
            "version": P.VERSION.decode(),
            "pid": os.getpid(),
            "max_message_size": cfg.max_message_size,
            "heartbeat_interval": b.sched.beat(),
            "heartbeat_liveness": cfg.heartbeat_liveness,
            "durable": b.data is not None,
            "fsync": cfg.fsync if b.data is not None else None,
            **b.ports,
            **({"group": b.replica.group()} if b.replica is not None else {}),
        }


class WorkerMessages:
    """What the back socket's messages from a registered worker do (READY is the loop's: it registers)."""

    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.table: dict[type[P.Message], Callable[[WorkerInfo, Any], None]] = {
            P.Result: self.result, P.Log: self.log, P.Heartbeat: self.heartbeat, P.SvcState: self.svc_state,
            P.Drain: self.drain, P.Bye: self.bye,
        }  # fmt: skip

    def ready(self, ident: bytes, msg: P.Ready) -> None:
        """A worker (re-)registers: reconcile what it runs, its services, and answer with a heartbeat."""
        b = self.b
        joined = b.sched.worker_ready(ident, msg.__dict__)
        joined.told = beat = b.sched.beat()
        b.sched.seen(joined)
        b.services.worker_ready(joined, msg.services)
        b.to_worker(ident, P.Heartbeat(interval=beat).encode())

    def result(self, w: WorkerInfo, msg: P.Result) -> None:
        """Attempts' outcomes: each applied, then acknowledged (the worker keeps a result until then)."""
        sched = self.b.sched
        acks = sched.fx.acks.setdefault(w.ident, [])
        for res in msg.results:
            if not isinstance(res, dict):
                continue
            jid = sched.on_result(w, res)
            if jid is not None:
                lease = res.get("lease")
                acks.append((jid, lease if isinstance(lease, int) else 0))
        if msg.ok:  # bare successes, [id, lease, runtime, result] each
            on_success = sched.on_success
            for item in msg.ok:
                if type(item) is not list or len(item) != 4:
                    log.warning("worker %s sent a malformed success %r; dropped", w.name, str(item)[:200])
                    continue
                jid = on_success(w, *item)
                if jid is not None:
                    lease = item[1]
                    acks.append((jid, lease if isinstance(lease, int) else 0))

    def log(self, w: WorkerInfo, msg: P.Log) -> None:
        b = self.b
        for jid, lines in b.logs.add(msg.lines, _Known(b)).items():
            b.publish(b"log." + jid.encode(), {"id": jid, "lines": [list(line) for line in lines]})

    def heartbeat(self, w: WorkerInfo, msg: P.Heartbeat) -> None:
        if msg.load:
            w.load = msg.load
        if msg.dropped:
            self.b.sched.directory.dropped(w, msg.dropped)

    def svc_state(self, w: WorkerInfo, msg: P.SvcState) -> None:
        for st in msg.states:
            if isinstance(st, dict):
                self.b.services.on_state(w, st)

    def drain(self, w: WorkerInfo, msg: P.Drain) -> None:
        w.draining = True
        log.info("worker %s drains: no new jobs for it", w.name)

    def bye(self, w: WorkerInfo, msg: P.Bye) -> None:
        self.b.sched.worker_gone(w.ident, "it left", stopped=msg.running)
