"""A data directory as one stream of bytes, for shipping it: the leader reads, a follower writes.

A position is ``(generation, offset)``: ``offset`` bytes into ``journal-<generation>.aof``.
Positions order as tuples, and a follower's files are byte for byte its leader's: the same
generations, the same journal bytes, and the snapshot files the leader's compactions wrote,
copied whole once they are complete. So a follower that becomes leader starts the way a
restarted broker does: it replays its own directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from titan_zmq.aof.journal import drop_before, generations, journal_path, snapshot_path
from titan_zmq.aof.log import AppendLog, check_damage, fsync_dir, scan, truncate
from titan_zmq.errors import TitanError
from titan_zmq.ha.grants import START, Pos

log = logging.getLogger(__name__)


class Gone(TitanError):
    """The bytes asked for were compacted away: the reader needs the snapshot that replaced them."""

    code = "gone"


class StreamGap(TitanError):
    """Data arrived for a position this directory does not end at."""

    code = "stream_gap"


class Mirror:
    """Read and write one data directory by position."""

    def __init__(self, root: Path, fsync: str = "everysec") -> None:
        self.root = root
        self.fsync = fsync
        self._writer: AppendLog | None = None
        self._writer_gen = 0
        self._snap_tmp: tuple[int, int] | None = None  # (generation, bytes written) of a snapshot arriving
        self._fds: dict[int, int] = {}  # journal generation -> a descriptor open for reading

    # ---- what is here -------------------------------------------------------------------

    def base(self) -> int:
        """The newest complete snapshot's generation (0: none)."""
        snaps, _ = generations(self.root)
        return snaps[-1] if snaps else 0

    def end(self) -> Pos:
        """Where this directory's journal ends."""
        if self._writer is not None:
            return (self._writer_gen, self._writer.size)
        snaps, journals = generations(self.root)
        if journals and (not snaps or journals[-1] >= snaps[-1]):
            g = journals[-1]
            return (g, journal_path(self.root, g).stat().st_size)
        if snaps:
            return (snaps[-1], 0)
        return START

    def first(self) -> Pos:
        """The earliest position whose bytes are still here (after it, everything to the end is)."""
        base = self.base()
        return (base, 0) if base else START

    # ---- reading (the leader's side) ----------------------------------------------------

    def read(self, at: Pos, until: Pos, limit: int) -> tuple[Pos, bytes] | None:
        """Up to ``limit`` bytes from ``at``, stopping at ``until``; the position they start at (a
        finished generation moves on to the next). None when ``at`` has reached ``until``. Raises
        Gone when those bytes were compacted into a snapshot."""
        g, off = at
        while at < until:
            fd = self._reader(g)
            stop = until[1] if g == until[0] else os.fstat(fd).st_size  # an older generation is complete
            if off >= stop:
                if g >= until[0]:
                    return None
                g, off = g + 1, 0
                at = (g, off)
                continue
            return (g, off), os.pread(fd, min(limit, stop - off), off)
        return None

    def _reader(self, gen: int) -> int:
        """A descriptor open on journal ``gen`` (kept; those of older generations are closed)."""
        fd = self._fds.get(gen)
        if fd is not None:
            return fd
        try:
            fd = os.open(journal_path(self.root, gen), os.O_RDONLY)
        except FileNotFoundError:
            raise Gone(f"journal {gen} is no longer here (compacted into snapshot {self.base()})") from None
        for old in [g for g in self._fds if g < gen - 1]:  # a deleted file's space comes back when closed
            os.close(self._fds.pop(old))
        self._fds[gen] = fd
        return fd

    def snapshot_size(self, gen: int) -> int:
        return snapshot_path(self.root, gen).stat().st_size

    def read_snapshot(self, gen: int, offset: int, limit: int) -> bytes:
        with open(snapshot_path(self.root, gen), "rb") as fh:
            return os.pread(fh.fileno(), limit, offset)

    # ---- writing (a follower's side) ----------------------------------------------------

    def append(self, at: Pos, data: bytes) -> Pos:
        """Write the leader's bytes at ``at`` (which must be this directory's end, or the start of a
        later generation). Durable under ``always`` when it returns. Returns the new end."""
        g, off = at
        if self._writer is None or self._writer_gen != g:
            end = self.end()
            if at != end and not (off == 0 and g > end[0]):
                raise StreamGap(f"data for {at} but this copy ends at {end}")
            self.close()
            self._writer = AppendLog(journal_path(self.root, g), self.fsync)
            self._writer_gen = g
            if off == 0 and self._writer.size == 0:
                fsync_dir(self.root)
        if self._writer.size != off:
            raise StreamGap(f"data for {at} but this copy ends at {(g, self._writer.size)}")
        self._writer.write_raw(data)
        return (g, self._writer.size)

    def sync(self) -> None:
        if self._writer is not None:
            self._writer.sync()

    def truncate(self, to: Pos) -> None:
        """Cut everything past ``to``: what this member wrote that its leader's journal does not hold."""
        self.close()
        g, off = to
        snaps, journals = generations(self.root)
        if snaps and to < (snaps[-1], 0):  # the cut falls before the newest snapshot: none of it can stay
            log.warning("dropping this member's whole copy of the journal: it differs from the leader's "
                        "before its snapshot %d", snaps[-1])  # fmt: skip
            for s in snaps:
                snapshot_path(self.root, s).unlink(missing_ok=True)
            for j in journals:
                journal_path(self.root, j).unlink(missing_ok=True)
            fsync_dir(self.root)
            return
        for s in snaps:
            if s > g:
                snapshot_path(self.root, s).unlink(missing_ok=True)
        for j in journals:
            if j > g:
                journal_path(self.root, j).unlink(missing_ok=True)
        path = journal_path(self.root, g)
        if path.exists() and path.stat().st_size > off:
            log.warning("cutting %d byte(s) off %s: written by a leader that lost its place, never acknowledged",
                        path.stat().st_size - off, path.name)  # fmt: skip
            truncate(path, off)
        fsync_dir(self.root)

    def snapshot_part(self, gen: int, offset: int, data: bytes, last: bool) -> None:
        """A piece of the leader's snapshot ``gen``; the last one makes it complete and drops what it replaces."""
        tmp = snapshot_path(self.root, gen).with_name(snapshot_path(self.root, gen).name + ".tmp")
        if offset == 0:
            self._snap_tmp = (gen, 0)
            tmp.write_bytes(b"")
        if self._snap_tmp is None or self._snap_tmp != (gen, offset):
            raise StreamGap(f"snapshot {gen} piece at offset {offset} out of order")
        with open(tmp, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
            if last:
                fh.flush()
                os.fsync(fh.fileno())
        self._snap_tmp = (gen, offset + len(data))
        if not last:
            return
        self._snap_tmp = None
        os.replace(tmp, snapshot_path(self.root, gen))
        fsync_dir(self.root)
        if self._writer is not None and self._writer_gen < gen:
            self.close()
        drop_before(self.root, gen)
        fsync_dir(self.root)

    def cut_torn(self) -> Pos:
        """Cut a torn batch off the newest journal (a copy can stop in the middle of one). Returns the end."""
        self.close()
        _, journals = generations(self.root)
        if journals:
            path = journal_path(self.root, journals[-1])
            res = scan(path, None)
            if res.damage is not None:
                check_damage(res.damage, last_file=True)
                truncate(path, res.damage.offset)
        return self.end()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                log.error("closing the journal copy %s: %s", self._writer.path, exc)
            self._writer = None
            self._writer_gen = 0
