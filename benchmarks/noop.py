"""The job the throughput and latency benchmarks run: it does nothing, so only the runtime is measured."""

from __future__ import annotations

from typing import Any

TARGET = "benchmarks.noop:noop"  # how jobs name it


def noop(x: Any = None) -> Any:
    """Return the argument unchanged."""
    return x
