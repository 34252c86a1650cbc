"""Records: what queries, watchers and the stats feed are shown of jobs and workers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from titan_zmq.broker.scheduler.state import Entry, Part, fmt_tags
from titan_zmq.errors import BadRequest
from titan_zmq.job import FINAL_STATES, JobState

_STATE_NAMES = frozenset(s.value for s in JobState)


class Records(Part):
    """Job records (full, and compact for watchers), why a job waits, lists and counts."""

    def record(self, entry: Entry) -> dict[str, Any]:
        j = entry.job
        return {
            "id": j.id,
            "kind": j.kind,
            "target": j.target,
            "state": entry.state.value,
            "attempts": entry.attempts,
            "worker": entry.worker_name,
            "result": entry.result,
            "error": entry.error,
            "error_type": entry.error_type,
            "traceback": entry.traceback,
            "exit_code": entry.exit_code,
            "stdout": entry.stdout,
            "stderr": entry.stderr,
            "requires": sorted(j.requires),
            "priority": j.priority,
            "retries": j.retries,
            "submitted_at": entry.submitted_at,
            "queued_at": entry.queued_at,
            "started_at": entry.started_at,
            "finished_at": entry.finished_at,
            "waiting": self.waiting_reason(entry),
            "labels": j.labels,
            "depends_on": list(j.depends_on),
            "dag": j.dag,
            "fetched": entry.fetched,
        }

    def final_record(self, entry: Entry) -> dict[str, Any]:
        """The record pushed to a watching client when the job ends: :meth:`record` without the
        fields that hold the client's JobRecord default (it fills those in again), so a short job's
        record is a few bytes to pack, send and unpack. The result always goes, whatever it is."""
        j = entry.job
        rec: dict[str, Any] = {"id": j.id, "kind": j.kind, "target": j.target, "state": entry.state._value_,
                               "attempts": entry.attempts, "result": entry.result}  # fmt: skip
        for key, value in (
            ("worker", entry.worker_name), ("error", entry.error), ("error_type", entry.error_type),
            ("traceback", entry.traceback), ("exit_code", entry.exit_code), ("submitted_at", entry.submitted_at),
            ("queued_at", entry.queued_at), ("started_at", entry.started_at), ("finished_at", entry.finished_at),
            ("dag", j.dag), ("fetched", entry.fetched),
        ):  # fmt: skip
            if value is not None:  # their default is None
                rec[key] = value
        if entry.stdout:  # default ""
            rec["stdout"] = entry.stdout
        if entry.stderr:
            rec["stderr"] = entry.stderr
        if j.labels:  # default {}
            rec["labels"] = j.labels
        if j.requires:
            rec["requires"] = sorted(j.requires)
        if j.priority:
            rec["priority"] = j.priority
        if j.retries:
            rec["retries"] = j.retries
        if j.depends_on:
            rec["depends_on"] = list(j.depends_on)
        return rec

    def waiting_reason(self, entry: Entry) -> str | None:
        """Why a job that has not ended is not running (None when it runs, or ended)."""
        st = self.st
        state = entry.state
        now = st.clock()
        if state is JobState.RETRYING:
            return f"retry {entry.attempts + 1} of {entry.job.retries + 1} in {max(0.0, entry.not_before - now):.1f}s"
        if state is JobState.PENDING:
            return f"waiting for {entry.waiting_on} parent job(s)"
        if state is JobState.AWAITING:
            left = f"; rejected in {max(0.0, entry.not_before - now):.0f}s" if entry.not_before else ""
            return f"awaiting approval: {entry.job.target} (titan approve {entry.job.id}){left}"
        if state is JobState.RUNNING and entry.job.kind == "service":
            return f"deploying service {entry.job.target}: waiting for every replica to pass its health check"
        if state is JobState.RUNNING and entry.worker is None:
            return f"running on {entry.worker_name} before the broker restarted; waiting for it to reconnect"
        if state is not JobState.QUEUED:
            return None
        if entry.not_before > now:
            return f"delayed: runs in {entry.not_before - now:.1f}s"
        return self._queued_reason(entry)

    def _queued_reason(self, entry: Entry) -> str:
        workers = self.st.workers.values()
        req = entry.job.level(entry.level)[0]
        if entry.pin is not None:
            soft = f" (any worker after {entry.job.affinity_wait:g}s)" if entry.pin_soft else ""
            if not any(w.name == entry.pin and req <= w.tags for w in workers):
                return f"waiting for worker {entry.pin}{soft}"
            return f"waiting for a free slot on worker {entry.pin}{soft}"
        eligible = [w for w in workers if req <= w.tags]
        if not eligible:
            return f"waiting for a worker with tags {fmt_tags(req or frozenset({'cpu'}))}"
        if all(w.free <= 0 for w in eligible):
            return f"waiting for a free slot: {len(eligible)} eligible worker(s) busy"
        return "queued: being dispatched"

    def watch(self, ident: bytes, ids: list[str]) -> list[dict[str, Any]]:
        """Register ``ident`` for DONE of ``ids``; return records of those already ended."""
        ended = []
        for jid in ids:
            entry = self.st.entry(jid)
            if entry.state in FINAL_STATES:
                ended.append(self.record(entry))
            elif entry.watchers is None:
                entry.watchers = [ident]
            elif ident not in entry.watchers:
                entry.watchers.append(ident)
        return ended

    def list_jobs(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, of one state or all."""
        if state is not None and state not in _STATE_NAMES:
            raise BadRequest(f"unknown state {state!r}; one of {', '.join(s.value for s in JobState)}")
        out = []
        for entry in reversed(self.st.jobs.values()):
            if state is None or entry.state.value == state:
                out.append(self.record(entry))
                if len(out) >= limit:
                    break
        return out

    def dag_records(self, dag_id: str) -> list[dict[str, Any]] | None:
        """Records of a DAG's jobs, or None when no DAG has that id."""
        st = self.st
        members = st.dags.get(dag_id)
        if members is None:
            return None
        return [self.record(st.jobs[j]) for j in members if j in st.jobs]

    def pressure(self, tags: Iterable[str]) -> dict[str, int]:
        """Load of the pool of workers that have ``tags``: the jobs only it (or it best) serves that wait,
        and its free slots. A pool with extra tags (gpu) counts only jobs that need one of them, so it
        scales apart from the plain cpu pool."""
        st = self.st
        pool = frozenset(tags) | {"cpu"}
        extra = pool - {"cpu"}
        now = st.clock()
        queued = 0
        for e in st.jobs.values():
            if (e.state is JobState.QUEUED or e.state is JobState.RETRYING) and e.not_before <= now:
                req = e.job.level(e.level)[0]
                if req <= pool and (not extra or req & extra):
                    queued += 1
        members = [w for w in st.workers.values() if pool <= w.tags and not w.draining]
        return {
            "queued": queued,
            "free": sum(max(0, w.slots - len(w.running)) for w in members),
            "running": sum(len(w.running) for w in members),
            "slots": sum(w.slots for w in members),
            "workers": len(members),
        }

    def stats(self) -> dict[str, Any]:
        st = self.st
        states: dict[str, int] = {}
        for e in st.jobs.values():
            states[e.state.value] = states.get(e.state.value, 0) + 1
        return {
            "workers": len(st.workers),
            "slots": sum(w.slots for w in st.workers.values()),
            "busy": sum(len(w.running) for w in st.workers.values()),
            "jobs": states,
            **st.counters,
        }
