"""Services: long-running processes kept alive on the grid, each replica on a managed port.

The broker owns every decision: where a replica runs (an eligible worker, spreading the
replicas of one service over hosts), on which port (the one given, or a free one from
``service_ports()`` ($TITAN_SERVICE_PORTS) not used by another service on that host; the worker checks it is free),
when a crashed replica starts again (exponential backoff), and when a service is in a
crash loop (``max_crashes`` within ``crash_window`` seconds: ``failed``, with the reason).
A replica is ``running`` only once its worker reports its health check passed.

Service definitions are journaled (``aof.records``: ``ServiceDeployed``, ``ServiceStopped``,
``ReplicaFailed``), so a restarted broker keeps them, adopts replicas that workers report still
running, and does not start a failed replica again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from titan_zmq.aof.records import ReplicaFailed, ServiceDeployed, ServiceStopped, decode, encode
from titan_zmq.broker.scheduler import Scheduler, WorkerInfo
from titan_zmq.config import service_ports
from titan_zmq.errors import Conflict, JobError, NotRunning, UnknownService
from titan_zmq.job import check_tags

log = logging.getLogger(__name__)

KINDS = ("shell", "script", "archive")
STATES = ("pending", "starting", "running", "backoff", "failed", "stopping", "stopped")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_BACKOFF = 30.0


def _bad(msg: str) -> JobError:
    return JobError(msg)


@dataclass(frozen=True)
class ServiceSpec:
    """What to run and how: validated from the wire (``client.deploy``, ``titan deploy``, YAML)."""

    name: str
    kind: str
    target: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    requires: frozenset[str] = frozenset()
    replicas: int = 1
    port: int | None = None
    health: str | None = None  # None or "tcp": the port accepts connections; "http:/path": GET answers < 400
    blob: str | None = None
    max_crashes: int = 5
    crash_window: float = 60.0
    backoff: float = 1.0
    grace: float = 10.0
    start_timeout: float = 60.0  # not healthy within this: killed, counted as a crash

    @classmethod
    def from_wire(cls, d: Any) -> ServiceSpec:
        if not isinstance(d, dict):
            raise _bad("a service spec must be a map")
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(map(str, set(d) - known))  # keys of any type: name them, never compare them
        if extra:
            raise _bad(f"unknown service field(s) {extra}; known: {', '.join(sorted(known))}")
        name = d.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise _bad(f"service name {name!r} is invalid: 1-64 letters, digits and _.- (a letter or digit first)")
        kind = d.get("kind")
        if kind not in KINDS:
            raise _bad(f"service {name}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        target = d.get("target")
        if not isinstance(target, str) or not target.strip():
            raise _bad(f"service {name}: 'target' must be a non-empty string")
        blob = d.get("blob")
        if blob is not None and (not isinstance(blob, str) or not re.fullmatch(r"[0-9a-f]{64}", blob)):
            raise _bad(f"service {name}: 'blob' must be a sha256 hex digest")
        if kind != "shell" and blob is None:
            raise _bad(f"service {name}: a {kind} service needs its content ('blob' and the bytes in 'blobs')")
        args = d.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
            raise _bad(f"service {name}: 'args' must be a list of strings or numbers")
        env = d.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise _bad(f"service {name}: 'env' must be a map of strings to strings")
        port = d.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
            raise _bad(f"service {name}: port must be 1-65535, got {port!r}")
        health = d.get("health")
        if health is not None and health != "tcp" and not (
            isinstance(health, str) and health.startswith("http:/") and not any(c.isspace() for c in health)
        ):
            raise _bad(f"service {name}: health must be 'tcp' or 'http:/path' (no spaces), got {health!r}")
        nums = _numbers(d, name)
        try:
            requires = check_tags(d.get("requires") or [], "requires")
        except JobError as exc:
            raise _bad(f"service {name}: {exc}") from None
        return cls(
            name=name, kind=kind, target=target, args=tuple(str(a) for a in args), env=tuple(sorted(env.items())),
            requires=requires, port=port, health=health, blob=d.get("blob"), **nums,
        )  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "target": self.target}
        if self.args:
            d["args"] = list(self.args)
        if self.env:
            d["env"] = dict(self.env)
        if self.requires:
            d["requires"] = sorted(self.requires)
        for key in ("port", "health", "blob"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        for key, default in (("replicas", 1), ("max_crashes", 5), ("crash_window", 60.0), ("backoff", 1.0),
                             ("grace", 10.0), ("start_timeout", 60.0)):  # fmt: skip
            if getattr(self, key) != default:
                d[key] = getattr(self, key)
        return d


@dataclass
class Replica:
    """One instance of a service, and where it runs."""

    id: str
    index: int
    state: str = "pending"
    worker: bytes | None = None
    worker_name: str | None = None
    host: str | None = None
    port: int | None = None
    pid: int | None = None
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    started_at: float | None = None  # wall time it became running
    not_before: float = 0.0  # monotonic: no restart before this (backoff)
    error: str | None = None
    exit_code: int | None = None


class Service:
    def __init__(self, spec: ServiceSpec, blob: bytes | None) -> None:
        self.spec = spec
        self.blob = blob
        self.replicas = [Replica(f"{spec.name}.{i}", i) for i in range(spec.replicas)]
        self.stopping = False


class ServiceManager:
    """Every service of the cluster; ``out`` holds the messages for workers until the turn ends."""

    def __init__(
        self, sched: Scheduler, journal: Callable[[list[Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.sched = sched
        self.journal = journal
        self.clock = clock
        self.wall = wall
        self.services: dict[str, Service] = {}
        self.start: dict[bytes, list[tuple[dict[str, Any], dict[str, bytes]]]] = {}
        self.stop_ids: dict[bytes, list[tuple[str, float]]] = {}
        self.events: list[dict[str, Any]] = []
        self.bad_ports: dict[tuple[str, int], float] = {}  # (host, port) found taken, until when (monotonic)
        self.hold_until = 0.0  # after a restart: no placement until workers had time to report their replicas
        self.changed = True  # something placement depends on changed since the last try
        self._next_place = 0.0
        self.on_change: Callable[[Service], None] | None = None  # told when a replica runs or fails

    def _log(self, op: list[Any]) -> None:
        if self.journal is not None:
            self.journal(op)

    def replica(self, rid: str) -> Replica | None:
        """The replica with this id (``<service>.<index>``), if its service is known."""
        name, _, _ = rid.rpartition(".")
        svc = self.services.get(name)
        if svc is None:
            return None
        return next((r for r in svc.replicas if r.id == rid), None)

    # ---- requests ------------------------------------------------------------------------

    def deploy(self, wire: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
        spec = ServiceSpec.from_wire(wire)
        blob = None
        if spec.blob is not None:
            blob = blobs.get(spec.blob)
            if blob is None or hashlib.sha256(blob).hexdigest() != spec.blob:
                raise _bad(f"service {spec.name}: its content (blob {spec.blob[:12]}...) was not sent, or is damaged")
        old = self.services.get(spec.name)
        if old is not None and not old.stopping:
            if old.spec == spec:
                return self.record(old)  # the same deployment again: nothing to do
            raise Conflict(f"service {spec.name!r} is already deployed with another spec; `titan stop "
                              f"{spec.name}` first, or deploy under another name")  # fmt: skip
        if old is not None:
            raise Conflict(f"service {spec.name!r} is still stopping; deploy it again once `titan services` "
                              "no longer lists it")  # fmt: skip
        if spec.port is not None:
            for other in self.services.values():  # a stopping service keeps its port until it is gone
                if other.spec.port == spec.port and other.spec.name != spec.name:
                    raise Conflict(f"port {spec.port} is already given to service {other.spec.name!r}; "
                                      "choose another --port, or none to get a free one")  # fmt: skip
        svc = Service(spec, blob)
        self.services[spec.name] = svc
        self.changed = True
        self._log(encode(ServiceDeployed(spec.to_wire(), blob)))
        self.events.append({"service": spec.name, "state": "deployed", "replicas": spec.replicas})
        log.info("service %s deployed: %d replica(s) of %s %r", spec.name, spec.replicas, spec.kind, spec.target)
        return self.record(svc)

    def stop(self, name: str) -> dict[str, Any]:
        svc = self.services.get(name)
        if svc is None:
            raise UnknownService(f"unknown service {name!r}; `titan services` lists them")
        svc.stopping = True
        for r in svc.replicas:
            if r.worker is not None and r.state in ("starting", "running"):
                self.stop_ids.setdefault(r.worker, []).append((r.id, svc.spec.grace))
                r.state = "stopping"
            elif r.state != "stopping":
                r.state = "stopped"
        self._log(encode(ServiceStopped(name)))
        self.events.append({"service": name, "state": "stopping"})
        self._maybe_gone(svc)
        if self.on_change is not None:
            self.on_change(svc)
        return self.record(svc)

    def _maybe_gone(self, svc: Service) -> None:
        if svc.stopping and all(r.state in ("stopped", "failed", "pending", "backoff") for r in svc.replicas):
            for r in svc.replicas:
                r.state = "stopped"
            self.events.append({"service": svc.spec.name, "state": "stopped"})

    def _forget(self, svc: Service) -> None:
        del self.services[svc.spec.name]

    def address(self, name: str) -> str:
        svc = self.services.get(name)
        if svc is None or svc.stopping:
            raise UnknownService(f"unknown service {name!r}; `titan services` lists them")
        for r in svc.replicas:
            if r.state == "running":
                return f"{r.host}:{r.port}"
        states = ", ".join(sorted({r.state for r in svc.replicas}))
        raise NotRunning(f"service {name!r} has no running replica yet ({states})")

    # ---- placement ----------------------------------------------------------------------

    def tick(self) -> None:
        """Start replicas that need a worker and whose backoff is over. Placement is retried when
        something changed (a worker came or went, a replica ended) or every half second, not on
        every broker turn."""
        now = self.clock()
        if now < self.hold_until or (not self.changed and now < self._next_place):
            return
        self.changed = False
        self._next_place = now + 0.5
        for svc in list(self.services.values()):
            if svc.stopping:
                if all(r.state == "stopped" for r in svc.replicas):
                    self._forget(svc)
                continue
            for r in svc.replicas:
                if r.state in ("pending", "backoff") and now >= r.not_before:
                    self._place(svc, r)

    def _place(self, svc: Service, r: Replica) -> None:
        spec = svc.spec
        eligible = [w for w in self.sched.workers.values() if spec.requires <= w.tags and not w.draining]
        if not eligible:
            r.error = f"waiting for a worker with tags {{{', '.join(sorted(spec.requires | {'cpu'}))}}}"
            return
        hosts: dict[str, int] = {}
        for other in svc.replicas:
            if other is not r and other.host is not None and other.state in ("starting", "running"):
                hosts[other.host] = hosts.get(other.host, 0) + 1
        used = self._ports_by_host()
        now = self.clock()
        for (host, bad), until in list(self.bad_ports.items()):
            if until <= now:
                del self.bad_ports[(host, bad)]
            else:
                used.setdefault(host, set()).add(bad)
        choices = []
        for w in eligible:
            port = spec.port if spec.port is not None else self._free_port(used.get(w.address or w.host, set()))
            if port is None or (spec.port is not None and spec.port in used.get(w.address or w.host, set())):
                continue
            choices.append((hosts.get(w.address or w.host, 0), self._replicas_on(w), w.name, w, port))
        if not choices:
            r.error = f"no eligible worker's host has port {spec.port} free" if spec.port else "no free port"
            return
        _, _, _, w, port = min(choices, key=lambda c: c[:3])
        r.worker, r.worker_name, r.host, r.port = w.ident, w.name, w.address or w.host, port
        r.state, r.error, r.pid = "starting", None, None
        wire = {**spec.to_wire(), "id": r.id, "port": port, "given": spec.port is not None}
        blobs = {spec.blob: svc.blob} if spec.blob is not None and svc.blob is not None else {}
        self.start.setdefault(w.ident, []).append((wire, blobs))

    def _ports_by_host(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for svc in self.services.values():
            for r in svc.replicas:
                if r.host is not None and r.port is not None and r.state in ("starting", "running", "stopping"):
                    out.setdefault(r.host, set()).add(r.port)
        return out

    def _free_port(self, used: set[int]) -> int | None:
        lo, hi = service_ports()
        for port in range(lo, hi + 1):
            if port not in used:
                return port
        return None

    def _replicas_on(self, w: WorkerInfo) -> int:
        return sum(1 for s in self.services.values() for r in s.replicas if r.worker == w.ident)

    # ---- what workers report --------------------------------------------------------------

    def on_state(self, w: WorkerInfo, st: dict[str, Any]) -> None:
        rid = st.get("id")
        svc = self.services.get(str(st.get("name")))
        r = next((x for x in svc.replicas if x.id == rid), None) if svc is not None else None
        if svc is None or r is None:
            if st.get("state") in ("starting", "running"):  # not ours (any more): stop it
                self.stop_ids.setdefault(w.ident, []).append((str(rid), 5.0))
            return
        state = st.get("state")
        if r.worker not in (None, w.ident) or (r.worker is None and state not in ("starting", "running")):
            # Not the worker this replica is on (a stale copy, or a report from before a move).
            if state in ("starting", "running"):
                self.stop_ids.setdefault(w.ident, []).append((r.id, svc.spec.grace))
            return
        self.changed = True
        if state in ("starting", "running"):
            self._alive(w, svc, r, st)
            return
        if svc.stopping:
            r.state, r.worker = "stopped", None
            self._maybe_gone(svc)
            return
        if state == "stopped":  # its worker is leaving (shut down, or drained): run it elsewhere
            r.state, r.worker, r.not_before, r.restarts = "pending", None, 0.0, r.restarts + 1
            r.error = f"its worker {r.worker_name} left; starting again elsewhere"
            return
        if state == "port_conflict" and svc.spec.port is None:
            if r.host is not None and r.port is not None:  # taken by something else there: avoid it a while
                self.bad_ports[(r.host, r.port)] = self.clock() + 60.0
            r.state, r.worker, r.not_before = "pending", None, 0.0  # another port, at once
            r.error = st.get("error")
            return
        if state == "start_failed":
            self._failed(svc, r, str(st.get("error") or state))
            return
        self._crashed(svc, r, st)

    def _alive(self, w: WorkerInfo, svc: Service, r: Replica, st: dict[str, Any]) -> None:
        """Its worker says the replica is starting or running (health check passed) there."""
        r.worker, r.worker_name, r.host = w.ident, w.name, w.address or w.host
        r.port = st.get("port") or r.port
        r.pid = st.get("pid")
        state = st.get("state")
        if state == "running" and r.state != "running":
            r.state, r.started_at = "running", self.wall()
            self.events.append({"service": svc.spec.name, "replica": r.id, "state": "running",
                                "address": f"{r.host}:{r.port}", "pid": r.pid})  # fmt: skip
            if self.on_change is not None:
                self.on_change(svc)
        elif state == "starting" and svc.stopping:
            self.stop_ids.setdefault(w.ident, []).append((r.id, svc.spec.grace))

    def _crashed(self, svc: Service, r: Replica, st: dict[str, Any]) -> None:
        """The replica exited, or its given port was taken (it may be in TIME_WAIT): a crash. It
        starts again after a backoff, unless it crashes in a loop."""
        state = st.get("state")
        now = self.clock()
        r.exit_code = st.get("exit_code")
        r.crashes.append(now)
        while r.crashes and r.crashes[0] < now - svc.spec.crash_window:
            r.crashes.popleft()
        detail = (st.get("stderr") or "").strip().splitlines()[-1:] or [""]
        if state == "port_conflict":
            r.error = str(st.get("error"))
        else:
            r.error = st.get("error") or f"exited with code {r.exit_code}"
            if detail[0]:
                r.error += f": {detail[0][:200]}"
        if len(r.crashes) >= svc.spec.max_crashes:
            self._failed(svc, r, f"crash loop: {len(r.crashes)} crashes within {svc.spec.crash_window:g}s "
                                 f"(last: {r.error})")  # fmt: skip
            return
        delay = min(MAX_BACKOFF, svc.spec.backoff * 2 ** (len(r.crashes) - 1))
        r.state, r.worker, r.not_before, r.restarts = "backoff", None, now + delay, r.restarts + 1
        self.events.append({"service": svc.spec.name, "replica": r.id, "state": "restarting", "in": delay,
                            "reason": r.error})  # fmt: skip
        log.warning("service replica %s %s; restarting in %.1fs", r.id, r.error, delay)

    def _failed(self, svc: Service, r: Replica, why: str) -> None:
        r.state, r.worker, r.error = "failed", None, why
        self._log(encode(ReplicaFailed(svc.spec.name, r.id, why)))  # a restarted broker must not start it again
        self.events.append({"service": svc.spec.name, "replica": r.id, "state": "failed", "reason": why})
        log.error("service replica %s failed: %s", r.id, why)
        if self.on_change is not None:
            self.on_change(svc)

    def worker_ready(self, w: WorkerInfo, running: list[str]) -> None:
        """A worker (re)joined: adopt the replicas it runs; replicas it lost start again."""
        self.changed = True
        held = set(running)
        for svc in self.services.values():
            for r in svc.replicas:
                if r.id in held and r.worker in (None, w.ident) and r.state not in ("failed", "stopped"):
                    if svc.stopping:
                        self.stop_ids.setdefault(w.ident, []).append((r.id, svc.spec.grace))
                        continue
                    r.worker, r.worker_name, r.host = w.ident, w.name, w.address or w.host
                    if r.state in ("pending", "backoff"):
                        r.state = "starting"  # its next report says whether it is healthy
                    held.discard(r.id)
                elif r.worker == w.ident and r.id not in held and r.state in ("starting", "running"):
                    r.state, r.worker = "pending", None
                elif r.worker == w.ident and r.id not in held and r.state == "stopping":
                    r.state, r.worker = "stopped", None
        for rid in held:  # replicas this broker does not know (any more)
            if not any(r.id == rid and r.worker == w.ident for s in self.services.values() for r in s.replicas):
                self.stop_ids.setdefault(w.ident, []).append((rid, 5.0))

    def worker_gone(self, ident: bytes) -> None:
        self.changed = True
        for svc in self.services.values():
            for r in svc.replicas:
                if r.worker == ident:
                    r.worker = None
                    if r.state == "stopping":
                        r.state = "stopped"
                    elif r.state in ("starting", "running"):
                        r.state, r.not_before, r.restarts = "pending", 0.0, r.restarts + 1
                        r.error = f"its worker {r.worker_name} was lost; starting again elsewhere"
                        self.events.append({"service": svc.spec.name, "replica": r.id, "state": "moving",
                                            "reason": r.error})  # fmt: skip
            self._maybe_gone(svc)

    # ---- records, journal ----------------------------------------------------------------

    def record(self, svc: Service) -> dict[str, Any]:
        now = self.wall()
        reps = [{"id": r.id, "state": r.state, "worker": r.worker_name, "host": r.host, "port": r.port,
                 "address": f"{r.host}:{r.port}" if r.host and r.port else None, "pid": r.pid,
                 "restarts": r.restarts, "uptime": now - r.started_at if r.state == "running" and r.started_at
                 else None, "error": r.error} for r in svc.replicas]  # fmt: skip
        states = [r["state"] for r in reps]
        overall = "stopped" if svc.stopping and all(s == "stopped" for s in states) else (
            "stopping" if svc.stopping else "running" if all(s == "running" for s in states)
            else "failed" if "failed" in states else "starting")  # fmt: skip
        return {"name": svc.spec.name, "state": overall, "replicas": reps, "spec": svc.spec.to_wire(),
                "restarts": sum(r.restarts for r in svc.replicas)}  # fmt: skip

    def records(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None:
            svc = self.services.get(name)
            if svc is None:
                raise UnknownService(f"unknown service {name!r}; `titan services` lists them")
            return [self.record(svc)]
        return [self.record(s) for s in self.services.values()]

    def apply(self, rec: ServiceDeployed | ServiceStopped | ReplicaFailed | list[Any]) -> None:
        """Replay a journaled service record (or the array it was written as)."""
        if isinstance(rec, list):
            rec = decode(rec)
        if isinstance(rec, ServiceDeployed):
            spec = ServiceSpec.from_wire(rec.spec)
            self.services[spec.name] = Service(spec, rec.blob)
        elif isinstance(rec, ServiceStopped):
            self.services.pop(rec.name, None)
        elif isinstance(rec, ReplicaFailed):
            svc = self.services.get(rec.service)
            r = next((x for x in svc.replicas if x.id == rec.replica), None) if svc is not None else None
            if r is not None:
                r.state, r.error = "failed", rec.error

    def capture(self) -> list[list[Any]]:
        ops: list[list[Any]] = []
        for s in self.services.values():
            if not s.stopping:
                ops.append(encode(ServiceDeployed(s.spec.to_wire(), s.blob)))
                ops.extend(encode(ReplicaFailed(s.spec.name, r.id, r.error)) for r in s.replicas if r.state == "failed")
        return ops


def _numbers(d: dict[str, Any], name: str) -> dict[str, Any]:
    """A service spec's numeric settings that are given, each checked against its bounds."""
    nums: dict[str, Any] = {}
    bounds = (("replicas", 1, 1000, True), ("max_crashes", 1, 1000, True), ("crash_window", 0.1, 86400.0, False),
              ("backoff", 0.0, 3600.0, False), ("grace", 0.0, 3600.0, False),
              ("start_timeout", 0.1, 86400.0, False))  # fmt: skip
    for key, lo, hi, integer in bounds:
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise _bad(f"service {name}: '{key}' must be a {'whole ' if integer else ''}number, got {v!r}")
        if not lo <= v <= hi:
            raise _bad(f"service {name}: '{key}' must be between {lo:g} and {hi:g}, got {v}")
        nums[key] = v
    return nums
