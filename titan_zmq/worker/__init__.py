"""The worker: connects to the broker, runs jobs in separate processes, reports results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Worker"]

if TYPE_CHECKING:
    from titan_zmq.worker.connection import Worker


def __getattr__(name: str) -> Any:
    # Lazy, so that the processes started from this package (call executors, the fork server) stay light.
    if name == "Worker":
        from titan_zmq.worker.connection import Worker

        return Worker
    raise AttributeError(f"module 'titan_zmq.worker' has no attribute {name!r}")
