"""Running ended jobs again: the dead-letter list requeued (``titan dead --requeue``), a DAG retried
from its failed jobs on (``titan retry DAG [--from JOB]``), keeping the results of the jobs that
succeeded, as Airflow's "clear downstream" does.

A job run again keeps its id, its spec and its count of attempts (its retries count afresh);
its outcome, output and timestamps are cleared, and it waits for its parents as a new job would.
"""

from __future__ import annotations

from typing import Any

from titan_zmq.broker.scheduler.state import Entry, Part
from titan_zmq.errors import BadRequest, Conflict, UnknownJob
from titan_zmq.job import FINAL_STATES, JobState


class Rerun(Part):
    """Ended jobs, reset and wired again."""

    def retry(self, ids: list[str], dag: str | None = None, from_job: str | None = None) -> dict[str, Any]:
        """Run again: the jobs ``ids`` with the jobs cancelled because of them; or the jobs of ``dag``
        that did not succeed; or, with ``from_job``, that job and every job after it in its DAG.
        Returns the records of the jobs that run again."""
        st = self.st
        if dag is not None:
            members = st.dags.get(dag)
            if members is None:
                raise UnknownJob(f"unknown DAG id {dag!r}")
            if from_job is not None:
                if from_job not in members:
                    raise BadRequest(f"job {from_job!r} is not part of DAG {dag!r}")
                chosen = self._downstream([from_job])
            else:
                chosen = {j for j in members if j in st.jobs and st.jobs[j].state not in (JobState.SUCCEEDED,)}
        elif ids:
            for jid in ids:
                st.entry(jid)
            chosen = self._downstream(ids, only_unsucceeded=True)
        else:
            raise BadRequest("say what to run again: job ids, or a DAG (and where in it to start)")
        entries = [st.jobs[j] for j in chosen if j in st.jobs]
        busy = [e.job.id for e in entries if e.state not in FINAL_STATES]
        if busy:
            raise Conflict(f"cannot run again what has not ended: {', '.join(sorted(busy)[:10])}; "
                           "wait for it, or cancel it first")  # fmt: skip
        for e in entries:
            sha = e.job.blob
            if sha is not None and sha not in st.blobs:  # (only a job that succeeded lets its content go)
                raise Conflict(f"job {e.job.id}: its content is no longer kept by the broker; submit it again")
        order = sorted(entries, key=lambda e: e.seq)
        for e in order:
            self._reset(e)
        for e in _parents_first(order):
            st.graph.wire_parents(e)
        return {"records": [st.records.record(e) for e in order]}

    def again(self, e: Entry, then: str | None = None) -> None:
        """Run one ended job again (lineage: to remake an object it made); ``then`` waits for it."""
        self._reset(e)
        if then is not None:
            e.children = [then]
        self.st.graph.wire_parents(e)

    def _downstream(self, roots: list[str], only_unsucceeded: bool = False) -> set[str]:
        """``roots`` and the jobs after them (with ``only_unsucceeded``, only those that did not succeed)."""
        st = self.st
        children: dict[str, list[str]] = {}  # of every known job: a child may be in another DAG, or in none
        for e in st.jobs.values():
            for p in e.job.depends_on:
                children.setdefault(p, []).append(e.job.id)
        out: set[str] = set()
        work = list(roots)
        while work:
            jid = work.pop()
            if jid in out:
                continue
            node = st.jobs.get(jid)
            if node is None or (only_unsucceeded and node.state is JobState.SUCCEEDED):
                continue
            out.add(jid)
            work.extend(children.get(jid, ()))
        return out

    def _reset(self, e: Entry) -> None:
        st = self.st
        st.touch(e)
        if e.job.dag:
            st.dag_left.pop(e.job.dag, None)  # counted again when one of its jobs ends
        try:
            st.finished.remove(e.job.id)  # it must not be forgotten while it runs again
        except ValueError:
            pass
        sha = e.job.blob
        if sha is not None and e.state is JobState.SUCCEEDED:  # it had let its content go: hold it again
            st.blobs[sha][1] += 1
        for p in e.job.depends_on:  # a parent still running lists it from its first wiring: wire it once
            parent = st.jobs.get(p)
            if parent is not None and parent.children:
                parent.children = [c for c in parent.children if c != e.job.id] or None
        e.fb_base = e.attempts  # its retries count afresh
        e.level = e.lost = e.misses = 0
        e.result = e.error = e.error_type = e.traceback = e.exit_code = None
        e.stdout = e.stderr = ""
        e.started_at = e.finished_at = e.queued_at = None
        e.worker = e.worker_name = None
        e.not_before = 0.0
        e.pin, e.pin_soft = e.job.node, False
        e.children = None
        e.state = JobState.PENDING


def _parents_first(entries: list[Entry]) -> list[Entry]:
    """``entries`` ordered so that each comes after those of its parents among them (edges may have
    been added at run time, so submission order alone does not tell)."""
    by_id = {e.job.id: e for e in entries}
    done: set[str] = set()
    out: list[Entry] = []

    def visit(e: Entry) -> None:
        stack = [(e, iter(e.job.depends_on))]
        while stack:
            cur, parents = stack[-1]
            nxt = next((p for p in parents if p in by_id and p not in done), None)
            if nxt is not None:
                done.add(nxt)
                stack.append((by_id[nxt], iter(by_id[nxt].job.depends_on)))
                continue
            stack.pop()
            out.append(cur)

    for e in entries:
        if e.job.id not in done:
            done.add(e.job.id)
            visit(e)
    return out
