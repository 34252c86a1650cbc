"""The `when:` expression language: what it allows, what it refuses, how it evaluates; branching on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from titan_zmq.client import JobState
from titan_zmq.client.pipeline import load_pipeline
from titan_zmq.expr import ExprError, evaluate, parse
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(60)

INPUTS = {"probe": {"status": "ok", "rows": [1, 2, 3], "rate": 1500}, "other-job": 7}


@pytest.mark.parametrize(("text", "value"), [
    ("probe['rate'] > 1000", True),
    ("inputs['other-job'] == 7 and probe['status'] == 'ok'", True),
    ("len(probe['rows']) in (1, 2)", False),
    ("not probe['rows'] or max(probe['rows']) >= 3", True),
    ("1 < probe['rate'] / 1000 <= 2", True),
    ("'big' if probe['rate'] > 1000 else 'small'", "big"),
    ("-inputs['other-job'] % 5", 3),
    ("[1, 2] == [1, 2] != (1, 2)", True),
])  # fmt: skip
def test_evaluate(text: str, value: object) -> None:
    assert evaluate(text, INPUTS) == value


@pytest.mark.parametrize(("text", "why"), [
    ("__import__('os').system('true')", "only len, abs"),
    ("probe.__class__", "Attribute is not allowed"),
    ("[x for x in probe]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("probe['rate'] > ", "is not an expression"),
    ("", "non-empty string"),
    ("open('/etc/passwd')", "only len, abs"),
])  # fmt: skip
def test_refused(text: str, why: str) -> None:
    with pytest.raises(ExprError, match=why):
        parse(text)


def test_evaluation_errors_are_clear() -> None:
    with pytest.raises(ExprError, match="unknown name 'nope'"):
        evaluate("nope > 1", INPUTS)
    with pytest.raises(ExprError, match="failed: KeyError"):
        evaluate("probe['missing'] > 1", INPUTS)


def test_a_when_switch_on_a_cluster(shared_cluster: LocalCluster) -> None:
    root = Path(__file__).resolve().parent.parent
    dag = load_pipeline(root / "yaml_pipelines" / "switch.yaml").dag.instance()
    records = shared_cluster.client().submit_dag(dag).wait(30)
    by = {jid.rsplit(".", 1)[1]: r for jid, r in records.items()}
    assert by["heavy"].state is JobState.SUCCEEDED and by["heavy"].stdout.strip() == "scaling out"
    assert by["light"].state is JobState.CANCELLED and by["light"].error.startswith("skipped: its condition")
    client = shared_cluster.client()
    with pytest.raises(Exception, match="'when' is a condition on parents' results"):
        client.submit("tests.jobs:noop", when="True")


def test_a_condition_cannot_make_the_broker_allocate_without_bound() -> None:
    with pytest.raises(ExprError, match=r"300,000,000 items \(at most 1,000,000\)"):
        evaluate("len('x' * 300000000) > 0", {})  # refused before anything is built
    with pytest.raises(ExprError, match="at most"):
        evaluate("len([1] * 2000000) > 0", {})
    assert evaluate("len('ab' * 3 + 'c') == 7", {})
