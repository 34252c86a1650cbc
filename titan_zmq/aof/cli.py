"""``titan aof check|repair|compact DIR`` and ``titan kv get|set|del|ls``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register the ``aof`` and ``kv`` command groups on the main parser."""
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

    p = sub.add_parser(
        "kv", parents=[common], help="read and write the broker's KV store",
        description="The broker's KV store (durable with --data-dir).",
    )  # fmt: skip
    kv = p.add_subparsers(dest="kv_command", metavar="ACTION")
    q = kv.add_parser("get", parents=[common], help="print a key's value (exit 1 if missing)")
    q.add_argument("key")
    q.add_argument("--json", action="store_true", help="print the value as JSON")
    add_broker_addr(q)
    q = kv.add_parser(
        "set", parents=[common], help="set a key",
        description="Set KEY to VALUE. VALUE is read as JSON when it is valid JSON (5, true, [1,2], "
        '{"a":1}, "quoted"), else taken as a string; --string always takes it as a string.',
    )  # fmt: skip
    q.add_argument("key")
    q.add_argument("value")
    q.add_argument("--string", action="store_true", help="store VALUE as a string, even if it looks like JSON")
    q.add_argument("--ttl", type=float, default=None, metavar="S", help="expire the key after S seconds")
    add_broker_addr(q)
    q = kv.add_parser("del", parents=[common], help="delete a key (exit 1 if it did not exist)")
    q.add_argument("key")
    add_broker_addr(q)
    q = kv.add_parser("ls", parents=[common], help="list keys, optionally only those with a prefix")
    q.add_argument("prefix", nargs="?", default="")
    q.add_argument("--json", action="store_true", help="print the keys as a JSON list")
    add_broker_addr(q)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_aof(args: argparse.Namespace) -> int:
    from titan_zmq.aof import tools

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


def _print_value(value: Any, as_json: bool) -> None:
    if isinstance(value, str) and not as_json:
        print(value)
    else:
        print(json.dumps(value, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)))


def cmd_kv(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    if args.kv_command is None:
        print("titan kv: give an action: get, set, del or ls (see titan kv --help)", file=sys.stderr)
        return 2
    with TitanClient(args.broker) as client:
        kv = client.kv
        if args.kv_command == "get":
            if not kv.exists(args.key):
                print(f"titan: no key {args.key!r}", file=sys.stderr)
                return EXIT_FAIL
            _print_value(kv.get(args.key), args.json)
        elif args.kv_command == "set":
            value: Any = args.value
            if not args.string:
                try:
                    value = json.loads(args.value)
                except ValueError:
                    value = args.value
            kv.set(args.key, value, ttl=args.ttl)
        elif args.kv_command == "del":
            if not kv.delete(args.key):
                print(f"titan: no key {args.key!r}", file=sys.stderr)
                return EXIT_FAIL
        else:
            keys = kv.keys(args.prefix)
            if args.json:
                print(json.dumps(keys))
            else:
                for k in keys:
                    print(k)
    return EXIT_OK
