"""The graph: parents and children, edges added at run time, conditions, and a DAG's cancel.

Wiring is level-triggered: a parent that ended before its child arrived counts at once; the
others tell the child when they end (:meth:`Graph.release_children`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from titan_zmq.aof.records import Edge, encode
from titan_zmq.broker.scheduler.state import Entry, Part
from titan_zmq.errors import Conflict, ExprError, JobError, UnknownJob
from titan_zmq.job import FINAL_STATES, RUN_NOWHERE, JobState


def _passes(parent: Entry) -> bool:
    """Whether an ended ``parent`` lets its children run (it succeeded, or fails with ``on_failure: continue``)."""
    return parent.state is JobState.SUCCEEDED or parent.job.on_failure == "continue"


def _input_of(parent: Entry) -> Any:
    """What an ended parent gives its children: its result, or None if it did not succeed."""
    return parent.result if parent.state is JobState.SUCCEEDED else None


class Graph(Part):
    """Edges between jobs and what they release."""

    def start(self, entry: Entry) -> None:
        """A job with nothing left to wait for: hold it for its delay, else queue it (or skip it,
        when its condition on its parents' results is false)."""
        st = self.st
        job = entry.job
        if job.when is not None:
            from titan_zmq.expr import evaluate

            try:
                go = evaluate(job.when, entry.inputs or {})
            except ExprError as exc:
                entry.error, entry.error_type = str(exc), "ConditionError"
                st.outcomes.finish(entry, JobState.FAILED)
                return
            if not go:
                entry.error = f"skipped: its condition is false ({job.when})"
                entry.error_type = "Skipped"
                st.outcomes.finish(entry, JobState.CANCELLED)
                return
        if job.affinity is not None and entry.pin is None:
            for p in job.depends_on:  # where its (first placed) parent ran
                parent = st.jobs.get(p)
                if parent is not None and parent.worker_name:
                    entry.pin = parent.worker_name
                    entry.pin_soft = job.affinity == "parent"
                    break
        if job.delay > 0:
            entry.state = JobState.QUEUED
            st.timers.hold(entry, st.clock() + job.delay)
        else:
            st.queues.enqueue(entry)

    def wire_parents(self, entry: Entry, known: dict[str, Any] | None = None) -> None:
        """Level-triggered: parents that already ended count now; the others will tell it when they end.

        ``known``: parents' results already taken (after a restart, from the journal: such a parent
        may have been forgotten since)."""
        st = self.st
        entry.state = JobState.PENDING
        entry.inputs = dict(known) if known else {}
        waiting = 0
        doomed = None
        for p in entry.job.depends_on:
            if p in entry.inputs:
                continue
            parent = st.jobs.get(p)
            if parent is None:
                entry.error = f"upstream job {p} is no longer known to the broker (max_finished_jobs)"
                st.outcomes.finish(entry, JobState.CANCELLED)
                return
            if parent.state in FINAL_STATES:
                if _passes(parent):
                    entry.inputs[p] = _input_of(parent)
                elif doomed is None:
                    doomed = parent
            else:
                waiting += 1
                self._wait_for(parent, entry)
        entry.waiting_on = waiting
        if doomed is not None:
            self._doom(entry, doomed)
        elif waiting == 0:
            self.start(entry)

    @staticmethod
    def _wait_for(parent: Entry, child: Entry) -> None:
        if parent.children is None:
            parent.children = []
        parent.children.append(child.job.id)

    def _doom(self, child: Entry, parent: Entry, propagate: bool = True) -> None:
        """``parent`` ended without letting its children run: cancel ``child``."""
        child.error = f"upstream job {parent.job.id} {parent.state.value}"
        if parent.job.kind in RUN_NOWHERE and parent.error:  # a gate's rejection, a service's failure: say why
            child.error += f" ({parent.error})"
        self.st.outcomes.finish(child, JobState.CANCELLED, propagate=propagate)

    def release_children(self, entry: Entry) -> None:
        """A job ended: release or cancel what waited on it, down the graph (iteratively: chains can be long)."""
        st = self.st
        work = [entry]
        while work:
            done = work.pop()
            kids, done.children = done.children, None
            if not kids:
                continue
            ok = _passes(done)
            for cid in kids:
                child = st.jobs.get(cid)
                if child is None or child.state is not JobState.PENDING:
                    continue
                if ok:
                    if child.inputs is not None:
                        child.inputs[done.job.id] = _input_of(done)
                    st.touch(child)  # its inputs changed: journal them (the parent may be forgotten)
                    child.waiting_on -= 1
                    if child.waiting_on <= 0:
                        self.start(child)
                else:
                    self._doom(child, done, propagate=False)
                    work.append(child)

    def add_edge(self, parent: str, child: str) -> dict[str, Any]:
        """Make ``child`` wait for ``parent`` as well. The child must not have started; no cycle."""
        st = self.st
        p, c = st.entry(parent), st.entry(child)
        if c.state not in (JobState.PENDING, JobState.QUEUED) or c.lease:
            raise Conflict(f"cannot add an edge into job {child}: it is {c.state.value} "
                           f"{'(it ran before)' if c.lease else ''}".rstrip())  # fmt: skip
        if parent == child or parent in c.job.depends_on:
            raise Conflict(f"job {child} already depends on {parent}" if parent != child else
                           f"job {child} cannot depend on itself")  # fmt: skip
        seen, work = set(), [parent]  # is the child an ancestor of the parent?
        while work:
            jid = work.pop()
            if jid == child:
                raise JobError(f"an edge {parent} -> {child} closes a cycle: {child} is an ancestor of {parent}")
            if jid not in seen:
                seen.add(jid)
                anc = st.jobs.get(jid)
                if anc is not None:
                    work.extend(anc.job.depends_on)
        st.journal(encode(Edge(parent, child)))
        self._edge(p, c)
        return st.records.record(c)

    def _edge(self, p: Entry, c: Entry) -> None:
        c.job = dataclasses.replace(c.job, depends_on=(*c.job.depends_on, p.job.id))
        c.wire = None  # its fields are no longer its template's
        self.st.touch(c)
        if c.state is JobState.QUEUED:  # its queue item goes stale: it waits on this parent now
            c.not_before = 0.0
            self.wire_parents(c, dict(c.inputs or {}) or None)
            self.st.ranks.raise_parents(c)
            return
        if c.inputs is None:
            c.inputs = {}
        if p.state in FINAL_STATES:
            if _passes(p):
                c.inputs[p.job.id] = _input_of(p)
            else:
                self._doom(c, p)
        else:
            c.waiting_on += 1
            self._wait_for(p, c)
            self.st.ranks.raise_parents(c)  # the parent's path to the end now runs through the child

    def cancel_dag(self, dag_id: str) -> dict[str, Any]:
        """Cancel every job of a DAG that has not ended. Returns the DAG's records."""
        st = self.st
        members = st.dags.get(dag_id)
        if members is None:
            raise UnknownJob(f"unknown job or DAG id {dag_id!r}")
        for jid in list(members):
            e = st.jobs.get(jid)
            if e is not None and e.state not in FINAL_STATES:
                st.outcomes.cancel(jid)
        return {"dag": dag_id, "records": st.records.dag_records(dag_id)}
