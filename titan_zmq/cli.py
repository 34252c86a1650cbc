"""The ``titan`` command. Exit codes: 0 success, 1 failure (a job or the broker), 2 usage."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from titan_zmq import __version__
from titan_zmq.aof import cli as aof_cli
from titan_zmq.client import commands as client_cli
from titan_zmq.errors import ConfigError, JobFailed, TitanError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _add_broker_addr(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", default=None, metavar="HOST[:PORT]",
        help="the broker's front address (default: $TITAN_BROKER, else localhost:5555)",
    )  # fmt: skip


def _add_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--front", type=int, default=None, help="client port (default 5555; 0 picks a free one)")
    p.add_argument("--back", type=int, default=None, help="worker port (default 5556)")
    p.add_argument("--events", type=int, default=None, help="PUB port for logs and stats (default 5557)")
    p.add_argument("--config", default=None, help="YAML file of broker settings")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds between heartbeats (0.5)")
    p.add_argument("--max-message-size", type=int, default=None, help="largest accepted message in bytes (64 MiB)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="journal state here; replay it on start")
    p.add_argument("--fsync", default=None, choices=("always", "everysec", "no"), help="journal fsync (everysec)")


def _add_worker_opts(p: argparse.ArgumentParser, single: bool = True) -> None:
    p.add_argument("--tags", default=None, help="extra capability tags, comma separated (cpu is always there)")
    p.add_argument("--slots", type=int, default=None, help="jobs run at once (default: one per CPU)")
    if single:
        p.add_argument("--name", default=None, help="worker name (default HOST-PID)")
        p.add_argument("--config", default=None, help="YAML file of worker settings")
        p.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                       help="run a node agent: MIN to MAX worker processes here, scaled with the load")  # fmt: skip
        p.add_argument("--idle", type=float, default=30.0, metavar="S", help="autoscale: drain after S s idle (30)")
        p.add_argument("--scale-webhook", default=None, metavar="URL",
                       help="autoscale: POST a scale request here when saturated at MAX")  # fmt: skip
    p.add_argument("--cache-dir", default=None, help="where shipped scripts are cached")
    p.add_argument("--job-memory", type=int, default=None, metavar="MB", help="address-space limit per job")
    p.add_argument("--no-gpu-probe", action="store_true", help="do not run nvidia-smi to detect GPUs")
    p.add_argument(
        "--no-fork-server", action="store_true",
        help="start every script job as a new interpreter, not forked from a warm one ($TITAN_FORK_SERVER=0)",
    )  # fmt: skip
    p.add_argument(
        "--prefetch", type=int, default=None,
        help="extra jobs per slot the worker may hold while its jobs are short (default 4; 0: strict credit)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titan",
        description="titan_zmq: run functions, shell commands and Python scripts on a grid of workers.",
        epilog="Every command takes --help. The broker address comes from --broker, $TITAN_BROKER, or localhost:5555.",
    )
    parser.add_argument("--version", action="version", version=f"titan_zmq {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("TITAN_LOG_LEVEL", ""),
        help="DEBUG, INFO, WARNING or ERROR (default INFO for broker/worker/up, WARNING otherwise)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --log-level is accepted after the command as well (SUPPRESS keeps the top-level value otherwise).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR")
    common.add_argument(
        "--keys", default=argparse.SUPPRESS, metavar="DIR",
        help="CURVE key folder from 'titan keys generate': encrypt and authenticate (default: $TITAN_KEYS)",
    )  # fmt: skip

    p = sub.add_parser(
        "broker", parents=[common], help="run the broker", description="Run the broker in the foreground."
    )
    _add_listen(p)
    p.add_argument("--ready-file", default=None, help="write the bound ports here as JSON once listening")

    p = sub.add_parser("worker", parents=[common], help="run a worker", description="Run a worker in the foreground.")
    _add_broker_addr(p)
    _add_worker_opts(p)

    p = sub.add_parser(
        "up", parents=[common], help="run a broker and N local workers",
        description="A broker and N local workers in one foreground command; Ctrl-C or SIGTERM stops them all.",
    )  # fmt: skip
    _add_listen(p)
    p.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    _add_worker_opts(p, single=False)

    p = sub.add_parser(
        "submit", parents=[common], help="submit a job",
        description="Submit a function (--call), a Python file (--script FILE [-- ARGS]) or a shell command "
        "(-- COMMAND...).",
        epilog="Examples: titan submit --wait -- echo hello;  titan submit --call math:factorial --arg 20 --wait;"
        "  titan submit --script job.py --requires gpu -- --epochs 3",
    )  # fmt: skip
    _add_broker_addr(p)
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
    _add_broker_addr(p)
    p.add_argument("pipeline", help="the pipeline's YAML file")
    p.add_argument("--local", action="store_true", help="start an embedded broker and workers for this run")
    p.add_argument("--workers", type=int, default=2, help="workers for --local (default 2)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (exit 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")

    p = sub.add_parser(
        "status", parents=[common], help="show a job, a DAG, or the latest jobs",
        description="Show a job, the jobs of a DAG, or the latest jobs.",
    )  # fmt: skip
    _add_broker_addr(p)
    p.add_argument("job", nargs="?", help="job or DAG id (omit to list the latest jobs)")
    p.add_argument("--state", default=None, help="only jobs in this state (when listing)")
    p.add_argument("--limit", type=int, default=20, help="how many jobs to list (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "cancel", parents=[common], help="cancel a job or a DAG",
        description="Cancel a queued or running job, or every unfinished job of a DAG.",
    )  # fmt: skip
    _add_broker_addr(p)
    p.add_argument("job", help="job or DAG id")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")

    p = sub.add_parser("workers", parents=[common], help="list workers", description="List the connected workers.")
    _add_broker_addr(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "keys", parents=[common], help="make CURVE key pairs",
        description="titan keys generate DIR: write broker, client and worker key pairs and the broker's "
        "allow-lists (DIR/allowed/clients, DIR/allowed/workers). Give --keys DIR (or TITAN_KEYS=DIR) to the "
        "broker, the workers and the clients; each needs broker.key and its own pair.",
    )  # fmt: skip
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION")
    q = keys.add_parser("generate", parents=[common], help="write the key pairs and allow-lists into DIR",
                        description="Write the key pairs and allow-lists into DIR.")  # fmt: skip
    q.add_argument("dir", metavar="DIR", help="the folder to write (created if missing)")
    q.add_argument("--force", action="store_true", help="replace keys already there")
    q.add_argument("--json", action="store_true", help="print the files written as JSON")
    aof_cli.add_parsers(sub, common)
    client_cli.add_parsers(sub, common, _add_broker_addr)
    return parser


def cmd_keys(args: argparse.Namespace) -> int:
    from titan_zmq.security import generate

    if getattr(args, "keys_command", None) != "generate":
        print("titan keys: say what to do: titan keys generate DIR", file=sys.stderr)
        return EXIT_USAGE
    files = generate(args.dir, force=args.force)
    if args.json:
        _json([str(f) for f in files])
    else:
        for f in files:
            print(f)
        print(f"give --keys {args.dir} (or TITAN_KEYS={args.dir}) to the broker, the workers and the clients; "
              "keep the *.key_secret files private")  # fmt: skip
    return EXIT_OK


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


def _broker_config(args: argparse.Namespace) -> Any:
    from titan_zmq.config import BrokerConfig, load

    return load(
        BrokerConfig, args.config, host=args.host, front=args.front, back=args.back, events=args.events,
        heartbeat_interval=args.heartbeat_interval, max_message_size=args.max_message_size,
        data_dir=args.data_dir, fsync=args.fsync,
    )  # fmt: skip


def _on_signals(stop: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_broker(args: argparse.Namespace) -> int:
    from titan_zmq.broker import Broker

    broker = Broker(_broker_config(args))
    ports = broker.bind()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({**ports, "pid": os.getpid()}, fh)
        os.replace(tmp, args.ready_file)
    _on_signals(broker.stop)
    from titan_zmq.process import tune_gc

    tune_gc()
    broker.run()
    return EXIT_OK


def _worker_config(args: argparse.Namespace, **extra: Any) -> Any:
    from titan_zmq.config import WorkerConfig, load

    return load(
        WorkerConfig, getattr(args, "config", None), broker=getattr(args, "broker", None), tags=args.tags,
        slots=args.slots, name=getattr(args, "name", None), cache_dir=args.cache_dir,
        job_memory_mb=args.job_memory, gpu_probe=False if args.no_gpu_probe else None, prefetch=args.prefetch,
        fork_server=False if args.no_fork_server else None, **extra,
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    from titan_zmq.config import resolve_broker
    from titan_zmq.worker import Worker

    args.broker = resolve_broker(args.broker)
    if args.autoscale:
        return _run_agent(args)
    worker = Worker(_worker_config(args))
    _on_signals(worker.stop)
    signal.signal(signal.SIGUSR1, lambda signum, frame: worker.drain())  # finish what it holds, then leave
    from titan_zmq.process import tune_gc

    tune_gc()
    worker.run()
    return EXIT_OK


def _run_agent(args: argparse.Namespace) -> int:
    from titan_zmq.worker.agent import agent_from_args

    agent = agent_from_args(args, _worker_config(args))
    _on_signals(agent.stop)
    agent.run()
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from titan_zmq.broker import Broker
    from titan_zmq.process import die_with_parent, tune_gc

    if args.workers < 0:
        raise ConfigError("--workers must be 0 or more")
    broker = Broker(_broker_config(args))
    ports = broker.bind()
    host = broker.config.host
    connect = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
    address = f"{connect}:{ports['front']}"
    tune_gc()
    thread = threading.Thread(target=broker.run, name="titan-broker", daemon=True)
    thread.start()
    stop = threading.Event()
    _on_signals(stop.set)
    procs = []
    for i in range(args.workers):
        cmd = [
            sys.executable,
            "-m",
            "titan_zmq",
            "worker",
            "--broker",
            address,
            "--name",
            f"{os.uname().nodename}-w{i + 1}",
        ]
        for flag, value in (("--tags", args.tags), ("--slots", args.slots), ("--cache-dir", args.cache_dir),
                            ("--job-memory", args.job_memory), ("--prefetch", args.prefetch)):  # fmt: skip
            if value is not None:
                cmd += [flag, str(value)]
        for flag, on in (("--no-gpu-probe", args.no_gpu_probe), ("--no-fork-server", args.no_fork_server)):
            if on:
                cmd.append(flag)
        procs.append(subprocess.Popen(cmd, preexec_fn=die_with_parent, start_new_session=True))
    print(f"titan up: broker on {address} (events {ports['events']}), {args.workers} worker(s). Ctrl-C stops.",
          flush=True)  # fmt: skip
    try:
        while not stop.is_set():
            stop.wait(0.5)
            dead = [p for p in procs if p.poll() is not None]
            for p in dead:
                log.warning("worker pid %d exited with %s", p.pid, p.returncode)
                procs.remove(p)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        broker.stop()
        thread.join(10)
    print("titan up: stopped", flush=True)
    return EXIT_OK


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
        pipeline = load_pipeline(args.pipeline)
    except JobError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    for name, kw in pipeline.services.items():  # services first: jobs after them find them up
        print(f"deploying service {name}...", file=err0)
        rec = client.deploy(name, wait=60.0, **kw)
        print(f"service {name}: {rec['state']} at " + ", ".join(r["address"] for r in rec["replicas"]), file=err0)
    if not pipeline.dag.nodes:
        return EXIT_OK
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
    if args.json:
        _json({"dag": run.id, "ok": ok, "timed_out": timed_out, "jobs": [r.to_dict() for r in recs]})
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
        note = (r.error or r.waiting or "")[:80]
        table.add_row(r.id, f"[{colours.get(st, 'white')}]{st}[/]", r.worker or "-", dur, note)
    Console().print(table)
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if timed_out:
        print(
            f"titan: gave up after {args.timeout:g}s; the DAG {run.id} goes on (titan cancel {run.id})", file=sys.stderr
        )
    return EXIT_OK if ok else EXIT_FAIL


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if rest and args.command not in ("submit", "deploy", "schedule"):
        parser.error(f"'titan {args.command}' takes nothing after --")
    serving = args.command in ("broker", "worker", "up")
    _setup_logging(args.log_level or ("INFO" if serving else "WARNING"))
    if getattr(args, "keys", None) and args.command != "keys":
        # One place for every role: the broker's and workers' settings, clients, and processes started here.
        os.environ["TITAN_KEYS"] = os.path.abspath(args.keys)
    try:
        if args.command == "submit":
            return cmd_submit(args, rest)
        if args.command == "deploy":
            return client_cli.cmd_deploy(args, rest)
        if args.command == "schedule":
            return client_cli.cmd_schedule(args, rest)
        handler = {
            "broker": cmd_broker, "worker": cmd_worker, "up": cmd_up, "status": cmd_status, "run": cmd_run,
            "cancel": cmd_cancel, "workers": cmd_workers, "aof": aof_cli.cmd_aof, "kv": client_cli.cmd_kv,
            "logs": client_cli.cmd_logs, "services": client_cli.cmd_services, "stop": client_cli.cmd_stop,
            "approve": client_cli.cmd_decide, "reject": client_cli.cmd_decide, "keys": cmd_keys,
        }[args.command]  # fmt: skip
        return handler(args)
    except ConfigError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailed as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except TitanError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`titan status | head`): stop quietly, as command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
