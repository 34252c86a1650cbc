"""The agentic examples in examples/agentic, each run as a user would run it (its own local cluster)."""

from __future__ import annotations

import pytest

from examples.agentic import dynamic_switch, mapreduce, planner_loop, self_healing

pytestmark = pytest.mark.timeout(120)


def test_dynamic_switch_takes_the_branch_the_measurement_calls_for() -> None:
    decision, outcome = dynamic_switch.run(1500)
    assert decision.startswith("heavy traffic (1500)") and outcome.count("scaled out") == 3
    decision, outcome = dynamic_switch.run(300)
    assert decision.startswith("light traffic (300)") and outcome == "cache warmed"


def test_self_healing_agent_respawns_until_success() -> None:
    out = self_healing.run(fails=3)
    assert out["outcome"] == "succeeded on try 4" and out["tries"] == 4
    assert out["failures"] == ["round 0", "round 1", "round 2"]


def test_mapreduce_with_the_python_client() -> None:
    counts = mapreduce.run()
    assert counts["the"] == 4 and counts["dog"] == 3
    assert sum(counts.values()) == sum(len(line.split()) for line in mapreduce.TEXT)


def test_planner_loop_runs_checks_and_feeds_back() -> None:
    out = planner_loop.run("150")
    assert out["answer"] == 169 and out["rounds"] == 4
    assert len(out["refused"]) == 1 and "must look like 'package.module:function'" in out["refused"][0]
