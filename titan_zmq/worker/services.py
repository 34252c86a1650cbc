"""Long-running services on a worker: started with ``$PORT``, health-checked, stopped gently.

The broker decides where each replica runs and on which port; the worker starts the process
in its own session, checks that the port is free first, probes its health (``tcp``: the
port accepts a connection; ``http:/path``: a GET answers 2xx or 3xx) in a small thread, and
reports every change of state (``SVC_STATE``): ``starting``, ``running``, ``exited`` (with
the exit code), ``port_conflict``, ``start_failed``, ``stopped``. Restarts are the broker's
decision, so a crash on any node is handled the same way.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from titan_zmq.compat.paths import with_sdk_shim
from titan_zmq.config import service_ports
from titan_zmq.errors import ServiceFailed
from titan_zmq.process import die_with_parent, kill_tree
from titan_zmq.worker.cache import BlobCache
from titan_zmq.worker.output import LogSink, Tail, read_available

log = logging.getLogger(__name__)

HEALTH_EVERY = 0.2  # seconds between health probes while a service starts


def port_free(port: int, strict: bool = True) -> bool:
    """Whether ``port`` is free here: a bind on all addresses succeeds. ``strict`` binds without
    SO_REUSEADDR, so a port still in TIME_WAIT counts as taken (a server that does not set it could
    not bind); otherwise only a listener makes it taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if not strict:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def probe(health: str | None, port: int, timeout: float = 1.0) -> bool:
    """One health check: ``tcp`` (or none) connects; ``http:/path`` needs a 2xx/3xx answer."""
    if health and health.startswith("http:"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", health[5:] or "/")
            return 200 <= conn.getresponse().status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class Replica:
    """One service process on this worker."""

    def __init__(self, spec: dict[str, Any], popen: subprocess.Popen[bytes], logs: LogSink, tail: int) -> None:
        self.spec = spec
        self.id: str = spec["id"]
        self.port: int = spec["port"]
        self.popen = popen
        self.out = Tail(tail, logs, self.id, "out")
        self.err = Tail(tail, logs, self.id, "err")
        self.healthy = threading.Event()
        self.reported = "starting"
        self.stop_deadline: float | None = None
        self.started = time.monotonic()
        self.start_timeout = float(spec.get("start_timeout") or 60.0)
        self.timed_out = False
        self._probe_stop = threading.Event()
        threading.Thread(target=self._probe, name=f"health-{self.id}", daemon=True).start()

    def _probe(self) -> None:
        health = self.spec.get("health")
        while not self._probe_stop.is_set() and self.popen.poll() is None:
            if probe(health, self.port):
                self.healthy.set()
                return
            self._probe_stop.wait(HEALTH_EVERY)

    def close(self) -> None:
        self._probe_stop.set()


class ServiceRunner:
    """The services this worker runs, by replica id."""

    def __init__(self, cache: BlobCache, env: dict[str, str], logs: LogSink, tail: int = 64 * 1024) -> None:
        self.cache = cache
        self.env = with_sdk_shim(env)  # a service script may import titan_sdk, as the original's do
        self.logs = logs
        self.tail = tail
        self.replicas: dict[str, Replica] = {}
        self.states: list[dict[str, Any]] = []  # changes not yet sent to the broker

    def _report(self, spec: dict[str, Any], state: str, **fields: Any) -> None:
        self.states.append({"id": spec["id"], "name": spec["name"], "state": state, "port": spec.get("port"),
                            "host": socket.gethostname(), **fields})  # fmt: skip

    def start(self, spec: dict[str, Any]) -> None:
        """Start a replica (again, if the broker says so; one already running is kept)."""
        if spec["id"] in self.replicas:
            r = self.replicas[spec["id"]]
            self._report(spec, r.reported, pid=r.popen.pid)
            return
        port = int(spec["port"])
        if spec.get("given"):  # the user's port: taken only if something listens (TIME_WAIT is fine)
            if not port_free(port, strict=False):
                self._report(spec, "port_conflict", error=f"port {port} is in use on {socket.gethostname()}")
                return
        elif not port_free(port):  # the broker's pick is busy here: take the next free one of the range
            lo, hi = service_ports()
            free = next((p for p in range(port + 1, hi + 1) if port_free(p)), None) or next(
                (p for p in range(lo, port) if port_free(p)), None)
            if free is None:
                self._report(spec, "port_conflict", error=f"no free port in {lo}-{hi} on {socket.gethostname()}")
                return
            spec = {**spec, "port": free}
            port = free
        try:
            argv, cwd = self._argv(spec)
            env = {**self.env, **(spec.get("env") or {}), "PORT": str(port), "TITAN_SERVICE": spec["name"],
                   "TITAN_JOB_ID": spec["id"]}  # fmt: skip
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        except (OSError, KeyError, ValueError, ServiceFailed) as exc:  # ValueError: Popen's, for a bad argument
            self._report(spec, "start_failed", error=f"could not start: {exc}")
            return
        assert popen.stdout is not None and popen.stderr is not None
        for stream in (popen.stdout, popen.stderr):
            os.set_blocking(stream.fileno(), False)
        replica = Replica(spec, popen, self.logs, self.tail)
        self.replicas[spec["id"]] = replica
        self._report(spec, "starting", pid=popen.pid)
        log.info("service %s started (pid %d, port %d)", spec["id"], popen.pid, port)

    def _argv(self, spec: dict[str, Any]) -> tuple[list[str], str | None]:
        kind = spec["kind"]
        args = [str(a) for a in spec.get("args", [])]
        if kind == "shell":
            return ["/bin/sh", "-c", spec["target"], "titan-service", *args], None
        sha = spec["blob"]
        if not self.cache.has(sha):
            raise ServiceFailed("its script is not in the cache")
        if kind == "archive":
            cwd = str(self.cache.extract(sha))
            return [sys.executable, os.path.join(cwd, spec["target"]), *args], cwd
        return [sys.executable, str(self.cache.path(sha)), *args], None

    def stop(self, replica_id: str, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds if it is still there."""
        r = self.replicas.get(replica_id)
        if r is None:  # not here (never started, or gone already): say so, so the broker stops waiting
            self._report({"id": replica_id, "name": replica_id.rpartition(".")[0]}, "stopped")
            return
        if r.stop_deadline is None:
            r.stop_deadline = time.monotonic() + grace
            try:
                os.killpg(r.popen.pid, signal.SIGTERM)
            except OSError:
                pass

    def poll(self) -> None:
        """Read output, notice health and exits, enforce stop grace periods."""
        now = time.monotonic()
        for rid, r in list(self.replicas.items()):
            assert r.popen.stdout is not None and r.popen.stderr is not None
            read_available(r.popen.stdout.fileno(), r.out)
            read_available(r.popen.stderr.fileno(), r.err)
            code = r.popen.poll()
            if code is not None:
                r.close()
                r.out.flush()
                r.err.flush()
                del self.replicas[rid]
                try:  # what it left behind in its session (the group outlives its reaped leader)
                    os.killpg(r.popen.pid, signal.SIGKILL)
                except OSError:
                    pass
                for stream in (r.popen.stdout, r.popen.stderr):
                    stream.close()
                state = "stopped" if r.stop_deadline is not None and not r.timed_out else "exited"
                error = None if state == "stopped" else f"exited with code {code}"
                if r.timed_out:
                    error = f"not healthy within {r.start_timeout:g}s ({r.spec.get('health') or 'tcp'} check); killed"
                self._report(r.spec, state, exit_code=code, pid=r.popen.pid, error=error,
                             stderr=r.err.text()[-2000:])  # fmt: skip
                continue
            if r.stop_deadline is not None and now >= r.stop_deadline:
                kill_tree(r.popen.pid)
            elif r.reported == "starting" and not r.healthy.is_set() and now - r.started > r.start_timeout:
                r.timed_out = True
                kill_tree(r.popen.pid)
            elif r.reported == "starting" and r.healthy.is_set():
                r.reported = "running"
                self._report(r.spec, "running", pid=r.popen.pid)

    def report_all(self) -> None:
        """Say again how every replica is (after a reconnect: a restarted broker adopts them)."""
        for r in self.replicas.values():
            self._report(r.spec, r.reported, pid=r.popen.pid)

    def take_states(self) -> list[dict[str, Any]]:
        out, self.states = self.states, []
        return out

    def running(self) -> list[str]:
        return list(self.replicas)

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every service (the worker is leaving): SIGTERM, then SIGKILL after ``grace``."""
        for rid in list(self.replicas):
            self.stop(rid, grace)
        deadline = time.monotonic() + grace + 1
        while self.replicas and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.05)
        for r in self.replicas.values():
            kill_tree(r.popen.pid)
