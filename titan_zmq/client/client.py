"""TitanClient: submit jobs, wait for results, ask the broker what it knows.

One DEALER socket to the broker's front port. Requests carry an id (``rid``) and the
client matches replies to them; the broker pushes the final records of jobs the client
watches (``DONE``), so waiting for thousands of results costs no polling. Job ids are made
here, so a submission retried after a timeout is recognised by the broker, not run twice.

Given the members of a broker group (``a:5555,b:5555,c:5555``), the socket goes to the one
believed to lead (``titan_zmq.members``). A ``not_leader`` answer, or (in a group) no answer
within ``MEMBER_WAIT``, moves it to the leader named or to the next member, and the request
is sent again there, until its deadline (``client/failover.py``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from titan_zmq import errors
from titan_zmq import protocol as P
from titan_zmq.client.dag import Dag, DagRun
from titan_zmq.client.failover import MEMBER_WAIT, GroupCalls
from titan_zmq.client.feed import LogLine, Subscription, read_logs
from titan_zmq.client.handle import JobHandle, raise_for
from titan_zmq.client.kv import KV
from titan_zmq.client.objects import ObjectCalls
from titan_zmq.client.specs import SpecBuilder, zip_folder  # noqa: F401 - zip_folder re-exported
from titan_zmq.config import resolve_broker, tcp_endpoint
from titan_zmq.errors import (
    BrokerUnavailable,
    JobError,
    JobFailed,
    PayloadTooLarge,
    ProtocolError,
    ServiceFailed,
    TitanError,
    WaitTimeout,
)
from titan_zmq.job import JobRecord, JobState, new_job_ids
from titan_zmq.members import Members
from titan_zmq.objects.codec import REF_KEY
from titan_zmq.security import Keys

log = logging.getLogger(__name__)

_REWATCH = 3.0  # seconds between re-sent WATCHes while waiting (survives a broker restart)
_MAX_DONE = 100_000  # final records kept for later wait()s


class TitanClient(SpecBuilder, ObjectCalls, GroupCalls):
    """A connection to a titan_zmq broker.

    ``broker`` is ``HOST[:PORT]`` of its front socket, or the members of a broker group
    (``HOST:PORT,HOST:PORT,...``: requests go to the leader, and follow it when it changes);
    without it ``TITAN_BROKER``, else ``localhost:5555``. ``timeout`` bounds every request (not
    waits for results). ``keys`` is a CURVE key folder (``titan keys generate``), else
    ``TITAN_KEYS``: the connection is encrypted and authenticated with its client key pair.
    """

    def __init__(
        self,
        broker: str | None = None,
        *,
        timeout: float = 10.0,
        max_message_size: int = P.DEFAULT_MAX_MESSAGE,
        keys: str | os.PathLike[str] | None = None,
    ) -> None:
        self.keys = Keys.find(keys)
        if self.keys is not None:
            self.keys.pair("client")  # a missing key fails here, with the fix
        spec = resolve_broker(broker)
        self.members = Members.parse(spec)
        # The member in use: as given for one broker; HOST:PORT of the one now used in a group.
        self.address = spec.strip() if len(self.members) == 1 else self.members.address()
        self.host, self.port = self.members.current()
        self.timeout = timeout
        self.max_message_size = max_message_size
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._lock = threading.RLock()
        self._rids = itertools.count(1)
        self._replies: dict[int, P.Message] = {}
        # Final records pushed by the broker, until a wait() or map() takes them. Bounded: the
        # oldest are dropped past _MAX_DONE (a later wait() asks the broker for them again).
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._watched: set[str] = set()  # submitted with watch on this socket, not ended yet
        self._sock: zmq.Socket[bytes] | None = None
        self._mon: zmq.Socket[bytes] | None = None  # in a group: the socket's disconnections
        self._lost = False  # in a group: the member in use dropped the connection (it died, or went away)
        self._closed = False
        self._blobs: dict[str, bytes] = {}
        self._epoch = ""  # the broker run that answered last
        self._restarts = 0  # broker restarts seen: watches must be sent again
        self._open()

    # ---- plumbing -----------------------------------------------------------------------

    def _open(self) -> None:
        self._group = self.members.grouped
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        # In a group a member that cannot be reached is left after MEMBER_WAIT, not the whole timeout.
        s.setsockopt(zmq.SNDTIMEO, int((min(self.timeout, MEMBER_WAIT) if self._group else self.timeout) * 1000))
        if self.keys is not None:
            self.keys.connect(s, "client")
        # In a group, a member that dies drops its connections at once: the monitor says so, and the
        # request moves on without waiting MEMBER_WAIT for an answer that cannot come.
        self._mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED) if self._group else None
        self._lost = False
        s.connect(tcp_endpoint(self.host, self.port))
        self._sock = s
        self._watched.clear()  # a new socket is a new identity: the broker's watches were for the old one

    def close(self) -> None:
        """Close the connection. Jobs already submitted run on regardless."""
        with self._lock:
            self._closed = True
            self._drop_socket()

    def _drop_socket(self) -> None:
        if self._mon is not None:
            if self._sock is not None:
                self._sock.disable_monitor()
            self._mon.close(0)
            self._mon = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> TitanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, what: str) -> BrokerUnavailable:
        # Drop the socket so a request queued for a broker that is not there is never delivered late.
        self._drop_socket()
        self._open()
        return BrokerUnavailable(
            f"{what}: no answer from the broker at {self.address} within {self.timeout:g}s; "
            "is `titan broker` (or `titan up`) running there? set --broker or TITAN_BROKER"
        )

    def _send(self, msg: P.Message) -> bool:
        """Send a request. False (in a group only) when the member in use cannot take it: try another."""
        frames = msg.encode()
        if len(frames[2]) > self.max_message_size:
            raise PayloadTooLarge(
                f"{type(msg).__name__.lower()} of {len(frames[2])} bytes exceeds the limit of "
                f"{self.max_message_size} bytes; send large data through the KV store, or raise max_message_size"
            )
        if self._sock is None:
            raise TitanError("this TitanClient is closed; open a new one")
        try:
            self._sock.send_multipart(frames)
        except zmq.Again:
            if self._group:
                return False
            raise self._unavailable(f"cannot send {type(msg).__name__.upper()}") from None
        return True

    def _pump(self, timeout: float) -> bool:
        """Receive what arrives within ``timeout`` seconds. Returns whether anything came."""
        if self._sock is None:
            raise TitanError("this TitanClient is closed; open a new one")
        if self._mon is None:
            if not self._sock.poll(max(0, int(timeout * 1000))):
                return False
        elif not self._poll_group(timeout):
            return False
        while True:
            try:
                frames = P.recv_frames(self._sock)
            except zmq.Again:
                return True
            try:
                msg = P.decode(frames)
            except ProtocolError as exc:
                log.warning("malformed message from the broker dropped: %s", exc)
                continue
            if isinstance(msg, P.Done):
                for rec in msg.records:
                    self._done[rec["id"]] = rec
                    self._watched.discard(rec["id"])
                for jid, result in msg.ok:  # successes of a map's jobs: [id, result]
                    self._done[jid] = {"id": jid, "state": "succeeded", "result": result}
                    self._watched.discard(jid)
                while len(self._done) > _MAX_DONE:
                    self._done.popitem(last=False)
            elif isinstance(msg, (P.Reply, P.Error)):
                self._replies[msg.rid] = msg
                if isinstance(msg, P.Reply) and msg.epoch and msg.epoch != self._epoch:
                    if self._epoch:  # the broker restarted: it no longer knows what we watch
                        self._watched.clear()
                        self._restarts += 1
                    self._epoch = msg.epoch

    def _poll_group(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the socket, or for the member in use to drop it (``_lost``)."""
        assert self._sock is not None and self._mon is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(timeout * 1000))))
        if self._mon in ready:
            self._read_monitor()
        return self._sock in ready

    def _read_monitor(self) -> None:
        """Note a disconnection the monitor reported (``_lost``)."""
        assert self._mon is not None
        while True:
            try:
                event = recv_monitor_message(self._mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                log.info("broker group: %s dropped the connection", self.address)
                self._lost = True

    def request(self, msg_type: type[P.Message], **fields: Any) -> Any:
        """Send a request and return the reply's data, or raise what the broker's error means."""
        with self._lock:
            rid = next(self._rids)
            deadline = time.monotonic() + self.timeout
            # A member that dropped the connection is not asked again (a send would wait for it): the next one.
            if self._mon is not None:
                self._read_monitor()
            sent = not self._lost and self._send(msg_type(rid=rid, **fields))  # type: ignore[call-arg]
            # One broker: wait for it until the deadline. A group: each member for MEMBER_WAIT at most.
            patience = min(deadline, time.monotonic() + MEMBER_WAIT) if self._group else deadline
            while sent and rid not in self._replies and not self._lost:
                left = patience - time.monotonic()
                if left <= 0:
                    if not self._group:
                        raise self._unavailable(f"{msg_type.__name__.upper()} got no reply")
                    break
                self._pump(left)
            reply = self._replies.pop(rid, None)
            if reply is None or (type(reply) is P.Error and reply.code == P.E_NOT_LEADER):
                reply = self._failover(msg_type, fields, deadline, reply)
        if isinstance(reply, P.Error):
            raise errors.from_wire(reply.code, reply.message)
        assert isinstance(reply, P.Reply)
        return reply.data

    # ---- jobs (``build``, the spec of one, is SpecBuilder's) ------------------------------

    def submit(
        self,
        call: str | Callable[..., Any] | None = None,
        *,
        shell: str | None = None,
        script: str | Path | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        requires: Iterable[str] | str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        id: str | None = None,
        project: str | Path | None = None,
        approval: str | None = None,
        **more: Any,
    ) -> JobHandle:
        """Submit one job: a function (``call``), a command line (``shell``) or a Python file (``script``),
        alone or as the entry point of a ``project`` folder that travels with it (run from inside it).
        Other job fields (``fallback``, ``wait``, ``depends_on``, ``node``, ``affinity``...) pass through."""
        spec = self.build(
            call, shell=shell, script=script, args=args, kwargs=kwargs, id=id, requires=requires,
            priority=priority, delay=delay, timeout=timeout, retries=retries, backoff=backoff, env=env,
            labels=labels, idempotency_key=idempotency_key, project=project, approval=approval, **more,
        )  # fmt: skip
        return self.submit_specs([spec])[0]

    def submit_specs(self, specs: list[dict[str, Any]], watch: bool = True, lean: bool = False) -> list[JobHandle]:
        """Submit prepared specs in one message, all or nothing."""
        blobs = {s["blob"]: self._blobs[s["blob"]] for s in specs if s.get("blob") in self._blobs}
        data = self.request(P.Submit, jobs=specs, blobs=blobs, watch=watch, lean=lean)
        if watch:
            self._watched.update(data["ids"])
        return [JobHandle(self, i) for i in data["ids"]]

    def submit_dag(self, dag: Dag) -> DagRun:
        """Submit a DAG in one message: checked whole (unknown parents, cycles) before any of it runs."""
        specs = dag.specs(self)
        handles = self.submit_specs(specs)
        return DagRun(self, dag.id, [h.id for h in handles])

    def status(self, job_id: str) -> JobRecord:
        """The job's record now. Raises UnknownJob for an id the broker does not know."""
        data = self.request(P.Status, ids=[job_id])
        if "dag" in data:
            raise JobError(f"{job_id!r} is a DAG; use dag_status() for its jobs")
        return JobRecord.from_dict(data["records"][0])

    def jobs(self, state: str | JobState | None = None, limit: int = 50) -> list[JobRecord]:
        """The newest jobs, optionally only those in ``state``."""
        st = state.value if isinstance(state, JobState) else state
        return [JobRecord.from_dict(d) for d in self.request(P.List, state=st, limit=limit)]

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (its process tree is killed). Returns its record."""
        data = self.request(P.Cancel, id=job_id)
        if "records" in data:
            raise JobError(f"{job_id!r} is a DAG; use cancel_dag() to cancel all of its jobs")
        return JobRecord.from_dict(data)

    def retry_dag(self, dag_id: str, from_job: str | None = None) -> DagRun:
        """Run a failed or cancelled DAG again from its failed jobs on: the jobs that did not succeed run
        again, and those that succeeded keep their results (``from_job``: that job and everything after
        it run again, whatever their state). Returns the DAG's run, to wait on."""
        data = self.request(P.Retry, dag=dag_id, from_job=from_job)
        self._forget_done(r["id"] for r in data["records"])
        return DagRun(self, dag_id, [r.id for r in self.dag_status(dag_id)])

    def _forget_done(self, ids: Iterable[str]) -> None:
        """Jobs that run again: their earlier final records, if this client still holds any, are stale."""
        with self._lock:
            for jid in ids:
                self._done.pop(jid, None)

    def requeue(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """Run ended jobs again (the dead-letter list, ``titan dead --requeue``), with the jobs that
        were cancelled because of them. Returns the records of the jobs that run again."""
        data = self.request(P.Retry, ids=list(job_ids))
        self._forget_done(r["id"] for r in data["records"])
        return [JobRecord.from_dict(r) for r in data["records"]]

    def dead(self, limit: int = 1000) -> list[JobRecord]:
        """The dead-letter list: jobs whose retries are spent (state ``dead``), newest first."""
        return self.jobs(JobState.DEAD, limit=limit)

    def cancel_dag(self, dag_id: str) -> list[JobRecord]:
        """Cancel every job of a DAG that has not ended yet. Returns the DAG's records."""
        data = self.request(P.Cancel, id=dag_id)
        if "records" not in data:
            raise JobError(f"{dag_id!r} is a job, not a DAG; use cancel()")
        return [JobRecord.from_dict(r) for r in data["records"]]

    def dag_status(self, dag_id: str) -> list[JobRecord]:
        """The records of a DAG's jobs, in submission order."""
        data = self.request(P.Status, ids=[dag_id])
        if "dag" not in data:
            raise JobError(f"{dag_id!r} is a job, not a DAG; use status()")
        return [JobRecord.from_dict(r) for r in data["records"]]

    def workers(self) -> list[dict[str, Any]]:
        """The connected workers: name, host, tags, slots, used, running, done, last_heartbeat_age."""
        return list(self.request(P.Workers))

    # ---- services -------------------------------------------------------------------------

    def deploy(
        self, name: str, *, shell: str | None = None, script: str | Path | None = None,
        project: str | Path | None = None, args: Iterable[Any] | None = None, wait: float | None = 30.0,
        **options: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Deploy a long-running service: a command (``shell``), a Python file (``script``), or a
        ``project`` folder's ``script``. Options: ``replicas``, ``port`` (else the broker picks a free
        one; the process gets it as ``$PORT``), ``health`` ("tcp" or "http:/path"), ``requires``,
        ``env``, ``max_crashes``/``crash_window`` (crash loop), ``backoff``, ``grace`` (stop).
        With ``wait``, blocks until every replica passed its health check (ServiceFailed if one
        failed, WaitTimeout after ``wait`` seconds). Returns the service's record."""
        spec, blobs = self.service_spec(name, shell=shell, script=script, project=project, args=args, **options)
        return self.deploy_spec(spec, blobs, wait)

    def deploy_spec(self, spec: dict[str, Any], blobs: dict[str, bytes], wait: float | None = 30.0) -> dict[str, Any]:
        """Deploy a service from its wire spec (``service_spec``'s), waiting as :meth:`deploy` does."""
        name, rec = spec["name"], dict(self.request(P.Deploy, spec=spec, blobs=blobs))
        if wait is None:
            return rec
        deadline = time.monotonic() + wait
        while rec["state"] != "running":
            if rec["state"] == "failed":
                errors = "; ".join(r["error"] or r["state"] for r in rec["replicas"] if r["state"] == "failed")
                raise ServiceFailed(f"service {name} failed: {errors}")
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"service {name} not running after {wait:g}s: " + ", ".join(
                    f"{r['id']} {r['state']}" + (f" ({r['error']})" if r["error"] else "") for r in rec["replicas"]))
            time.sleep(0.1)
            rec = self.services(name)[0]
        return rec

    def service_spec(
        self, name: str, *, shell: str | None = None, script: str | Path | None = None,
        project: str | Path | None = None, args: Iterable[Any] | None = None, **options: Any,
    ) -> tuple[dict[str, Any], dict[str, bytes]]:  # fmt: skip
        """A service's wire spec and the content it needs, as :meth:`deploy` and a DAG's service
        node (``Dag.deploy``) send them."""
        job = self.build(shell=shell, script=script, project=project, args=args)
        spec: dict[str, Any] = {"name": name, "kind": job["kind"], "target": job["target"]}
        for key in ("args", "blob"):
            if key in job:
                spec[key] = job[key]
        for key, value in options.items():
            if value is not None:
                spec[key] = sorted(value) if key == "requires" and not isinstance(value, str) else value
        if isinstance(spec.get("requires"), str):
            spec["requires"] = [t.strip() for t in spec["requires"].split(",") if t.strip()]
        blobs = {spec["blob"]: self._blobs[spec["blob"]]} if "blob" in spec else {}
        return spec, blobs

    def service_node(self, node_id: str, name: str, **deploy: Any) -> dict[str, Any]:
        """The job spec of a DAG node that deploys service ``name`` (see ``Dag.deploy``)."""
        spec, _ = self.service_spec(name, **deploy)
        node: dict[str, Any] = {"id": node_id, "kind": "service", "target": name, "kwargs": spec}
        if "blob" in spec:
            node["blob"] = spec["blob"]  # its content travels with the DAG's submission
        return node

    def services(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every service (or the one named): state, replicas with host, port, pid, restarts, uptime."""
        return list(self.request(P.Services, name=name))

    def stop_service(self, name: str) -> dict[str, Any]:
        """Stop a service: SIGTERM to each replica, SIGKILL after its grace period."""
        return dict(self.request(P.Stop, name=name))

    def service_address(self, name: str) -> str:
        """``host:port`` of a running replica of the service (BrokerError if none is running)."""
        rec = self.services(name)[0]
        running = [r["address"] for r in rec["replicas"] if r["state"] == "running"]
        if not running:
            states = ", ".join(f"{r['id']} {r['state']}" for r in rec["replicas"])
            raise errors.NotRunning(f"service {name!r} has no running replica ({states})")
        return str(running[0])

    def approve(self, job_id: str, note: str = "", by: str | None = None) -> JobRecord:
        """Approve an approval gate: the jobs after it run. ``by`` defaults to user@host."""
        return self._decide(job_id, True, note, by)

    def reject(self, job_id: str, note: str = "", by: str | None = None) -> JobRecord:
        """Reject an approval gate: it fails, and the jobs after it are cancelled."""
        return self._decide(job_id, False, note, by)

    def _decide(self, job_id: str, approve: bool, note: str, by: str | None) -> JobRecord:
        if by is None:
            import getpass
            import socket

            by = f"{getpass.getuser()}@{socket.gethostname()}"
        return JobRecord.from_dict(self.request(P.Approve, id=job_id, approve=approve, by=by, note=note))

    def schedule(
        self, name: str, cron: str, call: str | Callable[..., Any] | None = None, *, dag: Dag | None = None,
        catchup: str = "skip", **job: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Run a job (``call``/``shell=``/``script=`` and options as for ``submit``) or a ``dag`` on a cron
        expression ("*/5 * * * *"; six fields: seconds last). ``catchup``: after broker downtime, "skip"
        the missed runs or run "once" for them."""
        specs = dag.specs(self) if dag is not None else [self.build(call, id=job.pop("id", None) or name, **job)]
        blobs = {s["blob"]: self._blobs[s["blob"]] for s in specs if s.get("blob") in self._blobs}
        return dict(self.request(P.Schedule, op="add", name=name, cron=cron, jobs=specs, catchup=catchup,
                                 blobs=blobs))  # fmt: skip

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: name, cron, next_run and last_run (unix time), runs, last_error."""
        return list(self.request(P.Schedule, op="ls"))

    def unschedule(self, name: str) -> dict[str, Any]:
        """Remove a schedule (jobs it already submitted run on)."""
        return dict(self.request(P.Schedule, op="rm", name=name))

    def pressure(self, tags: Iterable[str] = ()) -> dict[str, int]:
        """Queued jobs and free slots of the pool of workers with ``tags`` (the node agent's signal)."""
        return dict(self.request(P.Pressure, tags=sorted(tags)))

    @property
    def kv(self) -> KV:
        """The broker's KV store: ``get``, ``set``, ``delete``, ``incr``, ``cas``, ``sadd``, ``srem``,
        ``smembers``, ``keys(prefix)``, ``expire``, ``ttl``."""
        return KV(self)

    def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> Iterator[LogLine]:
        """The job's output lines (``seq``, ``time``, ``stream``, ``text``). With ``follow``, keep
        yielding new lines as the job writes them, until it ends."""
        return read_logs(self, job_id, follow=follow, after=after)

    def subscribe(self, *topics: str, hwm: int = 10_000) -> Subscription:
        """The broker's live feed, for topic prefixes such as ``stats``, ``event.`` or ``log.<job id>``."""
        return Subscription(self, topics, hwm)

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> dict[str, JobRecord]:
        """Block until every job in ``ids`` has ended; return their final records."""
        want = list(dict.fromkeys(ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[str, JobRecord] = {}
        # Jobs this client submitted with watch on need no WATCH round trip before the first wait.
        next_watch = time.monotonic() + _REWATCH if self._watched.issuperset(want) else 0.0
        restarts = self._restarts
        while True:
            with self._lock:
                if restarts != self._restarts or self._lost:  # a new broker, or the member in use is gone
                    restarts, next_watch = self._restarts, 0.0
                for jid in want:
                    rec = self._done.pop(jid, None)
                    if rec is not None:
                        out[jid] = JobRecord.from_dict(rec)
                want = [j for j in want if j not in out]
                if not want:
                    return out
                now = time.monotonic()
                if now >= next_watch:
                    for rec in self.request(P.Watch, ids=want)["done"]:
                        self._done[rec["id"]] = rec
                    next_watch = now + _REWATCH
                    continue
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(f"{len(want)} job(s) still not finished after {timeout:g}s: {want[:5]}")
                slice_ = min(0.05, next_watch - now)
                if deadline is not None:
                    slice_ = min(slice_, deadline - now)
                self._pump(max(0.0, slice_))

    def map(
        self,
        fn: str | Callable[..., Any],
        iterable: Iterable[Any],
        *,
        chunk: int = 512,
        window: int = 20_000,
        timeout: float | None = None,
        **options: Any,
    ) -> list[Any]:
        """Call ``fn(item)`` on the grid for each item; results in order.

        Submissions are pipelined in chunks, with at most ``window`` jobs in flight. If any
        job fails, JobFailed for the first failing item is raised once all have ended.
        """
        items = iter(iterable)
        if options.get("idempotency_key") is not None:
            raise JobError("map: an idempotency key names one job, not many; submit such jobs one by one")
        if options.get("args") is not None:
            raise JobError("map: each job's arguments come from the iterable, one item each; pass no args=")
        template = self.build(fn, **options)
        template.pop("id")
        blobs = {template["blob"]: self._blobs[template["blob"]]} if template.get("blob") in self._blobs else {}
        order: list[str] = []
        pending: set[str] = set()
        results: dict[str, dict[str, Any]] = {}  # raw records: only failures become JobRecords
        deadline = None if timeout is None else time.monotonic() + timeout
        exhausted = False
        next_watch = time.monotonic() + _REWATCH
        restarts = self._restarts
        while not exhausted or pending:
            if restarts != self._restarts or self._lost:
                restarts, next_watch = self._restarts, 0.0
            while not exhausted and len(pending) < window:
                ids = self._submit_items(template, blobs, items, min(chunk, window - len(pending)))
                exhausted = not ids
                order.extend(ids)
                pending.update(ids)
            with self._lock:
                for jid in [j for j in self._done if j in pending]:
                    results[jid] = self._done.pop(jid)
                    pending.discard(jid)
            if pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"map: {len(pending)} of {len(order)} job(s) unfinished after {timeout:g}s")
                with self._lock:
                    got = self._pump(0.5 if left is None else min(0.5, left))
                now = time.monotonic()
                if (not got or not next_watch) and now >= next_watch:  # quiet: make sure the broker still knows
                    next_watch = now + _REWATCH
                    with self._lock:
                        for rec in self.request(P.Watch, ids=list(pending))["done"]:
                            self._done[rec["id"]] = rec
        out = _map_results(order, results)
        return [self.fetch_result(r) if type(r) is dict and REF_KEY in r else r for r in out]  # objects: fetched

    def _submit_items(
        self, template: dict[str, Any], blobs: dict[str, bytes], items: Iterator[Any], n: int
    ) -> list[str]:
        """Submit the next ``n`` items (or fewer: [] once none is left) of a map as jobs, watched, lean:
        one ``template`` and ``[id, [item]]`` per job, so the shared fields go (and are checked) once."""
        batch: list[list[Any]] = [[None, [item]] for item in itertools.islice(items, n)]
        if not batch:
            return []
        for pair, jid in zip(batch, new_job_ids(len(batch)), strict=True):
            pair[0] = jid
        ids: list[str] = self.request(
            P.Submit, template=template, items=batch, blobs=blobs, watch=True, lean=True
        )["ids"]
        self._watched.update(ids)
        return ids


def _map_results(order: list[str], results: dict[str, dict[str, Any]]) -> list[Any]:
    """The results of a map's jobs in ``order``; JobFailed (or its kind) for the first that failed."""
    ok = JobState.SUCCEEDED.value
    failed = [j for j in order if results[j]["state"] != ok]
    if failed:
        first = JobRecord.from_dict(results[failed[0]])
        try:
            raise_for(first)
        except JobFailed as exc:
            raise type(exc)(f"{len(failed)} of {len(order)} map job(s) failed; first: {exc}", first) from None
    return [results[jid].get("result") for jid in order]
