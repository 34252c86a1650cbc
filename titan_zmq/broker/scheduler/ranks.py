"""Critical-path ranks: which ready job of a DAG goes first.

A job's *rank* is the longest path from it to its DAG's end, each job on the path weighted by its
expected runtime: its ``estimate`` hint, else what jobs of its target took (learned here, an
average per target), else one unit (the mean of what is known, or 1 s when nothing is). Among
ready jobs of equal priority, a DAG's jobs go out highest rank first (``Dispatch.push``); DAGs
and plain jobs keep their arrival order among themselves (a job's ``order``: its DAG's first
sequence number, or its own).

Ranks are computed when a batch is admitted, children first over the batch's graph
(:meth:`Ranks.of_batch`), and raised up the ancestors when a running DAG grows (a spawned job,
an added edge: :meth:`Ranks.raise_parents`); a queued ancestor whose rank rose is queued again
under its new rank. After a restart every unfinished job's rank is computed afresh
(:meth:`Ranks.rebuild`). Ranks only grow: a child that ended leaves its parent's rank as it was,
which no longer matters since a job is ranked only while it waits to be leased.
"""

from __future__ import annotations

from collections.abc import Iterable

from titan_zmq.broker.scheduler.state import Entry, Part, State
from titan_zmq.job import FINAL_STATES, Job, JobState

EWMA = 0.3  # weight of the newest runtime in a target's average
MAX_TARGETS = 10_000  # targets whose runtimes are remembered (least recently run forgotten first)
UNIT = 1.0  # a job's weight when nothing is known of any runtime


class Ranks(Part):
    """Expected runtimes per target, and the ranks of jobs."""

    def __init__(self, st: State) -> None:
        super().__init__(st)
        self.runtimes: dict[str, float] = {}  # target -> average runtime (insertion order: oldest first)
        self._mean = UNIT

    def learn(self, target: str, runtime: float) -> None:
        """A job of ``target`` ran ``runtime`` seconds."""
        rt = self.runtimes
        old = rt.get(target)
        if old is not None:
            rt[target] = old + EWMA * (runtime - old)
        else:
            if len(rt) >= MAX_TARGETS:
                del rt[next(iter(rt))]  # the target first learned goes first
            rt[target] = runtime
            if len(rt) == 1:
                self._mean = runtime
        self._mean += EWMA * (runtime - self._mean)

    def long(self, job: Job) -> bool:
        """Whether ``job`` is expected to run too long to wait in a worker's prefetch window: its hint,
        or what its target took, says so (with nothing known, the worker's own average decides)."""
        known = job.estimate if job.estimate is not None else self.runtimes.get(job.target)
        return known is not None and known >= self.st.prefetch_below

    def estimate(self, job: Job) -> float:
        """The runtime expected of ``job``: its hint, its target's average, or the unit."""
        if job.estimate is not None:
            return job.estimate
        return self.runtimes.get(job.target, self._mean)

    def of_batch(self, jobs: list[Job]) -> dict[str, float]:
        """The ranks of a batch ordered parents first (``check_graph``'s order), over the edges inside
        it. Existing parents outside the batch are raised later, once the batch is in
        (:meth:`raise_parents`)."""
        kids: dict[str, list[str]] = {}
        for job in jobs:
            for p in job.depends_on:
                kids.setdefault(p, []).append(job.id)
        rank: dict[str, float] = {}
        est = self.estimate
        for job in reversed(jobs):
            below = kids.get(job.id)
            rank[job.id] = est(job) + (max(rank[c] for c in below) if below else 0.0)
        return rank

    def raise_parents(self, child: Entry) -> None:
        """``child`` now waits on its parents: raise each unfinished ancestor's rank to cover it,
        and queue again (under its new rank) an ancestor that was waiting in a ready queue."""
        jobs = self.st.jobs
        work = [child]
        while work:
            e = work.pop()
            for p in e.job.depends_on:
                parent = jobs.get(p)
                if parent is None or parent.state in FINAL_STATES:
                    continue
                new = self.estimate(parent.job) + e.rank
                if new <= parent.rank:
                    continue
                parent.rank = new
                if parent.state is JobState.QUEUED and parent.queue is not None and not parent.not_before:
                    self.st.queues.requeue(parent)
                work.append(parent)

    def rebuild(self, entries: Iterable[Entry]) -> None:
        """Rank every unfinished job afresh (after a replay), children first."""
        live = {e.job.id: e for e in entries if e.state not in FINAL_STATES}
        kids: dict[str, list[Entry]] = {}
        indeg = dict.fromkeys(live, 0)
        for e in live.values():
            for p in e.job.depends_on:
                if p in live:
                    kids.setdefault(p, []).append(e)
                    indeg[p] += 1  # counted from the children's side: leaves first
        ready = [jid for jid, n in indeg.items() if n == 0]
        while ready:
            e = live[ready.pop()]
            below = kids.get(e.job.id)
            e.rank = self.estimate(e.job) + (max(c.rank for c in below) if below else 0.0)
            for p in e.job.depends_on:
                if p in indeg:
                    indeg[p] -= 1
                    if indeg[p] == 0:
                        ready.append(p)
