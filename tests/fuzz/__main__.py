"""The long run: ``python -m tests.fuzz --inputs 100000 [--seed N] [--durable]``."""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import given
from hypothesis import seed as hypothesis_seed

import tests.fuzz as package
from tests.fuzz.harness import Harness, Violation, fuzz_cluster, fuzz_settings
from tests.fuzz.inputs import ALL_CODES, NAMES, FuzzInput
from tests.fuzz.mutations import batches


def _summary(h: Harness, started: float, alive: bool) -> str:
    s = h.stats
    wall = time.monotonic() - started
    lines = [
        f"inputs sent: {s.total} in {wall:.1f}s ({s.total / max(wall, 1e-9):,.0f} inputs/s); skipped as unsafe: "
        f"{sum(s.skipped.values())} {dict(s.skipped)}",
        f"refused (did not decode): {s.refused}; protocol/too_large errors received for them: {s.errors}",
        f"broker alive: {alive}; health checks passed: {s.health_checks}",
        f"broker RSS: start {h.rss_start / 2**20:.1f} MiB, after warm-up "
        f"{(h.rss_warm or 0) / 2**20:.1f} MiB, peak (VmHWM) {h.rss_peak / 2**20:.1f} MiB, end "
        f"{(s.rss[-1][1] if s.rss else 0) / 2**20:.1f} MiB",
        "inputs per command (front / back):",
    ]
    for code in ALL_CODES:
        name = NAMES[code]
        lines.append(f"  {name:<11} {s.sent[f'front {name}']:>7} {s.sent[f'back {name}']:>7}")
    lines.append(f"  {'raw':<11} {s.sent['front raw']:>7} {s.sent['back raw']:>7}")
    lines.append("inputs per mutation: " + ", ".join(f"{k} {v}" for k, v in sorted(s.shapes.items())))
    lines.append("answers received: " + ", ".join(f"{k} {v}" for k, v in sorted(s.answers.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=(package.__doc__ or "").split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000, help="how many inputs to send (default 100,000)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    ap.add_argument("--batch", type=int, default=32, help="most inputs sent before reading answers (default 32)")
    ap.add_argument("--health-every", type=int, default=5000, help="inputs between health checks (default 5,000)")
    ap.add_argument("--warmup", type=int, default=10_000, help="inputs before the RSS baseline (default 10,000)")
    ap.add_argument("--rss-bound", type=float, default=50, help="MiB the RSS may grow after warm-up (default 50)")
    ap.add_argument("--mutants", type=int, default=4, help="random byte-level mutants per structured input (4)")
    ap.add_argument("--durable", action="store_true", help="run the broker with a data directory (journal)")
    ap.add_argument("--log-dir", help="keep the broker's and worker's logs here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    alive = False
    with fuzz_cluster(args.durable, args.log_dir) as h:
        h.health_every, h.warmup, h.rss_bound = args.health_every, args.warmup, int(args.rss_bound * 2**20)
        last = [0, started]

        def progress(h: Harness) -> None:
            total = h.stats.total
            if total // 10_000 > last[0] // 10_000:
                now = time.monotonic()
                rate = (total - last[0]) / max(now - last[1], 1e-9)
                print(f"{total:>8} inputs  {rate:>8,.0f} inputs/s  broker RSS {h.rss() / 2**20:.1f} MiB  "
                      f"errors {h.stats.errors}  skipped {sum(h.stats.skipped.values())}", flush=True)  # fmt: skip
                last[:] = [total, now]

        h.on_progress = progress
        round_no = 0
        failure: BaseException | None = None
        try:
            while h.stats.total < args.inputs:
                left = args.inputs - h.stats.total
                per_example = 0.75 * args.batch * (1 + args.mutants)
                examples = max(1, min(20, int(left / per_example) + 1))
                focus = ALL_CODES[round_no % len(ALL_CODES)]

                @fuzz_settings(examples, derandomize=False)
                @hypothesis_seed(args.seed * 1_000_003 + round_no)
                @given(batch=batches(args.batch, args.mutants, focus))
                def run(batch: list[FuzzInput]) -> None:
                    h.check(batch)

                run()
                round_no += 1
            h.health()
        except BaseException as exc:  # report, then the summary
            failure = exc
        try:
            h.alive()
            alive = True
        except Violation:
            pass
        print(_summary(h, started, alive))
        if failure is not None:
            print(f"FAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
