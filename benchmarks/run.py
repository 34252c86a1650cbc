"""The benchmark harness: every titan_zmq figure next to its ceiling, its baseline and its peers, in one run.

``python -m benchmarks [--quick] [--json OUT] [--plot OUT.png]`` calls :func:`main`;
benchmarks/README.md says what each scenario measures and holds the latest table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import zmq

from benchmarks import aof, ceiling, dag, ha, objects, scale, titan, workflows, workloads
from benchmarks.cpu import CpuMeter, children
from benchmarks.report import Row, format_table, median, percentile
from titan_zmq.client import TitanClient
from titan_zmq.local import LocalCluster

log = logging.getLogger(__name__)

SCENARIOS = (
    "noop", "scripts", "dag", "fanout", "journal", "memory", "scaling", "peers", "objects", "ha", "workflows", "scale",
)  # fmt: skip
POLICIES = ("off", "everysec", "always")  # the journal: none (in memory), then the two durable policies
ORIGINAL_TITAN = {"jobs_per_s": 7.4, "p50_ms": 90.0}  # the Java original, 2 workers, measured on this machine


@dataclass(frozen=True)
class Sizes:
    messages: int
    jobs: int
    latency: int
    rtt: int
    scripts: int
    script_samples: int
    spawns: int
    dag_nodes: int
    chain: int
    fanout: int
    appends: int
    replay: int
    memory_jobs: int
    scaling_jobs: int
    peer_jobs: int
    peer_samples: int


FULL = Sizes(50_000, 20_000, 300, 2000, 400, 60, 40, 10_000, 1000, 10_000, 200_000, 1_000_000, 100_000, 10_000,
             10_000, 100)  # fmt: skip
QUICK = Sizes(20_000, 4_000, 100, 500, 150, 25, 12, 2_000, 200, 10_000, 40_000, 200_000, 50_000, 2_000,
              2_000, 30)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One goal of the issue, judged on figures from this run."""

    name: str
    value: float
    limit: float
    higher_is_better: bool = True
    shown: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        verdict = "MET    " if self.met else "NOT MET"
        value = f"{self.value:,.0f}" if abs(self.value) >= 1000 else f"{self.value:.3g}"
        return f"{verdict}  {self.name} {op} {self.shown or format(self.limit, ',g')}: {value}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="titan_zmq on its main workloads, next to a raw pyzmq ceiling, baselines and peer systems.",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes: the whole run in under 2 minutes on 2 cores")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="titan worker processes (default 2)")
    p.add_argument("--slots", type=int, default=2, help="slots per titan worker (default 2)")
    p.add_argument("--repeat", type=int, help="no-op throughput runs per side, median reported (default 3; quick 2)")
    p.add_argument("--window", type=int, default=1000, help="ceiling: messages in flight (default 1000)")
    p.add_argument("--json", metavar="OUT", help="also write every figure as JSON to OUT")
    p.add_argument("--plot", metavar="OUT.png", help="draw throughput and latency against ceiling and peers")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    for name in ("workers", "slots", "repeat", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    args.scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install .[peers] (or pip install matplotlib)")
    return args


def machine() -> dict[str, Any]:
    return {
        "nproc": workloads.nproc(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
    }


class Run:
    """Runs the scenarios asked for, collecting rows, targets and raw figures."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.size = QUICK if args.quick else FULL
        self.objects_size = objects.QUICK if args.quick else objects.FULL
        self.ha_size = ha.QUICK if args.quick else ha.FULL
        self.workflows_size = workflows.QUICK if args.quick else workflows.FULL
        self.scale_size = scale.QUICK if args.quick else scale.FULL
        self.tmp = tmp
        self.rows: list[Row] = []
        self.targets: list[Target] = []
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []
        self.shape = f"{args.workers}w x {args.slots}s"

    def want(self, name: str) -> bool:
        return name in self.args.scenarios

    def step(self, name: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        log.info("scenario %s ...", name)
        fn()
        self.figures.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
        print(f"  {name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    # ---- scenarios --------------------------------------------------------------------------

    def noop(self, stack: ExitStack) -> LocalCluster:
        """The ceiling and titan's no-op jobs under each journal policy, interleaved run by run."""
        a, s = self.args, self.size
        fwd = stack.enter_context(ceiling.forwarding())
        clusters = {}
        for policy in POLICIES if self.want("noop") else ("off",):
            extra = [] if policy == "off" else ["--data-dir", str(self.tmp / f"data-{policy}"), "--fsync", policy]
            clusters[policy] = stack.enter_context(titan.cluster(a.workers, a.slots, extra))
        clients = {p: c.client() for p, c in clusters.items()}
        for client in clients.values():
            titan.warm_up(client, a.workers, a.slots)
        if not self.want("noop"):
            return clusters["off"]
        me = [os.getpid()]
        c_cpu = CpuMeter({"forwarder": [fwd.procs[0].pid or 0], "echo worker": [fwd.procs[1].pid or 0], "client": me})
        main = clusters["off"]
        workers = [p.pid for p in main.workers]
        t_cpu = CpuMeter({"broker": [main.broker.pid] if main.broker else [], "workers": workers,
                          "executors": children(workers), "client": me})  # fmt: skip
        c_runs: list[float] = []
        t_runs: dict[str, list[float]] = {p: [] for p in POLICIES}
        for i in range(a.repeat):
            c_runs.append(c_cpu.measure(lambda: ceiling.throughput(fwd, s.messages, a.window)))
            for policy, client in clients.items():
                if policy == "off":
                    t_runs[policy].append(t_cpu.measure(functools.partial(titan.throughput, client, s.jobs)))
                else:
                    t_runs[policy].append(titan.throughput(client, s.jobs))
            log.info("run %d: ceiling %.0f msgs/s, titan %s", i + 1, c_runs[-1],
                     {p: round(r[-1]) for p, r in t_runs.items()})  # fmt: skip
        rtt = ceiling.latencies(fwd, s.rtt)
        c_tp = median(c_runs)
        c50, c99 = percentile(rtt, 50) * 1e3, percentile(rtt, 99) * 1e3
        self.rows += [
            Row("ceiling", f"pipelined msgs/s (window {a.window})", c_tp, "msgs/s"),
            Row("ceiling", "round trip p50", c50, "ms"),
            Row("ceiling", "round trip p99", c99, "ms"),
        ]
        fig: dict[str, Any] = {"ceiling": {"msgs_per_s": c_tp, "runs": c_runs, "rtt_p50_ms": c50, "rtt_p99_ms": c99,
                                           "cpu_cores": c_cpu.utilisation()}}  # fmt: skip
        for policy, client in clients.items():
            lat = titan.latencies(client, s.latency)
            tp, p50, p99 = median(t_runs[policy]), percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
            name = f"titan {self.shape}, journal {policy}"
            self.rows += [
                Row(name, "no-op jobs/s (map)", tp, "jobs/s", c_tp, "msgs/s"),
                Row(name, "one job at a time p50", p50, "ms", c50),
                Row(name, "one job at a time p99", p99, "ms", c99),
            ]
            fig[policy] = {"jobs_per_s": tp, "runs": t_runs[policy], "p50_ms": p50, "p99_ms": p99}
        fig["off"]["cpu_cores"] = t_cpu.utilisation()
        fig["off"]["ratio_runs"] = [t / c for t, c in zip(t_runs["off"], c_runs, strict=True)]
        self.figures["noop"] = fig
        ratio = fig["off"]["jobs_per_s"] / c_tp
        self.targets += [
            Target("no-op throughput / ceiling (journal off)", ratio, 0.50, shown="50%"),
            Target("one-at-a-time p50 / ceiling round trip", fig["off"]["p50_ms"] / c50, 2.0, False, "2x"),
        ]
        self.notes.append(
            f"no-op ratio run by run: {'/'.join(f'{r:.1%}' for r in fig['off']['ratio_runs'])}; CPU cores "
            f"ceiling {_cores(fig['ceiling']['cpu_cores'])}; titan {_cores(fig['off']['cpu_cores'])}"
        )
        return clusters["off"]

    def scripts(self, client: TitanClient) -> None:
        s = self.size
        path = workloads.write_script(self.tmp)
        t = workloads.script_jobs(client, path, s.scripts, s.script_samples)
        d = workloads.direct_spawns(path, s.spawns, max(5, s.spawns // 2))
        name = f"script jobs, titan {self.shape}"
        self.rows += [
            Row(name, "script jobs/s", t["jobs_per_s"], "jobs/s", d["jobs_per_s"]),
            Row(name, "one at a time p50", t["p50_ms"], "ms", d["p50_ms"]),
            Row("script jobs, python script.py", "spawned directly, 2 at a time", d["jobs_per_s"], "jobs/s"),
            Row("script jobs, original Titan", "2 workers (Java, reference)", ORIGINAL_TITAN["jobs_per_s"], "jobs/s"),
        ]
        self.figures["scripts"] = {"titan": t, "direct": d, "original_titan": ORIGINAL_TITAN}
        self.targets += [
            Target("script jobs/s through 2 workers", t["jobs_per_s"], 75.0),
            Target("script job p50 ms", t["p50_ms"], 45.0, False),
        ]

    def dag(self, client: TitanClient) -> None:
        s = self.size
        res = dag.measure(client, s.dag_nodes, 100, s.chain)
        name = f"DAG {s.dag_nodes:,} nodes"
        self.rows += [
            Row(name, "layered DAG vs no edges", res["layered_s"] * 1e3, "ms", res["flat_s"] * 1e3),
            Row(name, "scheduling overhead per node", res["overhead_ms_per_node"], "ms", res["flat_ms_per_job"]),
            Row(f"DAG chain {s.chain:,} links", "dependency release p50", res["release_p50_ms"], "ms"),
            Row(f"DAG chain {s.chain:,} links", "dependency release p99", res["release_p99_ms"], "ms"),
            Row(f"DAG {res['rank_nodes']:,} nodes", "critical-path ranks per node", res["rank_ms_per_node"], "ms",
                res["check_ms_per_node"]),
        ]
        self.figures["dag"] = res
        self.targets += [
            Target("DAG overhead per node ms", res["overhead_ms_per_node"], 0.3, False),
            Target("DAG release p50 ms", res["release_p50_ms"], 1.0, False),
            Target("DAG ranks ms per node", res["rank_ms_per_node"], 0.05, False),
        ]

    def fanout(self, client: TitanClient) -> None:
        n = self.size.fanout
        f = workloads.fan_out(client, n)
        base = titan.throughput(client, n)
        self.rows.append(Row(f"dynamic fan-out {n:,}", "spawned in a job, jobs/s", f["jobs_per_s"], "jobs/s", base))
        self.figures["fanout"] = {**f, "client_map_jobs_per_s": base}
        self.notes.append(f"fan-out: the job's spawn_many of {n:,} jobs returned after {f['spawn_s']:.2f} s; "
                          f"all done after {f['elapsed_s']:.2f} s; baseline: the client's map of as many")  # fmt: skip

    def journal(self) -> None:
        s = self.size
        out: dict[str, Any] = {}
        for per_commit in (1, 64):
            base = aof.raw_writes(self.tmp, per_commit, s.appends // 10 if per_commit == 1 else s.appends)
            for policy in aof.FSYNC_POLICIES:
                n = s.appends // 10 if per_commit == 1 else s.appends
                rate = aof.appends(self.tmp, policy, per_commit, min(n, 5_000) if policy == "always" else n)
                self.rows.append(Row(f"journal append, {per_commit}/commit", f"fsync {policy}", rate, "records/s",
                                     base))  # fmt: skip
                out[f"{policy}_{per_commit}"] = rate
        rate, bare = aof.replay(self.tmp, s.replay)
        self.rows.append(Row(f"journal replay {s.replay:,}", "records/s into the KV store", rate, "records/s", bare))
        out.update(replay_per_s=rate, bare_decode_per_s=bare)
        self.figures["journal"] = out
        self.targets.append(Target("journal replay records/s", rate, 300_000))

    def memory(self) -> None:
        m = workloads.memory_per_job(self.size.memory_jobs)
        self.rows.append(Row(f"broker memory, {self.size.memory_jobs:,} queued", "RSS growth per queued job",
                             m["bytes_per_job"], "bytes", 2048))  # fmt: skip
        self.figures["memory"] = m
        self.targets.append(Target("broker bytes per queued job", m["bytes_per_job"], 2048, False))

    def scaling(self) -> None:
        res = workloads.scaling(self.size.scaling_jobs, slots=self.args.slots)
        one = res[1]
        for w, tp in res.items():
            self.rows.append(Row("scaling", f"{w} worker(s) x {self.args.slots} slots, jobs/s", tp, "jobs/s", one))
        self.figures["scaling"] = {str(w): tp for w, tp in res.items()}

    def peers(self) -> None:
        from benchmarks import peers

        s = self.size
        ours = self.figures.get("noop", {}).get("off")
        out: dict[str, Any] = {}
        goal = {"ray": 5.0, "dask": 10.0, "dramatiq": 10.0, "celery": 10.0}
        for name in peers.PEERS:
            why = peers.unavailable(name)
            if why is not None:
                out[name] = {"skipped": why}
                self.notes.append(f"peer {name} skipped: {why}")
                continue
            try:
                res = peers.measure(name, s.peer_jobs, s.peer_samples)
            except Exception as exc:  # one peer failing must not cost the others' figures
                out[name] = {"failed": f"{type(exc).__name__}: {exc}"}
                self.notes.append(f"peer {name} failed: {exc}")
                continue
            out[name] = res
            self.rows += [
                Row(f"peer {name}", "no-op tasks/s", res["jobs_per_s"], "jobs/s"),
                Row(f"peer {name}", "one task at a time p50", res["latency_p50_ms"], "ms"),
            ]
            if ours:
                self.rows.append(Row(f"titan vs {name}", "no-op throughput", ours["jobs_per_s"], "jobs/s",
                                     res["jobs_per_s"]))  # fmt: skip
                self.targets.append(Target(f"titan / {name} throughput", ours["jobs_per_s"] / res["jobs_per_s"],
                                           goal[name], shown=f"{goal[name]:g}x"))  # fmt: skip
        self.figures["peers"] = out

    def objects(self) -> None:
        """The data plane (benchmarks/objects.py): its own clusters, the raw stream, Dask and Ray."""
        self._take("objects", objects.measure(self.objects_size), objects.report)

    def ha(self) -> None:
        """Broker groups (benchmarks/ha.py): three members against one broker, and failover after SIGKILL."""
        self._take("ha", ha.measure(self.ha_size), ha.report)

    def workflows(self) -> None:
        """Workflow shapes (benchmarks/workflows.py): makespan against a zero-overhead list schedule, Dask, Ray."""
        self._take("workflows", workflows.measure(self.workflows_size), workflows.report)

    def scale(self) -> None:
        """Many workers (benchmarks/scale.py): 4 to 1,000 simulated workers on one broker."""
        self._take("scale", scale.measure(self.scale_size), scale.report)

    def _take(self, name: str, fig: dict[str, Any], report: Callable[[dict[str, Any]], Any]) -> None:
        """A scenario module's figures: its rows, targets and notes join this run's."""
        rows, targets, notes = report(fig)
        self.rows += rows
        self.targets += [Target(name, value, limit, higher, shown) for name, value, limit, higher, shown in targets]
        self.notes += notes
        self.figures[name] = fig

    def all(self) -> None:
        with ExitStack() as stack:
            needs_cluster = any(self.want(n) for n in ("noop", "scripts", "dag", "fanout"))
            if needs_cluster:
                main = None

                def start() -> None:
                    nonlocal main
                    main = self.noop(stack)

                self.step("noop" if self.want("noop") else "cluster", start)
                assert main is not None
                client = main.client()
                for name in ("scripts", "dag", "fanout"):
                    if self.want(name):
                        self.step(name, lambda n=name: getattr(self, n)(client))  # type: ignore[misc]
        for name in ("journal", "memory", "scaling", "peers", "objects", "ha", "workflows", "scale"):
            if self.want(name):
                self.step(name, getattr(self, name))


def _cores(util: dict[str, float]) -> str:
    return ", ".join(f"{role} {u:.2f}" for role, u in util.items()) + f" (total {sum(util.values()):.2f})"


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
    print(f"titan_zmq benchmarks ({'quick' if args.quick else 'full'}): {', '.join(args.scenarios)}; "
          f"nproc={m['nproc']} python {m['python']} pyzmq {m['pyzmq']} libzmq {m['libzmq']}", flush=True)  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="titan-bench-") as tmp:
        run = Run(args, Path(tmp))
        try:
            run.all()
        except KeyboardInterrupt:
            print("interrupted; every process the benchmark started was stopped", file=sys.stderr)
            return 130
    elapsed = time.monotonic() - started
    print(format_table(run.rows))
    if run.targets:
        print("targets:")
        for t in run.targets:
            print("  " + t.line())
    for note in run.notes:
        print(note)
    print(f"{elapsed:.0f} s in all")
    res = {
        "machine": m,
        "config": {k: v for k, v in vars(args).items() if k not in ("verbose",)},
        "sizes": dataclasses.asdict(run.size),
        "elapsed_s": elapsed,
        "figures": run.figures,
        "rows": [r.as_dict() for r in run.rows],
        "targets": [{"name": t.name, "value": t.value, "limit": t.limit, "met": t.met} for t in run.targets],
        "notes": run.notes,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log.info("figures written to %s", args.json)
    if args.plot:
        from benchmarks.plot import draw

        draw(res, args.plot)
        print(f"plot written to {args.plot}")
    return 0
