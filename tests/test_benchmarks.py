"""The benchmark harness itself: its scenarios run end to end on tiny sizes and report sane figures."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import plot
from benchmarks.report import Row, format_table, percentile
from benchmarks.run import QUICK, SCENARIOS, Run, Target, parse_args

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_and_table() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    table = format_table([Row("a", "x/s", 50.0, "jobs/s", 200.0), Row("a", "p50", 3.0, "ms", 1.5)])
    assert "25.0%" in table and "2.0x" in table


def test_targets_judge_both_directions() -> None:
    assert Target("t", 0.6, 0.5).met and not Target("t", 0.4, 0.5).met
    assert Target("p", 30.0, 45.0, higher_is_better=False).met
    assert "NOT MET" in Target("p", 50.0, 45.0, higher_is_better=False).line()


@pytest.mark.timeout(30)
def test_bad_arguments_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "noop,bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "unknown scenario(s) bogus" in proc.stderr
    assert parse_args(["--quick"]).scenarios == list(SCENARIOS)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_tiny_run_of_the_titan_scenarios(tmp_path: Path) -> None:
    args = parse_args(["--only", "noop,scripts,dag,fanout,journal,memory", "--repeat", "1"])
    run = Run(args, tmp_path)
    run.size = dataclasses.replace(QUICK, messages=2_000, jobs=300, latency=20, rtt=50, scripts=12, script_samples=4,
                                   spawns=2, dag_nodes=200, chain=20, fanout=300, appends=2_000, replay=5_000,
                                   memory_jobs=3_000)  # fmt: skip
    run.all()
    figures = run.figures
    assert figures["noop"]["ceiling"]["msgs_per_s"] > 0
    for policy in ("off", "everysec", "always"):
        assert figures["noop"][policy]["jobs_per_s"] > 0 and figures["noop"][policy]["p50_ms"] > 0
    assert figures["scripts"]["titan"]["jobs_per_s"] > 0 and figures["scripts"]["direct"]["p50_ms"] > 0
    assert figures["dag"]["nodes"] == 200 and figures["dag"]["release_p50_ms"] > 0
    assert figures["fanout"]["jobs_per_s"] > 0
    assert figures["journal"]["replay_per_s"] > 0
    assert 0 < figures["memory"]["bytes_per_job"] < 100_000
    names = {t.name for t in run.targets}
    assert {"no-op throughput / ceiling (journal off)", "script jobs/s through 2 workers",
            "broker bytes per queued job"} <= names  # fmt: skip
    json.dumps(figures)  # what --json writes
    res = {"figures": figures, "machine": {"nproc": 2, "python": "3"}, "config": {"quick": True}}
    throughput, latency = plot.bars(res)
    assert [k for k, _ in throughput][:2] == ["ceiling\n(raw pyzmq)", "titan"]
    assert len(latency) == len(throughput) == 4
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    out = tmp_path / "plot.png"
    plot.draw(res, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_the_latency_legs_of_one_job_add_up() -> None:
    from benchmarks import hops

    fig = hops.measure(jobs=20)
    legs = [fig[k]["p50"] for k in ("submit", "worker", "return")]
    assert all(v >= 0 for v in legs) and fig["total"]["p50"] > 0
    assert max(legs) <= fig["total"]["p90"]  # each leg is a part of the whole
    assert fig["runtime"]["p50"] <= fig["worker"]["p90"]  # the job's own span is inside the worker leg
    assert "worker leg" in hops.report(fig)
