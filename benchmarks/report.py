"""Figures, percentiles and the result table."""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``samples``."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def cli_logging(verbose: bool) -> None:
    """A scenario module run on its own (``python -m benchmarks.X``): progress on stderr with ``-v``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)  # fmt: skip


def finish(fig: dict[str, Any], report: Callable[[dict[str, Any]], Any], json_out: str | None) -> int:
    """Print a scenario module's report of ``fig`` and write ``fig`` as JSON to ``json_out``; exit status 0."""
    print_report(*report(fig))
    if json_out:
        Path(json_out).write_text(json.dumps(fig, indent=2) + "\n")
    return 0


def print_report(rows: list[Row], targets: list[tuple[str, float, float, bool, str]], notes: list[str]) -> None:
    """A scenario's table, each target judged (MET / NOT MET), then its notes."""
    print(format_table(rows))
    for name, value, limit, higher, shown in targets:
        met = value >= limit if higher else value <= limit
        print(f"  {'MET    ' if met else 'NOT MET'}  {name} {'>=' if higher else '<='} {shown}: {value:.3g}")
    for note in notes:
        print(note)


@dataclass(frozen=True)
class Row:
    """One line of the table. ``ratio`` is ``value / baseline`` when there is a baseline."""

    scenario: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_unit: str | None = None  # when it differs from ``unit``

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.3f} ms"
    return f"{value:,.0f} {unit}"


def _fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    if row.unit == "ms" or r >= 2:  # latency, or a multiple: how many times the baseline's
        return f"{r:.1f}x"
    return f"{r:.1%}"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (also valid Markdown)."""
    header = ("scenario", "figure", "value", "baseline", "ratio")
    cells = [header] + [
        (r.scenario, r.figure, _fmt(r.value, r.unit), _fmt(r.baseline, r.baseline_unit or r.unit), _fmt_ratio(r))
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = (False, False, True, True, True)

    def line(c: Sequence[str]) -> str:
        parts = [s.rjust(w) if r else s.ljust(w) for s, w, r in zip(c, widths, right, strict=True)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True))
    return "\n".join([line(cells[0]), sep + "|", *(line(c) for c in cells[1:])])
