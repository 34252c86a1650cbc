"""Soak test, outside the default suite: ``python -m tests.soak [--jobs 1000000] [--workers 3] [--minutes 30]``.

Runs no-op jobs through a local cluster whose broker journals to disk, while a killer thread
SIGKILLs a random worker every few seconds and starts a new one in its place. Every job's result
is checked (``map`` raises if any job ended without success), and the broker's RSS is sampled
throughout. At the end it prints the figures and exits 1 if a job was lost or failed, or if the
broker's memory kept growing after it reached its finished-jobs cap (``max_finished_jobs``).
Bounded: it stops after ``--minutes`` whatever happens, and stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from titan_zmq.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests.jobs:noop"


class Killer(threading.Thread):
    """SIGKILLs a random worker every ``every`` seconds (jittered) and starts a replacement."""

    def __init__(self, cluster: LocalCluster, every: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.every = every
        self.rng = rng
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stop.wait(self.every * self.rng.uniform(0.5, 1.5)):
            alive = [p for p in self.cluster.workers if p.poll() is None]
            if not alive:
                continue
            victim = self.rng.choice(alive)
            victim.kill()
            victim.wait(10)
            self.kills += 1
            self.cluster.add_worker()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000, help="no-op jobs in all (default 1,000,000)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--slots", type=int, default=2, help="slots per worker (default 2)")
    p.add_argument("--kill-every", type=float, default=5.0, metavar="S", help="seconds between worker kills (5)")
    p.add_argument("--chunk", type=int, default=50_000, help="jobs per map call (default 50,000)")
    p.add_argument("--minutes", type=float, default=30.0, help="stop after this long whatever happens (30)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    deadline = time.monotonic() + args.minutes * 60
    rss: list[tuple[int, float]] = []  # (jobs done, broker RSS MiB)
    done = 0
    lost = 0
    with tempfile.TemporaryDirectory(prefix="titan-soak-") as tmp:
        broker_args = ["--data-dir", str(Path(tmp) / "data"), "--fsync", "everysec"]
        with LocalCluster(workers=args.workers, slots=args.slots, env=env, broker_args=broker_args) as cluster:
            assert cluster.broker is not None
            broker = psutil.Process(cluster.broker.pid)
            client = cluster.client()
            killer = Killer(cluster, args.kill_every, rng)
            killer.start()
            t0 = time.monotonic()
            try:
                while done < args.jobs and time.monotonic() < deadline:
                    n = min(args.chunk, args.jobs - done)
                    got = client.map(TARGET, range(done, done + n), timeout=max(60.0, deadline - time.monotonic()))
                    lost += sum(1 for i, v in enumerate(got) if v != done + i)
                    done += n
                    rss.append((done, broker.memory_info().rss / 2**20))
                    rate = done / (time.monotonic() - t0)
                    print(f"{done:>9,} jobs  {rate:7,.0f} jobs/s  broker RSS {rss[-1][1]:6.1f} MiB  "
                          f"worker kills {killer.kills}", flush=True)  # fmt: skip
            finally:
                killer.stop.set()
                killer.join(30)
            elapsed = time.monotonic() - t0
    cap_reached = [m for n, m in rss if n >= 200_000]  # past max_finished_jobs (100,000) twice over
    growth = (cap_reached[-1] - cap_reached[0]) / cap_reached[0] if len(cap_reached) > 1 else 0.0
    print(f"soak: {done:,} jobs in {elapsed:.0f} s ({done / elapsed:,.0f} jobs/s), {killer.kills} worker kills, "
          f"{lost} wrong or missing results")  # fmt: skip
    if rss:
        print(f"broker RSS: first {rss[0][1]:.1f} MiB, peak {max(m for _, m in rss):.1f} MiB, last {rss[-1][1]:.1f} "
              f"MiB; growth after 200,000 jobs {growth:+.1%}")  # fmt: skip
    ok = done >= args.jobs and lost == 0 and growth < 0.10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
