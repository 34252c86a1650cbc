"""Schedules: jobs (or whole DAGs) submitted by the broker on a cron expression.

Cron expressions are parsed by ``croniter`` (five fields, or six with seconds last:
``"*/5 * * * *"``, ``"* * * * * */10"``), in the broker's local time. Each firing submits the
schedule's job specs with ids ``<name>.<unix time of the firing>`` (prefixing every job id of a
DAG), so a firing submitted twice, for instance around a crash, runs once.

After broker downtime, missed firings follow the schedule's ``catchup`` policy:

* ``skip`` (the default): nothing runs for them; the next regular firing comes as usual;
* ``once``: one run, at start-up, for the latest missed firing; then the regular ones.

Journaled (``aof.records``): ``ScheduleAdded``, ``ScheduleRemoved``, and ``ScheduleFired`` for
each firing, so a restarted broker knows what already ran.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from titan_zmq.aof.records import ScheduleAdded, ScheduleFired, ScheduleRemoved, decode, encode
from titan_zmq.errors import Conflict, JobError, UnknownSchedule

log = logging.getLogger(__name__)

CATCHUP = ("skip", "once")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class Schedule:
    name: str
    cron: str
    specs: list[dict[str, Any]]
    catchup: str = "skip"
    blobs: dict[str, bytes] | None = None  # contents of script jobs
    last_fire: float = 0.0  # unix time of the last firing submitted
    next_fire: float = 0.0
    runs: int = 0
    last_error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cron": self.cron, "catchup": self.catchup, "jobs": len(self.specs),
                "target": self.specs[0].get("target") if len(self.specs) == 1 else f"DAG of {len(self.specs)} jobs",
                "next_run": self.next_fire, "last_run": self.last_fire or None, "runs": self.runs,
                "last_error": self.last_error}  # fmt: skip


def _after(cron: str, t: float) -> float:
    """The next firing after ``t``; infinity for an expression that has no more (Feb 31, a past date)."""
    try:
        return float(croniter(cron, t).get_next(float))
    except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
        return math.inf


class ScheduleManager:
    """Every schedule; ``submit`` is how a firing reaches the scheduler (it validates the specs)."""

    def __init__(
        self,
        submit: Callable[[list[dict[str, Any]], dict[str, bytes]], list[str]],
        journal: Callable[[list[Any]], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.submit = submit
        self.journal = journal
        self.wall = wall
        self.schedules: dict[str, Schedule] = {}

    def _log(self, op: list[Any]) -> None:
        if self.journal is not None:
            self.journal(op)

    def add(
        self, name: str, cron: str, specs: list[dict[str, Any]], catchup: str = "skip",
        blobs: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise JobError(f"schedule name {name!r} is invalid: 1-64 letters, digits and _.- (a letter or digit first)")
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise JobError(f"schedule {name}: {cron!r} is not a cron expression (five fields, e.g. '*/5 * * * *', "
                           "or six with seconds last)")  # fmt: skip
        if catchup not in CATCHUP:
            raise JobError(f"schedule {name}: catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
        if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) and s.get("id") for s in specs):
            raise JobError(f"schedule {name}: give one job spec or the specs of a DAG, each with an id")
        if name in self.schedules:
            raise Conflict(f"schedule {name!r} exists; `titan schedule rm {name}` first")
        self._check(name, specs)
        needed = {s["blob"] for s in specs if s.get("blob")}
        blobs = {k: v for k, v in (blobs or {}).items() if k in needed}
        if needed - blobs.keys():
            raise JobError(f"schedule {name}: the content of its script was not sent with it")
        first = _after(cron, self.wall())
        if math.isinf(first):
            raise JobError(f"schedule {name}: {cron!r} never fires (no such date); check the day and month fields")
        sched = Schedule(name, cron, specs, catchup, blobs or None, next_fire=first)
        self.schedules[name] = sched
        self._log(encode(ScheduleAdded(name, cron, specs, catchup, blobs or None)))
        log.info("schedule %s added: %r, next run %s", name, cron, time.ctime(sched.next_fire))
        return sched.describe()

    def _check(self, name: str, specs: list[dict[str, Any]]) -> None:
        """Validate the template now, so a bad one is refused at once, not at its first firing."""
        from titan_zmq.job import Job

        for spec in self._instance(name, specs, 0.0):
            try:
                Job.from_wire({k: v for k, v in spec.items() if k != "depends_on"})
            except JobError as exc:
                raise JobError(f"schedule {name}: {exc}") from None

    def remove(self, name: str) -> dict[str, Any]:
        sched = self.schedules.pop(name, None)
        if sched is None:
            raise UnknownSchedule(f"unknown schedule {name!r}; `titan schedule ls` lists them")
        self._log(encode(ScheduleRemoved(name)))
        return sched.describe()

    def describe_all(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.schedules.values()]

    @staticmethod
    def _instance(name: str, specs: list[dict[str, Any]], fire: float) -> list[dict[str, Any]]:
        prefix = f"{name}.{int(fire)}"
        if len(specs) == 1:
            return [{**specs[0], "id": prefix}]
        ids = {s["id"]: f"{prefix}.{s['id']}" for s in specs}
        out = []
        for s in specs:
            spec = {**s, "id": ids[s["id"]], "dag": prefix}
            if s.get("depends_on"):
                spec["depends_on"] = [ids.get(p, p) for p in s["depends_on"]]
            out.append(spec)
        return out

    def _fire(self, sched: Schedule, fire: float) -> None:
        try:
            self.submit(self._instance(sched.name, sched.specs, fire), sched.blobs or {})
            sched.last_error = None
        except Exception as exc:  # a bad firing must not stop the broker nor the schedule
            sched.last_error = f"{type(exc).__name__}: {exc}"
            log.error("schedule %s could not submit its run for %s: %s", sched.name, time.ctime(fire), exc)
        sched.last_fire = fire
        sched.runs += 1
        self._log(encode(ScheduleFired(sched.name, fire)))

    def tick(self) -> float | None:
        """Submit what is due; return when the next firing is (unix time), if any."""
        now = self.wall()
        nxt = None
        for sched in list(self.schedules.values()):
            if sched.next_fire <= now:
                due = sched.next_fire
                self._fire(sched, due)
                sched.next_fire = _after(sched.cron, max(due, now))
            nxt = sched.next_fire if nxt is None else min(nxt, sched.next_fire)
        return nxt

    # ---- journal ------------------------------------------------------------------------

    def apply(self, rec: ScheduleAdded | ScheduleRemoved | ScheduleFired | list[Any]) -> None:
        """Replay a journaled schedule record (or the array it was written as)."""
        if isinstance(rec, list):
            rec = decode(rec)
        if isinstance(rec, ScheduleAdded):
            self.schedules[rec.name] = Schedule(rec.name, rec.cron, rec.specs, rec.catchup, rec.blobs)
        elif isinstance(rec, ScheduleRemoved):
            self.schedules.pop(rec.name, None)
        elif isinstance(rec, ScheduleFired) and rec.name in self.schedules:
            s = self.schedules[rec.name]
            s.last_fire = max(s.last_fire, rec.time)
            s.runs += 1

    def restored(self) -> None:
        """After a replay: apply each schedule's catch-up policy to the firings missed while down."""
        now = self.wall()
        for sched in self.schedules.values():
            start = sched.last_fire or now
            first_missed = _after(sched.cron, start)
            if sched.last_fire and first_missed <= now:
                last_missed = first_missed
                it = croniter(sched.cron, first_missed)
                while True:  # the latest firing not after now
                    nxt = float(it.get_next(float))
                    if nxt > now:
                        break
                    last_missed = nxt
                if sched.catchup == "once":
                    log.info("schedule %s missed runs while the broker was down; running once for %s",
                             sched.name, time.ctime(last_missed))  # fmt: skip
                    self._fire(sched, last_missed)
                else:
                    log.info("schedule %s missed runs while the broker was down; skipped (catchup: skip)", sched.name)
            sched.next_fire = _after(sched.cron, now)

    def capture(self) -> list[list[Any]]:
        ops: list[list[Any]] = []
        for s in self.schedules.values():
            ops.append(encode(ScheduleAdded(s.name, s.cron, s.specs, s.catchup, s.blobs)))
            if s.last_fire:
                ops.append(encode(ScheduleFired(s.name, s.last_fire)))
        return ops
