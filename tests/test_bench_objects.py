"""The data-plane benchmark (benchmarks/objects.py, with objects_jobs.py and objects_baselines.py) end to end on
objects of a few MB: the structure of its figures, never their speed."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from benchmarks import objects, objects_baselines
from benchmarks import objects_jobs as jobs
from benchmarks.run import Run, parse_args

pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(120)

MiB = objects.MiB
TINY = objects.Sizes(transfer=4 * MiB, transfer_runs=1, relay=2 * MiB, partitions=8, partition=2 * MiB, mr_runs=1)


def test_the_functions_the_jobs_run() -> None:
    arr = jobs.make_partition(1 * MiB, 7)
    assert arr.nbytes == 1 * MiB
    assert jobs.reduce_partition(arr) == jobs.expected_sum(1 * MiB, 7)
    big = jobs.make_partition(1 * MiB, 2**40)  # the sum wraps as numpy's does
    assert jobs.reduce_partition(big) == jobs.expected_sum(1 * MiB, 2**40)
    assert jobs.touch(arr)["bytes"] == 1 * MiB
    assert jobs.reduce_inputs({"parent": arr}) == jobs.expected_sum(1 * MiB, 7)
    assert jobs.combine_inputs({"a": 2**63, "b": 2**63 + 5}) == jobs.combine_args(2**63, 2**63 + 5) == 5
    assert objects.unavailable() is None
    for name in (objects.MAKE, objects.TOUCH, objects.REDUCE, objects.COMBINE):  # the names titan's jobs run
        module, _, fn = name.partition(":")
        assert callable(getattr(importlib.import_module(module), fn))


def test_the_raw_stream_carries_every_byte(tmp_path: Path) -> None:
    assert objects_baselines.raw_stream(3 * MiB + 17) > 0  # the receiver counts every byte before it reports
    assert objects_baselines.raw_stream(2 * MiB, str(tmp_path)) > 0
    assert list(tmp_path.iterdir()) == []  # the file it wrote is gone


@pytest.mark.slow
def test_a_tiny_run_of_the_objects_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "peer_unavailable", lambda name: f"{name} is not installed (pip install .[peers])")
    run = Run(parse_args(["--only", "objects"]), tmp_path)
    run.objects_size = TINY
    run.all()
    fig = run.figures["objects"]
    json.dumps(fig)  # what --json writes
    assert fig["sizes"] == dataclasses.asdict(TINY)

    t = fig["transfer"]  # pinned to another worker than its producer's: the object must move
    (one,) = t["runs"]
    assert one["from"] == "local-1" and one["route"] == "direct" and one["bytes"] == t["object_bytes"] >= 4 * MiB
    assert t["mb_per_s"] > 0 and t["raw_mb_per_s"] > 0 and t["raw_file_mb_per_s"] > 0
    assert t["ratio"] == pytest.approx(t["mb_per_s"] / t["raw_mb_per_s"])
    assert t["gib_moved"] == pytest.approx(t["object_bytes"] / objects.GiB)
    assert t["broker_cpu_ms_per_gib"] >= 0 and t["idle_cpu_ms_per_gib"] >= 0
    assert t["idle_wall_s"] >= t["broker_wall_s"] > 0

    r = fig["relay"]  # its holder serves through the broker's relay only
    assert r["routes"] == ["relay"] and r["runs"][0]["bytes"] == r["object_bytes"] >= 2 * MiB
    assert "raw_mb_per_s" not in r

    mr = fig["mapreduce"]
    for side in ("on", "off"):
        (res,) = mr[side]["runs"]
        assert res["seconds"] > 0
        away = mr["partitions"] - res["reduces_where_their_input_was"]
        assert res["fetches"] == away  # every reduce that ran away from its partition fetched it, and only those
        assert away * TINY.partition <= res["bytes_moved"] <= away * (TINY.partition + 4096)  # and its header

    assert fig["peers"] == {p: {"skipped": f"{p} is not installed (pip install .[peers])"} for p in objects.PEERS}
    assert any("objects peer dask skipped" in n for n in run.notes)
    names = {t.name for t in run.targets}
    assert {"object transfer / raw pyzmq stream", "broker CPU ms per GiB moved directly, above idle"} <= names
    figures = {(row.scenario.split(" ")[0], row.figure) for row in run.rows}
    assert ("broker", "CPU µs per GiB moved vs idle") in figures
    assert any(row.figure == "locality off, MB moved" for row in run.rows)
