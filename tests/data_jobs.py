"""Functions the data-plane tests run as `call` jobs (imported by the workers as tests.data_jobs)."""

from __future__ import annotations

import os
from typing import Any


def blob(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that depend on ``seed`` only (a job run again makes the same object)."""
    import random

    return random.Random(seed).randbytes(n)


def array(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.float64)


def total(a: Any) -> float:
    return float(sum(a) if isinstance(a, (bytes, bytearray)) else a.sum())


def length(data: Any, inputs: Any = None) -> dict[str, Any]:
    return {"len": len(data), "worker": os.environ.get("TITAN_WORKER")}


def length_of_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"lens": {k: len(v) for k, v in inputs.items()}, "worker": os.environ.get("TITAN_WORKER")}


def put_nested(n: int) -> dict[str, Any]:
    import titan_zmq

    return {"ref": titan_zmq.current().put(b"p" * n), "worker": os.environ.get("TITAN_WORKER")}


def publish(folder: str) -> Any:
    import titan_zmq

    return titan_zmq.current().publish(folder)


def read_path(p: Any) -> str:
    from pathlib import Path

    path = Path(p)
    return path.read_text() if path.is_file() else ",".join(sorted(x.name for x in path.iterdir()))


def where() -> str | None:
    return os.environ.get("TITAN_WORKER")


def double(inputs: dict[str, Any]) -> bytes:
    """Its parents' bytes, twice: a large result made from large inputs."""
    data = b"".join(v for v in inputs.values() if isinstance(v, bytes))
    return data + data


def text(n: int, i: int = 0) -> str:
    return chr(97 + i % 26) * n


def put_and_return(n: int) -> Any:
    """An object put from inside the job, and returned as the job's result too."""
    import titan_zmq

    return titan_zmq.current().put(b"r" * n)
