"""The benchmark run: titan_zmq no-op throughput and latency next to a raw pyzmq forwarding ceiling.

``python -m benchmarks`` calls :func:`main`; benchmarks/README.md says what each scenario measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import zmq

from benchmarks import ceiling, titan
from benchmarks.cpu import CpuMeter, children
from benchmarks.report import Row, format_table, median, percentile

log = logging.getLogger(__name__)

TARGET_RATIO = 0.40  # the goal: titan no-op throughput >= 40% of the forwarding ceiling


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="titan_zmq no-op job throughput and latency, next to a raw pyzmq forwarding ceiling.",
    )
    p.add_argument("--workers", type=int, default=2, help="titan worker processes (default 2)")
    p.add_argument("--slots", type=int, default=2, help="slots per titan worker (default 2)")
    p.add_argument("--jobs", type=int, help="no-op jobs per titan throughput run (default 20,000; --quick 5,000)")
    p.add_argument("--messages", type=int, help="messages per ceiling throughput run (default 50,000; --quick 20,000)")
    p.add_argument("--window", type=int, default=1000, help="ceiling: messages in flight (default 1000)")
    p.add_argument("--latency-samples", type=int, default=300, help="titan one-at-a-time jobs timed (default 300)")
    p.add_argument("--rtt-samples", type=int, default=2000, help="ceiling one-at-a-time messages timed (default 2000)")
    p.add_argument(
        "--repeat", type=int, default=3, help="throughput runs per scenario; the median is reported (default 3)"
    )
    p.add_argument("--quick", action="store_true", help="fewer jobs and messages: done in well under a minute")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 5_000 if args.quick else 20_000
    if args.messages is None:
        args.messages = 20_000 if args.quick else 50_000
    for name in ("workers", "slots", "jobs", "messages", "window", "latency_samples", "rtt_samples", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both scenarios on the same machine, in alternation: a ceiling run, then a titan run, ``repeat`` times.

    Never at the same time (they would share the CPUs), but interleaved, so that a slow spell of a
    shared machine weighs on both sides of a ratio rather than on one. The idle side's processes
    only wake for heartbeats meanwhile.
    """
    out: dict[str, Any] = {"machine": machine(), "config": {k: v for k, v in vars(args).items() if k != "verbose"}}
    log.info("starting the ceiling's forwarder and echo worker, and a LocalCluster %dw x %ds", args.workers, args.slots)
    with ceiling.forwarding() as fwd, titan.cluster(args.workers, args.slots) as cluster:
        client = cluster.client()
        titan.warm_up(client, args.workers, args.slots)  # after it, every call executor runs
        me = [os.getpid()]
        fwd_pid, echo_pid = (p.pid or 0 for p in fwd.procs)
        c_cpu = CpuMeter({"forwarder": [fwd_pid], "echo worker": [echo_pid], "client": me})
        broker = [cluster.broker.pid] if cluster.broker else []
        workers = [p.pid for p in cluster.workers]
        t_cpu = CpuMeter({"broker": broker, "workers": workers, "executors": children(workers), "client": me})
        c_runs: list[float] = []
        t_runs: list[float] = []
        for i in range(args.repeat):
            c_runs.append(c_cpu.measure(lambda: ceiling.throughput(fwd, args.messages, args.window)))
            t_runs.append(t_cpu.measure(lambda: titan.throughput(client, args.jobs)))
            log.info("run %d: ceiling %.0f msgs/s, titan %.0f jobs/s", i + 1, c_runs[-1], t_runs[-1])
        rtt = ceiling.latencies(fwd, args.rtt_samples)
        lat = titan.latencies(client, args.latency_samples)
    out["ceiling"] = {
        "msgs_per_s": median(c_runs),
        "msgs_per_s_runs": c_runs,
        "rtt_p50_ms": percentile(rtt, 50) * 1e3,
        "rtt_p99_ms": percentile(rtt, 99) * 1e3,
        "cpu_cores": c_cpu.utilisation(),
    }
    out["titan"] = {
        "workers": args.workers,
        "slots": args.slots,
        "jobs_per_s": median(t_runs),
        "jobs_per_s_runs": t_runs,
        "latency_p50_ms": percentile(lat, 50) * 1e3,
        "latency_p99_ms": percentile(lat, 99) * 1e3,
        "cpu_cores": t_cpu.utilisation(),
    }
    ratio = out["titan"]["jobs_per_s"] / out["ceiling"]["msgs_per_s"]
    out["target"] = {
        "min_ratio": TARGET_RATIO,
        "ratio": ratio,  # of the medians
        "ratio_runs": [t / c for t, c in zip(t_runs, c_runs, strict=True)],  # run by run
        "met": ratio >= TARGET_RATIO,
    }
    return out


def rows(res: dict[str, Any]) -> list[Row]:
    c, t = res["ceiling"], res["titan"]
    shape = f"titan {t['workers']}w x {t['slots']}s"
    window = res["config"]["window"]
    return [
        Row("ceiling", f"pipelined msgs/s (window {window})", c["msgs_per_s"], "msgs/s"),
        Row("ceiling", "round trip p50", c["rtt_p50_ms"], "ms"),
        Row("ceiling", "round trip p99", c["rtt_p99_ms"], "ms"),
        Row(shape, "map no-op jobs/s", t["jobs_per_s"], "jobs/s", c["msgs_per_s"], "msgs/s"),
        Row(shape, "one job at a time p50", t["latency_p50_ms"], "ms", c["rtt_p50_ms"]),
        Row(shape, "one job at a time p99", t["latency_p99_ms"], "ms", c["rtt_p99_ms"]),
    ]


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: the processes we started get stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _terminated)
    m = machine()
    print(
        f"titan_zmq benchmark: {args.jobs:,} no-op jobs x {args.repeat} run(s), ceiling {args.messages:,} messages; "
        f"nproc={m['nproc']} python {m['python']} pyzmq {m['pyzmq']} libzmq {m['libzmq']}",
        flush=True,
    )
    started = time.monotonic()
    try:
        res = run(args)
    except KeyboardInterrupt:
        print("interrupted; every process the benchmark started was stopped", file=sys.stderr)
        return 130
    res["elapsed_s"] = time.monotonic() - started
    table = rows(res)
    res["rows"] = [r.as_dict() for r in table]
    print(format_table(table))
    print(summary(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log.info("figures written to %s", args.json)
    return 0


def summary(res: dict[str, Any]) -> str:
    """The verdict on the issue's target, with every run's figures so that the spread shows."""
    tgt = res["target"]
    verdict = "MET" if tgt["met"] else "NOT MET"
    by_run = "/".join(f"{r:.1%}" for r in tgt["ratio_runs"])
    titan_runs = "/".join(f"{v:,.0f}" for v in res["titan"]["jobs_per_s_runs"])
    ceiling_runs = "/".join(f"{v:,.0f}" for v in res["ceiling"]["msgs_per_s_runs"])
    return (
        f"target: titan no-op throughput >= {tgt['min_ratio']:.0%} of the ceiling: {verdict} "
        f"({tgt['ratio']:.1%} of the medians; run by run {by_run})\n"
        f"runs: titan {titan_runs} jobs/s; ceiling {ceiling_runs} msgs/s; {res['elapsed_s']:.0f}s in all\n"
        f"CPU in cores during the throughput runs (of {res['machine']['nproc']}): "
        f"ceiling {_cores(res['ceiling']['cpu_cores'])}; titan {_cores(res['titan']['cpu_cores'])}"
    )


def _cores(util: dict[str, float]) -> str:
    return ", ".join(f"{role} {u:.2f}" for role, u in util.items()) + f" (total {sum(util.values()):.2f})"
