"""Dispatch: ready queues by placement, leases, and the choice of worker.

A ready queue holds the jobs that need the same tags (and pin); within it, higher priority
first, then arrival (a DAG's jobs arrive with their DAG), then the critical path (``ranks.py``),
then FIFO. Each turn leases the best head among the queues that have a free eligible worker to
the least loaded of those workers. A job expected to run long never waits in a worker's prefetch
window: it goes to a free slot, or waits for one. Queue items go stale (a job cancelled, held or
queued again); :meth:`Dispatch.live` is the one test of whether an item still stands.
"""

from __future__ import annotations

import heapq

from titan_zmq.broker.scheduler.pool import load_key
from titan_zmq.broker.scheduler.state import Entry, Part, QueueItem, QueueKey, WorkerInfo
from titan_zmq.job import RUN_NOWHERE, JobState
from titan_zmq.objects.codec import REF_KEY


def least_loaded(ws: list[WorkerInfo], blob: str | None) -> WorkerInfo:
    """Where a job whose content is ``blob`` goes among ``ws`` (see :func:`load`)."""
    w = ws[0]
    best = load(w, blob)
    for x in ws[1:]:
        k = load(x, blob)
        if k < best:
            w, best = x, k
    return w


def load(w: WorkerInfo, blob: str | None) -> tuple[float, bool, int, int]:
    """How busy ``w`` is, for placing a job whose content is ``blob``: least loaded first (the pool's
    order, :func:`~titan_zmq.broker.scheduler.pool.load_key`); among equals, one that already holds
    the content, then one with fewer jobs held and done."""
    share, held, done = load_key(w)
    return share, blob is not None and blob not in w.cached, held, done


def _item(entry: Entry) -> QueueItem:
    """``entry``'s item on its ready queue (see QueueItem)."""
    return -entry.job.priority, entry.order, -entry.rank, entry.seq, entry.job.id


class Dispatch(Part):
    """Ready queues and leases."""

    fast_paths = True  # tests turn the lone-queue path off to check it ends where the general one does

    # ---- queues ---------------------------------------------------------------------------

    def enqueue(self, entry: Entry) -> None:
        """Queue a job that may run now (a gate instead waits for its person)."""
        st = self.st
        st.touch(entry)
        if entry.job.kind in RUN_NOWHERE:
            self._run_nowhere(entry)
            return
        entry.state = JobState.QUEUED
        entry.not_before = 0.0
        entry.queued_at = st.wall()
        requires, _, wait = entry.job.level(entry.level)
        if wait is not None and entry.level < len(entry.job.fallback):
            st.timers.fallback_wait(entry, wait)
        if (entry.refs or entry.inputs) and self._by_inputs(entry):
            return
        if entry.pin is not None and entry.pin_soft:
            st.timers.unpin_after(entry, entry.job.affinity_wait)
        self.push(entry, (requires, entry.pin))

    def _by_inputs(self, entry: Entry) -> bool:
        """A job that receives objects: if some were lost with every holder, it waits for them to be
        made again; otherwise it is pinned, softly, to the worker that holds most of their bytes (for
        at most ``locality_wait``). True when that took care of it; False: queue it as usual."""
        st = self.st
        directory = st.directory
        if entry.job.files:
            absent = [n for n, r in directory.input_files(entry).items() if r is None]
            if absent:
                name = absent[0]
                parent, path = entry.job.files[name]
                entry.error = f"input file {name}: job {parent} published no output {path!r} (list it in its outputs)"
                entry.error_type = "InputMissing"
                st.outcomes.finish(entry, JobState.FAILED)
                return True
        lost = directory.missing(entry)
        if lost:
            if st.clock() < st.holders_settle:  # a restarted broker: their workers may not have joined yet
                st.timers.hold(entry, st.holders_settle)
                return True
            directory.remake(entry, lost)
            return True
        if entry.pin is None and not entry.placed and st.locality_wait > 0:
            entry.placed = True  # once an attempt: an unpinned job is not pinned again
            best = directory.place(entry)
            if best is not None:
                entry.pin, entry.pin_soft = best, True
                st.timers.unpin_after(entry, st.locality_wait)
                self.push(entry, (entry.job.level(entry.level)[0], best))
                return True
        return False

    def _run_nowhere(self, entry: Entry) -> None:
        """A gate waits for a person; a service node deploys its service and waits for it to be healthy."""
        st = self.st
        if entry.job.kind == "approval":
            st.timers.await_gate(entry, entry.job.timeout)
            return
        entry.state = JobState.RUNNING
        entry.not_before = 0.0
        entry.attempts += 1
        entry.queued_at = entry.queued_at or st.wall()
        entry.started_at = st.wall()
        if st.service_nodes is None:
            entry.error, entry.error_type = "no service manager to deploy it (a broker runs one)", "ServiceFailed"
            st.outcomes.finish(entry, JobState.FAILED)
            return
        st.service_nodes.start(entry)

    def push(self, entry: Entry, key: QueueKey) -> None:
        """Put a queued job on its ready queue (what :meth:`enqueue` ends with; a new plain job,
        already queued with no gate, fallback or pin, comes straight here)."""
        queues = self.st.queues_by_key
        q = queues.get(key)
        if q is None:
            q = queues[key] = []
        entry.queue = q
        heapq.heappush(q, _item(entry))

    def requeue(self, entry: Entry) -> None:
        """Queue a queued job again on its queue, under its new rank (its old item goes stale)."""
        assert entry.queue is not None
        heapq.heappush(entry.queue, _item(entry))

    def live(self, item: QueueItem, q: list[QueueItem]) -> Entry | None:
        """The job of an item of queue ``q``, or None if the item is stale: the job was cancelled, held,
        or queued again since, maybe on another queue (a fallback's tags, a pin that ran out) or under
        another rank (its DAG grew)."""
        e = self.st.jobs.get(item[4])
        if (e is None or e.state is not JobState.QUEUED or e.not_before or e.seq != item[3] or e.queue is not q
                or e.rank != -item[2]):  # fmt: skip
            return None
        return e

    def _head(self, q: list[QueueItem]) -> QueueItem | None:
        """The first live item of a queue, dropping stale ones."""
        while q:
            item = q[0]
            if self.live(item, q) is not None:
                return item
            heapq.heappop(q)
        return None

    def queued_count(self) -> int:
        return sum(1 for e in self.st.jobs.values() if e.state in (JobState.QUEUED, JobState.RETRYING))

    # ---- dispatch -----------------------------------------------------------------------------

    def dispatch(self) -> int:
        """Lease queued jobs to free workers: the best head among the queues that have a free eligible
        worker, to the least loaded such worker (found in the pool: no scan of every worker)."""
        st = self.st
        queues = st.queues_by_key
        if not queues:
            return 0
        pool = st.pool
        keys = []
        for key in list(queues):
            if self._head(queues[key]) is None:
                del queues[key]
            elif pool.best(*key) is not None:
                keys.append(key)
        n = 0
        now_wall = st.wall()
        if len(keys) == 1 and self.fast_paths:  # one queue has workers to go to: no heads to compare
            n = self._drain_queue(keys[0], now_wall)
            keys.clear()
        while keys:
            best_key = None
            best_item: QueueItem | None = None
            for key in list(keys):
                item = self._head(queues[key])
                if item is None or pool.best(*key) is None:
                    keys.remove(key)
                elif best_item is None or item < best_item:
                    best_key, best_item = key, item
            if best_key is None or best_item is None:
                break
            q = queues[best_key]
            heapq.heappop(q)
            e = st.jobs[best_item[4]]
            w = pool.best(best_key[0], best_key[1], e.job.blob)
            assert w is not None
            if not self.takes(w, e):  # only a window it may not use is free
                heapq.heappush(q, best_item)  # it waits for a slot elsewhere instead
                keys.remove(best_key)
                continue
            self.lease(e, w, now_wall)
            n += 1
        st.counters["dispatched"] += n
        return n

    def _drain_queue(self, key: QueueKey, now_wall: float) -> int:
        """What :meth:`dispatch` does when only the queue of ``key`` has free workers to go to:
        lease its jobs in order, each to the least loaded of them, until none is free or it is empty."""
        q = self.st.queues_by_key[key]
        tags, pin = key
        pop = heapq.heappop
        live, lease, best, takes = self.live, self.lease, self.st.pool.best, self.takes
        n = 0
        while q:
            item = pop(q)
            e = live(item, q)
            if e is None:
                continue
            w = best(tags, pin, e.job.blob)
            if w is None or not takes(w, e):  # no credit; or only a window it may not use
                heapq.heappush(q, item)
                break
            lease(e, w, now_wall)
            n += 1
        return n

    def takes(self, w: WorkerInfo, entry: Entry) -> bool:
        """Whether ``w`` (which has credit) may take ``entry`` now: into a free slot, or, with every slot
        taken, into its prefetch window only a job expected to be short and only behind short jobs. A
        long job goes to a free slot, and short ones do not queue behind a long one while a slot
        elsewhere may free first."""
        return len(w.running) < w.slots or (not self.st.ranks.long(entry.job) and not w.behind_long())

    def lease(self, entry: Entry, w: WorkerInfo, now_wall: float) -> None:
        """Give ``entry`` to worker ``w``: a new lease, its wire spec in this turn's ASSIGN to it."""
        st = self.st
        st.touch(entry)
        entry.state = JobState.RUNNING
        entry.attempts += 1
        entry.worker = w.ident
        entry.worker_name = w.name
        entry.started_at = now_wall
        job = entry.job
        w.running.add(job.id)
        if st.dispatch_hist is not None and entry.queued_at:
            st.dispatch_hist.observe(max(0.0, now_wall - entry.queued_at))
        if st.ranks.long(job):
            w.long_jobs.add(job.id)
            if len(w.long_jobs) > 2 * (w.slots + w.window):  # ended ones linger until looked at: bound them
                w.long_jobs.intersection_update(w.running)
        st.pool.update(w)
        entry.lease = st.last_lease = next(st.leases)
        if entry.wire is not None:  # a template's job: its shared fields, then its own
            wire = entry.wire.copy()
            wire["id"] = job.id
            if job.args:
                wire["args"] = job.args
        else:
            wire = job.to_wire()
        if entry.level:  # a fallback: its requirements and timeout
            req, timeout, _ = job.level(entry.level)
            wire["requires"] = sorted(req)
            if timeout is not None:
                wire["timeout"] = timeout
        wire["attempt"] = entry.attempts
        wire["lease"] = entry.lease
        if entry.inputs is not None:
            wire["inputs"] = entry.inputs
        if entry.refs or entry.inputs:
            entry.placed = False  # a later attempt is placed afresh
            where = st.directory.locations(entry)
            if where:
                wire["objects"] = where
            if job.files:
                refs = st.directory.input_files(entry)
                wire["files"] = {n: [r[REF_KEY], job.files[n][1]] for n, r in refs.items() if r is not None}
        st.fx.assign.setdefault(w.ident, []).append(wire)
        sha = job.blob
        if sha is not None and sha not in w.cached:
            st.fx.blobs.setdefault(w.ident, {})[sha] = st.blobs[sha][0]
            w.cached.add(sha)
