"""A broker's data directory: snapshot + journal generations, replay, compaction.

Files, for generation ``g``::

    snapshot-<g>.tzs   live state at the moment journal <g> was started (absent for the first)
    journal-<g>.aof    every committed batch since then
    LOCK               held (flock) by the broker or `titan aof` command using the directory

Compaction moves to generation g+1: journal g+1 is opened at a turn boundary (new
batches go there), the live state of that moment is written to ``snapshot-<g+1>.tzs.tmp``,
fsynced and renamed. Only then are snapshot g and journal g deleted. Whatever moment
a crash strikes, start-up finds either snapshot g+1 complete (replay it and journal g+1)
or not (replay snapshot g, journal g and journal g+1): the swap is atomic.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titan_zmq.aof.log import COMMIT, AppendLog, Damage, check_damage, frame, fsync_dir, scan, truncate
from titan_zmq.aof.records import LEGACY_SNAPSHOT_END, Header, SnapshotEnd, encode, letter
from titan_zmq.errors import AOFCorrupt, DataDirLocked, TitanError

log = logging.getLogger(__name__)

_SNAP = re.compile(r"snapshot-(\d{8})\.tzs")
_JOURNAL = re.compile(r"journal-(\d{8})\.aof")
SNAPSHOT_VERSION = 1
_SNAP_BATCH = 1000  # ops per committed batch inside a snapshot file

Apply = Callable[[list[Any]], None]


def snapshot_path(root: Path, gen: int) -> Path:
    return root / f"snapshot-{gen:08d}.tzs"


def journal_path(root: Path, gen: int) -> Path:
    return root / f"journal-{gen:08d}.aof"


@dataclass
class LoadReport:
    """What a start-up replay read."""

    snapshot: Path | None = None
    journals: list[Path] = field(default_factory=list)
    records: int = 0
    batches: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cut: Damage | None = None  # a torn tail that was cut off


def generations(root: Path) -> tuple[list[int], list[int]]:
    """The snapshot generations and journal generations present, ascending."""
    snaps, journals = [], []
    for p in root.iterdir():
        m = _SNAP.fullmatch(p.name)
        if m:
            snaps.append(int(m.group(1)))
        m = _JOURNAL.fullmatch(p.name)
        if m:
            journals.append(int(m.group(1)))
    return sorted(snaps), sorted(journals)


def drop_before(root: Path, keep_from: int) -> None:
    """Delete the snapshots and journals of generations older than ``keep_from``."""
    snaps, journals = generations(root)
    for g in snaps:
        if g < keep_from:
            snapshot_path(root, g).unlink(missing_ok=True)
    for g in journals:
        if g < keep_from:
            journal_path(root, g).unlink(missing_ok=True)


def plan(root: Path) -> tuple[int | None, list[int]]:
    """The snapshot to start from (None: the empty state) and the journals to replay after it."""
    snaps, journals = generations(root)
    base = snaps[-1] if snaps else None
    return base, [g for g in journals if base is None or g >= base]


class DataDir:
    """The durable home of one broker's state."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fsync: str = "everysec",
        *,
        compact_ratio: float = 4.0,
        compact_min_bytes: int = 64 << 20,
    ) -> None:
        self.root = Path(path)
        self.fsync = fsync
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.gen = 1
        self.writer: AppendLog | None = None
        self.snapshot_bytes = 0
        self._lock_fd: int | None = None
        self._compactor: threading.Thread | None = None
        self.compactions = 0
        self.last_compaction: dict[str, Any] = {}

    # ---- locking -----------------------------------------------------------------------

    def lock(self) -> None:
        """Take the directory for this process, or raise DataDirLocked naming the holder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TitanError(f"cannot create the data directory {self.root}: {exc.strerror}") from None
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(
                f"the data directory {self.root} is in use by process {holder} (a broker or `titan aof`); "
                "stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- start-up ----------------------------------------------------------------------

    def load(self, apply: Apply) -> LoadReport:
        """Replay snapshot and journals into ``apply``; cut a torn tail; open the journal for appends.

        Raises AOFCorrupt for damage a crash does not explain.
        """
        t0 = time.perf_counter()
        if self._lock_fd is None:
            self.lock()
        for tmp in self.root.glob("*.tmp"):
            log.info("removing %s, left by a compaction that did not finish", tmp)
            tmp.unlink()
        base, logs = plan(self.root)
        report = LoadReport()
        # Replay allocates millions of containers that all live on: the cyclic GC would rescan
        # them again and again (replay time grew with the square of the state). Pause it.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._replay(base, logs, apply, report)
        finally:
            if was_enabled:
                gc.enable()
        self.gen = logs[-1] if logs else (base or 1)
        if base is not None:  # without a snapshot every journal is still needed
            self._cleanup(base)
        self.writer = AppendLog(journal_path(self.root, self.gen), self.fsync)
        fsync_dir(self.root)
        report.seconds = time.perf_counter() - t0
        return report

    def _replay(self, base: int | None, logs: list[int], apply: Apply, report: LoadReport) -> None:
        if base is not None:
            path = snapshot_path(self.root, base)
            report.snapshot = path
            self.snapshot_bytes = path.stat().st_size
            read_snapshot(path, apply, report)
        for i, g in enumerate(logs):
            path = journal_path(self.root, g)
            res = scan(path, apply)
            report.journals.append(path)
            report.records += res.records
            report.batches += res.batches
            report.bytes += res.good_end
            if res.damage is not None:
                last = i == len(logs) - 1
                check_damage(res.damage, last)
                log.warning("journal %s", res.damage.describe())
                log.warning("cut off the torn tail of %s at offset %d (a crash left it)", path, res.damage.offset)
                truncate(path, res.damage.offset)
                report.cut = res.damage

    def _cleanup(self, keep_from: int) -> None:
        """Delete generations older than ``keep_from`` (left by a compaction cut short)."""
        drop_before(self.root, keep_from)

    # ---- appending ---------------------------------------------------------------------

    def append(self, op: list[Any]) -> None:
        assert self.writer is not None, "load() first"
        self.writer.add(op)

    def append_batch(self, ops: list[list[Any]]) -> None:
        assert self.writer is not None, "load() first"
        self.writer.add_batch(ops)

    def commit(self, sync: bool = True) -> int:
        assert self.writer is not None, "load() first"
        return self.writer.commit(sync)

    def sync(self) -> None:
        """fsync the journal now (after ``commit(sync=False)`` under ``always``)."""
        assert self.writer is not None, "load() first"
        self.writer.sync()

    @property
    def journal_bytes(self) -> int:
        return self.writer.size if self.writer is not None else 0

    def needs_compaction(self) -> bool:
        if self.compacting or self.writer is None:
            return False
        return self.writer.size > max(self.compact_min_bytes, self.compact_ratio * self.snapshot_bytes)

    @property
    def compacting(self) -> bool:
        return self._compactor is not None and self._compactor.is_alive()

    # ---- compaction --------------------------------------------------------------------

    def compact(self, ops: list[list[Any]], background: bool = True) -> None:
        """Start generation g+1 with ``ops`` (the live state now) as its snapshot.

        Call at a turn boundary, after ``commit()``. With ``background`` the snapshot file is
        written by a thread while new batches already go to the new journal.
        """
        if self.compacting:
            raise TitanError("a compaction is already running")
        assert self.writer is not None, "load() first"
        self.writer.close()
        old, new = self.gen, self.gen + 1
        self.gen = new
        self.writer = AppendLog(journal_path(self.root, new), self.fsync)
        fsync_dir(self.root)

        def work() -> None:
            t0 = time.perf_counter()
            try:
                size = write_snapshot(snapshot_path(self.root, new), ops, new)
            except Exception:
                log.exception("compaction to generation %d failed; generation %d is kept", new, old)
                return
            self._cleanup(new)
            self.snapshot_bytes = size
            self.compactions += 1
            self.last_compaction = {"generation": new, "ops": len(ops), "bytes": size,
                                    "seconds": time.perf_counter() - t0}  # fmt: skip
            log.info("compacted the journal: generation %d, %d ops, %d bytes in %.2fs",
                     new, len(ops), size, time.perf_counter() - t0)  # fmt: skip

        if background:
            self._compactor = threading.Thread(target=work, name="titan-aof-compact", daemon=True)
            self._compactor.start()
        else:
            work()

    def wait_compaction(self, timeout: float | None = None) -> None:
        if self._compactor is not None:
            self._compactor.join(timeout)

    def close(self) -> None:
        """Finish a running compaction, commit, fsync, release the directory."""
        self.wait_compaction()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.unlock()


_HEADER = letter(Header)
SNAPSHOT_ENDS = frozenset({letter(SnapshotEnd), LEGACY_SNAPSHOT_END})  # what ends a snapshot file
SNAPSHOT_FRAMING = frozenset({letter(Header)}) | SNAPSHOT_ENDS  # a snapshot's records that are not state


def write_snapshot(path: Path, ops: list[list[Any]], gen: int) -> int:
    """Write ``ops`` as a complete snapshot file, atomically (tmp, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    with open(tmp, "wb") as fh:
        chunk: list[bytes] = [frame(encode(Header(SNAPSHOT_VERSION, gen, time.time()))), frame([COMMIT, 1])]
        n = 0
        for op in ops:
            chunk.append(frame(op))
            n += 1
            if n == _SNAP_BATCH:
                chunk.append(frame([COMMIT, n]))
                data = b"".join(chunk)
                fh.write(data)
                size += len(data)
                chunk, n = [], 0
        if n:
            chunk.append(frame([COMMIT, n]))
        chunk += [frame(encode(SnapshotEnd(len(ops)))), frame([COMMIT, 1])]
        data = b"".join(chunk)
        fh.write(data)
        size += len(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def read_snapshot(path: Path, apply: Apply, report: LoadReport | None = None) -> int:
    """Replay a snapshot file; it must be whole (its end record present). Returns its op count."""
    count = 0
    end: list[int] = []

    def on_op(op: list[Any]) -> None:
        nonlocal count
        kind = op[0]
        if kind == _HEADER:
            if op[1] != SNAPSHOT_VERSION:
                raise AOFCorrupt(f"{path}: snapshot version {op[1]}, not {SNAPSHOT_VERSION}; use a matching titan_zmq")
            return
        if kind in SNAPSHOT_ENDS:
            end.append(op[1])
            return
        count += 1
        apply(op)

    res = scan(path, on_op)
    if res.damage is not None:
        check_damage(res.damage, last_file=False)
    if not end or end[0] != count:
        raise AOFCorrupt(
            f"{path}: the snapshot is incomplete ({count} op(s), end record {end[0] if end else 'missing'}); "
            f"run `titan aof repair {path.parent}`"
        )
    if report is not None:
        report.records += res.records
        report.batches += res.batches
        report.bytes += res.good_end
    return count
