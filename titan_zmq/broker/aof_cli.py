"""``titan aof check|repair|compact DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the ``aof`` command group on the main parser."""
    p = sub.add_parser(
        "aof", parents=[common], help="check, repair or compact a broker's data directory",
        description="Tools for a broker's --data-dir (snapshot + journal). repair and compact need the "
        "broker stopped; check reads only.",
    )  # fmt: skip
    aof = p.add_subparsers(dest="aof_command", metavar="ACTION")
    for name, text in (
        ("check", "read every record; report contents and damage (exit 1 if damaged)"),
        ("repair", "keep everything before the first damage; set the rest aside"),
        ("compact", "replace the journal by a snapshot of the live state"),
    ):
        q = aof.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        q.add_argument("dir", metavar="DIR", help="the broker's data directory")
        q.add_argument("--json", action="store_true", help="print the report as JSON")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_aof(args: argparse.Namespace) -> int:
    from titan_zmq.broker import offline as tools

    if args.aof_command is None:
        print("titan aof: give an action: check, repair or compact (see titan aof --help)", file=sys.stderr)
        return 2
    root = Path(args.dir)
    if args.aof_command == "check":
        report = tools.check(root)
        if args.json:
            print(json.dumps(report, indent=2))
            return EXIT_OK if report["ok"] else EXIT_FAIL
        for f in report["files"]:
            line = f"{f['file']:<28} {f['kind']:<8} {_human(f['bytes']):>10}"
            if "records" in f:
                line += f"  {f['records']:>9,} records in {f['batches']:,} batches"
            print(line + (f"  SKIPPED ({f['skipped']})" if "skipped" in f else ""))
        jobs = ", ".join(f"{n:,} {s}" for s, n in sorted(report["jobs"].items())) or "none"
        print(f"state: {sum(report['jobs'].values()):,} jobs ({jobs}); {report['kv_keys']:,} KV keys")
        d = report["damage"]
        if d is None:
            print(f"{root}: OK, no damage")
            return EXIT_OK
        what = "a torn tail (a crash left it; a start cuts it off)" if not d["fatal"] else "corruption"
        print(f"DAMAGE: {d['file']}: record at offset {d['record_offset']}: {d['reason']}; {what}; "
              f"keeping what is before offset {d['offset']} drops {d['dropped_bytes']:,} byte(s)")  # fmt: skip
        if d["fatal"]:
            print(f"run `titan aof repair {root}` to keep everything before offset {d['offset']}")
        return EXIT_FAIL
    if args.aof_command == "repair":
        report = tools.repair(root)
        print(json.dumps(report, indent=2) if args.json else report["message"])
        return EXIT_OK
    report = tools.compact(root)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{root}: compacted to generation {report['generation']}: {report['records_read']:,} records "
              f"read, {report['ops_written']:,} written; {_human(report['bytes_before'])} -> "
              f"{_human(report['bytes_after'])} in {report['seconds']:.2f}s")  # fmt: skip
    return EXIT_OK
