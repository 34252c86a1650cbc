"""A compatibility layer for scripts written for the original Titan's Python SDK (``titan_sdk``).

Users of the original Titan (``ramn51/titan-orchestrator``) write::

    from titan_sdk import TitanClient, TitanJob
    client = TitanClient()
    client.submit_dag("nightly", [TitanJob("extract", "etl/extract.py"),
                                  TitanJob("train", "ml/train.py", requirement="GPU", parents=["extract"])])

This package speaks that surface (:mod:`titan_zmq.compat.sdk`) on top of
:class:`titan_zmq.client.TitanClient`, and ``python -m titan_zmq.compat script.py [args...]`` runs
such a script unchanged, with ``import titan_sdk`` resolving to it (:mod:`titan_zmq.compat.runner`).
Script and shell jobs on a worker find the same shim at the END of their ``PYTHONPATH``
(:func:`titan_zmq.compat.paths.with_sdk_shim`), so a job script that imports ``titan_sdk`` works
too, and a real installed ``titan_sdk`` still wins there.

The broker's address. The original reads ``TITAN_HOST`` (default ``127.0.0.1``) and ``TITAN_PORT``
(default ``9090``, its master's port). Here, in this order:

* ``TitanClient(broker="host:port")`` (an extension; the original's constructor takes nothing);
* ``TITAN_HOST`` and/or ``TITAN_PORT`` when either is set: the host (default ``127.0.0.1``) and
  the port of the broker's FRONT socket (default ``5555``, not ``9090``: nothing of ours listens
  there);
* ``TITAN_BROKER`` (``host:port``, ours; every job on a worker has it);
* ``localhost:5555``.

``TITAN_KEYS`` (CURVE keys) applies as for our own client; the original has no equivalent.
What differs from the original, and why, is listed in :mod:`titan_zmq.compat.sdk`.

This module imports nothing heavy: the worker imports :mod:`titan_zmq.compat.paths` through it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TitanClient", "TitanJob"]


def __getattr__(name: str) -> Any:  # the SDK classes, loaded on first use
    if name in __all__:
        from titan_zmq.compat import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'titan_zmq.compat' has no attribute {name!r}")
