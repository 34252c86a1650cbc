"""Process helpers shared by the worker and the local cluster: tie children to us, kill trees."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
from collections.abc import Iterable

import psutil

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec (Linux): get SIGKILL when the parent dies, so nothing outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group and every descendant."""
    procs: list[psutil.Process] = []
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


class Waker:
    """A self-pipe: ``wake()`` from any thread or signal handler makes a poll on ``fd`` return."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)

    def wake(self) -> None:
        w = self._w
        if w < 0:  # closed: its number may already belong to another file
            return
        try:
            os.write(w, b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed (we are stopping)
            pass

    def drain(self) -> None:
        try:
            os.read(self.fd, 4096)
        except OSError:
            pass

    def close(self) -> None:
        fds = (self.fd, self._w)
        self.fd = self._w = -1  # a second close() must not close a number reused by another file
        for fd in fds:
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass


GC_GEN0 = 50_000  # allocations between young collections in a broker or worker process (Python's default: 700)


def stop_processes(procs: Iterable[subprocess.Popen[bytes] | None], grace: float = 10.0) -> None:
    """SIGTERM each process still running, wait up to ``grace`` seconds for each, then SIGKILL it."""
    live = [p for p in procs if p is not None]
    for p in live:
        if p.poll() is None:
            p.terminate()
    for p in live:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def tune_gc() -> None:
    """For a process that titan owns (a broker, a worker): collect cycles less often.

    The broker allocates a few objects per job message and keeps up to ``max_finished_jobs``
    records alive. With the default thresholds the collector runs every 700 allocations and
    periodically walks all of them: a fifth of the broker's time per job in a no-op stream.
    Reference counting still frees everything at once; only cycles wait longer. What exists at
    start (modules, config, a replayed journal) is frozen out of every later collection.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)
