"""The attempts a worker holds: :class:`Task` (one attempt of a job), why one is stopped, and
:class:`Attempts`, what every kind of job shares in the executor: the table of tasks, the
descriptors watched, the outcomes not reported yet, and how an attempt ends.

:class:`~titan_zmq.worker.executors.Executor` is an Attempts that runs call jobs
(:mod:`~titan_zmq.worker.call_jobs`) and process jobs (:mod:`~titan_zmq.worker.process_jobs`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from titan_zmq.job import Outcome
from titan_zmq.worker.output import LogSink, Tail

if TYPE_CHECKING:
    from titan_zmq.worker.cache import BlobCache
    from titan_zmq.worker.calls import ChildProc
    from titan_zmq.worker.forkserver import ForkedProcess

# Why the worker stops an attempt (``Task.kill_reason``; ``Executor.kill``'s ``reason``). A timeout, a
# cancel and a shutdown end the attempt with the outcome of the same name, so those reasons are the
# Outcome members themselves: Outcome.TIMEOUT, Outcome.CANCELLED and Outcome.INTERRUPTED, one to one.
# STALE has no outcome of its own: a prefetched job queued behind a long one, asked not to start, goes
# back unstarted (Outcome.RETURNED), or fails as a killed process if it started all the same.
STALE = "stale"


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
        self.kill_reason: str | None = None  # why it is being stopped: see STALE

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


class Attempts:
    """What every kind of job shares in the executor, and how an attempt ends.

    The attributes are set by ``Executor.__init__``."""

    cache: BlobCache
    env: dict[str, str]
    memory_mb: int | None
    tasks: dict[str, Task]  # every attempt here that has not ended (running, or queued in a call executor)
    finished: list[dict[str, Any]]  # outcomes not taken yet (take_finished)
    _readers: dict[int, Callable[[], object]]  # descriptor -> what reads it when it is readable

    def _finish_killed(self, task: Task, code: int | None) -> None:
        """The outcome of an attempt that was stopped (or died): its kill reason's, else a death."""
        reason = task.kill_reason
        if reason == Outcome.TIMEOUT:
            self._finish(
                task, Outcome.TIMEOUT, exit_code=code, error_type="Timeout",
                error=f"timed out after {task.job.get('timeout')}s; its process tree was killed",
            )  # fmt: skip
        elif reason == Outcome.CANCELLED:
            self._finish(task, Outcome.CANCELLED, exit_code=code, error="cancelled by request")
        elif reason == Outcome.INTERRUPTED:
            self._finish(task, Outcome.INTERRUPTED, exit_code=code, error="the worker shut down")
        else:  # STALE that started all the same, or no reason: the process died
            self._finish(
                task, Outcome.FAILED, exit_code=code, error_type="ProcessDied",
                error=f"the job's process died ({describe_code(code)})",
            )  # fmt: skip

    def _finish(self, task: Task, outcome: str, **fields: Any) -> None:
        """Record the attempt's outcome for the broker (an Outcome, or the value a call executor sent)."""
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
        fetched = task.job.get("fetched")
        if fetched:  # where its input objects came from (titan status shows it)
            res["fetched"] = fetched
        res.update(fields)
        self.finished.append(res)


def describe_code(code: int | None) -> str:
    """An exit status in words: "exit code 3", "killed by SIGKILL"."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
