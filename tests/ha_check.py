"""The HA tests' checker: what clients were told against what the group kept and ran."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titan_zmq.client.client import TitanClient
from titan_zmq.errors import TitanError


@dataclass
class Load:
    """A steady load on a group: one job submitted and one KV key written per step, each recorded
    as acknowledged only once the call returned without an error."""

    address: str
    runs: Path
    seconds: float = 0.05
    jobs: list[str] = field(default_factory=list)  # acknowledged submissions
    kv: dict[str, int] = field(default_factory=dict)  # acknowledged writes
    errors: list[str] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def grew(self, by: int) -> Callable[[], bool]:
        """A condition: ``by`` more jobs acknowledged than now."""
        target = len(self.jobs) + by
        return lambda: len(self.jobs) >= target

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        with TitanClient(self.address, timeout=15) as c:
            n = 0
            while not self._halt.is_set():
                n += 1
                try:
                    spec = c.build("tests.ha_jobs:logged", args=(str(self.runs), self.seconds))
                    self.jobs.append(c.submit_specs([spec], watch=False)[0].id)
                except TitanError as exc:
                    self.errors.append(f"submit: {exc}")
                try:
                    c.kv[f"key{n}"] = n
                    self.kv[f"key{n}"] = n
                except TitanError as exc:
                    self.errors.append(f"kv: {exc}")


def runs_of(path: Path) -> dict[str, list[tuple[float, float | None]]]:
    """Each job's runs: (start, end) by pid; end None for a run that never ended (its process was killed)."""
    opened: dict[tuple[str, str], float] = {}
    out: dict[str, list[tuple[float, float | None]]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        kind, jid, pid, t = parts[0], parts[1], parts[2], float(parts[3])
        if kind == "start":
            opened[(jid, pid)] = t
        elif kind == "end" and (jid, pid) in opened:
            out.setdefault(jid, []).append((opened.pop((jid, pid)), t))
    for (jid, _), t in opened.items():
        out.setdefault(jid, []).append((t, None))
    return out


def overlapping(runs: dict[str, list[tuple[float, float | None]]]) -> list[str]:
    """Jobs with two runs at once."""
    bad = []
    for jid, spans in runs.items():
        spans = sorted(spans)
        for (_, end), (start, _) in itertools.pairwise(spans):
            if end is None or start < end:
                bad.append(jid)
                break
    return bad


def verdict(address: str, load: Load, timeout: float = 120.0) -> dict[str, Any]:
    """Wait for every acknowledged job to end, read every acknowledged KV key, and count what was lost."""
    with TitanClient(address, timeout=15) as c:
        records = c.wait(load.jobs, timeout=timeout)
        not_succeeded = [j for j, r in records.items() if r.state.value != "succeeded"]
        kv_lost = [k for k, v in load.kv.items() if c.kv.get(k) != v]
    runs = runs_of(load.runs)
    never_ran = [j for j in load.jobs if j not in runs]
    return {
        "jobs_acknowledged": len(load.jobs), "kv_acknowledged": len(load.kv),
        "jobs_lost": len(not_succeeded) + len(never_ran), "kv_lost": len(kv_lost),
        "ran_twice_at_once": len(overlapping(runs)), "runs": sum(len(v) for v in runs.values()),
        "client_errors": len(load.errors), "examples": (not_succeeded + never_ran + kv_lost)[:5],
    }  # fmt: skip
