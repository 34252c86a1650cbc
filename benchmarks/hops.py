"""Where one job's latency goes: ``python -m benchmarks.hops [--jobs N] [--json OUT]``.

One no-op job at a time through a local cluster of one worker with one slot, each split by the
times three processes keep (one machine, one wall clock):

- **submit leg**: the client sends SUBMIT until the broker accepts it (the record's ``submitted_at``);
- **worker leg**: from acceptance until the broker has the result (``finished_at``): the broker's
  turn, ASSIGN, the worker, its call executor (a pipe each way), the function itself, RESULT;
- **return leg**: from the result at the broker until the client has DONE.

Beside them, in the same run: a client's round trip to the broker alone (STATUS of a known job),
and the function's own runtime as its executor measured it. No targets here: the figures say which
leg to cut (issue 21's latency item).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import cli_logging
from titan_zmq import protocol as P
from titan_zmq.local import LocalCluster

TARGET = "benchmarks.noop:noop"


def measure(jobs: int = 300) -> dict[str, Any]:
    """The p50 and p90 of each leg over ``jobs`` jobs, in milliseconds."""
    legs: dict[str, list[float]] = {k: [] for k in ("total", "submit", "worker", "return", "runtime", "broker_rt")}
    with LocalCluster(workers=1, slots=1) as cluster:
        client = cluster.client()
        for _ in range(50):  # warm: the call executor, the import of the target
            client.submit(TARGET).result(30)
        for _ in range(jobs):
            t0 = time.time()
            h = client.submit(TARGET)
            rec = h.wait(30)
            t3 = time.time()
            r0 = time.perf_counter()
            client.request(P.Status, ids=[h.id])
            legs["broker_rt"].append((time.perf_counter() - r0) * 1000)
            assert rec.submitted_at is not None and rec.finished_at is not None
            legs["total"].append((t3 - t0) * 1000)
            legs["submit"].append((rec.submitted_at - t0) * 1000)
            legs["worker"].append((rec.finished_at - rec.submitted_at) * 1000)
            legs["return"].append((t3 - rec.finished_at) * 1000)
            legs["runtime"].append(_runtime(rec) * 1000)
    out: dict[str, Any] = {"jobs": jobs}
    for name, values in legs.items():
        values.sort()
        out[name] = {"p50": statistics.median(values), "p90": values[int(0.9 * (len(values) - 1))]}
    return out


def _runtime(rec: Any) -> float:
    """The function's own runtime, as its worker reported it (the record's span once it ended)."""
    if rec.started_at is not None and rec.finished_at is not None:
        return max(0.0, rec.finished_at - rec.started_at)
    return 0.0


def report(fig: dict[str, Any]) -> str:
    total = fig["total"]["p50"]
    lines = [f"one no-op job at a time, {fig['jobs']} jobs, 1 worker x 1 slot (p50 / p90, ms):"]
    for name, text in (
        ("total", "client submit -> client has the result"),
        ("submit", "  submit leg: client -> broker accepted it"),
        ("worker", "  worker leg: accepted -> result at the broker"),
        ("return", "  return leg: result at the broker -> client"),
        ("runtime", "    of the worker leg: the job's own span as the broker records it"),
        ("broker_rt", "client <-> broker round trip alone (STATUS)"),
    ):
        share = f"  ({fig[name]['p50'] / total:.0%} of the total)" if name in ("submit", "worker", "return") else ""
        lines.append(f"  {text:66s} {fig[name]['p50']:7.3f} / {fig[name]['p90']:7.3f}{share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hops", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=300, help="jobs measured, one at a time (300)")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli_logging(args.verbose)
    fig = measure(args.jobs)
    print(report(fig))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
