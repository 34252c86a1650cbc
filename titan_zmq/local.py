"""An embedded local cluster: a broker and workers as real processes on loopback.

Used by the quick start, by ``titan submit --local`` and by the tests::

    with LocalCluster(workers=2) as cluster:
        client = cluster.client()
        print(client.map("math:sqrt", range(10)))

Every process it starts is stopped when it stops (and dies with it if it is killed).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from titan_zmq.client import TitanClient
from titan_zmq.errors import BrokerUnavailable, TitanError, WaitTimeout
from titan_zmq.process import die_with_parent

log = logging.getLogger(__name__)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy; raise WaitTimeout (a TimeoutError) naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    """A broker and ``workers`` worker processes on this machine, on free loopback ports."""

    def __init__(
        self,
        workers: int = 2,
        *,
        slots: int = 2,
        tags: list[str] | None = None,
        host: str = "127.0.0.1",
        broker_args: list[str] | None = None,
        worker_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.n_workers = workers
        self.slots = slots
        self.tags = tags or []
        self.host = host
        self.broker_args = broker_args or []
        self.worker_args = worker_args or []
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("TITAN_GPU_PROBE", "false")
        self._tmp = tempfile.TemporaryDirectory(prefix="titan-local-")
        self.log_dir = Path(log_dir or self._tmp.name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env.setdefault("TITAN_CACHE_DIR", str(Path(self._tmp.name) / "cache"))
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = {}
        self.broker: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._clients: list[TitanClient] = []
        self._seq = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.ports['front']}"

    def _spawn(self, args: list[str], logname: str) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / logname, "ab")  # noqa: SIM115 - owned by the child's lifetime
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "titan_zmq", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        finally:
            out.close()

    # ---- broker ------------------------------------------------------------------------

    def start_broker(self) -> dict[str, int]:
        """Start the broker (again, on the same ports if it ran before)."""
        ready = self.log_dir / "broker.ready"
        ready.unlink(missing_ok=True)
        ports = self.ports or {"front": 0, "back": 0, "events": 0, "objects": 0}
        args = ["broker", "--host", self.host, "--ready-file", str(ready)]
        args += ["--front", str(ports["front"]), "--back", str(ports["back"]), "--events", str(ports["events"]),
                 "--objects", str(ports.get("objects", 0))]  # fmt: skip
        self.broker = self._spawn(args + self.broker_args, "broker.log")
        proc = self.broker

        def bound() -> bool:
            if proc.poll() is not None:
                tail = (self.log_dir / "broker.log").read_text(errors="replace")[-2000:]
                raise TitanError(f"broker exited with {proc.returncode}:\n{tail}")
            return ready.exists() and ready.stat().st_size > 0

        wait_for(bound, self.start_timeout, "the broker to bind")
        self.ports = json.loads(ready.read_text())
        return self.ports

    def kill_broker(self, sig: int = signal.SIGKILL) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.send_signal(sig)
            self.broker.wait(10)

    # ---- workers -----------------------------------------------------------------------

    def add_worker(
        self, *, tags: list[str] | None = None, slots: int | None = None, name: str | None = None,
        extra: list[str] | None = None, env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start one more worker process connected to this cluster's broker."""
        self._seq += 1
        name = name or f"local-{self._seq}"
        args = ["worker", "--broker", self.address, "--name", name, "--slots", str(slots or self.slots)]
        all_tags = list(tags if tags is not None else self.tags)
        if all_tags:
            args += ["--tags", ",".join(all_tags)]
        proc_env = None
        if env:
            proc_env = {**self.env, **env}
        saved = self.env
        try:
            if proc_env is not None:
                self.env = proc_env
            proc = self._spawn(args + self.worker_args + (extra or []), f"worker-{name}.log")
        finally:
            self.env = saved
        self.workers.append(proc)
        return proc

    def wait_workers(self, n: int | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until the broker sees at least ``n`` workers (default: all started ones alive)."""
        want = n if n is not None else sum(1 for p in self.workers if p.poll() is None)
        c = self.client()

        def enough() -> list[dict[str, Any]] | None:
            try:
                ws = c.workers()
            except BrokerUnavailable:
                return None
            return ws if len(ws) >= want else None

        return list(wait_for(enough, timeout or self.start_timeout, f"{want} worker(s) to join", 0.05))

    # ---- whole cluster -------------------------------------------------------------------

    def start(self) -> LocalCluster:
        self.start_broker()
        for _ in range(self.n_workers):
            self.add_worker()
        if self.n_workers:
            self.wait_workers(self.n_workers)
        return self

    def client(self, **kwargs: Any) -> TitanClient:
        """A client connected to this cluster (closed when the cluster stops)."""
        if self.env.get("TITAN_KEYS"):
            kwargs.setdefault("keys", self.env["TITAN_KEYS"])  # the cluster runs with CURVE: so does its client
        c = TitanClient(self.address, **kwargs)
        self._clients.append(c)
        return c

    def stop(self) -> None:
        """Stop workers (SIGTERM, then SIGKILL after 10 s), then the broker."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        for p in self.workers:
            if p.poll() is None:
                p.terminate()
        for p in self.workers:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("worker %d ignored SIGTERM; killing it", p.pid)
                p.kill()
                p.wait(5)
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait(5)
        self._tmp.cleanup()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
