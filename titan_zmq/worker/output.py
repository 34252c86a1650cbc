"""Jobs' output on the worker: the tail of each stream kept for the result, and the live log.

A job's stdout and stderr are read from non-blocking pipes (:func:`read_available`) into a
:class:`Tail` each: the last bytes go into the job's result, and whole lines go to the worker's
:class:`LogSink`, which the connection sends to the broker in batches (``LOG``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

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


def read_available(fd: int, sink: Tail | None) -> bool:
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
