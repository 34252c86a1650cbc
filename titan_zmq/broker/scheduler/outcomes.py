"""Outcomes: what a worker's report of an attempt does to its job, the retry and fallback rules,
final states, and forgetting ended jobs.

The retry rule is :meth:`Outcomes.fail_attempt`; the fallback rule :meth:`Outcomes.fall_back`;
everything that ends a job goes through :meth:`Outcomes.finish`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from titan_zmq.aof.records import Forgotten, encode
from titan_zmq.broker.scheduler.state import Entry, Part, WorkerInfo, fmt_tags
from titan_zmq.job import FINAL_STATES, OUTCOMES, JobState, Outcome, backoff_delay
from titan_zmq.objects.codec import REF_KEY

log = logging.getLogger(__name__)

MAX_MISSES = 3  # a job whose content workers fail to store this often fails

_SUCCEEDED = Outcome.SUCCEEDED
_RAN = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMEOUT})  # outcomes whose runtime is a job's


class Outcomes(Part):
    """Results applied; retries, fallbacks, final states."""

    # ---- results --------------------------------------------------------------------------

    def on_result(self, w: WorkerInfo, res: dict[str, Any]) -> str | None:
        """Apply one attempt's outcome from worker ``w``. Returns the id to acknowledge."""
        st = self.st
        get = res.get
        jid = get("id")
        outcome = get("outcome")
        entry = st.jobs.get(jid) if type(jid) is str else None
        lease = get("lease")
        if outcome == _SUCCEEDED and entry is not None and _current(w, entry, lease):
            self.succeeded(w, entry, get("runtime"), get("result"), res)  # the current attempt succeeded
            return jid
        if not isinstance(jid, str) or outcome not in OUTCOMES:
            log.warning("worker %s sent a malformed result %r; dropped", w.name, str(res)[:200])
            return jid if isinstance(jid, str) else None
        if entry is None or entry.worker != w.ident or entry.state is not JobState.RUNNING or lease == entry.lease:
            w.running.discard(jid)  # (an old lease's reply must not free the slot its new lease holds)
        self._observe(w, outcome, get("runtime"))
        st.pool.update(w)
        if entry is None:
            log.warning("worker %s reported job %s, which the broker does not know; acknowledged", w.name, jid)
            return jid
        this_lease = entry.worker == w.ident and lease == entry.lease
        mine = this_lease and entry.state is JobState.RUNNING
        if entry.state in FINAL_STATES:
            if entry.state is JobState.CANCELLED and this_lease:
                st.touch(entry)
                self.set_output(entry, res)
            return jid
        if outcome == Outcome.RETURNED:
            if mine:
                entry.attempts -= 1  # it never started
                entry.worker = entry.worker_name = None
                st.queues.enqueue(entry)
            return jid
        if not mine:
            # A stale attempt: the job was re-queued or leased elsewhere meanwhile. A success still
            # counts (the work is done, so it is not run again); a failure yields to the newer attempt.
            if outcome != _SUCCEEDED:
                return jid
            self._supersede(entry)
        self.set_output(entry, res)
        entry.worker_name = w.name
        _started(entry, get("runtime"), st.wall)
        self._apply(w, entry, Outcome(outcome), res)
        return jid

    def on_success(self, w: WorkerInfo, jid: Any, lease: Any, runtime: Any, result: Any) -> str | None:
        """:meth:`on_result` for a success with no output or exit code to record (the worker sends
        those as ``[id, lease, runtime, result]``). Returns the id to acknowledge."""
        entry = self.st.jobs.get(jid) if type(jid) is str else None
        if entry is not None and _current(w, entry, lease):
            self.succeeded(w, entry, runtime, result, None)
            return jid
        res = {"id": jid, "lease": lease, "outcome": _SUCCEEDED.value, "runtime": runtime, "result": result}
        return self.on_result(w, res)

    def succeeded(self, w: WorkerInfo, entry: Entry, runtime: Any, result: Any, res: dict[str, Any] | None) -> None:
        """The current attempt of a running job succeeded; ``res`` holds its output and exit code, if any."""
        w.running.discard(entry.job.id)
        if isinstance(runtime, (int, float)):
            w.observe(runtime, self.st.prefetch_below)
            self.st.ranks.learn(entry.job.target, runtime)
            if self.st.runtime_hist is not None:
                self.st.runtime_hist.observe(runtime)
        self.st.pool.update(w)
        self.set_output(entry, res)
        entry.worker_name = w.name
        _started(entry, runtime, self.st.wall)
        if entry.fetched:  # the copies its inputs left on w: another holder of each
            self.st.directory.copied(w, entry.fetched)
        self._success(w, entry, result)

    @staticmethod
    def set_output(entry: Entry, res: dict[str, Any] | None) -> None:
        """Record an attempt's exit code and output (none, for a bare success); the caller goes on to
        change the job's state, or touches it."""
        if res is None:
            entry.exit_code, entry.stdout, entry.stderr = None, "", ""
            return
        get = res.get
        entry.exit_code = get("exit_code")
        entry.stdout = get("stdout") or ""
        entry.stderr = get("stderr") or ""
        entry.fetched = get("fetched")

    def _observe(self, w: WorkerInfo, outcome: str, runtime: Any) -> None:
        below = self.st.prefetch_below
        if outcome == Outcome.RETURNED:  # jobs there got long: close its window until they are short again
            w.ewma = max(w.ewma or 0.0, below)
            w.adapt(below)
        elif isinstance(runtime, (int, float)) and outcome in _RAN:
            w.observe(runtime, below)

    def _supersede(self, entry: Entry) -> None:
        """A stale attempt succeeded: stop the newer lease, which need not run any more."""
        st = self.st
        if entry.state is JobState.RUNNING and entry.worker is not None and entry.worker in st.workers:
            other = st.workers[entry.worker]
            other.running.discard(entry.job.id)
            st.pool.update(other)
            st.fx.add_kill(other.ident, entry.job.id, entry.lease)

    def _apply(self, w: WorkerInfo, entry: Entry, outcome: Outcome, res: dict[str, Any]) -> None:
        """An attempt's outcome, other than returned, on a job that has not ended."""
        if outcome is Outcome.SUCCEEDED:
            self._success(w, entry, res.get("result"))
        elif outcome is Outcome.CACHE_MISS:
            if entry.job.blob is not None:
                w.cached.discard(entry.job.blob)
            self.missed(entry, "CacheMiss", f"workers could not store its content {entry.misses + 1} times "
                        "(is a disk full?)")  # fmt: skip
        elif outcome is Outcome.INPUT_LOST:
            self._input_lost(w, entry, res)
        elif outcome is Outcome.INTERRUPTED:
            self.interrupted(entry, w.name)
        elif outcome is Outcome.CANCELLED:
            entry.error = res.get("error") or "cancelled on the worker"
            self.finish(entry, JobState.CANCELLED)
        else:
            w.failed += 1
            entry.error = res.get("error") or outcome.value
            entry.error_type = res.get("error_type") or ("Timeout" if outcome is Outcome.TIMEOUT else "Error")
            entry.traceback = res.get("traceback")
            self.fail_attempt(entry)

    def _input_lost(self, w: WorkerInfo, entry: Entry, res: dict[str, Any]) -> None:
        """The worker could not fetch some of the job's objects: the holders it tried no longer count
        as holders (they re-announce what they hold when they join), and the job is queued again, its
        inputs made again where no holder is left. Not counted as an attempt, at most MAX_MISSES times."""
        lost = res.get("lost")
        for oid, holders in (lost.items() if isinstance(lost, dict) else ()):
            self.st.directory.not_held(oid, holders)
        self.missed(entry, "InputLost", f"its input objects could not be fetched {entry.misses + 1} times: "
                    f"{res.get('error')}")  # fmt: skip

    def missed(self, entry: Entry, kind: str, why: str) -> None:
        """The worker lacked what the job needs (its content, its inputs): queued again without
        counting an attempt, or failed with ``why`` after MAX_MISSES of them."""
        entry.misses += 1
        entry.worker = None
        if entry.misses > MAX_MISSES:
            entry.error, entry.error_type = why, kind
            self.finish(entry, JobState.FAILED)
            return
        entry.attempts -= 1
        self.st.queues.enqueue(entry)

    def _success(self, w: WorkerInfo, entry: Entry, result: Any) -> None:
        w.done += 1
        if type(result) is dict and (REF_KEY in result or "outputs" in result):  # kept on w: the broker has references
            self.st.directory.produced(entry, w, result)
        entry.result = result
        entry.error = entry.error_type = entry.traceback = None
        self.finish(entry, JobState.SUCCEEDED)

    def interrupted(self, entry: Entry, worker: str) -> None:
        """Its worker stopped the attempt cleanly while shutting down: queue it again (not counted as lost)."""
        entry.error = f"attempt {entry.attempts} interrupted: worker {worker} shut down"
        entry.worker = None
        self.st.queues.enqueue(entry)

    # ---- the retry and fallback rules -----------------------------------------------------------

    def fail_attempt(self, entry: Entry) -> None:
        """An attempt failed: retry after a backoff while retries are left at this level, then fall
        back to the next level, then fail (``dead`` when it had retries)."""
        st = self.st
        tries = entry.attempts - entry.fb_base
        if tries <= entry.job.retries:
            st.counters["retried"] += 1
            entry.state = JobState.RETRYING
            entry.worker = None
            st.timers.hold(entry, st.clock() + backoff_delay(entry.job.backoff, tries, st.rng))
        elif entry.level < len(entry.job.fallback):
            self.fall_back(entry, f"failed: {entry.error}")
        else:
            self.finish(entry, JobState.DEAD if entry.job.retries else JobState.FAILED)

    def fall_back(self, entry: Entry, why: str) -> None:
        """Queue the job again under its next fallback's requirements (its retries count afresh)."""
        entry.level += 1
        entry.fb_base = entry.attempts
        entry.worker = None
        req, _timeout, _ = entry.job.level(entry.level)
        entry.error = f"at level {entry.level - 1} {why}; fallback {entry.level}: requires {fmt_tags(req or {'cpu'})}"
        log.info("job %s falls back: %s", entry.job.id, entry.error)
        self.st.queues.enqueue(entry)

    def lost(self, e: Entry, name: str, how: str = "") -> None:
        """Its worker was lost during the attempt: queue it again, or ``dead`` past ``max_lost``."""
        st = self.st
        e.lost += 1
        e.worker = None
        e.error = f"worker {name} was lost during attempt {e.attempts}" + (f" {how}" if how else "")
        e.error_type = "WorkerLost"
        if e.lost > st.max_lost:
            e.error = f"worker lost {e.lost} times while running this job (max_lost={st.max_lost})"
            self.finish(e, JobState.DEAD)
        else:
            st.queues.enqueue(e)

    # ---- ending -----------------------------------------------------------------------------------

    def finish(self, entry: Entry, state: JobState, propagate: bool = True) -> None:
        """End a job: its final state, its watchers told, its children released or cancelled."""
        st = self.st
        st.touch(entry)
        owner = entry.owner
        if owner is not None:  # it no longer counts against its client's limit
            left = st.pending.get(owner, 1) - 1
            if left > 0:
                st.pending[owner] = left
            else:
                st.pending.pop(owner, None)
            entry.owner = None
        entry.state = state
        entry.finished_at = st.wall()
        entry.not_before = 0.0
        if state is JobState.SUCCEEDED:
            st.counters["succeeded"] += 1
        elif state is not JobState.CANCELLED:
            st.counters["failed"] += 1
        if entry.job.blob is not None and state is JobState.SUCCEEDED:
            st.release_blob(entry.job.blob)  # a job that did not succeed keeps it: it may run again
        if entry.watchers:
            fx = st.fx
            full = None
            ok = state is JobState.SUCCEEDED
            for ident in entry.watchers:
                if ok and ident == entry.lean:  # id and result only, for the map that asked for that
                    fx.ok.setdefault(ident, []).append([entry.job.id, entry.result])
                    continue
                full = full or st.records.final_record(entry)
                fx.done.setdefault(ident, []).append(full)
            entry.watchers = None
            entry.lean = None
        st.finished.append(entry.job.id)
        entry.inputs = None
        if st.owned and entry.job.dag:
            st.directory.job_ended(entry)
        if propagate and entry.children:
            st.graph.release_children(entry)
        while len(st.finished) > st.max_finished:
            self.forget(st.finished.popleft())

    # ---- service nodes --------------------------------------------------------------------------

    def service_up(self, entry: Entry, result: dict[str, Any]) -> None:
        """A service node's service passed its health check: the node succeeded, its result the address."""
        if entry.state is JobState.RUNNING:
            entry.result = result
            entry.error = entry.error_type = None
            self.finish(entry, JobState.SUCCEEDED)

    def service_failed(self, entry: Entry, why: str) -> None:
        """A service node's service could not become healthy: the node failed (its descendants cancel)."""
        if entry.state is JobState.RUNNING:
            entry.error, entry.error_type = why, "ServiceFailed"
            self.finish(entry, JobState.FAILED)

    def cancel(self, jid: str) -> dict[str, Any]:
        """Cancel a job (its process tree is killed where it runs), or every unfinished job of a DAG."""
        st = self.st
        if jid not in st.jobs and jid in st.dags:
            return st.graph.cancel_dag(jid)
        entry = st.entry(jid)
        if entry.state in FINAL_STATES:
            return st.records.record(entry)
        if entry.state is JobState.RUNNING and entry.worker is not None:
            st.fx.add_kill(entry.worker, jid, entry.lease)
        elif entry.state is JobState.RUNNING and entry.job.kind == "service" and st.service_nodes is not None:
            st.service_nodes.cancel(entry)
        entry.error = "cancelled by request"
        self.finish(entry, JobState.CANCELLED)
        return st.records.record(entry)

    def forget(self, jid: str) -> None:
        """Drop an ended job from memory (the oldest go first, past ``max_finished``)."""
        st = self.st
        old = st.jobs.pop(jid, None)
        if old is None:
            return
        st.journal(encode(Forgotten(jid)))
        if st.owned and f"job:{jid}" in st.owned:
            st.directory.release_owner(f"job:{jid}")
        if old.job.blob is not None and old.state is not JobState.SUCCEEDED:
            st.release_blob(old.job.blob)
        key = old.job.idempotency_key
        if key is not None and st.idempotency.get(key) == jid:
            del st.idempotency[key]
        if old.job.dag is not None:
            members = st.dags.get(old.job.dag)
            if members is not None:
                members.pop(jid, None)
                if not members:
                    del st.dags[old.job.dag]
                    st.dag_order.pop(old.job.dag, None)


def _current(w: WorkerInfo, entry: Entry, lease: Any) -> bool:
    """Whether a report from ``w`` about ``lease`` is about ``entry``'s running attempt."""
    return entry.state is JobState.RUNNING and entry.worker == w.ident and lease == entry.lease


def _started(entry: Entry, runtime: Any, wall: Callable[[], float]) -> None:
    """It may have waited in the worker's prefetch queue: it started ``runtime`` ago."""
    if isinstance(runtime, (int, float)) and runtime >= 0:
        entry.started_at = max(entry.started_at or 0.0, wall() - runtime)
