"""A broker group against one broker: ``python -m benchmarks.ha [--quick] [--json OUT]`` (or ``--only ha``).

Three figures, each against a baseline measured in the same run on the same machine:

- **throughput**: ``TitanClient.map`` of N no-op jobs through 2 workers x 2 slots, jobs/s, for a group
  of three members (``titan broker --peers``, every member on this machine) and for one broker, both with
  the same fsync policy (``always``, then ``everysec``). Their runs alternate, one each, ``repeat`` times;
  the ratio is the median of each group run over the single broker's run just before it.
- **latency**: one ``submit().result()`` at a time, p50, the same two setups.
- **failover**: the group's leader is killed with SIGKILL ten times (``--quick``: five); after each kill a
  client given every member's address submits a job that records when it started, and the failover time
  is that start minus the kill: election, the new leader's catch-up and replay, the client and the
  workers finding it, and its first dispatch. The killed member is started again, and the next kill waits
  until it follows. p50 and max over the kills. Baseline: none (the target is 3 s).

Every process started here is stopped when the measurement ends, however it ends.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import Row, cli_logging, finish, median, percentile
from titan_zmq.client import TitanClient
from titan_zmq.ha.local import LocalGroup, free_block
from titan_zmq.local import wait_for
from titan_zmq.process import stop_processes

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOOP = "benchmarks.noop:noop"
STARTED = "benchmarks.ha:started"


def started() -> float:
    """A job: the time it started (its dispatch, give or take the fork)."""
    return time.time()


@dataclass(frozen=True)
class Sizes:
    jobs: int
    latency: int
    repeat: int
    kills: int


FULL = Sizes(jobs=5000, latency=200, repeat=5, kills=10)
QUICK = Sizes(jobs=2000, latency=80, repeat=2, kills=5)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["TITAN_GPU_PROBE"] = "false"
    return env


def _workers(address: str, tmp: Path, n: int = 2, slots: int = 2) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(
        [sys.executable, "-m", "titan_zmq", "worker", "--broker", address, "--slots", str(slots), "--name", f"w{i}",
         "--cache-dir", str(tmp / f"cache{i}")],
        stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker{i}.log", "ab"), env=_env(),
    ) for i in range(n)]  # fmt: skip


@contextmanager
def _single(tmp: Path, fsync: str) -> Iterator[str]:
    """One broker on its journal, and 2 workers."""
    base = free_block(4)
    broker = subprocess.Popen(
        [sys.executable, "-m", "titan_zmq", "broker", "--front", str(base), "--back", str(base + 1), "--events",
         str(base + 2), "--objects", str(base + 3), "--data-dir", str(tmp / "single"), "--fsync", fsync],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "single.log", "ab"), env=_env(),  # noqa: SIM115
    )  # fmt: skip
    address = f"127.0.0.1:{base}"
    workers = _workers(address, tmp / "single-w")
    try:
        _ready(address, 2)
        yield address
    finally:
        stop_processes([*workers, broker])


@contextmanager
def _group(tmp: Path, fsync: str) -> Iterator[tuple[LocalGroup, str]]:
    """Three members on their journals, and 2 workers given every member's address."""
    g = LocalGroup(tmp / "group", fsync=fsync, env=_env())
    (tmp / "group").mkdir(exist_ok=True)
    with g:
        g.leader(60)
        workers = _workers(g.peers, tmp / "group-w")
        try:
            _ready(g.peers, 2)
            yield g, g.peers
        finally:
            stop_processes(workers)


def _ready(address: str, workers: int) -> None:
    with TitanClient(address, timeout=30) as c:
        wait_for(lambda: len(c.workers()) >= workers, 60, f"{workers} workers to register")
        c.map(NOOP, range(200), timeout=120)  # warm: forked interpreters, caches


def _throughput(address: str, n: int) -> float:
    with TitanClient(address, timeout=30) as c:
        t0 = time.perf_counter()
        c.map(NOOP, range(n), timeout=600)
        return n / (time.perf_counter() - t0)


def _latency(address: str, n: int) -> dict[str, float]:
    with TitanClient(address, timeout=30) as c:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            c.submit(NOOP, args=(i,)).result(timeout=60)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": median(times), "p99_ms": percentile(times, 99)}


def _failover(g: LocalGroup, kills: int) -> list[float]:
    out: list[float] = []
    leader = g.leader(60)
    with TitanClient(g.peers, timeout=30) as c:
        for _ in range(kills):
            c.submit(NOOP).result(timeout=60)  # the group serves before each kill
            others = [i for i in range(len(g.names)) if i != leader]
            t_kill = time.time()
            g.kill(leader, signal.SIGKILL)
            first = c.submit(STARTED).result(timeout=120)
            out.append(first - t_kill)
            new = g.leader(60, among=others)
            g.start(leader)
            wait_for(functools.partial(g.follows, leader), 60, "the killed member to follow again")
            leader = new
    return out


def measure(size: Sizes, policies: tuple[str, ...] = ("always", "everysec")) -> dict[str, Any]:
    fig: dict[str, Any] = {"sizes": size.__dict__}
    with tempfile.TemporaryDirectory(prefix="titan-ha-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for policy in policies:
            res: dict[str, Any] = {"group": {"jobs_per_s": []}, "single": {"jobs_per_s": []}}
            run = tmp / policy
            for d in ("single-w", "group-w"):
                (run / d).mkdir(parents=True)
            with _single(run, policy) as one, _group(run, policy) as (g, peers):
                for _ in range(size.repeat):  # alternate, so a slow spell weighs on both
                    res["single"]["jobs_per_s"].append(_throughput(one, size.jobs))
                    res["group"]["jobs_per_s"].append(_throughput(peers, size.jobs))
                res["single"].update(_latency(one, size.latency))
                res["group"].update(_latency(peers, size.latency))
                if policy == policies[0]:
                    fig["failover_s"] = _failover(g, size.kills)
            for side in ("single", "group"):
                res[side]["median_jobs_per_s"] = median(res[side]["jobs_per_s"])
            # Each group run against the single broker's run just before it (a slow spell of a shared machine
            # weighs on both), then the median of those ratios.
            res["pair_ratios"] = [g / s for s, g in zip(res["single"]["jobs_per_s"], res["group"]["jobs_per_s"],
                                                        strict=True)]  # fmt: skip
            res["ratio"] = median(res["pair_ratios"])
            fig[policy] = res
            log.info("%s: %s", policy, res)
    return fig


def report(fig: dict[str, Any]) -> tuple[list[Row], list[tuple[str, float, float, bool, str]], list[str]]:
    """The table rows, the targets (name, value, limit, higher is better, shown) and notes."""
    rows: list[Row] = []
    targets: list[tuple[str, float, float, bool, str]] = []
    notes: list[str] = []
    for policy in ("always", "everysec"):
        res = fig.get(policy)
        if not res:
            continue
        g, s = res["group"], res["single"]
        rows.append(Row(f"group of 3, fsync {policy}", "no-op throughput vs one broker",
                        g["median_jobs_per_s"], "jobs/s", s["median_jobs_per_s"]))  # fmt: skip
        rows.append(Row(f"group of 3, fsync {policy}", "one at a time p50 vs one broker", g["p50_ms"], "ms",
                        s["p50_ms"]))  # fmt: skip
        notes.append(f"fsync {policy}: group / single throughput run by run: "
                     + ", ".join(f"{r:.0%}" for r in res.get("pair_ratios", [])))  # fmt: skip
        if policy == "always":
            targets.append(("group / single broker throughput, fsync always (median of pairs)", res["ratio"], 0.70,
                            True, "70%"))  # fmt: skip
    fo = fig.get("failover_s")
    if fo:
        rows.append(Row("failover (SIGKILL to first dispatch)", f"p50 of {len(fo)} kills", median(fo) * 1e3, "ms"))
        rows.append(Row("failover (SIGKILL to first dispatch)", f"max of {len(fo)} kills", max(fo) * 1e3, "ms"))
        targets.append(("failover p50, SIGKILL to first dispatch (s)", median(fo), 3.0, False, "3 s"))
        notes.append("failover seconds, kill by kill: " + ", ".join(f"{x:.2f}" for x in fo))
    return rows, targets, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ha", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer jobs, 5 kills")
    p.add_argument("--policy", action="append", choices=("always", "everysec", "no"),
                   help="fsync policies to compare (default: always, then everysec)")  # fmt: skip
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    cli_logging(args.verbose)
    fig = measure(QUICK if args.quick else FULL, tuple(args.policy or ("always", "everysec")))
    return finish(fig, report, args.json)


if __name__ == "__main__":
    sys.exit(main())
