"""The job of the workflow benchmark (:mod:`benchmarks.workflows`): sleep the task's runtime.

Titan's workers import it from the repository root. Each task type of a workflow gets a target of its own,
``benchmarks.wf_jobs:task_<type>`` (``task_mProject``, ``task_mDiffFit``...), as each type is a program of its
own in a real workflow: a broker that learns expected runtimes per target then learns them per task type.
Every such name is :func:`run` (module ``__getattr__``). Dask and Ray call :func:`run` itself, with their
parents' results as further arguments, which it ignores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

PREFIX = "task_"
_NOT_WORD = re.compile(r"\W")


def run(seconds: float, *parents: Any) -> float:
    """Sleep ``seconds`` (the task's runtime) and return it; ``parents`` (its parents' results) are ignored."""
    time.sleep(seconds)
    return seconds


def target(kind: str) -> str:
    """The titan call target for tasks of type ``kind``: ``benchmarks.wf_jobs:task_<kind>``, non-word
    characters of ``kind`` replaced by ``_`` (a target names a Python attribute)."""
    return f"{__name__}:{PREFIX}{_NOT_WORD.sub('_', kind)}"


def __getattr__(name: str) -> Callable[..., float]:
    """``task_<anything>`` is :func:`run`: the per-type targets of :func:`target`."""
    if name.startswith(PREFIX):
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
