"""Workflow shapes against a zero-overhead list schedule: ``python -m benchmarks.workflows [--quick] [--json OUT]``.

Six workflow shapes (Montage, Epigenomics, SoyKB, Cycles, 1000Genome, BLAST) of about 200 tasks each
(``--quick``: 100), from WfCommons' recipes when ``wfcommons`` is installed, else from the generators of
:mod:`benchmarks.wf_shapes`, written from the workflows' published structure; each graph is seeded, so the same
every run. Every task is a job that sleeps its runtime (:mod:`benchmarks.wf_jobs`). A shape's runtimes are scaled
by one factor so that its baseline takes 4 s (``--quick``: 2 s).

- **titan**: the graph as one DAG (``Dag.add(..., after=parents)``) through a local cluster of 4 workers x 4
  slots, each task type a call target of its own, and each job given its runtime as its ``estimate`` hint when
  the broker takes that option (checked first with one job; without it, the broker only has what it learns per
  target, and a note says so).
- **baseline**: a simulation of the same graph on the same 16 slots with zero overhead, greedy list scheduling:
  a ready task starts on a free slot at the instant there is one, ready tasks by upward rank (HEFT's: the longest
  path of runtimes from the task to the graph's end). Also shown: the same simulation with ready tasks first come,
  first served, for reference. Both computed here, on the very runtimes the jobs sleep.
- **peers**, where installed: the same graph in Dask (``distributed.LocalCluster``, 4 processes x 4 threads,
  ``client.submit`` with the parents' futures as arguments) and Ray (``ray.init(num_cpus=16)``, remote functions
  with the parents' object refs as arguments), one graph at a time, each after a warm-up.

The makespan, the same for all three: wall time from the first submission to the last result (titan: the
DAG's submission to the last job's final record; Dask and Ray: to the results of the graph's sinks). The figure
is the list schedule's makespan over that one, target >= 98% on every shape. The broker's own records
(first start to last finish) are kept in the JSON as ``span_s``.

Every process started here is stopped when the measurement ends, however it ends.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from benchmarks import peers, wf_jobs
from benchmarks.report import Row, cli_logging, finish, median
from benchmarks.wf_shapes import SHAPES, SOURCES, Workflow, describe, generate, scale_to, wfcommons_version
from titan_zmq.client import Dag, JobState, TitanClient
from titan_zmq.errors import TitanError
from titan_zmq.local import LocalCluster

log = logging.getLogger(__name__)

WORKERS, SLOTS = 4, 4
PEERS = ("dask", "ray")
SEED = 1
TARGET = 0.98  # list schedule / makespan, on every shape
UNIT = "msec"  # the rows' unit: not "ms", which the table shows as a multiple; this one's ratio shows as a %
WARM_S = 0.2  # seconds each warm-up task sleeps
WARM_ROUNDS = 10  # Ray starts its worker processes two at a time on 2 cores: five rounds were seen


@dataclass(frozen=True)
class Sizes:
    tasks: int  # about this many tasks per graph
    makespan: float  # seconds: each graph's rank-ordered list schedule on the cluster's slots, after scaling


FULL = Sizes(tasks=200, makespan=4.0)
QUICK = Sizes(tasks=100, makespan=2.0)

Graphs = dict[str, Workflow]


def _timeout(wf: Workflow) -> float:
    """Seconds one graph may take, whatever runs it: ten times its work spread over the slots, at least a minute."""
    return max(60.0, 10 * wf.work() / (WORKERS * SLOTS))


def _warm(batch: Callable[[int, float], object], name: str) -> list[float]:
    """Warm-up rounds of one sleep per slot, all at once, until a round takes less than twice the sleep (every
    slot served at once: the processes are up), at most ``WARM_ROUNDS``. The rounds' times (seconds)."""
    times: list[float] = []
    for _ in range(WARM_ROUNDS):
        t0 = time.perf_counter()
        batch(WORKERS * SLOTS, WARM_S)
        times.append(time.perf_counter() - t0)
        if times[-1] < 2 * WARM_S:
            break
    else:
        log.warning("%s: still slow after %d warm-up rounds (%.2f s for one of %.2f s)", name, len(times), times[-1],
                    WARM_S)  # fmt: skip
    log.info("%s: warm-up rounds %s s", name, ", ".join(f"{t:.2f}" for t in times))
    return times


# --- titan ---


def _estimate_taken(client: TitanClient) -> str | None:
    """None when the broker takes a job with an ``estimate`` hint, else why not."""
    try:
        client.submit(wf_jobs.target("probe"), args=[0.0], estimate=0.001).result(timeout=30)
    except TitanError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _titan_dag(wf: Workflow, hints: bool) -> Dag:
    dag = Dag(f"wf-{wf.name}-{uuid.uuid4().hex[:8]}")  # ids unique to this run: a broker keeps the ids it saw
    ids: list[str] = []
    for i, t in enumerate(wf.tasks):
        options: dict[str, Any] = {"estimate": t.runtime} if hints else {}
        ids.append(dag.add(wf_jobs.target(t.kind), args=[t.runtime], after=[ids[p] for p in t.parents],
                           id=f"{dag.id}.{i}", **options))  # fmt: skip
    return dag


def idle_while_ready(ready: list[float], starts: list[float], ends: list[float], slots: int) -> float:
    """Slot-seconds lost to dispatch in a run: over time, the smaller of the jobs waiting (ready, not started)
    and the free slots (``slots`` minus the jobs running), summed. Zero for a zero-overhead schedule."""
    marks = sorted({*ready, *starts, *ends})
    lost = 0.0
    for a, b in itertools.pairwise(marks):
        waiting = sum(1 for r, s in zip(ready, starts, strict=True) if r <= a < s)
        if waiting:
            running = sum(1 for s, e in zip(starts, ends, strict=True) if s <= a < e)
            lost += min(waiting, max(0, slots - running)) * (b - a)
    return lost


def _titan_graph(client: TitanClient, wf: Workflow, hints: bool) -> dict[str, Any]:
    dag = _titan_dag(wf, hints)
    submitted, t0 = time.time(), time.perf_counter()
    recs = client.submit_dag(dag).wait(timeout=_timeout(wf))
    wall = time.perf_counter() - t0
    bad = [r for r in recs.values() if r.state is not JobState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{wf.name}: {len(bad)} job(s) did not succeed, e.g. {bad[0].id}: {bad[0].error}")
    by_index = [recs[f"{dag.id}.{i}"] for i in range(len(wf.tasks))]
    starts = [r.started_at or 0.0 for r in by_index]  # the broker's clock (wall time, as ``submitted``)
    ends = [r.finished_at or 0.0 for r in by_index]
    ready = [max((ends[p] for p in t.parents), default=submitted) for t in wf.tasks]  # its last parent's finish
    # a job's start after its last parent's finish: dispatch, and any wait for a free slot
    release = [(s - r) * 1e3 for t, r, s in zip(wf.tasks, ready, starts, strict=True) if t.parents]
    return {
        "wall_s": wall, "span_s": max(ends) - min(starts), "release_p50_ms": median(release) if release else 0.0,
        "release_max_ms": max(release, default=0.0),
        "idle_slot_s": idle_while_ready(ready, starts, ends, WORKERS * SLOTS),
    }  # fmt: skip


def run_titan(graphs: Graphs, estimate: bool = True) -> dict[str, Any]:
    """Every graph as one DAG through a local cluster of ``WORKERS`` x ``SLOTS``, after a warm-up; with each job's
    runtime as its ``estimate`` hint if ``estimate`` and the broker takes it."""
    env = {"PYTHONPATH": peers._pythonpath()}  # the workers import benchmarks.wf_jobs from the repository root
    out: dict[str, Any] = {"setup": f"LocalCluster: {WORKERS} workers x {SLOTS} slots", "shapes": {}}
    with LocalCluster(workers=WORKERS, slots=SLOTS, env=env) as cluster:
        client = cluster.client(timeout=30)
        out["warmup_s"] = _warm(lambda n, s: client.map(wf_jobs.target("warmup"), [s] * n, timeout=120), "titan")
        why = _estimate_taken(client) if estimate else "not asked for: --no-estimate"
        out["estimate"] = {"used": why is None, "why_not": why}
        if estimate and why is not None:
            log.warning("titan: the broker refused a job with an estimate= hint; none given: %s", why)
        for name, wf in graphs.items():
            res = out["shapes"][name] = _titan_graph(client, wf, why is None)
            log.info("titan %s: %s", name, res)
    return out


# --- dask and ray ---


@contextmanager
def _dask(reaper: peers._Reaper) -> Iterator[Any]:
    """A ``distributed`` client on a ``LocalCluster`` of ``WORKERS`` processes x ``SLOTS`` threads."""
    from distributed import Client
    from distributed import LocalCluster as DaskCluster

    with ExitStack() as stack, peers._on_pythonpath():
        quiet = logging.getLogger("distributed")  # its INFO lines, on closing the cluster above all
        stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.WARNING)
        # silence_logs: its workers log heartbeat errors while the cluster closes; a task's error reaches the client
        cluster = stack.enter_context(DaskCluster(
            n_workers=WORKERS, threads_per_worker=SLOTS, processes=True, host="127.0.0.1", dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ))  # fmt: skip
        client = stack.enter_context(Client(cluster))
        stack.callback(reaper.snapshot)  # before the cluster closes: its processes are still descendants then
        yield client


def run_dask(graphs: Graphs) -> dict[str, Any]:
    """Every graph through Dask, tasks by ``client.submit`` with their parents' futures as arguments."""
    from distributed import wait

    out: dict[str, Any] = {"setup": f"distributed.LocalCluster: {WORKERS} processes x {SLOTS} threads",
                           "versions": peers._versions("dask", "distributed"), "shapes": {}}  # fmt: skip
    with peers._Reaper() as reaper, _dask(reaper) as client:

        def batch(n: int, s: float) -> None:
            wait(client.map(wf_jobs.run, [s] * n, pure=False), timeout=120)

        out["warmup_s"] = _warm(batch, "dask")
        for name, wf in graphs.items():
            t0 = time.perf_counter()
            futures: list[Any] = []
            for t in wf.tasks:  # keys named by task type: Dask learns durations per key prefix
                futures.append(client.submit(wf_jobs.run, t.runtime, *[futures[p] for p in t.parents],
                                             key=f"{t.kind}-{uuid.uuid4().hex}"))  # fmt: skip
            sinks = [futures[i] for i in wf.sinks()]
            wait(sinks, timeout=_timeout(wf))
            client.gather(sinks)  # raises a task's error
            out["shapes"][name] = {"wall_s": time.perf_counter() - t0}
            log.info("dask %s: %s", name, out["shapes"][name])
            del futures
    return out


def run_ray(graphs: Graphs) -> dict[str, Any]:
    """Every graph through Ray, remote functions with their parents' object refs as arguments."""
    import ray

    out: dict[str, Any] = {"setup": f"ray.init(num_cpus={WORKERS * SLOTS}), local", "versions": peers._versions("ray"),
                           "shapes": {}}  # fmt: skip
    with peers._Reaper() as reaper:
        try:
            on_term = signal.getsignal(signal.SIGTERM)
            with peers._on_pythonpath():  # the raylet, and the workers it starts, import benchmarks.wf_jobs
                ray.init(
                    address="local", num_cpus=WORKERS * SLOTS, include_dashboard=False, object_store_memory=128 * 2**20,
                    log_to_driver=False, logging_level=logging.WARNING,
                )  # fmt: skip
            if on_term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_term)  # Ray's exits at once; this process's unwinds (finally: below)
            f = ray.remote(wf_jobs.run)

            def batch(n: int, s: float) -> None:
                ray.get([f.remote(s) for _ in range(n)], timeout=120)

            out["warmup_s"] = _warm(batch, "ray")
            for name, wf in graphs.items():
                t0 = time.perf_counter()
                refs: list[Any] = []
                for t in wf.tasks:
                    refs.append(f.remote(t.runtime, *[refs[p] for p in t.parents]))
                ray.get([refs[i] for i in wf.sinks()], timeout=_timeout(wf))
                out["shapes"][name] = {"wall_s": time.perf_counter() - t0}
                log.info("ray %s: %s", name, out["shapes"][name])
                del refs
        finally:
            reaper.snapshot()
            ray.shutdown()
    return out


_PEER_RUNNERS: dict[str, Callable[[Graphs], dict[str, Any]]] = {"dask": run_dask, "ray": run_ray}


def _peer(name: str, graphs: Graphs) -> dict[str, Any]:
    """``name``'s figures, or why it did not run (not installed, or it failed: the benchmark goes on)."""
    reason = peers.unavailable(name)
    if reason is not None:
        return {"skipped": reason}
    try:
        return _PEER_RUNNERS[name](graphs)
    except Exception as e:  # a peer's failure is its own: the figures of the others stand
        log.exception("%s failed", name)
        return {"error": f"{type(e).__name__}: {e}"}


# --- the scenario ---


def graphs_for(size: Sizes, shapes: tuple[str, ...] = SHAPES, source: str = "auto", seed: int = SEED) -> Graphs:
    """Each shape's graph, runtimes scaled so its rank-ordered list schedule on the cluster's slots takes
    ``size.makespan`` seconds."""
    return {s: scale_to(generate(s, size.tasks, seed, source), size.makespan, WORKERS * SLOTS) for s in shapes}


def measure(size: Sizes, shapes: tuple[str, ...] = SHAPES, source: str = "auto", with_peers: tuple[str, ...] = PEERS,
            estimate: bool = True) -> dict[str, Any]:  # fmt: skip
    """The figures: each graph's description and list schedules, then titan's run of every graph, then each
    peer's (``{"skipped": why}`` when it is not installed, ``{"error": ...}`` when it failed)."""
    graphs = graphs_for(size, shapes, source)
    fig: dict[str, Any] = {
        "sizes": asdict(size), "cluster": f"{WORKERS} workers x {SLOTS} slots", "slots": WORKERS * SLOTS,
        "seed": SEED, "source": source, "wfcommons": wfcommons_version(),
        "makespan": "wall time from submission to the last result",
        "shapes": {name: describe(wf, WORKERS * SLOTS) for name, wf in graphs.items()},
    }  # fmt: skip
    fig["titan"] = run_titan(graphs, estimate)
    for name in with_peers:
        fig[name] = _peer(name, graphs)
    return fig


def _shape_note(name: str, d: dict[str, Any]) -> str:
    return (f"  {name}: {d['tasks']} tasks, {d['edges']} edges, {len(d['types'])} task types, {d['sinks']} sink(s); "
            f"critical path {d['critical_path_s']:.2f} s, work {d['work_s']:.1f} s (lower bound on "
            f"{WORKERS * SLOTS} slots {d['lower_bound_s']:.2f} s); {d['source']}")  # fmt: skip


def report(fig: dict[str, Any]) -> tuple[list[Row], list[tuple[str, float, float, bool, str]], list[str]]:
    """The table rows, the targets (name, value, limit, higher is better, shown) and notes."""
    rows: list[Row] = []
    targets: list[tuple[str, float, float, bool, str]] = []
    systems = [s for s in ("titan", *PEERS) if "shapes" in fig.get(s, {})]
    for name, d in fig["shapes"].items():
        scenario, ls = f"workflow {name}, {d['tasks']} tasks", d["list_rank_s"] * 1e3
        for system in systems:
            res = fig[system]["shapes"].get(name)
            if res:
                rows.append(Row(scenario, f"list schedule / {system} makespan", ls, UNIT, res["wall_s"] * 1e3))
                if system == "titan":
                    targets.append((f"workflow {name}: list schedule / titan makespan", ls / 1e3 / res["wall_s"],
                                    TARGET, True, f"{TARGET:.0%}"))  # fmt: skip
        rows.append(Row(scenario, "list schedule / FIFO list schedule", ls, UNIT, d["list_fifo_s"] * 1e3))
    src = f"wfcommons {fig['wfcommons']}" if fig.get("wfcommons") and fig["source"] != "builtin" else "builtin"
    notes = [
        f"workflows: {fig['cluster']}; graphs from {src} (--source {fig['source']}), seed {fig['seed']}, runtimes "
        f"scaled so each rank-ordered list schedule takes {fig['sizes']['makespan']:g} s; makespan: "
        f"{fig['makespan']} (titan, Dask and Ray alike); the list schedules have zero overhead",
        *(_shape_note(name, d) for name, d in fig["shapes"].items()),
    ]  # fmt: skip
    titan = fig.get("titan", {})
    est = titan.get("estimate", {})
    if est.get("used"):
        notes.append("titan: each job was given its runtime as its estimate= hint (the broker took the option)")
    elif est:
        notes.append(f"titan: no estimate= hints ({est.get('why_not')}); the broker had only what it learned per "
                     "task type (one call target per type)")  # fmt: skip
    if titan.get("shapes"):
        slots = fig["slots"]
        notes.append("titan, by the broker's records: first start to last finish, and the slot-seconds idle while "
                     f"jobs were ready (of {slots} slots x the makespan): " + "; ".join(
                         f"{n} {r['span_s']:.3f} s, {r['idle_slot_s']:.2f} of {slots * r['wall_s']:.0f}"
                         for n, r in titan["shapes"].items()))  # fmt: skip
    for p in PEERS:
        res = fig.get(p, {})
        if "skipped" in res:
            notes.append(f"{p} not run: {res['skipped']}")
        elif "error" in res:
            notes.append(f"{p} failed: {res['error']}")
        elif res:
            notes.append(f"{p}: {res['setup']}; {res['versions']}")
    return rows, targets, notes


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: the processes started here get stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workflows", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"graphs of ~{QUICK.tasks} tasks, {QUICK.makespan:g} s each")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated (default all: {','.join(SHAPES)})")
    p.add_argument("--source", choices=SOURCES, default="auto",
                   help="WfCommons' recipes, the built-in generators, or (auto) wfcommons if installed")  # fmt: skip
    p.add_argument("--tasks", type=int, help="about this many tasks per graph (overrides the size)")
    p.add_argument("--makespan", type=float, help="seconds each graph's list schedule takes (overrides the size)")
    p.add_argument("--no-peers", action="store_true", help="titan only, not Dask and Ray")
    p.add_argument("--no-estimate", action="store_true", help="no estimate= hints: the broker learns runtimes itself")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown or not shapes:
        p.error(f"unknown shape(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SHAPES)}")
    size = QUICK if args.quick else FULL
    size = Sizes(args.tasks or size.tasks, args.makespan or size.makespan)
    if size.tasks < 10 or size.makespan <= 0:
        p.error("--tasks must be at least 10 and --makespan above 0")
    if args.source == "wfcommons" and wfcommons_version() is None:
        p.error("--source wfcommons: wfcommons is not installed (pip install wfcommons)")
    cli_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminated)
    fig = measure(size, shapes, args.source, () if args.no_peers else PEERS, not args.no_estimate)
    return finish(fig, report, args.json)


if __name__ == "__main__":
    sys.exit(main())
