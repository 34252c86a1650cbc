"""Many workers on one broker: ``python -m benchmarks.scale [--quick] [--json OUT]`` (or ``--only scale``).

For each count of workers (4, the baseline, then 10, 100 and 1,000; ``--quick``: 4, 10, 100 and 300) a
fresh broker (``titan broker`` on free loopback ports, default settings) gets that many simulated
workers (``benchmarks/simworkers.py``: real sockets and the real protocol, 250 per process, 1 slot
each, every job answered at once with a success). Once the broker lists them all, its process's CPU
time (psutil: user + system, every thread) is read around each step:

- **heartbeats**: an idle window (5 s; quick 3 s): CPU seconds per second, as a share of a core, and
  per worker per second. Each worker sends the real worker's heartbeats (one with the host's load
  every second, an empty one after half a second of silence) and the broker sends its own.
- **memory**: broker RSS with the workers attached and heartbeating, minus RSS before they came,
  per worker (at 4 and 10 workers this is within a page or two of noise).
- **CPU per job, bulk**: ``TitanClient.map`` of no-op jobs, broker CPU during it per job; the heartbeat
  rate just measured times the run's wall time is taken off (the raw figure is kept too).
- **CPU per job, one at a time**: ``submit().result()`` of one no-op job after another: each dispatch
  turn carries one job, so a choice of worker that scans every worker shows here as growth with N.

At the baseline and at the largest count the broker is then sampled with py-spy (when installed) during
another run one at a time, and its functions are listed by own time (heartbeats included): where its time
goes with that many workers, against where it goes with few.

Every process started here is stopped when the measurement ends, however it ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil

from benchmarks.report import Row, cli_logging, finish
from benchmarks.simworkers import PER_PROCESS, start_swarms
from titan_zmq.client import TitanClient
from titan_zmq.local import wait_for
from titan_zmq.process import die_with_parent, stop_processes

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOOP = "benchmarks.noop:noop"
T = TypeVar("T")

Targets = list[tuple[str, float, float, bool, str]]


@dataclass(frozen=True)
class Sizes:
    workers: tuple[int, ...]  # the first is the baseline
    idle_s: float  # the idle window for heartbeats
    bulk: int  # no-op jobs in the map
    single: int  # no-op jobs one at a time
    profile: int  # jobs one at a time under py-spy at the largest count (0: no profile)


FULL = Sizes(workers=(4, 10, 100, 1000), idle_s=5.0, bulk=10_000, single=500, profile=1000)
QUICK = Sizes(workers=(4, 10, 100, 300), idle_s=3.0, bulk=3_000, single=200, profile=500)


def _env() -> dict[str, str]:
    """The environment of the broker: none of this shell's TITAN_* settings (the defaults are measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _open_files(want: int) -> None:
    """Let this process (and so the broker it starts) hold ``want`` descriptors: a connection each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


@contextmanager
def _broker(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A broker with default settings on free loopback ports; yields it and its front address."""
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / "broker.ready"
    ready.unlink(missing_ok=True)  # one from an earlier broker would give its ports
    args = [sys.executable, "-m", "titan_zmq", "broker", "--host", "127.0.0.1", "--front", "0", "--back", "0",
            "--events", "0", "--objects", "0", "--ready-file", str(ready)]  # fmt: skip
    with open(tmp / "broker.log", "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                preexec_fn=die_with_parent)  # fmt: skip

    def bound() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}; see {tmp / 'broker.log'}")
        return ready.exists() and ready.stat().st_size > 0

    try:
        wait_for(bound, 30, "the broker to bind")
        ports = json.loads(ready.read_text())
        yield proc, f"127.0.0.1:{ports['front']}"
    finally:
        stop_processes([proc])


def _cpu(p: psutil.Process, main_only: bool = False) -> float:
    """CPU seconds of every thread of ``p`` so far (``main_only``: of its main thread, where the
    broker's loop runs, without ZeroMQ's I/O threads): from the scheduler's nanosecond counts
    (``/proc/PID/task/*/schedstat``) where there are some, else psutil's (clock ticks: 10 ms)."""
    tasks = Path(f"/proc/{p.pid}/task")
    try:
        threads = [tasks / str(p.pid)] if main_only else list(tasks.iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in threads) / 1e9
    except (OSError, ValueError, IndexError):  # a thread ended meanwhile, or no /proc: psutil's times
        pass
    try:
        t = p.cpu_times()
    except psutil.Error:  # it ended: its time is lost, not fatal
        return 0.0
    return float(t.user + t.system)


def _host_busy() -> tuple[float, float]:
    """The machine's CPU seconds so far: (busy, total), over all cores."""
    t = psutil.cpu_times()
    total = float(sum(t))
    return total - t.idle - getattr(t, "iowait", 0.0), total


class Meter:
    """CPU of the broker and of the simulators, and how busy the host is, around a step."""

    def __init__(self, broker: int, sims: list[int]) -> None:
        self.broker = psutil.Process(broker)
        self.sims = [psutil.Process(pid) for pid in sims]

    def rss(self) -> int:
        return int(self.broker.memory_info().rss)

    def run(self, fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
        """``fn()``, and what it cost: wall seconds, broker and simulator CPU seconds, host busy share."""
        b0, m0, s0, (h0, t0) = self._sample()
        start = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - start
        b1, m1, s1, (h1, t1) = self._sample()
        return out, {"wall_s": wall, "broker_cpu_s": b1 - b0, "broker_loop_cpu_s": m1 - m0, "sims_cpu_s": s1 - s0,
                     "host_busy": (h1 - h0) / (t1 - t0) if t1 > t0 else 0.0}  # fmt: skip

    def _sample(self) -> tuple[float, float, float, tuple[float, float]]:
        b = self.broker
        return _cpu(b), _cpu(b, main_only=True), sum(map(_cpu, self.sims)), _host_busy()


def _one_at_a_time(client: TitanClient, n: int) -> int:
    for i in range(n):
        client.submit(NOOP, args=[i]).result(timeout=30)
    return n


def _bulk(client: TitanClient, n: int) -> int:
    got = client.map(NOOP, range(n), timeout=120 + n / 100)
    if len(got) != n:
        raise RuntimeError(f"map of {n} jobs returned {len(got)} results")
    return n


def _per_job(step: dict[str, float], jobs: int, beat_rate: float) -> dict[str, float]:
    """Broker CPU per job in µs, raw and with the idle heartbeat rate over the step's wall time taken off."""
    raw = step["broker_cpu_s"] / jobs
    net = max(0.0, step["broker_cpu_s"] - beat_rate * step["wall_s"]) / jobs
    return {**step, "jobs": jobs, "us_per_job": net * 1e6, "raw_us_per_job": raw * 1e6,
            "jobs_per_s": jobs / step["wall_s"] if step["wall_s"] else 0.0}  # fmt: skip


def _idle(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, Any]:
    """The two idle windows (before the jobs and after them) as one: heartbeat CPU of ``n`` workers."""
    wall = before["wall_s"] + after["wall_s"]
    out: dict[str, Any] = {k: before[k] + after[k] for k in ("wall_s", "broker_cpu_s", "broker_loop_cpu_s",
                                                             "sims_cpu_s")}  # fmt: skip
    out["host_busy"] = (before["host_busy"] * before["wall_s"] + after["host_busy"] * after["wall_s"]) / wall
    out["core_share"] = out["broker_cpu_s"] / wall
    out["us_per_worker_s"] = out["core_share"] / n * 1e6
    out["windows"] = [before["broker_cpu_s"] / before["wall_s"], after["broker_cpu_s"] / after["wall_s"]]
    return out


def _size(n: int, size: Sizes, tmp: Path, profile: bool) -> dict[str, Any]:
    """Every figure for ``n`` simulated workers on a fresh broker."""
    with _broker(tmp) as (proc, address), TitanClient(address, timeout=60) as client:
        client.workers()  # the client's connection is made before the baseline RSS
        meter = Meter(proc.pid, [])
        rss0 = meter.rss()
        t0 = time.perf_counter()
        sims = start_swarms(address, n, log_dir=tmp)
        try:
            meter = Meter(proc.pid, [p.pid for p in sims])
            wait_for(lambda: len(client.workers()) >= n, 60 + n / 10, f"{n} simulated workers to register", 0.1)
            attach_s = time.perf_counter() - t0
            time.sleep(1.0)  # a heartbeat period or two: every worker's beats under way
            rss1 = meter.rss()
            before = meter.run(lambda: time.sleep(size.idle_s))[1]
            _bulk(client, max(200, 2 * n))  # warm: every worker has run a job (its prefetch window opens)
            bulk_step = meter.run(lambda: _bulk(client, size.bulk))[1]
            single_step = meter.run(lambda: _one_at_a_time(client, size.single))[1]
            after = meter.run(lambda: time.sleep(size.idle_s))[1]
            idle = _idle(before, after, n)
            bulk = _per_job(bulk_step, size.bulk, idle["core_share"])
            single = _per_job(single_step, size.single, idle["core_share"])
            spy = _profile(proc.pid, client, size.profile, tmp) if profile and size.profile else None
            left = len(client.workers())
            if left < n:
                log.warning("%d of %d simulated workers were dropped by the broker during the run", n - left, n)
        finally:
            stop_processes(sims)
    out: dict[str, Any] = {
        "workers": n, "sim_processes": len(sims), "attach_s": attach_s, "workers_at_end": left,
        "rss_before": rss0, "rss_after": rss1, "bytes_per_worker": (rss1 - rss0) / n,
        "idle": idle,
        "bulk": bulk, "single": single,
    }  # fmt: skip
    if spy is not None:
        out["profile"] = spy
    log.info("%d workers: %s", n, out)
    return out


def _profile(pid: int, client: TitanClient, jobs: int, tmp: Path) -> dict[str, Any]:
    """The broker's functions by own share of py-spy's samples while ``jobs`` run one at a time."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    raw, err = tmp / "broker-spy.txt", tmp / "broker-spy.err"
    with open(err, "wb") as errf:
        rec = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "--nolineno",
                                "--nonblocking", "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=errf,
                               preexec_fn=die_with_parent)  # fmt: skip
    try:
        time.sleep(0.5)  # attached before the jobs start
        _one_at_a_time(client, jobs)
    finally:
        rec.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        try:
            rec.wait(30)
        except subprocess.TimeoutExpired:
            rec.kill()
            rec.wait(5)
    if not raw.exists():
        return {"error": "py-spy wrote nothing: " + err.read_text(errors="replace").strip()[-300:]}
    return {"jobs": jobs, **top_functions(raw)}


_ENTRY = ("<module>", "_run_code", "_run_module_as_main", "main (", "cmd_", "run (titan_zmq/broker/loop.py")


def top_functions(path: Path, top: int = 15) -> dict[str, Any]:
    """From py-spy's collapsed stacks: samples, and the ``top`` functions by own and inclusive share."""
    from benchmarks.profile import count_stacks

    total, own, incl = count_stacks(path)
    if not total:
        return {"samples": 0, "own": [], "inclusive": []}
    inclusive = [(f, k) for f, k in incl.most_common(top + 10) if not f.startswith(_ENTRY)][:top]
    return {"samples": total, "own": [[f, k / total] for f, k in own.most_common(top)],
            "inclusive": [[f, k / total] for f, k in inclusive]}  # fmt: skip


def measure(size: Sizes, profile: bool = True) -> dict[str, Any]:
    """Every count of workers in turn, each on a fresh broker; the profile at the largest."""
    _open_files(max(size.workers) * 2 + 1024)
    fig: dict[str, Any] = {"sizes": {**size.__dict__, "workers": list(size.workers)}, "per_process": PER_PROCESS,
                           "cores": os.cpu_count(), "runs": {}}  # fmt: skip
    sampled = {size.workers[0], max(size.workers)}  # the baseline's profile, to set the largest's against
    with tempfile.TemporaryDirectory(prefix="titan-scale-bench-") as tmp_s:
        for n in size.workers:
            fig["runs"][str(n)] = _size(n, size, Path(tmp_s) / f"w{n}", profile and n in sampled)
    return fig


# ---- the report -----------------------------------------------------------------------------------


def _curve_line(n: int, r: dict[str, Any], base: dict[str, Any]) -> str:
    bulk, single, idle = r["bulk"], r["single"], r["idle"]

    def x(key: str) -> str:
        b = base[key]["us_per_job"]
        return f" ({r[key]['us_per_job'] / b:.2f}x)" if b else ""

    lost = f"; {n - r['workers_at_end']} worker(s) LOST" if r["workers_at_end"] < n else ""
    return (f"  {n:>5} workers: map {bulk['us_per_job']:,.1f} µs/job{x('bulk')} (raw {bulk['raw_us_per_job']:,.1f}), "
            f"one at a time {single['us_per_job']:,.1f} µs/job{x('single')} (raw {single['raw_us_per_job']:,.1f}, "
            f"{single['jobs_per_s']:,.0f} jobs/s); heartbeats {idle['core_share']:.2%} of a core "
            f"({' / '.join(f'{w:.2%}' for w in idle.get('windows', ()))} before / after the jobs, "
            f"{idle['us_per_worker_s']:,.1f} µs per worker per s); {r['bytes_per_worker']:,.0f} bytes/worker; "
            f"attached in {r['attach_s']:.1f} s{lost}")  # fmt: skip


def _load_line(n: int, r: dict[str, Any]) -> str:
    def cores(name: str, s: dict[str, float]) -> str:
        wall = s["wall_s"]
        return (f"{name} broker {s['broker_cpu_s'] / wall:.2f} (loop {s['broker_loop_cpu_s'] / wall:.2f}) / "
                f"simulators {s['sims_cpu_s'] / wall:.2f} cores, host {s['host_busy']:.0%} busy")  # fmt: skip

    steps = (("idle", r["idle"]), ("map", r["bulk"]), ("one at a time", r["single"]))
    return f"  {n:>5} workers ({r['sim_processes']} simulator process(es)): " + "; ".join(cores(*x) for x in steps)


def _profile_notes(n: int, spy: dict[str, Any]) -> list[str]:
    if "error" in spy:
        return [f"profile at {n} workers: {spy['error']}"]
    out = [f"broker profile at {n} workers, {spy['jobs']} jobs one at a time (py-spy, {spy['samples']} samples; "
           "heartbeats included), own time:"]  # fmt: skip
    out += [f"  {share:6.1%}  {f}" for f, share in spy["own"]]
    out.append("  inclusive:")
    out += [f"  {share:6.1%}  {f}" for f, share in spy["inclusive"]]
    return out


def report(fig: dict[str, Any]) -> tuple[list[Row], Targets, list[str]]:
    """The table rows, the targets (name, value, limit, higher is better, shown) and notes."""
    runs = {int(k): v for k, v in fig.get("runs", {}).items()}
    if not runs:
        return [], [], ["scale: no run"]
    counts = sorted(runs)
    b, top = counts[0], counts[-1]
    base, big = runs[b], runs[top]
    rows: list[Row] = []
    for n in counts:
        r = runs[n]
        scen = f"{n:,} simulated workers"
        rows.append(Row(scen, f"broker CPU per job, map of {r['bulk']['jobs']:,}", r["bulk"]["us_per_job"], "µs",
                        base["bulk"]["us_per_job"]))  # fmt: skip
        rows.append(Row(scen, "broker CPU per job, one at a time", r["single"]["us_per_job"], "µs",
                        base["single"]["us_per_job"]))  # fmt: skip
        rows.append(Row(scen, "broker heartbeat CPU, idle", r["idle"]["core_share"] * 1e3, "ms/s"))
        rows.append(Row(scen, "broker heartbeat CPU per worker", r["idle"]["us_per_worker_s"], "µs/s",
                        base["idle"]["us_per_worker_s"]))  # fmt: skip
        rows.append(Row(scen, "broker RSS per worker", r["bytes_per_worker"], "bytes"))
    targets: Targets = []
    for key, what in (("bulk", "map"), ("single", "one at a time")):
        if base[key]["us_per_job"]:
            ratio = big[key]["us_per_job"] / base[key]["us_per_job"]
            targets.append((f"broker CPU per job at {top:,} / at {b} workers, {what}", ratio, 1.5, False, "1.5x"))
    targets.append((f"broker heartbeat CPU at {top:,} workers, share of a core", big["idle"]["core_share"], 0.05,
                    False, "5%"))  # fmt: skip
    notes = ["growth curve (broker CPU per job with the idle heartbeat rate taken off; raw with it):"]
    notes += [_curve_line(n, runs[n], base) for n in counts]
    notes.append("CPU in cores during each step: the broker (its loop's thread alone: the rest is ZeroMQ's I/O "
                 "thread) / the simulators; and the share of the whole host busy:")  # fmt: skip
    notes += [_load_line(n, runs[n]) for n in counts]
    for n in counts:
        if "profile" in runs[n]:
            notes += _profile_notes(n, runs[n]["profile"])
    return rows, targets, notes


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: the processes started here are stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4, 10, 100 and 300 workers, fewer jobs, a shorter idle window")
    p.add_argument("--workers", metavar="N,N,...", help="the counts of workers (the first is the baseline)")
    p.add_argument("--no-profile", action="store_true", help="do not sample the broker with py-spy")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    cli_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminated)
    size = QUICK if args.quick else FULL
    if args.workers:
        size = replace(size, workers=tuple(int(x) for x in args.workers.split(",") if x.strip()))
    fig = measure(size, profile=not args.no_profile)
    return finish(fig, report, args.json)


if __name__ == "__main__":
    sys.exit(main())
