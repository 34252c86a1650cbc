"""titan_zmq: a distributed execution runtime for Python on ZeroMQ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["JobHandle", "LocalCluster", "TitanClient", "__version__", "current"]

if TYPE_CHECKING:
    from titan_zmq.client import JobHandle, TitanClient
    from titan_zmq.local import LocalCluster


def current() -> Any:
    """The context of the job this code runs in: its ids, a client, the KV store, ``spawn``.

    Raises TitanError outside a job (no ``TITAN_JOB_ID`` in the environment)."""
    from titan_zmq.client.context import current as _current

    return _current()


def __getattr__(name: str) -> Any:
    # Lazy, so that job processes importing titan_zmq stay light.
    if name in ("TitanClient", "JobHandle"):
        from titan_zmq import client

        return getattr(client, name)
    if name == "LocalCluster":
        from titan_zmq.local import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'titan_zmq' has no attribute {name!r}")
