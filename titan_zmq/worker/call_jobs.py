"""Call jobs on the worker: sent to call executors (``calls.ChildProc``), a pipeline of short ones each.

A call executor runs one job at a time; short jobs may be queued behind the one it runs
(``Executor.pipeline`` deep, only behind one that has run less than PIPELINE_BELOW), so it starts
the next without a round trip through the worker. Its outcome pipe says, in order, what each job
wrote and how it ended; its death settles the job it ran and hands back those queued behind it.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import time
from typing import Any

from titan_zmq.job import Outcome
from titan_zmq.process import kill_tree
from titan_zmq.worker.attempts import Attempts, Task
from titan_zmq.worker.calls import ChildProc
from titan_zmq.worker.child import SKIPPED
from titan_zmq.worker.output import read_available

log = logging.getLogger(__name__)

PIPELINE_BELOW = 0.05  # s: a call job is queued behind a running one only while that has run less
SKIP_GRACE = 0.5  # s: a queued job asked not to start that starts anyway is killed after this
_FAILED = Outcome.FAILED  # bound once: Outcome.FAILED is a class attribute lookup, once per job


class CallJobs(Attempts):
    """The executor's call jobs. The attributes are set by ``Executor.__init__``."""

    pipeline: int  # call jobs that may be queued behind a running one in the same call executor
    children: list[ChildProc]
    _unflushed: set[ChildProc]  # call executors with job messages not written yet

    def _pipeline_to(self, job: dict[str, Any], now: float) -> ChildProc | None:
        """The call executor to queue ``job`` on behind its running job, if any should take it.

        Only call jobs, only behind a job that has run for less than PIPELINE_BELOW so far (one
        that turns out long does not hold the queue), and at most ``pipeline`` deep."""
        if job["kind"] != "call" or not self.pipeline:
            return None
        best = None
        for c in self.children:
            head = c.task
            if c.dead or head is None or head.kill_reason is not None or len(c.queue) > self.pipeline:
                continue
            if now - head.started < PIPELINE_BELOW and (best is None or len(c.queue) < len(best.queue)):
                best = c
        return best

    def _start_call(self, task: Task, pipelined: ChildProc | None = None) -> None:
        job = task.job
        msg: dict[str, Any] = {"id": task.id, "target": job["target"], "args": job.get("args", [])}
        for key in ("kwargs", "env"):  # only what a job has: every key is packed and unpacked
            if job.get(key):
                msg[key] = job[key]
        if task.attempt != 1:
            msg["attempt"] = task.attempt
        if job.get("dag"):
            msg["dag"] = job["dag"]
        if job.get("labels"):
            msg["labels"] = job["labels"]
        if "inputs" in job:
            msg["inputs"] = job["inputs"]
        if "object_paths" in job:  # objects it receives, in this worker's store
            msg["object_paths"] = job["object_paths"]
        if job.get("blob"):
            if not self.cache.has(job["blob"]):
                self._finish(task, Outcome.CACHE_MISS, error="module source not in the cache")
                return
            msg["blob"] = job["blob"]
            msg["module_path"] = str(self.cache.path(job["blob"]))
        child = pipelined
        if child is None:
            child = self._idle_child()
            # Starting a new call executor can take a while on a busy host: the job's clock (its
            # timeout, and how long it has run when others would queue behind it) starts now.
            task.started = time.monotonic()
            timeout = job.get("timeout")
            task.deadline = task.started + timeout if timeout else None
        child.send(msg, task)
        self._unflushed.add(child)
        child.queue.append(task)
        task.child = child
        if child.task is not task:
            task.deadline = None  # its clock starts when the job before it ends

    def _flush_sends(self) -> None:
        """Write the job messages queued for call executors: one write per executor per turn."""
        for child in list(self._unflushed):
            try:
                if not child.flush():
                    continue
            except OSError:  # it died: what it never got goes back unstarted, the rest is its death's
                for task in child.undelivered():
                    child.queue.remove(task)
                    task.child = None
                    self._finish(task, Outcome.RETURNED, error="its call executor died before it could take the job")
                self._on_child_results(child)
                if not child.dead:
                    self._child_died(child)
            self._unflushed.discard(child)

    def _idle_child(self) -> ChildProc:
        for c in self.children:
            if c.task is None and not c.dead:
                return c
        env = dict(self.env)
        child = ChildProc(env, self.memory_mb)
        self.children.append(child)
        self._readers[child.res_r] = functools.partial(self._on_child_results, child)
        self._readers[child.out_fd] = functools.partial(self._on_child_output, child, child.out_fd, "out")
        self._readers[child.err_fd] = functools.partial(self._on_child_output, child, child.err_fd, "err")
        return child

    def _on_child_output(self, child: ChildProc, fd: int, which: str) -> None:
        task = child.task  # descriptor-level writes: the running job's, as far as anyone can tell
        sink = None if task is None else (task.out if which == "out" else task.err)
        if not read_available(fd, sink):
            self._readers.pop(fd, None)

    def _on_child_results(self, child: ChildProc) -> None:
        frames, alive = child.read_results()
        queue = child.queue
        if frames and queue:
            # Descriptor-level output written before these outcomes: the running job's, as far as
            # the pipes tell (a batch of short pipelined jobs shares one read, not two per job).
            read_available(child.out_fd, queue[0].out)
            read_available(child.err_fd, queue[0].err)
        for res in frames:
            task = queue[0] if queue else None
            if "o" in res:  # a job's own output, written before its outcome
                if task is not None:
                    (task.out if res["o"] == "out" else task.err).add(res.get("d") or b"")
                continue
            if res.get("outcome") == SKIPPED:  # a queued job it will not run: answered at once
                self._skipped(child, res.get("id"))
                continue
            if task is None or res.get("id") != task.id:
                log.warning("call executor %d reported an unexpected job %r", child.pid, res.get("id"))
                continue
            child.queue.popleft()
            task.child = None
            res.pop("id", None)
            self._finish(task, res.pop("outcome", _FAILED), **res)
            self._now_running(child)
        if not alive:
            self._child_died(child)

    def _skipped(self, child: ChildProc, job_id: Any) -> None:
        for task in child.queue:
            if task.id == job_id:
                head = task is child.task
                child.queue.remove(task)
                task.child = None
                self._finish_unstarted(task)
                if head:
                    self._now_running(child)
                return
        log.warning("call executor %d skipped a job it was not given: %r", child.pid, job_id)

    def _now_running(self, child: ChildProc) -> None:
        """The next job in ``child``'s pipeline has just started: its clock starts now."""
        task = child.task
        if task is None:
            return
        task.started = time.monotonic()
        timeout = task.job.get("timeout")
        if task.kill_reason is not None:  # asked to skip it: if it runs after all, it is killed soon
            task.deadline = task.started + SKIP_GRACE
        else:
            task.deadline = task.started + timeout if timeout else None

    def _finish_unstarted(self, task: Task) -> None:
        """A job that never started: cancelled or interrupted as asked, else handed back to the broker."""
        if task.kill_reason in (Outcome.CANCELLED, Outcome.INTERRUPTED):
            self._finish_killed(task, None)
        else:
            self._finish(task, Outcome.RETURNED, error="not started: its call executor ended first")

    def _child_died(self, child: ChildProc) -> None:
        task = child.task
        if task is not None:
            read_available(child.out_fd, task.out)
            read_available(child.err_fd, task.err)
        self._drop_child(child)
        code = child.popen.returncode
        if task is not None:
            child.queue.popleft()
            task.child = None
            if task.kill_reason is None and child.killed_for not in (None, task.id):
                # killed for the job before it, which ended as the kill came: not this job's doing
                self._finish(task, Outcome.RETURNED, error="stopped with its call executor, killed for another job")
            else:
                self._finish_killed(task, code)
        while child.queue:  # the jobs queued behind it never started
            waiting = child.queue.popleft()
            waiting.child = None
            self._finish_unstarted(waiting)

    def _drop_child(self, child: ChildProc) -> None:
        self._unflushed.discard(child)
        for fd in (child.res_r, child.out_fd, child.err_fd):
            self._readers.pop(fd, None)
        if child in self.children:
            self.children.remove(child)
        child.close()

    def _kill_child(self, child: ChildProc, task: Task) -> None:
        """Kill the call executor running ``task``; the jobs queued behind it go back unstarted."""
        child.killed_for = task.id
        kill_tree(child.pid)
        try:
            child.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._on_child_results(child)  # reads what it managed to say, then buries it
        if not child.dead:
            self._child_died(child)
