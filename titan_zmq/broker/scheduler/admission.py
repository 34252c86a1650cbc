"""Admission: a submission checked whole (ids, content, limits, the graph), then accepted all or nothing.

Most jobs are *plain* (no parents, delay, gate, pin, fallback, content, idempotency key or DAG)
and take :meth:`Admission.accept_plain`, which skips the tests that cannot apply to them but calls
the same helpers as :meth:`Admission.accept` for everything it does.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from titan_zmq.aof.records import Accepted, Blob, encode
from titan_zmq.broker.scheduler.objects import receives_objects, top_refs
from titan_zmq.broker.scheduler.state import Entry, Part
from titan_zmq.errors import BrokerError, Conflict, JobError, LimitExceeded
from titan_zmq.job import RUN_NOWHERE, Job
from titan_zmq.objects.codec import REF_KEY


def is_plain(job: Job) -> bool:
    """Whether a new job goes straight to a queue: no parents, delay, condition, gate, fallback, pin,
    content to keep, idempotency key or DAG to note."""
    return not (
        job.depends_on or job.delay > 0 or job.kind in RUN_NOWHERE or job.fallback or job.wait is not None
        or job.node is not None or job.blob is not None or job.idempotency_key is not None or job.dag is not None
    )  # fmt: skip


def accepted_op(job: Job, wall: float) -> list[Any]:
    """The journal op of an accepted job."""
    return encode(Accepted(job.to_wire(), wall))


class Admission(Part):
    """Submissions: validated, checked against each other and the broker, then accepted."""

    fast_paths = True  # tests turn the short path off to check it ends where the general one does

    def submit(
        self, specs: list[dict[str, Any]], blobs: dict[str, bytes], watcher: bytes | None = None,
        owner: bytes | None = None, lean: bool = False,
    ) -> list[str]:  # fmt: skip
        """Validate and accept a batch of jobs, all or nothing. Returns the job ids.

        ``owner`` is the client connection submitting them: its unfinished jobs count against
        ``max_pending_per_client``. With ``lean``, ``watcher`` hears of a success as its id and
        result only (``map`` needs no more)."""
        jobs: list[Job] = []
        for i, spec in enumerate(specs):
            try:
                jobs.append(Job.from_wire(spec))
            except JobError as exc:
                raise JobError(f"job #{i} of the batch: {exc}") from None
        return self.admit(jobs, blobs, watcher, owner, lean)

    def submit_items(
        self, template: dict[str, Any], items: list[Any], blobs: dict[str, bytes], watcher: bytes | None = None,
        owner: bytes | None = None, lean: bool = False,
    ) -> list[str]:  # fmt: skip
        """Like :meth:`submit`, for jobs given as a template and ``[id, args]`` items (see Job.from_template)."""
        return self.admit(Job.from_template(template, items), blobs, watcher, owner, lean, uniform=True)

    def admit(
        self, jobs: list[Job], blobs: dict[str, bytes], watcher: bytes | None, owner: bytes | None, lean: bool,
        uniform: bool = False,
    ) -> list[str]:  # fmt: skip
        """Accept validated jobs, all or nothing: the checks between them and against the broker first.
        ``uniform``: they differ only in id and args (a template's), so one of them tells if all are plain."""
        resubmitted, with_refs = self._check_batch(jobs, blobs)
        if any(job.depends_on for job in jobs):
            jobs = check_graph(jobs, self.st.jobs)
        self._check_limits(jobs, owner)
        plain = not with_refs and all(map(is_plain, jobs[:1] if uniform else jobs))
        if self.fast_paths and not resubmitted and plain:
            self.accept_plain(jobs, watcher, owner, lean, uniform)
            return [job.id for job in jobs]
        st = self.st
        ids = []
        ranked = any(job.depends_on or job.dag is not None for job in jobs)  # a graph: critical path first
        ranks = st.ranks.of_batch(jobs) if ranked else None
        first: int | None = None  # the batch's arrival, for the order of its jobs outside any DAG
        grown: list[Entry] = []  # new jobs under parents admitted before: their ancestors' ranks rise
        for job in jobs:
            known = st.jobs.get(job.id)
            if known is None and job.idempotency_key is not None:
                prior = st.idempotency.get(job.idempotency_key)
                known = st.jobs.get(prior) if prior else None
            if known is not None:  # idempotent resubmission: same job, same answer
                ids.append(known.job.id)
                if watcher is not None:
                    for rec in st.records.watch(watcher, [known.job.id]):  # already ended: say so now
                        st.fx.done.setdefault(watcher, []).append(rec)
                continue
            entry = self.accept(job, blobs, watcher, lean, ranks, first)
            if ranks is not None:
                first = entry.order if first is None else first
                if any(p not in ranks for p in job.depends_on):
                    grown.append(entry)
            if owner is not None and not entry.state.final:
                st.own(entry, owner)
            ids.append(job.id)
        for entry in grown:
            st.ranks.raise_parents(entry)
        return ids

    def _check_batch(self, jobs: list[Job], blobs: dict[str, bytes]) -> tuple[bool, bool]:
        """Refuse repeated ids, missing or damaged content, ids taken by other jobs and unknown object
        references. Returns whether any job of the batch is a resubmission of a known one, and whether
        any receives objects (such jobs are placed by locality: never on the plain path)."""
        seen: set[str] = set()
        known_jobs = self.st.jobs
        resubmitted = with_refs = False
        for job in jobs:
            jid = job.id
            if jid in seen:
                raise JobError(f"job id {jid!r} appears twice in one submission")
            seen.add(jid)
            if (job.args and any(type(a) is dict for a in job.args)) or job.kwargs:
                refs = top_refs(job.args) + top_refs(job.kwargs)
                if refs:
                    self.st.directory.check_known(refs)
                    with_refs = True
            if job.blob is not None and job.blob not in blobs and job.blob not in self.st.blobs:
                raise JobError(f"job {jid}: its content (blob {job.blob[:12]}...) was not sent with it")
            if job.kind == "service":
                self._check_service(job)
            existing = known_jobs.get(jid)
            if existing is not None:
                if existing.job != job:
                    raise Conflict(f"job id {jid!r} is already taken by a different job; choose another id")
                resubmitted = True
        for sha, content in blobs.items():
            if hashlib.sha256(content).hexdigest() != sha:
                raise JobError(f"blob {sha[:12]}... does not match its sha256; the content was damaged")
        return resubmitted, with_refs

    def _check_service(self, job: Job) -> None:
        """A service node's spec must be one the broker can deploy (checked now, not when it is due)."""
        nodes = self.st.service_nodes
        if nodes is None:
            raise JobError(f"job {job.id}: service nodes need a broker that runs services")
        try:
            nodes.check(job.kwargs)
        except (JobError, BrokerError) as exc:
            raise JobError(f"job {job.id}: {exc}") from None

    def _check_limits(self, jobs: list[Job], owner: bytes | None) -> None:
        """Refuse a batch that would take a DAG past ``max_dag_jobs`` or a client past ``max_pending_per_client``."""
        st = self.st
        new = [job for job in jobs if job.id not in st.jobs]
        per_dag: dict[str, int] = {}
        for job in new:
            if job.dag is not None:
                per_dag[job.dag] = per_dag.get(job.dag, 0) + 1
        for dag, n in per_dag.items():
            have = len(st.dags.get(dag, ()))
            if have + n > st.max_dag_jobs:
                raise LimitExceeded(
                    f"DAG {dag!r} would hold {have + n} jobs, over the limit of {st.max_dag_jobs} (max_dag_jobs); "
                    "split the work into several DAGs, or raise max_dag_jobs (TITAN_MAX_DAG_JOBS)"
                )
        if owner is not None and new:
            have = st.pending.get(owner, 0)
            if have + len(new) > st.max_pending_per_client:
                raise LimitExceeded(
                    f"this client already has {have} unfinished jobs; {len(new)} more would pass the limit of "
                    f"{st.max_pending_per_client} (max_pending_per_client): wait for some to finish, or raise "
                    "max_pending_per_client (TITAN_MAX_PENDING_PER_CLIENT)"
                )

    def accept_plain(
        self, jobs: list[Job], watcher: bytes | None, owner: bytes | None, lean: bool, uniform: bool = False
    ) -> None:
        """What :meth:`accept` does, for new jobs that go straight to a queue (see :func:`is_plain`),
        without the tests that cannot apply to them: most jobs, at tens of thousands a second.
        ``uniform`` jobs (a template's) share one wire map of the fields they have in common."""
        st = self.st
        shared = None
        if uniform and jobs:
            shared = jobs[0].to_wire()
            del shared["id"]
            shared.pop("args", None)
        wall = st.wall()
        seq = st.seq
        table = st.jobs
        journaling = st.ops is not None
        journal, touch, own, watch = st.journal, st.touch, st.own, self._watch
        push = st.queues.push
        for job in jobs:
            entry = Entry(job, next(seq), wall)
            table[job.id] = entry
            if journaling:
                journal(accepted_op(job, wall))
            touch(entry)
            if watcher is not None:
                watch(entry, watcher, lean)
            if owner is not None:
                own(entry, owner)
            entry.wire = shared
            entry.queued_at = wall  # queued as it is accepted (the state an Entry starts in)
            push(entry, (job.requires, None))
        st.counters["submitted"] += len(jobs)

    def accept(
        self, job: Job, blobs: dict[str, bytes], watcher: bytes | None, lean: bool = False,
        ranks: dict[str, float] | None = None, first: int | None = None,
    ) -> Entry:  # fmt: skip
        """Take in one new job of any kind: note it, then wire it to its parents or start it waiting.
        ``ranks``: its batch's critical-path ranks (``ranks.py``), when it is part of a graph or a DAG;
        ``first``: the order of the batch's first job (the arrival of a graph outside any DAG)."""
        st = self.st
        entry = Entry(job, next(st.seq), st.wall())
        if ranks is not None:
            entry.rank = ranks[job.id]
            entry.order = st.dag_order.setdefault(job.dag, entry.seq) if job.dag is not None else first or entry.seq
        st.jobs[job.id] = entry
        if st.ops is not None:
            if job.blob is not None and job.blob not in st.blobs:
                st.journal(encode(Blob(job.blob, blobs[job.blob])))
            st.journal(accepted_op(job, entry.submitted_at))
        st.touch(entry)
        if job.idempotency_key is not None:
            st.idempotency[job.idempotency_key] = job.id
        if job.dag is not None:
            st.dags.setdefault(job.dag, {})[job.id] = None
            st.dag_left.pop(job.dag, None)  # one more unfinished job: counted again when one ends
        if receives_objects(job):  # placed by locality; holds what it receives until it is forgotten
            entry.refs = True
            for r in top_refs(job.args) + top_refs(job.kwargs):
                info = st.objects.get(r[REF_KEY])
                if info is not None:
                    st.directory.add(info.id, info.size, owner=f"job:{job.id}")
        if job.blob is not None:
            slot = st.blobs.get(job.blob)
            if slot is None:
                st.blobs[job.blob] = [blobs[job.blob], 1]
            else:
                slot[1] += 1
        if watcher is not None:
            self._watch(entry, watcher, lean)
        st.counters["submitted"] += 1
        if job.depends_on:
            st.graph.wire_parents(entry)
        else:
            st.graph.start(entry)
        return entry

    @staticmethod
    def _watch(entry: Entry, watcher: bytes, lean: bool) -> None:
        """The submitting client hears when ``entry`` ends (a lean watcher, of a success, only its result)."""
        entry.watchers = [watcher]
        if lean:
            entry.lean = watcher


def check_graph(jobs: list[Job], known: dict[str, Entry]) -> list[Job]:
    """Refuse unknown parents and cycles; return the batch parents-first."""
    batch = {job.id: job for job in jobs}
    for job in jobs:
        for p in job.depends_on:
            if p not in batch and p not in known:
                raise JobError(
                    f"job {job.id} depends on {p!r}, which is neither in this submission nor known to the broker"
                )
    # Kahn's algorithm over the edges inside the batch (known jobs cannot depend on new ones).
    indeg = {jid: sum(1 for p in job.depends_on if p in batch) for jid, job in batch.items()}
    kids: dict[str, list[str]] = {}
    for job in jobs:
        for p in job.depends_on:
            if p in batch:
                kids.setdefault(p, []).append(job.id)
    ready = deque(jid for jid in batch if indeg[jid] == 0)  # FIFO: keeps the submission order
    order: list[Job] = []
    while ready:
        jid = ready.popleft()
        order.append(batch[jid])
        for c in kids.get(jid, ()):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) < len(jobs):
        raise JobError(f"the jobs form a cycle: {' -> '.join(_find_cycle(batch, indeg))}; a DAG has none")
    return order


def _find_cycle(batch: dict[str, Job], indeg: dict[str, int]) -> list[str]:
    """One cycle among the jobs Kahn's algorithm could not order, as a path a -> b -> a."""
    left = {jid for jid, d in indeg.items() if d > 0}
    start = min(left)
    path = [start]
    seen = {start: 0}
    node = start
    while True:
        node = next(p for p in batch[node].depends_on if p in left)
        if node in seen:
            cycle = [*path[seen[node] :], node]
            return list(reversed(cycle))  # parent -> child order
        seen[node] = len(path)
        path.append(node)
