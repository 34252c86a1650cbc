"""The node agent: ``titan worker --autoscale MIN:MAX`` keeps MIN to MAX worker processes here.

Every ``interval`` it asks the broker how loaded its pool is (``PRESSURE``: jobs only this
pool's tags serve that wait, and the pool's free slots). It adds a worker process while such
jobs wait with no free slot; it drains one of its own (SIGUSR1: take no new job, finish what
it holds, leave) after its workers have been idle for ``idle`` seconds. A descale never kills
a job. Every decision, with its reason, is published as ``event.autoscale``. When the pool
stays saturated at MAX, it POSTs a scale request to ``webhook`` (for an external autoscaler
to add machines), at most once per ``webhook_every`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from titan_zmq import protocol as P
from titan_zmq.client import TitanClient
from titan_zmq.errors import ConfigError, TitanError
from titan_zmq.process import die_with_parent

log = logging.getLogger(__name__)


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` (``N`` means N:N) into two ints, 0 <= MIN <= MAX, MAX >= 1."""
    parts = text.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (-1, -1)
    except ValueError:
        lo, hi = -1, -1
    if lo < 0 or hi < 1 or lo > hi:
        raise ConfigError(f"--autoscale {text!r}: use MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, e.g. 1:4")
    return lo, hi


def agent_from_args(args: Any, cfg: Any) -> NodeAgent:
    """The agent ``titan worker --autoscale`` runs; ``cfg`` is the validated WorkerConfig of its workers."""
    lo, hi = parse_range(args.autoscale)
    passthrough = ["--cache-dir", cfg.cache_dir, "--prefetch", str(cfg.prefetch)]
    passthrough += ["--no-gpu-probe"] if args.no_gpu_probe else []
    passthrough += ["--job-memory", str(args.job_memory)] if args.job_memory else []
    return NodeAgent(args.broker, lo, hi, tags=cfg.tags, slots=cfg.slots, name=args.name or "", idle=args.idle,
                     webhook=args.scale_webhook, worker_args=passthrough)  # fmt: skip


class NodeAgent:
    """Supervises this host's worker processes of one tag pool and scales them with the load."""

    def __init__(
        self,
        broker: str,
        lo: int,
        hi: int,
        *,
        tags: list[str] | None = None,
        slots: int = 1,
        name: str = "",
        idle: float = 30.0,
        interval: float = 0.5,
        up_every: float = 1.0,
        webhook: str | None = None,
        webhook_every: float = 30.0,
        worker_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.lo, self.hi = lo, hi
        self.tags = sorted(set(tags or []))
        self.slots = slots
        self.name = name or f"{socket.gethostname()}-{'+'.join(self.tags) or 'cpu'}"
        self.idle, self.interval, self.up_every = idle, interval, up_every
        self.webhook, self.webhook_every = webhook, webhook_every
        self.worker_args = worker_args or []
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.draining: set[str] = set()
        self._seq = 0
        self._stop = threading.Event()
        self._last_up = 0.0
        self._idle_since: float | None = None
        self._saturated = 0
        self._last_hook = 0.0
        self.decisions: list[dict[str, Any]] = []

    def stop(self) -> None:
        self._stop.set()

    # ---- processes ------------------------------------------------------------------------

    def _spawn(self) -> str:
        self._seq += 1
        name = f"{self.name}-{self._seq}"
        args = [sys.executable, "-m", "titan_zmq", "worker", "--broker", self.broker, "--name", name,
                "--slots", str(self.slots), *self.worker_args]  # fmt: skip
        if self.tags:
            args += ["--tags", ",".join(self.tags)]
        self.procs[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, env=self.env, preexec_fn=die_with_parent)
        return name

    def _reap(self) -> None:
        for name, p in list(self.procs.items()):
            if p.poll() is not None:
                del self.procs[name]
                if name not in self.draining:
                    log.warning("worker %s exited with %s", name, p.returncode)
                self.draining.discard(name)

    def _live(self) -> list[str]:
        return [n for n in self.procs if n not in self.draining]

    # ---- decisions ------------------------------------------------------------------------

    def _decide(self, client: TitanClient, action: str, reason: str, **extra: Any) -> None:
        body = {"node": self.name, "pool": self.tags or ["cpu"], "action": action, "reason": reason,
                "processes": len(self._live()), "min": self.lo, "max": self.hi, "time": time.time(),
                **extra}  # fmt: skip
        self.decisions.append(body)
        log.info("autoscale %s: %s (%s); %d process(es)", self.name, action, reason, body["processes"])
        try:
            client.request(P.Notify, kind="autoscale", body=body)
        except TitanError as exc:
            log.warning("could not publish the decision: %s", exc)

    def step(self, client: TitanClient) -> None:
        """One look at the load and at most one decision."""
        self._reap()
        live = self._live()
        now = time.monotonic()
        while len(live) < self.lo:
            live.append(self._spawn())
            self._decide(client, "up", f"below the minimum of {self.lo}")
        p = client.pressure(self.tags)
        mine = {w["name"]: w for w in client.workers() if w["name"] in self.procs}
        busy = sum(w["held"] for w in mine.values())
        if p["queued"] > 0 and p["free"] == 0:
            self._idle_since = None
            if len(live) < self.hi:
                if now - self._last_up >= self.up_every and all(n in mine for n in live):  # the last one joined
                    self._last_up = now
                    self._spawn()
                    self._decide(client, "up", f"{p['queued']} job(s) queued for this pool and no free slot",
                                 queued=p["queued"])  # fmt: skip
                return
            self._saturated += 1
            if self.webhook and self._saturated >= 3 and now - self._last_hook >= self.webhook_every:
                self._last_hook = now
                self._hook(client, p)
            return
        self._saturated = 0
        if busy or p["queued"]:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if len(live) > self.lo and now - self._idle_since >= self.idle:
            victim = live[-1]
            self.draining.add(victim)
            try:
                os.kill(self.procs[victim].pid, signal.SIGUSR1)
            except OSError:
                pass
            self._idle_since = now  # one process per idle period
            self._decide(client, "down", f"idle for {self.idle:g}s; draining {victim}", worker=victim)

    def _hook(self, client: TitanClient, p: dict[str, int]) -> None:
        body = {"node": self.name, "tags": self.tags or ["cpu"], "queued": p["queued"], "running": p["running"],
                "processes": len(self._live()), "max": self.hi, "wanted": p["queued"]}  # fmt: skip
        req = urllib.request.Request(self.webhook or "", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                status = resp.status
        except (OSError, ValueError) as exc:
            status = None
            log.warning("scale webhook %s failed: %s", self.webhook, exc)
        self._decide(client, "webhook", f"saturated at the maximum of {self.hi}; asked {self.webhook} for more "
                     f"machines (HTTP {status})", queued=p["queued"])  # fmt: skip

    def run(self) -> None:
        client = TitanClient(self.broker, timeout=5.0)
        try:
            while not self._stop.is_set():
                try:
                    self.step(client)
                except TitanError as exc:
                    log.warning("node agent: %s", exc)
                self._stop.wait(self.interval)
        finally:
            client.close()
            for p in self.procs.values():
                if p.poll() is None:
                    p.terminate()
            for p in self.procs.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
