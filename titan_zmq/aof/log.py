"""Append-only files of records: ``[u32 length][u32 crc32][msgpack body]``, little endian.

A body is one operation, a msgpack array whose first item names it. Records are written
in batches, and every batch ends with a commit record (``["C", n]``, n = records in the
batch), so a batch counts on replay only when all of it reached the file: a broker turn
is journaled all or nothing.

Reading tells apart the two kinds of damage:

* **torn**: the file ends inside a record (or in a run of zero bytes, as a file system
  leaves after a crash), or after records of a batch whose commit never came. This is
  what a crash leaves; it is cut off with a warning.
* **corrupt**: a record fails its checksum or cannot be decoded, and more data follows.
  This is not what a crash leaves; the start stops with the file and the offset.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from titan_zmq.aof.records import COMMIT
from titan_zmq.errors import AOFCorrupt, ConfigError, JournalWriteError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 31  # a length above this is damage, not data
FSYNC_POLICIES = ("always", "everysec", "no")

_pack = msgpack.Packer(use_bin_type=True).pack


def frame(op: list[Any]) -> bytes:
    """One record: the header, then the op as msgpack."""
    body = _pack(op)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


@dataclass
class Damage:
    """Where a file stops being readable, and why."""

    path: Path
    offset: int  # the first byte that is not part of a good committed batch: what a repair keeps
    size: int  # the file's size
    torn: bool  # True: what a crash leaves (cut off); False: corruption in the middle
    reason: str
    at: int = -1  # the offset of the bad record itself

    @property
    def dropped(self) -> int:
        return self.size - self.offset

    def describe(self) -> str:
        kind = "torn tail" if self.torn else "corrupt record"
        at = self.at if self.at >= 0 else self.offset
        keep = f"; the last whole batch ends at offset {self.offset}" if self.offset != at else ""
        return f"{self.path}: {kind} at offset {at} ({self.reason}){keep}; {self.dropped} byte(s) from there on"


@dataclass
class ScanResult:
    """What a scan of one file found: committed ops, counts, and the damage if any."""

    records: int = 0
    batches: int = 0
    good_end: int = 0  # offset just past the last committed batch
    damage: Damage | None = None


def scan(path: Path, apply: Callable[[list[Any]], None] | None) -> ScanResult:
    """Read ``path``, calling ``apply`` with each op of each committed batch, in order.

    Commit records are not passed on. Returns where the good data ends and any damage;
    never raises for damage (the caller decides whether it is fatal).
    """
    data = path.read_bytes()
    view = memoryview(data)
    size = len(data)
    out = ScanResult()
    unpack_header = HEADER.unpack
    crc32 = zlib.crc32
    # One streaming unpacker over the whole file: read_bytes() takes each header, unpack() each body.
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(size, 1))
    unpacker.feed(data)
    read_bytes, unpack, tell = unpacker.read_bytes, unpacker.unpack, unpacker.tell
    batch: list[list[Any]] = []
    off = 0
    reason = ""
    torn = False
    while off < size:
        if off + 8 > size:
            reason, torn = f"the file ends {size - off} byte(s) into a record header", True
            break
        length, crc = unpack_header(read_bytes(8))
        end = off + 8 + length
        if length == 0 or length > MAX_RECORD:
            reason = f"impossible record length {length}"
            break
        if end > size:
            reason, torn = f"a record of {length} bytes but only {size - off - 8} left", True
            break
        if crc32(view[off + 8 : end]) != crc:
            reason, torn = "checksum mismatch", end == size  # a torn write of the last record
            break
        try:
            op = unpack()
        except Exception as exc:  # msgpack raises several unrelated types
            reason = f"undecodable body ({type(exc).__name__})"
            break
        if tell() != end or op.__class__ is not list or not op or op[0].__class__ is not str:
            reason = "a record that is not one operation"
            break
        off = end
        if op[0] == COMMIT:
            if len(op) > 1 and op[1] != len(batch):
                reason = f"a commit of {op[1]} record(s) after {len(batch)}"
                break
            if apply is not None:
                for item in batch:
                    apply(item)
            out.records += len(batch)
            out.batches += 1
            out.good_end = off
            batch = []
        else:
            batch.append(op)
    else:
        if not batch:
            return out
        reason, torn = f"{len(batch)} record(s) of a batch that was never committed", True
    if not torn and not _commit_follows(data, off + 1):
        # Nothing committed follows the damage: it lies in the batch being written when the
        # machine stopped (a power cut can leave zeros or stale blocks there). That is a torn tail.
        torn = True
    out.damage = Damage(path, out.good_end, size, torn, reason, off)
    return out


def _commit_follows(data: bytes, start: int) -> bool:
    """Whether a well-formed commit record starts anywhere at or after ``start``."""
    size = len(data)
    pos = data.find(b"\xa1C", start)  # a commit body starts with a fixarray, then the 1-char string "C"
    while pos != -1:
        hdr = pos - 9  # [u32 length][u32 crc][0x92 array of 2] precede the "C"
        if hdr >= start:
            length, crc = HEADER.unpack_from(data, hdr)
            end = hdr + 8 + length
            if 0 < length < 16 and end <= size and zlib.crc32(data[hdr + 8 : end]) == crc:
                try:
                    op = msgpack.unpackb(data[hdr + 8 : end])
                except Exception:
                    op = None
                if isinstance(op, list) and op and op[0] == COMMIT:
                    return True
        pos = data.find(b"\xa1C", pos + 1)
    return False


def truncate(path: Path, offset: int) -> None:
    """Cut ``path`` to ``offset`` bytes, durably."""
    with open(path, "r+b") as fh:
        fh.truncate(offset)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendLog:
    """Appends batches of records to one file under an fsync policy.

    ``always``: each ``commit()`` writes and fsyncs before returning (group commit: the
    broker calls it once per turn, before that turn's replies go out). ``everysec``: each
    commit writes (a crash of the broker loses nothing; the OS has the data) and a thread
    fsyncs once a second, so a machine crash loses at most about a second. ``no``: the OS
    flushes when it likes.
    """

    def __init__(self, path: Path, policy: str = "everysec") -> None:
        if policy not in FSYNC_POLICIES:
            raise ConfigError(f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}, got {policy!r}")
        self.path = path
        self.policy = policy
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the log
        self.size = self._fh.seek(0, os.SEEK_END)
        self._pending: list[bytes] = []
        self._count = 0
        self._lock = threading.Lock()
        self._unsynced = 0  # bytes written since the last fsync
        self._unsynced_since = 0.0
        self.stats = {"commits": 0, "records": 0, "fsyncs": 0, "max_unsynced_bytes": 0, "max_unsynced_age": 0.0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if policy == "everysec":
            self._thread = threading.Thread(target=self._sync_loop, name="titan-aof-fsync", daemon=True)
            self._thread.start()

    def add(self, op: list[Any]) -> None:
        """Queue one op for the next commit."""
        self._pending.append(frame(op))

    def add_batch(self, ops: list[list[Any]]) -> None:
        """Queue a turn's ops all or nothing: if one cannot be encoded, none is queued."""
        self._pending.extend([frame(op) for op in ops])

    @property
    def pending(self) -> int:
        return len(self._pending)

    def commit(self, sync: bool = True) -> int:
        """Write the queued ops as one batch (and fsync under ``always``, unless ``sync`` is False: the
        caller then calls ``sync()`` itself). Returns bytes written."""
        if not self._pending:
            return 0
        n = len(self._pending)
        self._pending.append(frame([COMMIT, n]))
        data = b"".join(self._pending)
        self._pending = []
        self.write_raw(data, sync)
        self.stats["commits"] += 1
        self.stats["records"] += n
        return len(data)

    def write_raw(self, data: bytes | memoryview, sync: bool = True) -> None:
        """Append bytes already framed (a follower's copy of its leader's stream) under the policy:
        fsynced before returning under ``always``. Raises JournalWriteError when the disk refuses."""
        try:
            with self._lock:
                view = memoryview(data)
                while view:
                    written = self._fh.write(view)
                    if written is None:  # pragma: no cover - only on non-blocking files
                        continue
                    view = view[written:]
                if self.policy == "always" and sync:
                    os.fsync(self._fh.fileno())
                    self.stats["fsyncs"] += 1
                else:
                    if not self._unsynced:
                        self._unsynced_since = time.monotonic()
                    self._unsynced += len(data)
                    self.stats["max_unsynced_bytes"] = max(self.stats["max_unsynced_bytes"], self._unsynced)
        except OSError as exc:
            try:  # take back a partial write, so that the next one starts where the file really ends
                self._fh.truncate(self.size)
            except OSError:
                pass  # the next start cuts the torn tail off
            raise JournalWriteError(
                f"cannot write the journal {self.path}: {exc.strerror or exc}; the broker stops so that nothing "
                "is acknowledged that is not on disk: free space (or fix the disk) and start it again"
            ) from None
        self.size += len(data)

    def sync(self) -> None:
        """fsync now (whatever the policy): everything written before the call is on disk when it returns.
        Writes are not held up meanwhile: the fsync goes through a duplicate of the file's descriptor,
        outside the lock (it covers the file, whichever descriptor wrote), so a group commit's thread
        flushes one turn while the loop writes the next."""
        with self._lock:
            if self._fh.closed:
                return
            fd = os.dup(self._fh.fileno())  # valid even if the file is closed meanwhile (a compaction)
            unsynced, since = self._unsynced, self._unsynced_since
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.stats["fsyncs"] += 1
            if unsynced:
                self.stats["max_unsynced_age"] = max(self.stats["max_unsynced_age"], time.monotonic() - since)
            self._unsynced = max(0, self._unsynced - unsynced)  # what was written while it ran is left

    def _sync_loop(self) -> None:
        while not self._stop.wait(1.0):
            if self._unsynced:
                try:
                    self.sync()
                except OSError as exc:
                    log.error("fsync of %s failed: %s", self.path, exc)

    def close(self) -> None:
        """Commit what is queued, fsync, and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.commit()
            self.sync()
        finally:
            with self._lock:
                self._fh.close()


def iter_records(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """Every readable record of ``path`` with its offset, commits included (for ``titan aof check``)."""
    data = path.read_bytes()
    off = 0
    while off + 8 <= len(data):
        length, crc = HEADER.unpack_from(data, off)
        end = off + 8 + length
        if length == 0 or end > len(data) or zlib.crc32(data[off + 8 : end]) != crc:
            return
        try:
            op = msgpack.unpackb(data[off + 8 : end], raw=False, strict_map_key=False)
        except Exception:
            return
        yield off, op
        off = end


def check_damage(damage: Damage, last_file: bool) -> None:
    """Raise AOFCorrupt for damage that must stop a start; torn tails of the last file pass."""
    if damage.torn and last_file:
        return
    where = "" if last_file else " (not the newest file, so not a crash's torn tail)"
    raise AOFCorrupt(
        f"{damage.describe()}{where}. The broker will not start on a damaged journal. Run "
        f"`titan aof check {damage.path.parent}` to see it, and `titan aof repair {damage.path.parent}` "
        f"to keep everything before offset {damage.offset} (it drops {damage.dropped} byte(s))"
    )
