"""The functions the jobs of the ``objects`` scenario (:mod:`benchmarks.objects`) run: titan, Dask and Ray run
the same ones. Workers import this module from the repository root: it imports only the standard library, and
numpy inside the jobs. Also the constants and the seeds the scenario's modules share.
"""

from __future__ import annotations

import os
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
WORKERS = 4  # the MapReduce cluster: 4 workers x 1 slot, and 4-way parallelism for the peers
_TIMEOUT = 600.0
_U64 = 1 << 64


def new_seed() -> int:
    """A seed no earlier run used: every run's objects are new (objects are named by their content)."""
    return int.from_bytes(os.urandom(5), "big")


def make_partition(nbytes: int, seed: int) -> Any:
    """A map: a numpy array of ``nbytes`` (uint64 ``arange + seed``: distinct content for every seed)."""
    import numpy as np

    a = np.arange(nbytes // 8, dtype=np.uint64)
    a += np.uint64(seed)
    return a


def expected_sum(nbytes: int, seed: int) -> int:
    """What :func:`reduce_partition` returns for ``make_partition(nbytes, seed)`` (mod 2**64, as numpy adds)."""
    n = nbytes // 8
    return (n * (n - 1) // 2 + n * seed) % _U64


def reduce_partition(arr: Any) -> int:
    """A reduce: the sum of every element (it reads all the partition's bytes)."""
    return int(arr.sum())


def combine(values: list[int]) -> int:
    return sum(values) % _U64


def reduce_inputs(inputs: dict[str, Any]) -> int:
    """titan's reduce: its one parent's array arrives in ``inputs``."""
    (arr,) = inputs.values()
    return reduce_partition(arr)


def combine_inputs(inputs: dict[str, Any]) -> int:
    return combine(list(inputs.values()))


def combine_args(*values: int) -> int:
    """Ray's combine: refs passed as arguments arrive as values (refs inside a list would not)."""
    return combine(list(values))


def touch(arr: Any) -> dict[str, int]:
    """The transfer's consumer: reads one element of every 4 KiB page of the array it received."""
    return {"bytes": int(arr.nbytes), "check": int(arr[::512].sum())}
