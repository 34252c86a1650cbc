"""Where titan's time goes: ``python -m benchmarks.profile [--seconds S] [--top N] [--out DIR]``.

Runs no-op jobs through a local cluster (2 workers x 2 slots) with ``TitanClient.map`` and samples
each role with py-spy (``pip install py-spy``) meanwhile: the broker, one worker, one of its call
executors and the client (this process). Prints each role's functions by share of samples, on their
own (self) and with what they call (inclusive). ``--out`` keeps the raw collapsed stacks, which
flame-graph tools read.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cpu import children
from benchmarks.noop import TARGET
from benchmarks.titan import cluster, warm_up


def count_stacks(path: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """From a file of py-spy's collapsed stacks: the samples, and each function's own and inclusive count."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, own, incl


def summarise(path: Path, top: int) -> str:
    """The ``top`` functions of one collapsed-stack file by self and inclusive share."""
    total, own, incl = count_stacks(path)
    if not total:
        return f"== {path.stem}: no samples"
    out = [f"== {path.stem}: {total} samples", "  self:"]
    out += [f"    {100 * k / total:5.1f}%  {f[:140]}" for f, k in _named(own, top)]
    out.append("  inclusive:")
    out += [f"    {100 * k / total:5.1f}%  {f[:140]}" for f, k in _named(incl, top, skip_entry=True)]
    return "\n".join(out)


def _named(counter: collections.Counter[str], top: int, skip_entry: bool = False) -> list[tuple[str, int]]:
    noise = ("<module>", "_run_code", "_run_module_as_main", "main (titan_zmq/cli.py", "cmd_")
    return [(f, k) for f, k in counter.most_common(top + 8) if not (skip_entry and f.startswith(noise))][:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=6, help="how long to sample, whole seconds (default 6)")
    p.add_argument("--top", type=int, default=12, help="functions shown per role and list (default 12)")
    p.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    p.add_argument("--out", default=None, help="keep the raw collapsed stacks in this folder")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="titan-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with cluster(2, 2) as c:
        client = c.client()
        warm_up(client, 2, 2)
        worker = c.workers[0].pid
        roles = {"broker": c.broker.pid if c.broker else 0, "worker": worker, "client": os.getpid()}
        executors = children([worker])
        if executors:
            roles["executor"] = executors[0]
        spies = []
        for role, pid in roles.items():
            cmd = [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", str(args.rate), "-f", "raw",
                   "-o", str(out / f"{role}.txt"), "--nonblocking"]  # fmt: skip
            err = open(out / f"{role}.err", "wb")  # noqa: SIM115  # closed with the process below
            spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))
            err.close()
        jobs = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.seconds + 0.5:
            client.map(TARGET, range(5000))
            jobs += 5000
        rate = jobs / (time.perf_counter() - t0)
        for s in spies:
            s.wait(timeout=60)
    print(f"{jobs:,} no-op jobs at {rate:,.0f} jobs/s while sampled (sampling slows every role)")
    for role in roles:
        path = out / f"{role}.txt"
        if path.exists():
            print(summarise(path, args.top))
        else:
            why = (out / f"{role}.err").read_text(errors="replace").strip()[-300:]
            print(f"== {role}: py-spy wrote nothing: {why or 'no reason given'}")
    print(f"raw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
