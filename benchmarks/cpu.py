"""Where the CPU went: per-role CPU time of the processes a scenario runs, over its timed runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import psutil

T = TypeVar("T")


class CpuMeter:
    """Accumulates CPU seconds (user + system, all threads) per role, and the wall time they took."""

    def __init__(self, roles: dict[str, Iterable[int]]) -> None:
        self.procs = {role: [psutil.Process(pid) for pid in pids] for role, pids in roles.items()}
        self.cpu = dict.fromkeys(self.procs, 0.0)
        self.wall = 0.0

    def _sample(self) -> dict[str, float]:
        out = {}
        for role, procs in self.procs.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                except psutil.Error:  # it ended (an executor replaced, say): its time is lost, not fatal
                    continue
                total += t.user + t.system
            out[role] = total
        return out

    def measure(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` and add the CPU each role spent meanwhile."""
        before = self._sample()
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.wall += time.perf_counter() - start
            after = self._sample()
            for role in self.cpu:
                self.cpu[role] += max(0.0, after[role] - before[role])

    def utilisation(self) -> dict[str, float]:
        """Per role, CPU seconds per wall second (1.0 = one core busy all along)."""
        return {role: (cpu / self.wall if self.wall else 0.0) for role, cpu in self.cpu.items()}


def children(pids: Iterable[int]) -> list[int]:
    """Every descendant of ``pids`` alive now."""
    out = []
    for pid in pids:
        try:
            out += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            continue
    return out
