"""``titan broker``, ``titan worker`` and ``titan up``: the commands that run titan's own processes
(in the foreground, until Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from titan_zmq.errors import ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``broker``, ``worker`` and ``up`` on the main parser."""
    p = sub.add_parser(
        "broker", parents=[common], help="run the broker", description="Run the broker in the foreground."
    )
    _add_listen(p)
    p.add_argument("--ready-file", default=None, help="write the bound ports here as JSON once listening")
    p.add_argument("--peers", default=None, metavar="HOST:PORT,...",
                   help="run one member of a group: every member's front address, this one's too (3 or 5; "
                        "needs --data-dir; the journal stream uses front+4, the election front+5)")  # fmt: skip
    p.add_argument("--election-timeout", type=float, default=None, metavar="S",
                   help="group: seconds without a leader before a member stands (0.8)")  # fmt: skip

    p = sub.add_parser("worker", parents=[common], help="run a worker", description="Run a worker in the foreground.")
    add_broker_addr(p)
    _add_worker_opts(p)

    p = sub.add_parser(
        "up", parents=[common], help="run a broker and N local workers",
        description="A broker and N local workers in one foreground command; Ctrl-C or SIGTERM stops them all.",
    )  # fmt: skip
    _add_listen(p)
    p.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    _add_worker_opts(p, single=False)


def _add_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--front", type=int, default=None, help="client port (default 5555; 0 picks a free one)")
    p.add_argument("--back", type=int, default=None, help="worker port (default 5556)")
    p.add_argument("--events", type=int, default=None, help="PUB port for logs and stats (default 5557)")
    p.add_argument("--objects", type=int, default=None, help="object relay port (default: front + 3, 5558)")
    p.add_argument("--locality-wait", type=float, default=None, metavar="S",
                   help="how long a job waits for the worker holding its inputs (1.0; 0: no locality)")  # fmt: skip
    p.add_argument("--config", default=None, help="YAML file of broker settings")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds between heartbeats (0.5)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; default: none)")
    p.add_argument("--heartbeat-rate", type=float, default=None, metavar="N",
                   help="heartbeats a second from all workers at most: with more workers the interval "
                        "grows (400; 0: never)")  # fmt: skip
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
    p.add_argument("--cache-dir", default=None, help="where shipped scripts (and the object store) are kept")
    p.add_argument("--object-store", type=int, default=None, metavar="MB",
                   help="object store limit, memory and disk (10240)")  # fmt: skip
    p.add_argument("--inline-max", type=int, default=None, metavar="KB",
                   help="results larger than this stay on the worker as objects (256)")  # fmt: skip
    p.add_argument("--no-direct-objects", action="store_true",
                   help="serve objects only through the broker's relay (no port of the worker's own)")  # fmt: skip
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


def _broker_config(args: argparse.Namespace) -> Any:
    from titan_zmq.config import BrokerConfig, load

    return load(
        BrokerConfig, args.config, host=args.host, front=args.front, back=args.back, events=args.events,
        objects=args.objects, locality_wait=args.locality_wait, heartbeat_interval=args.heartbeat_interval,
        heartbeat_rate=getattr(args, "heartbeat_rate", None), metrics_port=getattr(args, "metrics_port", None),
        max_message_size=args.max_message_size,
        data_dir=args.data_dir, fsync=args.fsync, peers=getattr(args, "peers", None),
        election_timeout=getattr(args, "election_timeout", None),
    )  # fmt: skip


def _on_signals(stop: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_broker(args: argparse.Namespace) -> int:
    from titan_zmq.broker import Broker
    from titan_zmq.process import tune_gc

    config = _broker_config(args)
    if config.peers:
        return _member(config, args.ready_file)
    broker = Broker(config)
    ports = broker.bind()
    _ready(args.ready_file, ports)
    _on_signals(broker.stop)
    tune_gc()
    broker.run()
    return EXIT_OK


def _ready(path: str | None, ports: dict[str, int]) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({**ports, "pid": os.getpid()}, fh)
        os.replace(tmp, path)


def _member(config: Any, ready_file: str | None) -> int:
    """One member of a broker group, until Ctrl-C or SIGTERM."""
    from titan_zmq.ha.member import Member
    from titan_zmq.process import tune_gc

    member = Member(config)
    _ready(ready_file, {"front": config.front, "back": config.back, "events": config.events,
                        "repl": config.repl_port, "raft": config.raft_port})  # fmt: skip
    _on_signals(member.stop)
    tune_gc()
    member.run()
    return EXIT_OK


def _worker_config(args: argparse.Namespace, **extra: Any) -> Any:
    from titan_zmq.config import WorkerConfig, load

    return load(
        WorkerConfig, getattr(args, "config", None), broker=getattr(args, "broker", None), tags=args.tags,
        slots=args.slots, name=getattr(args, "name", None), cache_dir=args.cache_dir,
        job_memory_mb=args.job_memory, gpu_probe=False if args.no_gpu_probe else None, prefetch=args.prefetch,
        fork_server=False if args.no_fork_server else None, object_store_mb=args.object_store,
        inline_max_kb=args.inline_max, object_direct=False if args.no_direct_objects else None, **extra,
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
        from titan_zmq.process import stop_processes

        stop_processes(procs)
        broker.stop()
        thread.join(10)
    print("titan up: stopped", flush=True)
    return EXIT_OK
