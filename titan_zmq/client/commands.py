"""Client commands beyond jobs: ``titan logs JOB [-f]`` and ``titan kv get|set|del|ls``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``logs`` and the ``kv`` command group on the main parser."""
    p = sub.add_parser(
        "logs", parents=[common], help="print a job's output (also after it ended); -f follows it live",
        description="Print a job's output lines: stdout lines to stdout, stderr lines to stderr. With -f, "
        "keep printing as the job writes, and exit when it ends (0 if it succeeded, 1 if not).",
    )  # fmt: skip
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="follow the log live until the job ends")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time and stream")
    p.add_argument("--json", action="store_true", help="one JSON object per line: seq, time, stream, text")
    add_broker_addr(p)
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


def cmd_logs(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        for line in client.logs(args.job, follow=args.follow):
            if args.json:
                print(json.dumps(line._asdict()), flush=args.follow)
                continue
            text = line.text
            if args.timestamps:
                stamp = datetime.fromtimestamp(line.time).strftime("%H:%M:%S.%f")[:-3]
                text = f"{stamp} {line.stream} | {text}"
            print(text, file=sys.stderr if line.stream == "err" and not args.timestamps else sys.stdout,
                  flush=args.follow)  # fmt: skip
        if args.follow:
            return EXIT_OK if client.status(args.job).state.value == "succeeded" else EXIT_FAIL
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
