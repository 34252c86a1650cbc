"""The job the throughput and latency benchmarks run: it does nothing, so only the runtime is measured."""

from __future__ import annotations

from typing import Any

TARGET = "benchmarks.noop:noop"  # how jobs name it


def noop(x: Any = None) -> Any:
    """Return the argument unchanged."""
    return x


def fan_out(n: int) -> list[str]:
    """A job that adds ``n`` no-op jobs to its own DAG in one submission; returns their ids."""
    import titan_zmq

    ctx = titan_zmq.current()
    return ctx.spawn_many([ctx.client.build(TARGET, args=[i]) for i in range(n)])
