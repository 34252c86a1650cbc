"""Executors: every job runs in a process apart from the worker's connection loop.

* ``call`` jobs run in long-lived child processes (``titan_zmq.worker.child``), one job
  at a time each, so an import is paid once and a crash costs only a new child.
* ``shell`` and ``script`` jobs run as their own process in a new session.

The worker's loop polls the descriptors this module hands it; nothing here blocks.
Timeouts and cancels kill the job's whole process tree.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from titan_zmq.process import die_with_parent, kill_tree
from titan_zmq.worker.cache import BlobCache
from titan_zmq.worker.calls import ChildProc
from titan_zmq.worker.forkserver import ForkedProcess, ForkServer, ForkServerError

log = logging.getLogger(__name__)



def _limit_memory(mb: int | None) -> Callable[[], None]:
    def setup() -> None:
        die_with_parent()
        if mb:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))

    return setup


PIPELINE_BELOW = 0.05  # s: a call job is queued behind a running one only while that has run less
SKIP_GRACE = 0.5  # s: a queued job asked not to start that starts anyway is killed after this
REAP_EVERY = 0.1  # s: how often busy call executors are checked for an exit their pipe did not show

MAX_LINE = 8192  # characters of one log line; longer ones are cut into pieces
MAX_PENDING_LINES = 100_000  # log lines kept for the broker while it is away; more are counted, not kept


class Tail:
    """The last ``limit`` bytes written to a stream; complete lines also go to ``sink`` (the live log)."""

    __slots__ = ("buf", "dropped", "job_id", "limit", "partial", "sink", "stream")

    def __init__(self, limit: int, sink: LogSink | None = None, job_id: str = "", stream: str = "out") -> None:
        self.buf = bytearray()
        self.limit = limit
        self.dropped = 0
        self.sink = sink
        self.job_id = job_id
        self.stream = stream
        self.partial = bytearray()

    def add(self, data: bytes) -> None:
        self.buf += data
        over = len(self.buf) - self.limit
        if over > 0:
            del self.buf[:over]
            self.dropped += over
        if self.sink is None:
            return
        self.partial += data
        if b"\n" not in data and len(self.partial) < MAX_LINE:
            return
        *done, rest = self.partial.split(b"\n")
        self.partial = bytearray(rest)
        now = time.time()
        for line in done:
            self.sink.add(self.job_id, now, self.stream, line)
        while len(self.partial) >= MAX_LINE:
            self.sink.add(self.job_id, now, self.stream, bytes(self.partial[:MAX_LINE]))
            del self.partial[:MAX_LINE]

    def flush(self) -> None:
        """Send a last line that has no newline."""
        if self.sink is not None and self.partial:
            self.sink.add(self.job_id, time.time(), self.stream, bytes(self.partial))
            self.partial.clear()

    def text(self) -> str:
        s = self.buf.decode("utf-8", "replace")
        if self.dropped:
            return f"[... {self.dropped} earlier bytes dropped]\n" + s
        return s


class LogSink:
    """Log lines of every job, waiting to be sent to the broker: ``[job_id, time, stream, text]``."""

    def __init__(self) -> None:
        self.lines: list[list[Any]] = []
        self.since = 0.0  # when the oldest waiting line arrived
        self.dropped = 0

    def add(self, job_id: str, ts: float, stream: str, line: bytes | bytearray) -> None:
        if len(self.lines) >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        if not self.lines:
            self.since = time.monotonic()
        self.lines.append([job_id, ts, stream, line[:MAX_LINE].decode("utf-8", "replace")])

    def take(self) -> list[list[Any]]:
        out, self.lines = self.lines, []
        if self.dropped:
            log.warning("%d log line(s) dropped while the broker could not take them", self.dropped)
            self.dropped = 0
        return out


def _read_available(fd: int, sink: Tail | None) -> bool:
    """Read what a non-blocking pipe holds. Returns False at end of file."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if sink is not None:
            sink.add(data)


class Task:
    """One running attempt of a job."""

    __slots__ = (
        "_err", "_logs", "_out", "_tail", "arrived", "attempt", "child", "deadline", "err_fd", "id", "job",
        "kill_reason", "out_fd", "popen", "started",
    )  # fmt: skip

    def __init__(self, job: dict[str, Any], tail: int, logs: LogSink | None = None) -> None:
        self.job = job
        self.id: str = job["id"]
        self.attempt: int = job.get("attempt", 1)
        self.started = self.arrived = time.monotonic()
        timeout = job.get("timeout")
        self.deadline: float | None = self.started + timeout if timeout else None
        self._tail = tail
        self._logs = logs
        self._out: Tail | None = None  # made when the job first writes (most short jobs never do)
        self._err: Tail | None = None
        self.popen: subprocess.Popen[bytes] | ForkedProcess | None = None
        self.child: ChildProc | None = None
        self.out_fd: int | None = None
        self.err_fd: int | None = None
        self.kill_reason: str | None = None

    @property
    def out(self) -> Tail:
        if self._out is None:
            self._out = Tail(self._tail, self._logs, self.id, "out")
        return self._out

    @property
    def err(self) -> Tail:
        if self._err is None:
            self._err = Tail(self._tail, self._logs, self.id, "err")
        return self._err

    def output(self) -> tuple[str, str]:
        """What it wrote to stdout and stderr (the tails), its last partial lines sent to the live log."""
        texts = []
        for tail in (self._out, self._err):
            if tail is None:
                texts.append("")
            else:
                tail.flush()
                texts.append(tail.text())
        return texts[0], texts[1]


class Executor:
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
        # Script jobs fork from a warm interpreter when their environment allows it.
        self.forks = ForkServer(env) if fork_server else None
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

    def take_waiting(self) -> list[dict[str, Any]]:
        """Hand back every prefetched job not started yet (outcome ``returned``): the worker drains."""
        out = [{"id": jid, "attempt": job.get("attempt", 1), "lease": job.get("lease", 0), "outcome": "returned"}
               for jid, (job, _) in self.waiting.items()]  # fmt: skip
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
                    task.kill_reason = "stale"
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
            job = self.waiting.pop(jid)[0]
            self.finished.append(
                {"id": jid, "attempt": job.get("attempt", 1), "lease": job.get("lease", 0), "outcome": "returned"}
            )

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
            self._finish(task, "failed", error=f"could not start: {type(exc).__name__}: {exc}", error_type="StartError")

    def _job_env(self, job: dict[str, Any]) -> dict[str, str]:
        env = dict(self.env)
        env["TITAN_JOB_ID"] = job["id"]
        env["TITAN_ATTEMPT"] = str(job.get("attempt", 1))
        env["TITAN_DAG_ID"] = job.get("dag") or ""
        env["TITAN_ITERATION"] = str((job.get("labels") or {}).get("titan.iteration", "0"))
        if "inputs" in job:  # parents' results, as a JSON file named by TITAN_INPUTS
            path = self.cache.root.parent / "inputs" / f"{job['id']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(job["inputs"], default=repr))
            env["TITAN_INPUTS"] = str(path)
        env.update(job.get("env") or {})
        return env

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
        if job.get("blob"):
            if not self.cache.has(job["blob"]):
                self._finish(task, "cache_miss", error="module source not in the cache")
                return
            msg["blob"] = job["blob"]
            msg["module_path"] = str(self.cache.path(job["blob"]))
        child = pipelined or self._idle_child()
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
                    self._finish(task, "returned", error="its call executor died before it could take the job")
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

    def _start_process(self, task: Task) -> None:
        job = task.job
        cwd: str | None = None
        if job["kind"] == "shell":
            argv = ["/bin/sh", "-c", job["target"], "titan-job", *job.get("args", [])]
        else:
            sha = job["blob"]
            if not self.cache.has(sha):
                self._finish(task, "cache_miss", error="script not in the cache")
                return
            if job["kind"] == "archive":  # a project folder: run its entry point from inside it
                cwd = str(self.cache.extract(sha))
                argv = [sys.executable, os.path.join(cwd, job["target"]), *job.get("args", [])]
            else:
                argv = [sys.executable, str(self.cache.path(sha)), *job.get("args", [])]
        env = self._job_env(job)
        popen: subprocess.Popen[bytes] | ForkedProcess | None = None
        if job["kind"] != "shell" and self.forks is not None and self.forks.fits(env):
            popen = self._fork(argv, env, cwd)
        if popen is None:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, start_new_session=True, preexec_fn=_limit_memory(self.memory_mb), cwd=cwd,
            )  # fmt: skip
        assert popen.stdout is not None and popen.stderr is not None
        task.popen = popen
        task.out_fd = popen.stdout.fileno()
        task.err_fd = popen.stderr.fileno()
        for fd, sink in ((task.out_fd, task.out), (task.err_fd, task.err)):
            os.set_blocking(fd, False)
            self._readers[fd] = functools.partial(self._on_process_output, task, fd, sink)

    def _fork(self, argv: list[str], env: dict[str, str], cwd: str | None) -> ForkedProcess | None:
        """The job forked from the warm interpreter; None if the fork server cannot (it is spawned instead)."""
        assert self.forks is not None
        try:
            proc = self.forks.spawn(argv, env, cwd, self.memory_mb)
        except (ForkServerError, OSError) as exc:
            log.warning("fork server: %s; the job starts as a fresh interpreter", exc)
            proc = None
        fd = self.forks.fileno()
        if fd != self._fork_fd:
            if self._fork_fd is not None:
                self._readers.pop(self._fork_fd, None)
            if fd is not None:
                self._readers[fd] = self._on_fork_reports
            self._fork_fd = fd
        return proc

    def _on_fork_reports(self) -> None:
        """Exit reports from the fork server: reap the jobs whose pipes are already closed."""
        assert self.forks is not None
        self.forks.pump()
        if self.forks.fileno() is None and self._fork_fd is not None:
            self._readers.pop(self._fork_fd, None)
            self._fork_fd = None
        for task in list(self.tasks.values()):
            if isinstance(task.popen, ForkedProcess) and task.out_fd is None and task.err_fd is None:
                self._reap(task, wait=0)

    # ---- watching -------------------------------------------------------------------

    def fds(self) -> list[int]:
        return list(self._readers)

    def on_readable(self, fd: int) -> None:
        handler = self._readers.get(fd)
        if handler is not None:
            handler()

    def _on_process_output(self, task: Task, fd: int, sink: Tail) -> None:
        if not _read_available(fd, sink):
            self._readers.pop(fd, None)
            if fd == task.out_fd:
                task.out_fd = None
            else:
                task.err_fd = None
            if task.out_fd is None and task.err_fd is None:
                self._reap(task, wait=0.05)

    def _on_child_output(self, child: ChildProc, fd: int, which: str) -> None:
        task = child.task  # descriptor-level writes: the running job's, as far as anyone can tell
        sink = None if task is None else (task.out if which == "out" else task.err)
        if not _read_available(fd, sink):
            self._readers.pop(fd, None)

    def _on_child_results(self, child: ChildProc) -> None:
        frames, alive = child.read_results()
        queue = child.queue
        if frames and queue:
            # Descriptor-level output written before these outcomes: the running job's, as far as
            # the pipes tell (a batch of short pipelined jobs shares one read, not two per job).
            _read_available(child.out_fd, queue[0].out)
            _read_available(child.err_fd, queue[0].err)
        for res in frames:
            task = queue[0] if queue else None
            if "o" in res:  # a job's own output, written before its outcome
                if task is not None:
                    (task.out if res["o"] == "out" else task.err).add(res.get("d") or b"")
                continue
            if res.get("outcome") == "skipped":  # a queued job it will not run: answered at once
                self._skipped(child, res.get("id"))
                continue
            if task is None or res.get("id") != task.id:
                log.warning("call executor %d reported an unexpected job %r", child.pid, res.get("id"))
                continue
            child.queue.popleft()
            task.child = None
            res.pop("id", None)
            self._finish(task, res.pop("outcome", "failed"), **res)
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
        if task.kill_reason in ("cancelled", "interrupted"):
            self._finish_killed(task, None)
        else:
            self._finish(task, "returned", error="not started: its call executor ended first")

    def _child_died(self, child: ChildProc) -> None:
        task = child.task
        if task is not None:
            _read_available(child.out_fd, task.out)
            _read_available(child.err_fd, task.err)
        self._drop_child(child)
        code = child.popen.returncode
        if task is not None:
            child.queue.popleft()
            task.child = None
            if task.kill_reason is None and child.killed_for not in (None, task.id):
                # killed for the job before it, which ended as the kill came: not this job's doing
                self._finish(task, "returned", error="stopped with its call executor, killed for another job")
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
                    self.kill(task.id, "timeout")
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

    def _reap(self, task: Task, wait: float) -> None:
        popen = task.popen
        if popen is None or task.id not in self.tasks:
            return
        try:
            code = popen.wait(timeout=wait) if wait else popen.poll()
        except subprocess.TimeoutExpired:
            return
        if code is None:
            return
        for fd, sink in ((task.out_fd, task.out), (task.err_fd, task.err)):
            if fd is not None:
                _read_available(fd, sink)
                self._readers.pop(fd, None)
        try:
            os.killpg(popen.pid, signal.SIGKILL)  # whatever it left running in its session
        except OSError:
            pass
        for stream in (popen.stdout, popen.stderr):
            if stream is not None:
                stream.close()
        if task.kill_reason is not None:
            self._finish_killed(task, code)
        elif code == 0:
            self._finish(task, "succeeded", exit_code=0)
        else:
            self._finish(task, "failed", exit_code=code, **_exit_error(code, task))

    # ---- ending -----------------------------------------------------------------------

    def kill(self, job_id: str, reason: str) -> bool:
        """Kill a running job's process tree. ``reason``: timeout, cancelled or interrupted."""
        waiting = self.waiting.pop(job_id, None)
        if waiting is not None:  # never started: nothing to kill
            outcome = "cancelled" if reason == "cancelled" else "interrupted"
            job = waiting[0]
            self.finished.append(
                {"id": job_id, "attempt": job.get("attempt", 1), "lease": job.get("lease", 0), "outcome": outcome}
            )
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

    def _finish_killed(self, task: Task, code: int | None) -> None:
        reason = task.kill_reason
        if reason == "timeout":
            self._finish(
                task, "timeout", exit_code=code, error_type="Timeout",
                error=f"timed out after {task.job.get('timeout')}s; its process tree was killed",
            )  # fmt: skip
        elif reason == "cancelled":
            self._finish(task, "cancelled", exit_code=code, error="cancelled by request")
        elif reason == "interrupted":
            self._finish(task, "interrupted", exit_code=code, error="the worker shut down")
        else:
            self._finish(
                task, "failed", exit_code=code, error_type="ProcessDied",
                error=f"the job's process died ({_describe_code(code)})",
            )  # fmt: skip

    def _finish(self, task: Task, outcome: str, **fields: Any) -> None:
        if self.tasks.pop(task.id, None) is None:
            return
        if "inputs" in task.job and task.job["kind"] != "call":
            (self.cache.root.parent / "inputs" / f"{task.id}.json").unlink(missing_ok=True)
        stdout, stderr = task.output()
        res = {
            "id": task.id,
            "attempt": task.attempt,
            "lease": task.job.get("lease", 0),
            "outcome": outcome,
            "runtime": time.monotonic() - task.started,
        }
        if stdout:  # the broker takes a missing stream as empty
            res["stdout"] = stdout
        if stderr:
            res["stderr"] = stderr
        res.update(fields)
        self.finished.append(res)

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
            self.kill(jid, "interrupted")
        for child in list(self.children):
            self._drop_child(child)
        if self.forks is not None:
            self.forks.close()
        return ids


def _timed(task: Task) -> bool:
    """Whether the task's deadline still needs enforcing: it runs, or it was asked to skip and started."""
    return task.kill_reason is None or (task.child is not None and task.child.task is task)


def _describe_code(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _exit_error(code: int, task: Task) -> dict[str, Any]:
    last = task.err.text().strip().splitlines()
    hint = f": {last[-1][:300]}" if last else ""
    return {"error": f"{_describe_code(code)}{hint}", "error_type": "ExitCode" if code > 0 else "Signal"}
