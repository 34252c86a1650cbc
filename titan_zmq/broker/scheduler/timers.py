"""Timers and gates: delays and backoff, soft affinity running out, fallback waits, approval gates.

Every timer is an item on one of the state's heaps; an item can go stale (the job moved on), so
each is checked against its job when it comes due, never trusted blindly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from titan_zmq.broker.scheduler.state import Entry, Part, fmt_tags
from titan_zmq.errors import BadRequest, Conflict
from titan_zmq.job import JobState


class Timers(Part):
    """What happens at a time: held jobs released, gates rejected, pins and fallback waits expiring."""

    # ---- setting timers --------------------------------------------------------------------

    def hold(self, entry: Entry, until: float) -> None:
        """Keep ``entry`` off the queues until ``until`` (its delay, or its backoff before a retry)."""
        self.st.touch(entry)
        entry.not_before = until
        heapq.heappush(self.st.held, (until, entry.seq, entry.job.id))

    def unpin_after(self, entry: Entry, wait: float) -> None:
        """A softly pinned job may go to any eligible worker after ``wait`` seconds."""
        heapq.heappush(self.st.unpin, (self.st.clock() + wait, entry.seq, entry.job.id))

    def fallback_wait(self, entry: Entry, wait: float) -> None:
        """Fall back if no worker with its tags appears within ``wait`` seconds at its level."""
        heapq.heappush(self.st.fb_waits, (self.st.clock() + wait, entry.seq, entry.job.id, entry.level))

    def await_gate(self, entry: Entry, timeout: float | None) -> None:
        """An approval gate waits for a person's decision, rejected if none comes within ``timeout``."""
        entry.state = JobState.AWAITING
        entry.queued_at = entry.queued_at or self.st.wall()
        entry.not_before = 0.0
        if timeout:
            entry.not_before = self.st.clock() + timeout  # when it is rejected for want of an answer
            heapq.heappush(self.st.gates, (entry.not_before, entry.seq, entry.job.id))

    def next_deadline(self) -> float | None:
        """When the earliest timer is due (monotonic clock), or None when none is set."""
        st = self.st
        due = [h[0][0] for h in (st.held, st.unpin, st.gates, st.fb_waits) if h]
        return min(due) if due else None

    # ---- timers coming due ----------------------------------------------------------------------

    def _due(self, heap: list[Any], now: float) -> Iterator[tuple[Entry | None, Any]]:
        """Pop the items of ``heap`` that are due by ``now``, each with its job (None if forgotten);
        an item may be stale, so the caller checks the job is still in the state the item was for."""
        jobs = self.st.jobs
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            yield jobs.get(item[2]), item

    def release_held(self) -> float | None:
        """Queue jobs whose delay or backoff is over, unpin and fall back what waited long enough;
        return when the next of those timers is due."""
        st = self.st
        now = st.clock()
        for entry, _ in self._due(st.unpin, now):
            if entry is not None and entry.state is JobState.QUEUED and entry.pin is not None and entry.pin_soft:
                entry.pin = None  # waited long enough for its parent's worker: any eligible one will do
                st.queues.enqueue(entry)
        for entry, _ in self._due(st.held, now):
            if (
                entry is not None
                and entry.state in (JobState.QUEUED, JobState.RETRYING)
                and entry.not_before  # a stale item of a job held again later must not release it early
                and entry.not_before <= now
            ):
                st.queues.enqueue(entry)
        for entry, item in self._due(st.fb_waits, now):
            level = item[3]
            if entry is None or entry.state is not JobState.QUEUED or entry.level != level:
                continue
            req = entry.job.level(level)[0]
            if not any(req <= w.tags for w in st.workers.values()):
                st.outcomes.fall_back(entry, f"no worker with tags {fmt_tags(req or {'cpu'})} within its wait")
        nxt = [h[0][0] for h in (st.held, st.unpin, st.fb_waits) if h]
        return min(nxt) if nxt else None

    def expire_gates(self) -> None:
        """Reject approval gates whose time to answer is over."""
        st = self.st
        now = st.clock()
        for e, _ in self._due(st.gates, now):
            if e is not None and e.state is JobState.AWAITING and e.not_before and e.not_before <= now:
                self._decided(e, False, "timeout", f"no decision within {e.job.timeout:g}s")

    # ---- gates ----------------------------------------------------------------------------------

    def decide(self, jid: str, approve: bool, by: str, note: str = "") -> dict[str, Any]:
        """Approve or reject an approval gate (a person's decision, journaled with who made it)."""
        st = self.st
        entry = st.entry(jid)
        if entry.job.kind != "approval":
            raise BadRequest(f"job {jid} is not an approval gate (it is a {entry.job.kind} job)")
        if entry.state is not JobState.AWAITING:
            raise Conflict(f"approval gate {jid} is {entry.state.value}, not awaiting a decision")
        self._decided(entry, approve, by, note)
        return st.records.record(entry)

    def _decided(self, entry: Entry, approve: bool, by: str, note: str) -> None:
        st = self.st
        entry.attempts = 1
        entry.worker_name = None
        entry.result = {"approved": approve, "by": by, "note": note, "at": st.wall()}
        if approve:
            st.outcomes.finish(entry, JobState.SUCCEEDED)
        else:
            entry.error = f"rejected by {by}" + (f": {note}" if note else "")
            entry.error_type = "Rejected"
            st.outcomes.finish(entry, JobState.FAILED)
