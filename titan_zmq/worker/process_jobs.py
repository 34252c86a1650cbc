"""Shell, script and archive jobs on the worker: each its own process, in a new session.

A script or archive job forks from the fork server's warm interpreter when its environment
allows it (``forkserver.py``), else starts as a fresh one; a shell job runs ``/bin/sh -c``. Its
stdout and stderr are read as they come; it ends when both pipes closed and it was reaped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from titan_zmq.errors import ForkServerError
from titan_zmq.job import Outcome
from titan_zmq.process import die_with_parent
from titan_zmq.worker.attempts import Attempts, Task, describe_code
from titan_zmq.worker.forkserver import ForkedProcess, ForkServer
from titan_zmq.worker.output import Tail, read_available

log = logging.getLogger(__name__)


def _limit_memory(mb: int | None) -> Callable[[], None]:
    def setup() -> None:
        die_with_parent()
        if mb:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))

    return setup


class ProcessJobs(Attempts):
    """The executor's shell, script and archive jobs. The attributes are set by ``Executor.__init__``."""

    forks: ForkServer | None  # the warm interpreter script jobs fork from (None: --no-fork-server)
    _fork_fd: int | None  # its report pipe, while it runs
    process_env: dict[str, str]  # the worker's env with the titan_sdk shim appended to PYTHONPATH

    def _job_env(self, job: dict[str, Any]) -> dict[str, str]:
        env = dict(self.process_env)
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

    def _start_process(self, task: Task) -> None:
        job = task.job
        cwd: str | None = job.get("cwd")  # a folder of its own, for a job with input or output files
        if job["kind"] == "shell":
            argv = ["/bin/sh", "-c", job["target"], "titan-job", *job.get("args", [])]
        else:
            sha = job["blob"]
            if not self.cache.has(sha):
                self._finish(task, Outcome.CACHE_MISS, error="script not in the cache")
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

    def _on_process_output(self, task: Task, fd: int, sink: Tail) -> None:
        if not read_available(fd, sink):
            self._readers.pop(fd, None)
            if fd == task.out_fd:
                task.out_fd = None
            else:
                task.err_fd = None
            if task.out_fd is None and task.err_fd is None:
                self._reap(task, wait=0.05)

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
                read_available(fd, sink)
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
            self._finish(task, Outcome.SUCCEEDED, exit_code=0)
        else:
            self._finish(task, Outcome.FAILED, exit_code=code, **_exit_error(code, task))


def _exit_error(code: int, task: Task) -> dict[str, Any]:
    last = task.err.text().strip().splitlines()
    hint = f": {last[-1][:300]}" if last else ""
    return {"error": f"{describe_code(code)}{hint}", "error_type": "ExitCode" if code > 0 else "Signal"}
