"""Offline tools on a data directory: check, repair, compact (``titan aof ...``).

They read and write records and know nothing of what the records mean: the broker's side
(``broker.offline``) rebuilds state from them through the callbacks it passes in.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from titan_zmq.aof.journal import SNAPSHOT_FRAMING, DataDir, journal_path, plan, snapshot_path, write_snapshot
from titan_zmq.aof.log import Damage, scan, truncate
from titan_zmq.errors import TitanError


def _files(root: Path) -> list[tuple[str, Path]]:
    if not root.is_dir():
        raise TitanError(f"{root} is not a directory; give the broker's --data-dir")
    base, logs = plan(root)
    files = [("snapshot", snapshot_path(root, base))] if base is not None else []
    files += [("journal", journal_path(root, g)) for g in logs]
    if not files:
        raise TitanError(f"{root} holds no snapshot-*.tzs or journal-*.aof files; is it a titan data directory?")
    return files


def _snapshot_ops(apply: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
    def on_op(op: list[Any]) -> None:
        if op[0] not in SNAPSHOT_FRAMING:
            apply(op)

    return on_op


def check(root: Path, apply: Callable[[list[Any]], None] | None = None) -> dict[str, Any]:
    """Read every file as a start would (without changing anything); report what is there and any
    damage. ``apply`` receives each state record (the broker's offline tools rebuild state with it)."""
    out: dict[str, Any] = {"dir": str(root), "files": [], "damage": None, "ok": True}
    stopped = False
    files = _files(root)
    for i, (kind, path) in enumerate(files):
        entry: dict[str, Any] = {"file": path.name, "kind": kind, "bytes": path.stat().st_size}
        out["files"].append(entry)
        if stopped:
            entry["skipped"] = "after the damage"
            continue
        on_op = apply if kind == "journal" or apply is None else _snapshot_ops(apply)
        res = scan(path, on_op)
        entry.update(records=res.records, batches=res.batches)
        if res.damage is not None:
            last = i == len(files) - 1
            entry["damage"] = res.damage.describe()
            out["damage"] = {
                "file": str(path), "offset": res.damage.offset, "record_offset": res.damage.at,
                "torn": res.damage.torn and kind == "journal",
                "fatal": not (res.damage.torn and last and kind == "journal"), "reason": res.damage.reason,
                "dropped_bytes": res.damage.dropped,
            }  # fmt: skip
            out["ok"] = False
            stopped = True
    out["records"] = sum(f.get("records", 0) for f in out["files"])
    return out


def repair(root: Path) -> dict[str, Any]:
    """Keep everything before the first damage; move what follows it aside. Returns what was done."""
    data = DataDir(root)
    data.lock()
    try:
        files = _files(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        report: dict[str, Any] = {"dir": str(root), "repaired": None, "moved_aside": [], "dropped_bytes": 0}
        damaged_at = None
        for i, (kind, path) in enumerate(files):
            res = scan(path, None)
            if res.damage is not None:
                damaged_at = i
                _repair_file(kind, path, res.damage, stamp, report)
                break
        if damaged_at is None:
            report["message"] = f"{root}: no damage found; nothing changed"
            return report
        for kind, path in files[damaged_at + 1 :]:
            if kind == "journal":  # later history cannot apply on top of a gap
                aside = path.with_name(f"{path.name}.damaged-{stamp}")
                path.rename(aside)
                report["moved_aside"].append(str(aside))
                report["dropped_bytes"] += aside.stat().st_size
        rep = report["repaired"]
        report["message"] = (
            f"{rep['file']}: kept {rep['kept_records']} record(s), the {rep['kept_bytes']} byte(s) before offset "
            f"{rep['offset']}; dropped {report['dropped_bytes']} byte(s) in all (copies kept as *.damaged-{stamp})"
        )
        return report
    finally:
        data.unlock()


def _repair_file(kind: str, path: Path, damage: Damage, stamp: str, report: dict[str, Any]) -> None:
    backup = path.with_name(f"{path.name}.damaged-{stamp}")
    shutil.copy2(path, backup)
    if kind == "snapshot":
        ops: list[list[Any]] = []
        res = scan(path, ops.append)
        body = [op for op in ops if op[0] not in SNAPSHOT_FRAMING]
        write_snapshot(path, body, int(path.stem.split("-")[1]))
        kept, kept_bytes = len(body), res.good_end
    else:
        res = scan(path, None)
        truncate(path, damage.offset)
        kept, kept_bytes = res.records, damage.offset
    report["repaired"] = {"file": str(path), "offset": damage.offset, "reason": damage.reason,
                          "kept_records": kept, "kept_bytes": kept_bytes, "backup": str(backup)}  # fmt: skip
    report["dropped_bytes"] += damage.dropped


def compact(
    root: Path, apply: Callable[[list[Any]], None], snapshot: Callable[[], list[list[Any]]]
) -> dict[str, Any]:
    """Replace snapshot and journals by one snapshot (the broker must be stopped): every record is
    fed to ``apply``, then ``snapshot()`` gives the records of the live state to write."""
    data = DataDir(root)
    data.lock()
    try:
        before = sum(p.stat().st_size for _, p in _files(root))
        t0 = time.perf_counter()
        report = data.load(apply)
        ops = snapshot()
        data.compact(ops, background=False)
        after = sum(p.stat().st_size for _, p in _files(root))
        return {
            "dir": str(root), "generation": data.gen, "records_read": report.records, "ops_written": len(ops),
            "bytes_before": before, "bytes_after": after, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
    finally:
        data.close()
