"""Call executors: long-lived processes that run ``call`` jobs one after another (see ``child.py``)."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from titan_zmq.process import die_with_parent, kill_tree
from titan_zmq.worker.child import split_frames

if TYPE_CHECKING:
    from titan_zmq.worker.attempts import Task

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")


class ChildProc:
    """A long-lived process that runs call jobs one after another.

    ``queue`` holds the tasks sent to it, in order: the first runs, the others wait there (a
    pipeline of short jobs). Its outcome pipe carries, in order, each job's output and outcome.
    """

    def __init__(self, env: dict[str, str], memory_mb: int | None) -> None:
        job_r, self.job_w = os.pipe()
        self.res_r, res_w = os.pipe()
        ctl_r, self.ctl_w = os.pipe()
        argv = [sys.executable, "-m", "titan_zmq.worker.child", str(job_r), str(res_w), str(memory_mb or 0),
                str(ctl_r)]  # fmt: skip
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(job_r, res_w, ctl_r), env=env, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        except BaseException:
            for fd in (self.job_w, self.res_r, self.ctl_w):
                os.close(fd)
            raise
        finally:
            for fd in (job_r, res_w, ctl_r):
                os.close(fd)
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.out_fd = self.popen.stdout.fileno()
        self.err_fd = self.popen.stderr.fileno()
        for fd in (self.res_r, self.out_fd, self.err_fd, self.job_w):
            os.set_blocking(fd, False)
        self.outbuf = bytearray()  # job frames not written yet
        self.batch: list[dict[str, Any]] = []  # job messages not framed yet (one frame per flush)
        self.batch_tasks: list[Task] = []
        self.sent = self.written = 0  # bytes queued and written since it started
        self.ends: deque[tuple[Task, int]] = deque()  # where each unwritten task's frame ends
        self.buf = bytearray()
        self.queue: deque[Task] = deque()
        self.dead = False
        self.killed_for: str | None = None  # the job it was killed to stop

    @property
    def task(self) -> Task | None:
        """The task it runs now."""
        return self.queue[0] if self.queue else None

    def skip(self, job_id: str) -> None:
        """Ask it not to start a job it holds: it answers ``skipped`` at once if the job has not started."""
        self._write(self.ctl_w, {"skip": job_id})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, msg: dict[str, Any], task: Task) -> None:
        """Queue ``task``'s job message; :meth:`flush` writes what is queued: the messages queued
        since the last flush as one frame (a list of them), in one write."""
        self.batch.append(msg)
        self.batch_tasks.append(task)

    def _frame_batch(self) -> None:
        body = msgpack.packb(self.batch, use_bin_type=True)
        self.outbuf += _HEADER.pack(len(body))
        self.outbuf += body
        self.sent += 4 + len(body)
        self.ends.extend((task, self.sent) for task in self.batch_tasks)
        self.batch, self.batch_tasks = [], []

    def flush(self) -> bool:
        """Write what the pipe takes without blocking; True once nothing is left. OSError if it is broken."""
        if self.batch:
            self._frame_batch()
        while self.outbuf:
            try:
                n = os.write(self.job_w, self.outbuf)
            except BlockingIOError:  # full: the child is busy with a long job; the rest goes later
                break
            del self.outbuf[:n]
            self.written += n
        while self.ends and self.ends[0][1] <= self.written:
            self.ends.popleft()
        return not self.outbuf

    def undelivered(self) -> list[Task]:
        """Tasks whose job message did not reach the pipe whole (or was never written)."""
        return [task for task, end in self.ends if end > self.written] + self.batch_tasks

    @staticmethod
    def _write(fd: int, msg: dict[str, Any]) -> None:
        body = msgpack.packb(msg, use_bin_type=True)
        data = memoryview(_HEADER.pack(len(body)) + body)
        while data:
            n = os.write(fd, data)
            data = data[n:]

    def read_results(self) -> tuple[list[dict[str, Any]], bool]:
        """Frames the child wrote (outputs and outcomes, in order), and False once its pipe closed."""
        alive = True
        while True:
            try:
                chunk = os.read(self.res_r, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not chunk:
                alive = False
                break
            self.buf += chunk
        out, used = split_frames(self.buf)
        del self.buf[:used]
        return out, alive

    def close(self) -> None:
        self.dead = True
        kill_tree(self.popen.pid)
        for fd in (self.job_w, self.res_r, self.ctl_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("call executor %d did not exit after SIGKILL", self.popen.pid)
