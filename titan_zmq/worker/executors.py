"""Executors: every job runs in a process apart from the worker's connection loop.

* ``call`` jobs run in long-lived child processes (``titan_zmq.worker.child``), one job
  at a time each, so an import is paid once and a crash costs only a new child
  (:mod:`~titan_zmq.worker.call_jobs`).
* ``shell`` and ``script`` jobs run as their own process in a new session
  (:mod:`~titan_zmq.worker.process_jobs`).

The :class:`Executor` holds the worker's slots and the jobs waiting for one, starts them, and
enforces timeouts and kills; what each attempt is and how it ends is in ``attempts.py``, the
output it writes in ``output.py``. The worker's loop polls the descriptors this module hands
it; nothing here blocks. Timeouts and cancels kill the job's whole process tree.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from titan_zmq.compat.paths import with_sdk_shim
from titan_zmq.job import Outcome
from titan_zmq.process import kill_tree
from titan_zmq.worker.attempts import STALE, Task
from titan_zmq.worker.cache import BlobCache
from titan_zmq.worker.call_jobs import PIPELINE_BELOW, SKIP_GRACE, CallJobs  # noqa: F401 - re-exported
from titan_zmq.worker.calls import ChildProc
from titan_zmq.worker.forkserver import ForkServer
from titan_zmq.worker.output import MAX_LINE, MAX_PENDING_LINES, LogSink, Tail  # noqa: F401 - re-exported
from titan_zmq.worker.process_jobs import ProcessJobs

log = logging.getLogger(__name__)

REAP_EVERY = 0.1  # s: how often busy call executors are checked for an exit their pipe did not show


class Executor(CallJobs, ProcessJobs):
    """Starts, watches, times out and kills the jobs of one worker."""

    def __init__(
        self,
        cache: BlobCache,
        env: dict[str, str],
        *,
        slots: int = 1,
        output_tail: int = 64 * 1024,
        memory_mb: int | None = None,
        prefetch_wait: float = 1.0,
        fork_server: bool = True,
        pipeline: int = 4,
    ) -> None:
        self.cache = cache
        self.env = env
        self.slots = slots
        self.tail = output_tail
        self.memory_mb = memory_mb
        self.prefetch_wait = prefetch_wait
        # Short call jobs may be sent this many ahead to a call executor that is running one: it
        # starts the next without waiting for the worker (no wake-up of two processes per job).
        self.pipeline = pipeline
        self.tasks: dict[str, Task] = {}
        # Jobs leased to this worker beyond its free slots (the broker's prefetch window), in order,
        # with the monotonic time each arrived. They start as slots free up.
        self.waiting: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.children: list[ChildProc] = []
        self._unflushed: set[ChildProc] = set()
        self._next_reap = 0.0  # when busy call executors are next checked for an exit
        self.finished: list[dict[str, Any]] = []
        self._readers: dict[int, Callable[[], object]] = {}
        self.logs = LogSink()
        # Shell, script and archive jobs (not call jobs, which keep ``env``) find the original Titan
        # SDK's ``titan_sdk`` at the END of PYTHONPATH: the compat layer, unless something else
        # provides one (titan_zmq.compat). Made once here, so no job pays for it, and the fork
        # server starts with the same PYTHONPATH as the jobs it forks (it only forks those).
        self.process_env = with_sdk_shim(env)
        # Script jobs fork from a warm interpreter when their environment allows it.
        self.forks = ForkServer(self.process_env) if fork_server else None
        self._fork_fd: int | None = None

    # ---- starting -------------------------------------------------------------------

    def lease_of(self, job_id: str) -> int | None:
        """The lease under which this job runs or waits here; None if it is not here."""
        task = self.tasks.get(job_id)
        if task is not None:
            return int(task.job.get("lease", 0))
        waiting = self.waiting.get(job_id)
        return None if waiting is None else int(waiting[0].get("lease", 0))

    def held(self) -> dict[str, int]:
        """Every job running or waiting here, with its lease."""
        out = {jid: int(t.job.get("lease", 0)) for jid, t in self.tasks.items()}
        out.update((jid, int(job.get("lease", 0))) for jid, (job, _) in self.waiting.items())
        return out

    def submit(self, job: dict[str, Any], fill: bool = True) -> None:
        """Take a leased job: start it now if a slot is free, else queue it for the next free slot.
        With ``fill`` False it only waits: a batch of jobs is taken first, then started by one
        :meth:`fill` (one write per call executor for the whole batch)."""
        self.waiting[job["id"]] = (job, time.monotonic())
        if fill:
            self.fill()

    def fill(self) -> None:
        """Start waiting jobs while slots are free; pipeline short call jobs behind running ones."""
        if not self.waiting:
            if self._unflushed:
                self._flush_sends()
            return
        running = self.running()
        now = time.monotonic()
        while self.waiting:
            job, arrived = next(iter(self.waiting.values()))
            if running < self.slots:
                child = None
                running += 1
            else:
                child = self._pipeline_to(job, now)
                if child is None:
                    break
            del self.waiting[job["id"]]
            self.start(job, child, arrived)
            if child is None and job["id"] not in self.tasks:
                running -= 1  # it could not start (a cache miss, a start error): its slot is free
        self._flush_sends()

    def running(self) -> int:
        """Jobs running now (jobs queued in a call executor's pipeline wait, they do not run)."""
        queued = sum(len(c.queue) - 1 for c in self.children if c.queue)
        return len(self.tasks) - queued

    def take_waiting(self) -> list[dict[str, Any]]:
        """Hand back every prefetched job not started yet (outcome ``returned``): the worker drains."""
        out = [_unstarted(jid, job, Outcome.RETURNED) for jid, (job, _) in self.waiting.items()]
        self.waiting.clear()
        return out

    def return_stale(self) -> None:
        """Hand back prefetched jobs that waited too long for a slot (a long job is in the way)."""
        limit = time.monotonic() - self.prefetch_wait
        for child in self.children:
            for i, task in enumerate(child.queue):  # queued behind a job that turned out long
                if i == 0:
                    continue
                if task.arrived >= limit:
                    break  # they arrived in order: the rest are younger
                if task.kill_reason is None:
                    task.kill_reason = STALE
                    try:
                        child.skip(task.id)
                    except OSError:
                        pass  # the executor is gone; its death settles the job
        if not self.waiting:
            return
        stale = []
        for jid, (_job, since) in self.waiting.items():
            if since > limit:
                break  # they arrived in order: the rest are younger
            stale.append(jid)
        for jid in stale:
            self.finished.append(_unstarted(jid, self.waiting.pop(jid)[0], Outcome.RETURNED))

    def start(self, job: dict[str, Any], child: ChildProc | None = None, arrived: float | None = None) -> None:
        """Start one attempt now (or queue it on call executor ``child``). Failures to start become
        the attempt's outcome."""
        task = Task(job, self.tail, self.logs)
        if arrived is not None:
            task.arrived = arrived
        self.tasks[task.id] = task
        try:
            if job["kind"] == "call":
                self._start_call(task, child)
            else:
                self._start_process(task)
        except Exception as exc:
            log.exception("could not start job %s", task.id)
            self._finish(
                task, Outcome.FAILED, error=f"could not start: {type(exc).__name__}: {exc}", error_type="StartError"
            )


    # ---- watching -------------------------------------------------------------------

    def fds(self) -> list[int]:
        return list(self._readers)

    def on_readable(self, fd: int) -> None:
        handler = self._readers.get(fd)
        if handler is not None:
            handler()

    def poll(self) -> None:
        """Reap processes that ended without closing their pipes, and enforce timeouts."""
        if self._unflushed:
            self._flush_sends()
        now = time.monotonic()
        if now >= self._next_reap:  # a busy executor's death shows as the end of its pipe; this is
            self._next_reap = now + REAP_EVERY  # for one whose pipe something it started still holds
            for child in list(self.children):
                if child.queue and child.popen.poll() is not None:
                    self._on_child_results(child)
                    if not child.dead:
                        self._child_died(child)
        for task in list(self.tasks.values()):
            if task.popen is not None and task.popen.poll() is not None:
                self._reap(task, wait=0)
            elif task.deadline is not None and now >= task.deadline:
                if task.kill_reason is None:
                    self.kill(task.id, Outcome.TIMEOUT)
                elif task.child is not None and task.child.task is task:
                    self._kill_child(task.child, task)  # asked not to start, it started all the same

    def next_wakeup(self) -> float | None:
        """Seconds until the executor needs a poll() even if no pipe is readable."""
        now = time.monotonic()
        waits = [t.deadline - now for t in self.tasks.values() if t.deadline is not None and _timed(t)]
        if self._unflushed:
            waits.append(0.005)  # a pipe was full: try again soon
        if any(t.popen is not None for t in self.tasks.values()):
            waits.append(0.1)  # a process may exit while a grandchild keeps its pipes open
        elif any(c.queue for c in self.children):
            waits.append(self._next_reap - now)
        if self.waiting:
            waits.append(next(iter(self.waiting.values()))[1] + self.prefetch_wait - now)
        for child in self.children:  # jobs queued behind a running one go back if they wait too long
            for i, t in enumerate(child.queue):  # in order of arrival: the first one not asked to skip
                if i and t.kill_reason is None:
                    waits.append(t.arrived + self.prefetch_wait - now)
                    break
        return max(0.0, min(waits)) if waits else None


    # ---- ending -----------------------------------------------------------------------

    def kill(self, job_id: str, reason: str) -> bool:
        """Kill a running job's process tree. ``reason``: Outcome.TIMEOUT, CANCELLED or INTERRUPTED,
        the outcome the attempt ends with (see ``attempts.STALE``)."""
        waiting = self.waiting.pop(job_id, None)
        if waiting is not None:  # never started: nothing to kill
            outcome = Outcome.CANCELLED if reason == Outcome.CANCELLED else Outcome.INTERRUPTED
            self.finished.append(_unstarted(job_id, waiting[0], outcome))
            return True
        task = self.tasks.get(job_id)
        if task is None:
            return False
        task.kill_reason = reason
        if task.child is not None:
            child = task.child
            if child.task is not task:  # queued behind another job: it must not start
                try:
                    child.skip(task.id)
                except OSError:
                    pass  # the executor is gone; its death settles the job
                return True
            self._kill_child(child, task)
        elif task.popen is not None:
            kill_tree(task.popen.pid)
            self._reap(task, wait=5)
        return True

    def take_finished(self) -> list[dict[str, Any]]:
        """Outcomes since the last call; freed slots are refilled from the waiting jobs first."""
        self.fill()
        self.return_stale()
        out, self.finished = self.finished, []
        return out

    def shutdown(self) -> list[str]:
        """Kill every running job (outcome ``interrupted``) and every child. Returns their ids."""
        ids = list(self.held())
        for jid in ids:
            self.kill(jid, Outcome.INTERRUPTED)
        for child in list(self.children):
            self._drop_child(child)
        if self.forks is not None:
            self.forks.close()
        return ids


def _unstarted(job_id: str, job: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The outcome of a job that never started here (handed back, cancelled or interrupted while it waited)."""
    return {"id": job_id, "attempt": job.get("attempt", 1), "lease": job.get("lease", 0), "outcome": outcome}


def _timed(task: Task) -> bool:
    """Whether the task's deadline still needs enforcing: it runs, or it was asked to skip and started."""
    return task.kill_reason is None or (task.child is not None and task.child.task is task)
