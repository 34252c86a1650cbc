"""Client commands beyond jobs: ``titan logs``, ``titan deploy|services|stop`` and ``titan kv``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``logs``, the service commands and the ``kv`` command group on the main parser."""
    p = sub.add_parser(
        "deploy", parents=[common], help="deploy a long-running service (restarted on crash)",
        description="Deploy a service: a Python file (--script), a project folder (--project DIR --script "
        "ENTRY) or a command (-- COMMAND...). It gets its port as $PORT and counts as running once its "
        "health check passes.",
        epilog="Example: titan deploy web --replicas 2 --health http:/ -- python -m http.server $PORT",
    )  # fmt: skip
    p.add_argument("name", metavar="NAME")
    p.add_argument("--script", metavar="FILE", help="run a Python file (its content travels with it)")
    p.add_argument("--project", metavar="DIR", help="ship this folder; --script names the entry point in it")
    p.add_argument("--arg", action="append", default=[], help="an argument for --script (repeatable)")
    p.add_argument("--requires", default=None, metavar="TAG,...", help="capability tags the worker must have")
    p.add_argument("--replicas", type=int, default=None, help="instances, spread over hosts (default 1)")
    p.add_argument("--port", type=int, default=None, help="this port (default: a free one the broker picks)")
    p.add_argument("--health", default=None, help="tcp (default) or http:/path (2xx/3xx means healthy)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an environment variable")
    p.add_argument("--max-crashes", type=int, default=None, help="crashes within --crash-window that fail it (5)")
    p.add_argument("--crash-window", type=float, default=None, metavar="S", help="seconds (default 60)")
    p.add_argument("--grace", type=float, default=None, metavar="S", help="SIGTERM to SIGKILL on stop (10)")
    p.add_argument("--no-wait", action="store_true", help="return at once, before it is healthy")
    p.add_argument("--json", action="store_true", help="print the service's record as JSON")
    add_broker_addr(p)
    p = sub.add_parser("services", parents=[common], help="list services: address, state, restarts, uptime",
                       description="List the services and where their replicas run.")  # fmt: skip
    p.add_argument("name", nargs="?", default=None, metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(p)
    for verb, text in (("approve", "approve an approval gate: the jobs after it run"),
                       ("reject", "reject an approval gate: it fails and the jobs after it are cancelled")):
        p = sub.add_parser(verb, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("job", metavar="ID")
        p.add_argument("--note", default="", help="why (journaled with who decided)")
        p.add_argument("--json", action="store_true", help="print the gate's record as JSON")
        add_broker_addr(p)
    p = sub.add_parser("gates", parents=[common], help="pending approval gates, with the output each reviews",
                       description="List the approval gates awaiting a decision: their question, age and expiry, "
                       "and beside each the result and last output lines of the job(s) it reviews (its parents). "
                       "Decide with titan approve ID / titan reject ID.")  # fmt: skip
    p.add_argument("--lines", type=int, default=5, help="output lines shown of each reviewed job (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(p)
    p = sub.add_parser("schedule", parents=[common], help="run jobs on a cron expression: add, ls, rm",
                       description="Schedules: the broker submits a job on a cron expression.")  # fmt: skip
    sch = p.add_subparsers(dest="schedule_command", metavar="ACTION")
    q = sch.add_parser(
        "add", parents=[common], help="add a schedule",
        description="Add a schedule: NAME, a CRON expression ('*/5 * * * *'; six fields: seconds last), and the "
        "job: --call MODULE:FUNCTION [--arg JSON]..., --script FILE, or -- COMMAND...",
    )  # fmt: skip
    q.add_argument("name", metavar="NAME")
    q.add_argument("cron", metavar="CRON")
    q.add_argument("--call", metavar="MODULE:FUNCTION")
    q.add_argument("--script", metavar="FILE")
    q.add_argument("--arg", action="append", default=[], metavar="JSON", help="an argument (JSON for --call)")
    q.add_argument("--requires", default=None, metavar="TAG,...")
    q.add_argument("--timeout", type=float, default=None, metavar="S")
    q.add_argument("--catchup", default="skip", choices=("skip", "once"),
                   help="after broker downtime: skip missed runs (default) or run once for them")  # fmt: skip
    add_broker_addr(q)
    q = sch.add_parser("ls", parents=[common], help="list schedules")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(q)
    q = sch.add_parser("rm", parents=[common], help="remove a schedule")
    q.add_argument("name", metavar="NAME")
    add_broker_addr(q)
    p = sub.add_parser("stop", parents=[common], help="stop a service (SIGTERM, then SIGKILL after its grace)",
                       description="Stop a service: SIGTERM to each replica, SIGKILL after its grace.")  # fmt: skip
    p.add_argument("name", metavar="NAME")
    add_broker_addr(p)

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


def cmd_deploy(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_zmq.client import TitanClient
    from titan_zmq.errors import ConfigError

    if bool(rest) == bool(args.script):
        raise ConfigError("give the service as --script FILE (optionally with --project DIR) or as -- COMMAND...")
    env = {}
    for item in args.env:
        if "=" not in item:
            raise ConfigError(f"--env {item!r}: use NAME=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    options: dict[str, Any] = {
        "requires": args.requires, "replicas": args.replicas, "port": args.port, "health": args.health,
        "env": env or None, "max_crashes": args.max_crashes, "crash_window": args.crash_window, "grace": args.grace,
    }  # fmt: skip
    with TitanClient(args.broker) as client:
        if rest:
            rec = client.deploy(args.name, shell=_command_line(rest),
                                wait=None if args.no_wait else 60.0, **options)  # fmt: skip
        else:
            rec = client.deploy(args.name, script=args.script, project=args.project, args=args.arg or None,
                                wait=None if args.no_wait else 60.0, **options)  # fmt: skip
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        addrs = ", ".join(r["address"] or "-" for r in rec["replicas"])
        print(f"service {rec['name']}: {rec['state']} at {addrs}")
    return EXIT_OK


def _command_line(words: list[str]) -> str:
    """The words after ``--`` as one shell command line: one word as written; several, each in
    double quotes when needed, so spaces stay inside words while $PORT (quoted against your own
    shell's expansion) still expands on the worker."""
    return words[0] if len(words) == 1 else " ".join(_dquote(w) for w in words)


def _dquote(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./:=,+@%" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def cmd_services(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        recs = client.services(args.name)
    if args.json:
        print(json.dumps(recs, indent=2))
        return EXIT_OK
    if not recs:
        print("no services")
        return EXIT_OK
    rows = [("NAME", "REPLICA", "ADDRESS", "STATE", "RESTARTS", "UPTIME", "NOTE")]
    for rec in recs:
        for r in rec["replicas"]:
            up = f"{r['uptime']:.0f}s" if r["uptime"] is not None else "-"
            rows.append((rec["name"], r["id"], r["address"] or "-", r["state"], str(r["restarts"]), up,
                         (r["error"] or "")[:60]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        decide = client.approve if args.command == "approve" else client.reject
        rec = decide(args.job, note=args.note)
        reviewed = _reviewed(client, rec.depends_on, 3)
    if args.json:
        print(json.dumps(rec.__dict__ | {"state": rec.state.value, "reviewed": reviewed}, default=str, indent=2))
    else:
        r = rec.result or {}
        print(f"{rec.id}: {rec.state.value} ({'approved' if r.get('approved') else 'rejected'} by {r.get('by')})")
        _print_reviewed(reviewed)
    return EXIT_OK


def _reviewed(client: Any, parents: list[str], lines: int) -> list[dict[str, Any]]:
    """What a gate reviews: each parent's state, result and last output lines."""
    out = []
    for jid in parents:
        rec = client.status(jid)
        tail = [ln.text for ln in client.logs(jid)][-lines:] if lines > 0 else []
        out.append({"id": jid, "state": rec.state.value, "result": rec.result, "output": tail})
    return out


def _print_reviewed(reviewed: list[dict[str, Any]]) -> None:
    for r in reviewed:
        result = json.dumps(r["result"], default=str)
        print(f"  reviews {r['id']} ({r['state']}): result {result[:200]}")
        for text in r["output"]:
            print(f"    | {text}")


def cmd_gates(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        gates = [g for g in client.jobs("awaiting_approval", limit=10_000) if g.kind == "approval"]
        now = time.time()
        items: list[dict[str, Any]] = [
            {"id": g.id, "question": g.target, "age": now - (g.queued_at or g.submitted_at or now),
             "waiting": g.waiting, "dag": g.dag, "reviewed": _reviewed(client, g.depends_on, args.lines)}
            for g in reversed(gates)
        ]  # fmt: skip
    if args.json:
        print(json.dumps(items, indent=2, default=str))
        return EXIT_OK
    for it in items:
        waiting = str(it["waiting"] or "")
        expiry = waiting.rpartition("; ")[2] if "rejected in" in waiting else "no expiry"
        print(f"{it['id']}: {it['question']}  (waiting {it['age']:.0f}s; {expiry})")
        _print_reviewed(it["reviewed"])
    print(f"{len(items)} gate(s) awaiting a decision" + ("; titan approve ID / titan reject ID" if items else ""))
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_zmq.client import TitanClient
    from titan_zmq.errors import ConfigError

    if args.schedule_command is None:
        print("titan schedule: give an action: add, ls or rm (see titan schedule --help)", file=sys.stderr)
        return 2
    with TitanClient(args.broker) as client:
        if args.schedule_command == "ls":
            items = client.schedules()
            if args.json:
                print(json.dumps(items, indent=2))
            for s in [] if args.json else items:
                nxt = datetime.fromtimestamp(s["next_run"]).strftime("%Y-%m-%d %H:%M:%S")
                note = f"  last error: {s['last_error']}" if s["last_error"] else ""
                print(f"{s['name']}  {s['cron']!r}  next {nxt}  runs {s['runs']}  {s['target']}{note}")
            if not items and not args.json:
                print("no schedules")
            return EXIT_OK
        if args.schedule_command == "rm":
            client.unschedule(args.name)
            print(f"schedule {args.name} removed")
            return EXIT_OK
        given = [x for x in (args.call, args.script, rest or None) if x]
        if len(given) != 1:
            raise ConfigError("give the job as --call MODULE:FUNCTION, --script FILE or -- COMMAND...")
        options: dict[str, Any] = {"requires": args.requires, "timeout": args.timeout}
        if args.call:
            try:
                call_args = [json.loads(a) for a in args.arg]
            except ValueError as exc:
                raise ConfigError(f"--arg must be JSON ({exc}); quote strings: --arg '\"text\"'") from None
            rec = client.schedule(args.name, args.cron, args.call, args=call_args, catchup=args.catchup, **options)
        elif args.script:
            rec = client.schedule(args.name, args.cron, script=args.script, args=args.arg or None,
                                  catchup=args.catchup, **options)  # fmt: skip
        else:
            rec = client.schedule(args.name, args.cron, shell=_command_line(rest), catchup=args.catchup, **options)
    nxt = datetime.fromtimestamp(rec["next_run"]).strftime("%Y-%m-%d %H:%M:%S")
    print(f"schedule {rec['name']} added: {rec['cron']!r}, next run {nxt}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        rec = client.stop_service(args.name)
    print(f"service {rec['name']}: {rec['state']}")
    return EXIT_OK


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
