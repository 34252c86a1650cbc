"""A planner loop: a pluggable planner (a rule engine here; it could call an LLM) proposes job
specs, the runtime checks and runs them, and their results go back to the planner until it stops.

python -m examples.agentic.planner_loop
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from titan_zmq import LocalCluster
from titan_zmq.client import JobFailed, TitanClient
from titan_zmq.errors import JobError

Planner = Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]]


def rule_planner(goal: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Find the first square above the goal: propose a batch of candidates; stop when one fits.

    An LLM planner would take the same inputs (the goal, what ran and what it returned) and
    answer with job specs in the same shape; the runtime does not care which it is."""
    target = int(goal)
    for step in history:
        if step["ok"] and step["result"] > target:
            return []  # done
    start = 1 + 4 * len({h["round"] for h in history})
    plan: list[dict[str, Any]] = [{"call": "operator:mul", "args": [n, n]} for n in range(start, start + 4)]
    if not history:
        plan.append({"call": "no such thing"})  # a bad proposal: the runtime refuses it, the planner hears why
    return plan


def run_loop(client: TitanClient, planner: Planner, goal: str, max_rounds: int = 20) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for rnd in range(max_rounds):
        proposals = planner(goal, history)
        if not proposals:
            return history
        for spec in proposals:
            try:  # checked like any submission: a malformed proposal is feedback, not a crash
                job = client.submit(spec.pop("call"), **spec)
                history.append({"round": rnd, "job": job.id, "ok": True, "result": job.result(timeout=60)})
            except (JobError, JobFailed) as exc:
                history.append({"round": rnd, "job": None, "ok": False, "result": None, "error": str(exc)})
    raise RuntimeError(f"the planner did not finish within {max_rounds} rounds")


def run(goal: str = "150") -> dict[str, Any]:
    with LocalCluster(workers=2) as cluster:
        history = run_loop(cluster.client(), rule_planner, goal)
    answer = min(h["result"] for h in history if h["ok"] and h["result"] > int(goal))
    return {"answer": answer, "rounds": 1 + max(h["round"] for h in history), "refused": [h["error"] for h in
            history if not h["ok"]]}  # fmt: skip


if __name__ == "__main__":
    print(run())
