"""Jobs' output lines: a tail of each job in memory, the whole log on disk with a data directory.

Lines are numbered per job from 1 (``seq``), so a reader can ask for "what came after line
n" and a follower can drop what it already has. On disk each job has
``<data-dir>/logs/<job id>.log`` with one line per output line::

    <seq> TAB <unix time> TAB <out|err> TAB <text>
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from titan_zmq.job import is_job_id

log = logging.getLogger(__name__)

Line = tuple[int, float, str, str]  # seq, time, stream, text


class LogStore:
    """Per-job tails (``tail_lines`` each, ``memory_lines`` in all) and, with ``root``, full files."""

    def __init__(self, tail_lines: int = 1000, memory_lines: int = 1_000_000, root: Path | None = None,
                 max_line: int = 8192) -> None:  # fmt: skip
        self.tail_lines = tail_lines
        self.max_line = max_line  # characters kept of one line; the rest is cut, and the line says so
        self.memory_lines = memory_lines
        self.root = root
        self.tails: OrderedDict[str, deque[Line]] = OrderedDict()  # oldest job first
        self.seqs: dict[str, int] = {}
        self.total = 0
        self.lines_in = 0
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path | None:
        """The file that keeps ``job_id``'s whole log; None without a data directory, or for a string
        that is no job id (an id from a request must never name a path outside the log folder)."""
        if self.root is None or not is_job_id(job_id):
            return None
        return self.root / f"{job_id}.log"

    def add(self, entries: list[list[Any]], known: Any) -> dict[str, list[Line]]:
        """Store lines ``[job_id, time, stream, text]`` of jobs in ``known``; returns them numbered, by job."""
        by_job: dict[str, list[Line]] = {}
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 4:
                continue
            jid, ts, stream, text = entry
            if not isinstance(jid, str) or jid not in known or not isinstance(text, str):
                continue
            if len(text) > self.max_line:
                text = f"{text[: self.max_line]} [... {len(text) - self.max_line} characters cut: max_log_line]"
            seq = self.seqs.get(jid)
            if seq is None:
                seq = self._last_on_disk(jid)
            seq += 1
            self.seqs[jid] = seq
            line: Line = (seq, float(ts) if isinstance(ts, (int, float)) else 0.0, "err" if stream == "err" else "out",
                          text)  # fmt: skip
            by_job.setdefault(jid, []).append(line)
        for jid, lines in by_job.items():
            tail = self.tails.get(jid)
            if tail is None:
                tail = self.tails[jid] = deque(maxlen=self.tail_lines)
            before = len(tail)
            tail.extend(lines)
            self.total += len(tail) - before
            self.lines_in += len(lines)
            if self.root is not None:
                self._write(jid, lines)
        while self.total > self.memory_lines and self.tails:
            _, old = self.tails.popitem(last=False)
            self.total -= len(old)
        return by_job

    def _write(self, jid: str, lines: list[Line]) -> None:
        path = self.path(jid)
        assert path is not None
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.writelines(f"{seq}\t{ts:.6f}\t{stream}\t{text}\n" for seq, ts, stream, text in lines)
        except OSError as exc:
            log.error("cannot write the log of job %s to %s: %s", jid, path, exc)

    def _last_on_disk(self, jid: str) -> int:
        """The last line number a previous broker run wrote for this job (0 if none)."""
        path = self.path(jid)
        if path is None or not path.exists():
            return 0
        last = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for row in fh:
                head = row.split("\t", 1)[0]
                if head.isdigit():
                    last = int(head)
        return last

    def read(self, jid: str, after: int, limit: int) -> tuple[list[Line], bool]:
        """Lines numbered after ``after``, at most ``limit``; and whether more follow."""
        tail = self.tails.get(jid)
        if tail and tail[0][0] <= after + 1:
            lines = [ln for ln in tail if ln[0] > after]
            return lines[:limit], len(lines) > limit
        path = self.path(jid)
        if path is not None and path.exists():
            return self._read_disk(path, after, limit)
        if tail:  # older lines were dropped from memory and there is no file: give what is left
            lines = list(tail)
            return lines[:limit], len(lines) > limit
        return [], False

    @staticmethod
    def _read_disk(path: Path, after: int, limit: int) -> tuple[list[Line], bool]:
        out: list[Line] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for row in fh:
                parts = row.rstrip("\n").split("\t", 3)
                if len(parts) != 4 or not parts[0].isdigit():
                    continue
                seq = int(parts[0])
                if seq <= after:
                    continue
                if len(out) >= limit:
                    return out, True
                out.append((seq, float(parts[1]), parts[2], parts[3]))
        return out, False

    def has(self, jid: str) -> bool:
        if jid in self.tails:
            return True
        path = self.path(jid)
        return path is not None and os.path.exists(path)
