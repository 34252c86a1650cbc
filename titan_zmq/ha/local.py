"""A broker group of real ``titan broker --peers`` processes on loopback (tests, benchmarks, trying it out).

Every member gets six consecutive free ports (front, back, events, objects, journal stream,
election) and a data directory of its own. Members are killed and started again by index.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from titan_zmq.client.cluster_commands import ask as hello
from titan_zmq.local import wait_for
from titan_zmq.process import stop_processes

PORTS = (30000, 32767)  # below Linux's ephemeral ports and above the services' (20000-29999)


def free_block(n: int = 6, ports: tuple[int, int] = PORTS, taken: tuple[int, ...] = ()) -> int:
    """A port p of ``ports``, a multiple of 8 (so that blocks never overlap), not in ``taken``, such that
    p .. p+n-1 are free on 127.0.0.1 now."""
    first, last = -(-ports[0] // 8) * 8, ports[1] - n
    for _ in range(200):
        base = random.randrange(first, last + 1, 8)
        if base in taken:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports found")


class LocalGroup:
    """``n`` members; ``start(i)``, ``kill(i)``, ``leader()``; always ``close()`` (or use ``with``)."""

    def __init__(self, root: Path, n: int = 3, fsync: str = "always", args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, dirs: list[Path] | None = None,
                 ports: tuple[int, int] = PORTS) -> None:  # fmt: skip
        self.root = root
        self.fsync = fsync
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.bases: list[int] = []
        for _ in range(n):
            self.bases.append(free_block(6, ports, tuple(self.bases)))
        self.names = [f"127.0.0.1:{b}" for b in self.bases]
        self.peers = ",".join(self.names)
        self.dirs = dirs or [root / f"member{i}" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.logs = [root / f"member{i}.log" for i in range(n)]

    def __enter__(self) -> LocalGroup:
        for i in range(len(self.bases)):
            self.start(i)
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close()
        if kind is not None:  # shown by pytest with the failure: what each member said last
            for i in range(len(self.names)):
                print(f"---- member {i} ({self.names[i]}) ----\n{self.text(i)[-4000:]}")

    def start(self, i: int) -> None:
        b = self.bases[i]
        cmd = [sys.executable, "-m", "titan_zmq", "--log-level", "INFO", "broker", "--peers", self.peers,
               "--front", str(b), "--back", str(b + 1), "--events", str(b + 2), "--objects", str(b + 3),
               "--data-dir", str(self.dirs[i]), "--fsync", self.fsync, *self.args]  # fmt: skip
        with open(self.logs[i], "ab") as log:
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(30)
        self.procs[i] = None

    def close(self) -> None:
        stop_processes(self.procs)
        self.procs = [None] * len(self.procs)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def info(self, i: int) -> dict[str, Any] | None:
        data = hello(self.names[i])
        return None if data is None else data.get("group")

    def follows(self, i: int) -> bool:
        """Whether member ``i`` answers and copies a leader's journal."""
        return bool((self.info(i) or {}).get("following"))

    def leader(self, timeout: float = 30.0, among: list[int] | None = None) -> int:
        """The member that leads, once the live members agree on it and it serves."""
        found: list[int] = []

        def agreed() -> bool:
            live = among if among is not None else self.alive()
            infos = {i: self.info(i) for i in live}
            leaders = [i for i, g in infos.items() if g and g["role"] == "leader"]
            if len(leaders) != 1:
                return False
            name = self.names[leaders[0]]
            if sum(1 for g in infos.values() if g and g["leader"] == name) < len(self.names) // 2 + 1:
                return False
            found[:] = leaders
            return True

        wait_for(agreed, timeout, "a leader the members agree on")
        return found[0]

    def text(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace") if self.logs[i].exists() else ""
