"""The peer benchmarks (benchmarks/peers.py): names are checked, and each installed peer gives positive figures.

A peer that is not installed here (as on a clean CI machine) is skipped, with the reason unavailable() gives.
"""

from __future__ import annotations

import pytest

from benchmarks.peers import PEERS, measure, unavailable


def test_unknown_peer_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="ray, dask, dramatiq, celery"):
        unavailable("nonexistent")
    with pytest.raises(ValueError, match="unknown peer 'nonexistent'"):
        measure("nonexistent", jobs=10, samples=1)


def test_counts_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        measure(PEERS[0], jobs=0, samples=1)


def test_unavailable_gives_one_line_or_none() -> None:
    for name in PEERS:
        reason = unavailable(name)
        assert reason is None or (reason and "\n" not in reason)


def _peer(name: str) -> object:
    """``name`` as a parameter, skipped with unavailable()'s reason when the peer cannot run here."""
    reason = unavailable(name)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=reason or ""))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", [_peer(n) for n in PEERS])
def test_peer_gives_positive_figures(name: str) -> None:
    got = measure(name, jobs=200, samples=10, timeout=120)
    assert got["jobs_per_s"] > 0
    assert 0 < got["latency_p50_ms"] <= got["latency_p99_ms"]
    assert got["setup"] and got["versions"]
