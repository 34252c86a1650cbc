"""``titan submit``, ``run``, ``status``, ``cancel`` and ``workers``: the job commands."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from titan_zmq.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``submit``, ``run``, ``status``, ``cancel`` and ``workers`` on the main parser."""
    p = sub.add_parser(
        "submit", parents=[common], help="submit a job",
        description="Submit a function (--call), a Python file (--script FILE [-- ARGS]) or a shell command "
        "(-- COMMAND...).",
        epilog="Examples: titan submit --wait -- echo hello;  titan submit --call math:factorial --arg 20 --wait;"
        "  titan submit --script job.py --requires gpu -- --epochs 3",
    )  # fmt: skip
    add_broker_addr(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--call", metavar="MODULE:FUNCTION", help="call a function importable on the worker")
    g.add_argument("--script", metavar="FILE", help="run a Python file; its content travels with the job")
    p.add_argument("--arg", action="append", default=[], metavar="JSON", help="a positional argument (JSON)")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=JSON", help="a keyword argument")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an environment variable")
    p.add_argument("--requires", default=None, metavar="TAG,...", help="capability tags the worker must have")
    p.add_argument("--priority", type=int, default=None, help="higher runs first (default 0)")
    p.add_argument("--delay", type=float, default=None, metavar="S", help="hold the job back S seconds")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="kill the job after S seconds")
    p.add_argument("--retries", type=int, default=None, help="retries after a failure (exponential backoff)")
    p.add_argument("--id", default=None, help="choose the job id (resubmitting the same job is a no-op)")
    p.add_argument("--wait", action="store_true", help="wait; print the result; exit 0 on success, 1 on failure")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")
    p.add_argument("--local", action="store_true", help="start an embedded broker and 2 workers for this job")

    p = sub.add_parser(
        "run", parents=[common], help="run a pipeline (YAML DAG)",
        description="Submit a YAML pipeline as one DAG, show its progress, and print a summary. "
        "Exit 0 only when every job succeeded.",
    )  # fmt: skip
    add_broker_addr(p)
    p.add_argument("pipeline", help="the pipeline's YAML file")
    p.add_argument("--local", action="store_true", help="start an embedded broker and workers for this run")
    p.add_argument("--workers", type=int, default=2, help="workers for --local (default 2)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (exit 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument(
        "--strict", action="store_true",
        help="refuse what the Titan format would ignore (an unknown key...) instead of warning (exit 2)",
    )  # fmt: skip

    p = sub.add_parser(
        "status", parents=[common], help="show a job, a DAG, or the latest jobs",
        description="Show a job, the jobs of a DAG, or the latest jobs.",
    )  # fmt: skip
    add_broker_addr(p)
    p.add_argument("job", nargs="?", help="job or DAG id (omit to list the latest jobs)")
    p.add_argument("--state", default=None, help="only jobs in this state (when listing)")
    p.add_argument("--limit", type=int, default=20, help="how many jobs to list (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "cancel", parents=[common], help="cancel a job or a DAG",
        description="Cancel a queued or running job, or every unfinished job of a DAG.",
    )  # fmt: skip
    add_broker_addr(p)
    p.add_argument("job", help="job or DAG id")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")

    p = sub.add_parser("workers", parents=[common], help="list workers", description="List the connected workers.")
    add_broker_addr(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


# ---- formatting ---------------------------------------------------------------------------


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _print_record(rec: dict[str, Any]) -> None:
    fields = [
        ("id", rec["id"]), ("state", rec["state"]), ("kind", rec["kind"]), ("target", rec["target"]),
        ("worker", rec.get("worker") or "-"), ("attempts", rec.get("attempts")),
        ("requires", ",".join(rec.get("requires") or []) or "-"), ("priority", rec.get("priority")),
        ("submitted", _ts(rec.get("submitted_at"))), ("started", _ts(rec.get("started_at"))),
        ("finished", _ts(rec.get("finished_at"))),
    ]  # fmt: skip
    if rec.get("waiting"):
        fields.append(("waiting", rec["waiting"]))
    if rec.get("exit_code") is not None:
        fields.append(("exit code", rec["exit_code"]))
    if rec.get("error"):
        fields.append(("error", rec["error"]))
    if rec["state"] == "succeeded" and rec["kind"] == "call":
        fields.append(("result", json.dumps(rec.get("result"), default=repr)))
    for k, v in fields:
        print(f"{k:>10}: {v}")
    for oid, src in (rec.get("fetched") or {}).items():  # its input objects, and where each came from
        how = "already here" if src.get("from") == "local" else f"from {src.get('from')} ({src.get('route')})"
        size = f", {src['bytes']:,} bytes" if src.get("bytes") else ""
        print(f"{'input':>10}: {oid[:16]}… {how}{size}")
    for stream in ("stdout", "stderr"):
        if rec.get(stream):
            print(f"--- {stream} ---")
            print(rec[stream].rstrip("\n"))
    if rec.get("traceback"):
        print("--- remote traceback ---")
        print(rec["traceback"].rstrip("\n"))


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=lambda o: o.hex() if isinstance(o, bytes) else repr(o)))


# ---- commands -------------------------------------------------------------------------------


# ---- commands -------------------------------------------------------------------------------


def _parse_json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is taken as a string: --arg hello


def cmd_submit(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_zmq.client import TitanClient

    spec: dict[str, Any] = {}
    if args.call:
        if rest:
            raise ConfigError("--call takes its arguments from --arg and --kwarg, not after --")
        spec["call"] = args.call
    elif args.script:
        spec["script"] = args.script
    elif rest:
        spec["shell"] = rest[0] if len(rest) == 1 else shlex.join(rest)
    else:
        raise ConfigError("nothing to run: give --call MODULE:FUNCTION, --script FILE, or -- COMMAND")
    if args.call:
        spec["args"] = [_parse_json_value(a, "--arg") for a in args.arg]
    elif args.script:
        spec["args"] = args.arg + rest  # --arg values first, then what follows --
    elif args.arg:
        raise ConfigError("a shell command takes its arguments after --, not from --arg")
    kwargs = {}
    for kv in args.kwarg:
        name, sep, value = kv.partition("=")
        if not sep or not name:
            raise ConfigError(f"--kwarg {kv!r} must look like NAME=JSON")
        kwargs[name] = _parse_json_value(value, "--kwarg")
    env = {}
    for kv in args.env:
        name, sep, value = kv.partition("=")
        if not sep or not name:
            raise ConfigError(f"--env {kv!r} must look like NAME=VALUE")
        env[name] = value
    options = dict(
        kwargs=kwargs or None, env=env or None, requires=args.requires, priority=args.priority, delay=args.delay,
        timeout=args.timeout, retries=args.retries, id=args.id,
    )  # fmt: skip
    if args.local:
        from titan_zmq.local import LocalCluster

        with LocalCluster(workers=2) as cluster:
            return _submit(cluster.client(), spec, options, args, wait=True)
    with TitanClient(args.broker) as client:
        return _submit(client, spec, options, args, wait=args.wait)


def _submit(client: Any, spec: dict[str, Any], options: dict[str, Any], args: argparse.Namespace, wait: bool) -> int:
    handle = client.submit(**spec, **options)
    if not wait:
        if args.json:
            _json(client.status(handle.id).to_dict())
        else:
            print(handle.id)
        return EXIT_OK
    rec = handle.wait()
    if args.json:
        _json(rec.to_dict())
    else:
        if rec.kind == "call" and rec.ok:
            print(json.dumps(rec.result, default=repr))
        if rec.stdout:
            sys.stdout.write(rec.stdout if rec.stdout.endswith("\n") else rec.stdout + "\n")
        if rec.stderr:
            sys.stderr.write(rec.stderr if rec.stderr.endswith("\n") else rec.stderr + "\n")
        if not rec.ok:
            print(f"titan: job {rec.id} {rec.state.value}: {rec.error}", file=sys.stderr)
            if rec.traceback:
                print(rec.traceback.rstrip(), file=sys.stderr)
    return EXIT_OK if rec.ok else EXIT_FAIL


def cmd_status(args: argparse.Namespace) -> int:
    from titan_zmq import protocol as P
    from titan_zmq.client import TitanClient

    dag = None
    with TitanClient(args.broker) as client:
        if args.job:
            data = client.request(P.Status, ids=[args.job])
            if "dag" not in data:
                rec = data["records"][0]
                _json(rec) if args.json else _print_record(rec)
                return EXIT_OK
            dag, recs = data["dag"], data["records"]
        else:
            recs = [r.to_dict() for r in client.jobs(state=args.state, limit=args.limit)]
    if args.json:
        _json({"dag": dag, "jobs": recs} if dag else recs)
        return EXIT_OK
    if dag:
        states: dict[str, int] = {}
        for r in recs:
            states[r["state"]] = states.get(r["state"], 0) + 1
        print(f"DAG {dag}: {len(recs)} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    rows = [
        [r["id"], r["state"], r["kind"], r["target"][:40], r.get("worker") or "-", str(r["attempts"]),
         r.get("waiting") or r.get("error") or ""]
        for r in recs
    ]  # fmt: skip
    print(_table(rows, ["ID", "STATE", "KIND", "TARGET", "WORKER", "ATT", "NOTE"]) if rows else "no jobs")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient
    from titan_zmq.client.pipeline import load_pipeline
    from titan_zmq.errors import JobError

    try:
        pipeline = load_pipeline(args.pipeline, strict=args.strict, quiet=True)
    except JobError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in pipeline.warnings:
        print(f"titan: warning: {warning}", file=sys.stderr)
    if args.local:
        from titan_zmq.local import LocalCluster

        with LocalCluster(workers=args.workers) as cluster:
            return _run_pipeline(cluster.client(), pipeline, args)
    with TitanClient(args.broker) as client:
        return _run_pipeline(client, pipeline, args)


def _run_pipeline(client: Any, pipeline: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    err0 = sys.stderr
    if pipeline.schedule:
        rec = client.schedule(pipeline.name, pipeline.schedule, dag=pipeline.dag, catchup=pipeline.catchup)
        print(f"pipeline {pipeline.name} scheduled: {pipeline.schedule!r} (titan schedule ls)", file=err0)
        if args.json:
            print(json.dumps(rec))
        return EXIT_OK
    run = client.submit_dag(pipeline.dag.instance())  # fresh ids: every run is a new run
    total = len(run.ids)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[states]}"), console=err, disable=args.json, transient=False,
    )  # fmt: skip
    recs: list[Any] = []
    counts: dict[str, int] = {}  # jobs by state, of the last look at the DAG (kept for the summary)
    timed_out = False
    with progress:
        task = progress.add_task(pipeline.name, total=total, states="")
        while True:
            recs = client.dag_status(run.id)
            counts = {}
            for r in recs:
                counts[r.state.value] = counts.get(r.state.value, 0) + 1
            done = sum(1 for r in recs if r.state.final)
            progress.update(task, completed=done, states=" ".join(f"{s}:{n}" for s, n in sorted(counts.items())))
            if done >= total:
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(0.25)  # a refresh interval for the display, not a wait for a state
    ok = not timed_out and all(r.ok for r in recs)
    services = [line for line in map(_service_line, recs) if line]  # service nodes: where they run now
    if args.json:
        _json({"dag": run.id, "ok": ok, "timed_out": timed_out, "jobs": [r.to_dict() for r in recs]})
        for line in services:
            print(line, file=err0)
        return EXIT_OK if ok else EXIT_FAIL
    table = Table(title=f"{pipeline.name}: {'succeeded' if ok else 'FAILED'}")
    for col in ("job", "state", "worker", "duration", "note"):
        table.add_column(col)
    colours = {"succeeded": "green", "failed": "red", "dead": "red", "cancelled": "yellow"}
    shown = recs
    if len(recs) > 50:  # a big DAG: what went wrong, and the slowest of the rest
        trouble = [r for r in recs if not r.ok]
        slowest = sorted((r for r in recs if r.ok), key=lambda r: r.duration or 0.0, reverse=True)[:10]
        shown = trouble + slowest
        table.caption = (f"{len(recs)} jobs; shown: {len(trouble)} not succeeded, the {len(slowest)} slowest "
                         "of the rest (--json for all)")  # fmt: skip
    for r in shown:
        dur = "-" if r.duration is None else f"{r.duration:.2f}s"
        st = r.state.value
        note = (r.error or r.waiting or _service_line(r) or "")[:80]
        table.add_row(r.id, f"[{colours.get(st, 'white')}]{st}[/]", r.worker or "-", dur, note)
    Console().print(table)
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for line in services:
        print(line)
    if timed_out:
        print(
            f"titan: gave up after {args.timeout:g}s; the DAG {run.id} goes on (titan cancel {run.id})", file=sys.stderr
        )
    return EXIT_OK if ok else EXIT_FAIL


def _service_line(rec: Any) -> str | None:
    """The summary line of a service node that became healthy: "service NAME: running at
    host:port, ..." (its result names the service and its addresses); None for anything else."""
    result = getattr(rec, "result", None)
    if not isinstance(result, dict) or not getattr(rec, "ok", False):
        return None
    addresses = result.get("addresses")
    if not isinstance(addresses, (list, tuple)) or not addresses:
        return None
    name = result.get("service") or rec.id
    return f"service {name}: running at {', '.join(str(a) for a in addresses)} (titan stop {name})"


def cmd_cancel(args: argparse.Namespace) -> int:
    from titan_zmq import protocol as P
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        data = client.request(P.Cancel, id=args.job)
    if args.json:
        _json(data)
    elif "records" in data:  # a DAG
        print(f"DAG {data['dag']}: " + ", ".join(f"{r['id']} {r['state']}" for r in data["records"]))
    else:
        print(f"{data['id']}: {data['state']}")
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        ws = client.workers()
    if args.json:
        _json(ws)
        return EXIT_OK
    rows = [
        [w["name"], w["host"], ",".join(w["tags"]), f"{w['used']}/{w['slots']}", str(w["done"]),
         f"{w['last_heartbeat_age']:.1f}s"]
        for w in ws
    ]  # fmt: skip
    print(_table(rows, ["NAME", "HOST", "TAGS", "BUSY", "DONE", "HEARTBEAT"]) if rows else "no workers")
    return EXIT_OK
