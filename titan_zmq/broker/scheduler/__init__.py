"""The scheduler: the job table, ready queues by capability, placement, retries and leases.

It holds no sockets. The broker loop feeds it decoded messages and sends what it returns, so
every rule here is testable with a fake clock and no network. It is one shared :class:`State`
and nine parts, each of one responsibility, each in its own module:

==============  =======================================================================
``admission``   submissions checked whole (ids, content, limits, the graph), accepted
``graph``       parents and children, edges added at run time, conditions, DAG cancel
``timers``      delays and backoff, soft pins, fallback waits, approval gates
``dispatch``    ready queues, leases, the choice of worker
``outcomes``    results, the retry and fallback rules, final states, forgetting
``membership``  workers joining, heartbeats, lost or leaving, orphans after a restart
``records``     what queries, watchers and the stats feed are shown
``rerun``       ended jobs run again: the dead-letter list, a DAG retried from its failures
``objects``     the object directory: holders, owners and lifetime, lineage, locality
==============  =======================================================================

The :class:`Scheduler` is the state with its parts wired to it; its public methods are the
parts' own (bound once here, so a call costs no extra frame).
"""

from __future__ import annotations

from titan_zmq.broker.scheduler.admission import Admission
from titan_zmq.broker.scheduler.dispatch import Dispatch
from titan_zmq.broker.scheduler.graph import Graph
from titan_zmq.broker.scheduler.membership import Membership
from titan_zmq.broker.scheduler.objects import Objects
from titan_zmq.broker.scheduler.outcomes import Outcomes
from titan_zmq.broker.scheduler.pool import Pool
from titan_zmq.broker.scheduler.ranks import Ranks
from titan_zmq.broker.scheduler.records import Records
from titan_zmq.broker.scheduler.rerun import Rerun
from titan_zmq.broker.scheduler.state import Effects, Entry, State, WorkerInfo, state_op
from titan_zmq.broker.scheduler.timers import Timers

__all__ = ["Effects", "Entry", "Scheduler", "State", "WorkerInfo", "state_op"]


class Scheduler(State):
    """Jobs, queues and workers; the rules of dispatch, retry and failure."""

    def _wire(self) -> None:
        """Make the parts and bind their public methods here (called by ``State.__init__``)."""
        self.admission = Admission(self)
        self.graph = Graph(self)
        self.timers = Timers(self)
        self.queues = Dispatch(self)
        self.outcomes = Outcomes(self)
        self.membership = Membership(self)
        self.records = Records(self)
        self.rerun = Rerun(self)
        self.directory = Objects(self)
        self.ranks = Ranks(self)
        self.pool = Pool(self)
        # admission
        self.submit = self.admission.submit
        self.submit_items = self.admission.submit_items
        # graph
        self.add_edge = self.graph.add_edge
        self.cancel_dag = self.graph.cancel_dag
        # timers and gates
        self.release_held = self.timers.release_held
        self.expire_gates = self.timers.expire_gates
        self.decide = self.timers.decide
        self.next_deadline = self.timers.next_deadline
        # dispatch
        self.dispatch = self.queues.dispatch
        self.queued_count = self.queues.queued_count
        # outcomes
        self.on_result = self.outcomes.on_result
        self.on_success = self.outcomes.on_success
        self.cancel = self.outcomes.cancel
        self.forget = self.outcomes.forget
        # membership
        self.worker_ready = self.membership.worker_ready
        self.worker_gone = self.membership.worker_gone
        self.seen = self.membership.seen
        self.beat = self.membership.beat
        self.expire_workers = self.membership.expire_workers
        self.expire_orphans = self.membership.expire_orphans
        # running ended jobs again
        self.retry = self.rerun.retry
        # records
        self.record = self.records.record
        self.final_record = self.records.final_record
        self.waiting_reason = self.records.waiting_reason
        self.watch = self.records.watch
        self.list_jobs = self.records.list_jobs
        self.dag_records = self.records.dag_records
        self.pressure = self.records.pressure
        self.stats = self.records.stats

    @property
    def fast_paths(self) -> bool:
        """Whether the short paths for plain jobs and a lone ready queue are taken (tests turn them
        off to check that they end exactly where the general paths do)."""
        return self.admission.fast_paths

    @fast_paths.setter
    def fast_paths(self, on: bool) -> None:
        self.admission.fast_paths = on
        self.queues.fast_paths = on
