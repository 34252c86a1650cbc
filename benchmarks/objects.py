"""The data plane: ``python -m benchmarks.objects [--quick] [--json OUT]`` (or ``python -m benchmarks --only objects``).

Four figures, each against a baseline measured in the same run on the same machine:

- **transfer**: an object of 1 GiB (``--quick``: 256 MiB), a numpy array returned by a job pinned to
  worker ``local-1`` (kept in its store), then received by a job pinned to ``local-2`` (``node=``), which
  touches every page of it. The fetch time is the consumer's submit-to-result time minus that of the same
  consumer run again right after on the same worker, where the object is local (its record says
  ``from: local``): both map the object, touch every page and report, so what differs is the fetch, from
  the worker's request to the last byte in its store (the connection, the chunk protocol, the file it
  writes). Throughput is the object's size over that time. Baseline: a raw pyzmq stream of as many bytes
  between two processes of their own (a ROUTER sending them from memory in 4 MiB frames, zero copy, to a
  DEALER that receives and drops them), run after each titan transfer. A second baseline has the receiver
  write each frame into a file, as the worker does (on a VM, fresh page-cache pages cost the most).
- **broker CPU per GiB**: the broker's CPU time during the transfers (from each consumer's submission to
  its result) per GiB moved; baseline: its CPU time during an idle interval as long, per as many GiB.
  Counted from its threads' run time in schedstat (ns): psutil's user + system time, also recorded, comes
  in 10 ms ticks, too coarse for a process that is almost idle for a few seconds. The same figure for a
  holder serving through the broker's relay only (``--no-direct-objects``) shows what relaying costs.
- **mapreduce**: 8 map jobs each returning a 64 MiB numpy array (``--quick``: 16 MiB), 8 reduce jobs each
  receiving one map's array (its parent's result, in ``inputs``) and summing all of it, and one job adding
  the 8 sums; a DAG through 4 workers x 1 slot, with placement by locality on (the broker's default) and
  off (``--locality-wait 0``), on two clusters whose runs alternate, after an untimed run on each. Wall
  time from submission to the last result, and the bytes moved between workers (the ``fetched`` records
  of the reduce jobs: every input that did not come ``from: local``).
- **peers**: the same functions and the same graph in Dask (``distributed.LocalCluster``, 4 processes x 1
  thread, futures passed to tasks) and Ray (``ray.init(num_cpus=4)``, object refs passed to tasks), each
  with its own data movement and an untimed run first, against titan's time with locality on. A peer that
  is not installed is skipped with a note.

The jobs' functions, which titan, Dask and Ray all run, are in :mod:`benchmarks.objects_jobs`; the baselines (the
raw stream, and the MapReduce in Dask and Ray) in :mod:`benchmarks.objects_baselines`. This module measures
titan, runs the whole scenario and reports it.

Every process started here is stopped when the measurement ends, however it ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.objects_baselines import PEER_RUNNERS, raw_stream
from benchmarks.objects_jobs import _TIMEOUT, WORKERS, GiB, MiB, combine, expected_sum, new_seed
from benchmarks.report import Row, cli_logging, finish, median

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the repository root: workers import benchmarks.objects_jobs from it
PEERS = ("dask", "ray")

# The titan functions the jobs run (by name, from the repository root).
MAKE = "benchmarks.objects_jobs:make_partition"
TOUCH = "benchmarks.objects_jobs:touch"
REDUCE = "benchmarks.objects_jobs:reduce_inputs"
COMBINE = "benchmarks.objects_jobs:combine_inputs"


@dataclass(frozen=True)
class Sizes:
    transfer: int  # bytes of the transfer's object
    transfer_runs: int
    relay: int  # bytes of the object fetched through the broker's relay
    partitions: int
    partition: int  # bytes of one map's array
    mr_runs: int  # MapReduce runs per side (median reported)


FULL = Sizes(transfer=1 * GiB, transfer_runs=5, relay=256 * MiB, partitions=8, partition=64 * MiB, mr_runs=5)
QUICK = Sizes(transfer=256 * MiB, transfer_runs=3, relay=64 * MiB, partitions=8, partition=16 * MiB, mr_runs=3)


def unavailable() -> str | None:
    """Why the scenario cannot run here (its jobs need numpy), or None."""
    if importlib.util.find_spec("numpy") is None:
        return "numpy is not installed (pip install numpy)"
    return None


# ---- the broker's CPU -------------------------------------------------------------------------------------


class ProcessCpu:
    """The CPU time one process spends during the calls measured, counted two ways: psutil's (user +
    system, which Linux charges in whole clock ticks of 10 ms to the thread running when a tick fires) and
    the scheduler's (its threads' run time in ``/proc/PID/task/*/schedstat``, in nanoseconds), which sees
    the short bursts of a mostly idle process that ticks miss or overcharge. ``sched`` is None where
    schedstat cannot be read."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.pid, self.proc = pid, psutil.Process(pid)
        self.ticks = 0.0
        self.sched: float | None = 0.0 if self._sched() is not None else None
        self.wall = 0.0

    def _sched(self) -> float | None:
        total = 0
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return total / 1e9

    def measure(self, fn: Callable[[], Any]) -> Any:
        t0, s0, w0 = self.proc.cpu_times(), self._sched(), time.perf_counter()
        try:
            return fn()
        finally:
            self.wall += time.perf_counter() - w0
            t1, s1 = self.proc.cpu_times(), self._sched()
            self.ticks += (t1.user + t1.system) - (t0.user + t0.system)
            if self.sched is not None and s0 is not None and s1 is not None:
                self.sched += s1 - s0


# ---- titan ------------------------------------------------------------------------------------------------


@contextmanager
def cluster(workers: int, broker_args: list[str] | None = None,
            first_worker: list[str] | None = None) -> Iterator[Any]:  # fmt: skip
    """A LocalCluster of ``workers`` x 1 slot named local-1, local-2, ..., whose workers import
    ``benchmarks``; ``first_worker``: extra command-line flags for local-1."""
    from titan_zmq.local import LocalCluster

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    c = LocalCluster(workers=0, slots=1, env={"PYTHONPATH": path}, broker_args=broker_args)
    with c:
        for i in range(workers):
            c.add_worker(name=f"local-{i + 1}", extra=first_worker if i == 0 else None)
        c.wait_workers(workers)
        log.info("objects: broker pid %d, worker pids %s", c.broker.pid if c.broker else -1, [p.pid for p in c.workers])
        yield c


def _warm(client: Any, workers: int) -> None:
    """Start each worker's call executor and import numpy and the jobs' module there; move one small object."""
    for i in range(workers):
        node = f"local-{i + 1}"
        ref = client.submit(MAKE, args=[2 * MiB, 10_000 + i + int.from_bytes(os.urandom(4), "big")],
                            node=node).result(fetch=False, timeout=120)  # fmt: skip
        other = f"local-{(i + 1) % workers + 1}"
        for where in (other, node):
            got = client.submit(TOUCH, args=[ref], node=where).result(timeout=120)
            if got["bytes"] != 2 * MiB:
                raise RuntimeError(f"the warm-up consumer received {got['bytes']} bytes, not {2 * MiB}")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def transfer_once(client: Any, nbytes: int, meter: ProcessCpu | None = None,
                  holder: str = "local-1", fetcher: str = "local-2") -> dict[str, Any]:  # fmt: skip
    """Make an object of ``nbytes`` on ``holder``, receive it in a job on ``fetcher`` (timed, broker CPU
    measured by ``meter``), then again where it is local. Returns the figures of this one transfer."""
    from titan_zmq.objects import as_ref

    made = client.submit(MAKE, args=[nbytes, new_seed()], node=holder).result(fetch=False, timeout=_TIMEOUT)
    ref = as_ref(made)
    if ref is None or ref.size < nbytes:
        raise RuntimeError(f"the producer's result is not a stored object of {nbytes:,} bytes: {made!r}")

    def consume() -> tuple[Any, dict[str, Any]]:
        h = client.submit(TOUCH, args=[ref], node=fetcher)
        return h, h.result(timeout=_TIMEOUT)

    remote_s, (h, got) = _timed(lambda: meter.measure(consume) if meter else consume())
    local_s, (h2, got2) = _timed(consume)
    moved = (client.status(h.id).fetched or {}).get(ref.id) or {}
    again = (client.status(h2.id).fetched or {}).get(ref.id) or {}
    if got["bytes"] != nbytes or got2 != got:
        raise RuntimeError(f"the consumer received {got['bytes']:,} bytes, expected {nbytes:,}")
    if moved.get("from") != holder or again.get("from") != "local":
        raise RuntimeError(f"the object was not fetched from {holder} and then read locally: {moved}, {again}")
    fetch_s = max(remote_s - local_s, 1e-9)
    return {
        "object_bytes": ref.size, "remote_s": remote_s, "local_s": local_s, "fetch_s": fetch_s,
        "mb_per_s": ref.size / fetch_s / 1e6, "route": moved.get("route"), "from": moved.get("from"),
        "bytes": moved.get("bytes"),
    }  # fmt: skip


def transfer(c: Any, nbytes: int, runs: int, into: str, raw: bool = True) -> dict[str, Any]:
    """``runs`` transfers of ``nbytes`` from local-1 to local-2, alternated with raw streams of as many
    bytes; the broker's CPU across them, and across an idle interval as long."""
    client = c.client()
    assert c.broker is not None
    meter = ProcessCpu(c.broker.pid)
    titan_runs: list[dict[str, Any]] = []
    raw_runs: list[float] = []
    file_runs: list[float] = []
    for i in range(runs):
        t = transfer_once(client, nbytes, meter)
        titan_runs.append(t)
        if raw:
            raw_runs.append(raw_stream(t["object_bytes"]))
            file_runs.append(raw_stream(t["object_bytes"], into))
        log.info("transfer run %d: titan %.0f MB/s (%s), raw %s", i + 1, t["mb_per_s"], t["route"],
                 f"{t['object_bytes'] / raw_runs[-1] / 1e6:.0f} MB/s" if raw_runs else "-")  # fmt: skip
    moved_gib = sum(t["object_bytes"] for t in titan_runs) / GiB
    idle = ProcessCpu(c.broker.pid)
    idle.measure(lambda: time.sleep(meter.wall))
    precise = meter.sched is not None and idle.sched is not None
    busy_cpu = meter.sched if precise and meter.sched is not None else meter.ticks
    idle_cpu = idle.sched if precise and idle.sched is not None else idle.ticks
    size = titan_runs[0]["object_bytes"]
    out: dict[str, Any] = {
        "object_bytes": size,
        "runs": titan_runs,
        "fetch_s": median([t["fetch_s"] for t in titan_runs]),
        "routes": sorted({str(t["route"]) for t in titan_runs}),
        "gib_moved": moved_gib,
        "broker_wall_s": meter.wall,
        "idle_wall_s": idle.wall,
        "broker_psutil_cpu_s": meter.ticks,
        "idle_psutil_cpu_s": idle.ticks,
        "broker_sched_cpu_s": meter.sched,
        "idle_sched_cpu_s": idle.sched,
        "cpu_counter": "schedstat" if precise else "psutil",
        "broker_cpu_ms_per_gib": busy_cpu / moved_gib * 1e3,
        "idle_cpu_ms_per_gib": idle_cpu / moved_gib * 1e3,
        "broker_psutil_ms_per_gib": meter.ticks / moved_gib * 1e3,
    }
    out["mb_per_s"] = size / out["fetch_s"] / 1e6
    if raw:
        out["raw_s"] = median(raw_runs)
        out["raw_runs_s"] = raw_runs
        out["raw_mb_per_s"] = size / out["raw_s"] / 1e6
        out["raw_file_s"] = median(file_runs)
        out["raw_file_mb_per_s"] = size / out["raw_file_s"] / 1e6
        out["ratio"] = out["mb_per_s"] / out["raw_mb_per_s"]
        out["ratio_runs"] = [r / t["fetch_s"] for t, r in zip(titan_runs, raw_runs, strict=True)]
    return out


def mapreduce_dag(partitions: int, nbytes: int, tag: str) -> tuple[Any, list[str], list[str], str, list[int]]:
    """The MapReduce as a titan DAG: (dag, map ids, reduce ids, the final id, the seeds)."""
    from titan_zmq.client import Dag

    dag = Dag(f"mapreduce-{tag}")
    seeds = [new_seed() for _ in range(partitions)]
    maps = [dag.add(MAKE, args=[nbytes, s], id=f"mr-{tag}.map.{i}") for i, s in enumerate(seeds)]
    reduces = [dag.add(REDUCE, after=[m], id=f"mr-{tag}.reduce.{i}") for i, m in enumerate(maps)]
    final = dag.add(COMBINE, after=reduces, id=f"mr-{tag}.combine")
    return dag, maps, reduces, final, seeds


def mapreduce_titan(client: Any, partitions: int, nbytes: int) -> dict[str, Any]:
    """One MapReduce run: seconds from submission to the last result, bytes moved between workers."""
    from titan_zmq.client import JobState

    dag, maps, reduces, final, seeds = mapreduce_dag(partitions, nbytes, os.urandom(4).hex())
    t0 = time.perf_counter()
    recs = client.submit_dag(dag).wait(timeout=_TIMEOUT)
    elapsed = time.perf_counter() - t0
    bad = [r for r in recs.values() if r.state is not JobState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} MapReduce job(s) did not succeed, e.g. {bad[0].id}: {bad[0].error}")
    want = combine([expected_sum(nbytes, s) for s in seeds])
    if recs[final].result != want:
        raise RuntimeError(f"the MapReduce returned {recs[final].result!r}, expected {want}")
    moved = fetches = local = 0
    for m, r in zip(maps, reduces, strict=True):
        fetched = client.status(r).fetched or {}  # the record of the DAG's wait may be a lean one
        if not fetched:
            raise RuntimeError(f"reduce job {r} has no record of its input's transfer")
        for f in fetched.values():
            if f.get("from") != "local":
                moved += int(f.get("bytes") or 0)
                fetches += 1
        local += recs[m].worker == recs[r].worker
    return {"seconds": elapsed, "bytes_moved": moved, "fetches": fetches, "reduces_where_their_input_was": local}


def peer_unavailable(name: str) -> str | None:
    from benchmarks import peers

    return peers.unavailable(name)


# ---- the whole scenario --------------------------------------------------------------------------------------


def measure(size: Sizes, peer_names: tuple[str, ...] = PEERS, relay: bool = True) -> dict[str, Any]:
    """Every figure of the scenario (see the module's docstring), as one JSON-able dict. A peer that is not
    installed, or that fails, has ``skipped`` or ``failed`` in place of its figures."""
    why = unavailable()
    if why is not None:
        return {"skipped": why}
    out: dict[str, Any] = {"sizes": dataclasses.asdict(size)}
    with tempfile.TemporaryDirectory(prefix="titan-bench-objects-") as tmp, ExitStack() as stack:
        on = stack.enter_context(cluster(WORKERS))
        c_on = on.client()
        _warm(c_on, WORKERS)
        t0 = time.monotonic()
        out["transfer"] = transfer(on, size.transfer, size.transfer_runs, tmp)
        log.info("objects: transfer done in %.0f s", time.monotonic() - t0)
        if relay:
            with cluster(2, first_worker=["--no-direct-objects"]) as rc:
                _warm(rc.client(), 2)
                out["relay"] = transfer(rc, size.relay, size.transfer_runs, tmp, raw=False)
        off = stack.enter_context(cluster(WORKERS, broker_args=["--locality-wait", "0"]))
        c_off = off.client()
        _warm(c_off, WORKERS)
        for c in (c_on, c_off):  # an untimed run at full size on each, as the peers get
            mapreduce_titan(c, size.partitions, size.partition)
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for i in range(size.mr_runs):  # alternated, run by run: a slow spell weighs on both sides
            runs["on"].append(mapreduce_titan(c_on, size.partitions, size.partition))
            runs["off"].append(mapreduce_titan(c_off, size.partitions, size.partition))
            log.info("mapreduce run %d: on %.2f s / %d MB moved, off %.2f s / %d MB moved", i + 1,
                     runs["on"][-1]["seconds"], runs["on"][-1]["bytes_moved"] // 10**6, runs["off"][-1]["seconds"],
                     runs["off"][-1]["bytes_moved"] // 10**6)  # fmt: skip
        mr: dict[str, Any] = {"partitions": size.partitions, "partition_bytes": size.partition,
                              "cluster": f"{WORKERS} workers x 1 slot"}  # fmt: skip
        for side, rs in runs.items():
            mr[side] = {
                "seconds": median([r["seconds"] for r in rs]),
                "bytes_moved": median([r["bytes_moved"] for r in rs]),
                "runs": rs,
            }
        out["mapreduce"] = mr
    out["peers"] = {}
    for name in peer_names:
        reason = peer_unavailable(name)
        if reason is not None:
            out["peers"][name] = {"skipped": reason}
            continue
        try:
            out["peers"][name] = PEER_RUNNERS[name](size.partitions, size.partition, size.mr_runs)
        except Exception as exc:  # one peer failing must not cost the other's figures
            log.exception("peer %s failed", name)
            out["peers"][name] = {"failed": f"{type(exc).__name__}: {exc}"}
    return out


def report(fig: dict[str, Any]) -> tuple[list[Row], list[tuple[str, float, float, bool, str]], list[str]]:
    """The table rows, the targets (name, value, limit, higher is better, shown) and notes of ``measure``'s figures."""
    rows: list[Row] = []
    targets: list[tuple[str, float, float, bool, str]] = []
    notes: list[str] = []
    if "skipped" in fig:
        return rows, targets, [f"objects skipped: {fig['skipped']}"]
    t = fig["transfer"]
    name = f"object transfer {t['object_bytes'] / GiB:.2f} GiB"
    rows.append(Row(name, "worker to worker vs raw stream", t["mb_per_s"], "MB/s", t.get("raw_mb_per_s")))
    if "raw_mb_per_s" in t:
        rows.append(Row(name, "vs raw stream into a file", t["mb_per_s"], "MB/s", t["raw_file_mb_per_s"]))
        targets.append(("object transfer / raw pyzmq stream", t["ratio"], 0.70, True, "70%"))
        notes.append("object transfer ratio run by run: " + "/".join(f"{r:.1%}" for r in t["ratio_runs"])
                     + f"; route {', '.join(t['routes'])}")  # fmt: skip
    rows.append(Row("broker CPU, direct transfer", "CPU µs per GiB moved vs idle", t["broker_cpu_ms_per_gib"] * 1e3,
                    "µs/GiB", t["idle_cpu_ms_per_gib"] * 1e3))  # fmt: skip
    above = t["broker_cpu_ms_per_gib"] - t["idle_cpu_ms_per_gib"]  # its heartbeats and timers go on meanwhile
    targets.append(("broker CPU ms per GiB moved directly, above idle", above, 10.0, False, "10"))
    r = fig.get("relay")
    if r:
        rows.append(Row(f"object transfer {r['object_bytes'] / MiB:.0f} MiB via relay", "worker to worker, MB/s",
                        r["mb_per_s"], "MB/s", t["mb_per_s"]))  # fmt: skip
        rows.append(Row("broker CPU, relayed transfer", "CPU µs per GiB moved vs idle",
                        r["broker_cpu_ms_per_gib"] * 1e3, "µs/GiB", r["idle_cpu_ms_per_gib"] * 1e3))  # fmt: skip
    mr = fig["mapreduce"]
    shape = f"MapReduce {mr['partitions']} x {mr['partition_bytes'] // MiB} MiB"
    on, off = mr["on"], mr["off"]
    rows += [
        Row(shape, "locality on vs off, time", on["seconds"] * 1e3, "ms", off["seconds"] * 1e3),
        Row(shape, "locality on, MB moved", on["bytes_moved"] / 1e6, "MB"),
        Row(shape, "locality off, MB moved", off["bytes_moved"] / 1e6, "MB"),
    ]
    for peer, res in fig.get("peers", {}).items():
        if "seconds" not in res:
            notes.append(f"objects peer {peer} {'skipped' if 'skipped' in res else 'failed'}: "
                         f"{res.get('skipped') or res.get('failed')}")  # fmt: skip
            continue
        rows.append(Row(f"{shape}, {peer}", "time", res["seconds"] * 1e3, "ms"))
        rows.append(Row(f"titan vs {peer}", f"{shape}, time", on["seconds"] * 1e3, "ms", res["seconds"] * 1e3))
        targets.append((f"titan / {peer} MapReduce time", on["seconds"] / res["seconds"], 1.0, False, "1x"))
        if res.get("bytes_moved") is not None:
            notes.append(f"objects peer {peer}: {res['bytes_moved'] / 1e6:.1f} MB moved between its workers")
    return rows, targets, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.objects", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller objects (256 MiB; partitions of 16 MiB)")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    cli_logging(args.verbose)
    return finish(measure(QUICK if args.quick else FULL), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
