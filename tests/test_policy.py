"""titan_zmq.policy: what an agent may run (the MCP server's and the LangChain toolkit's one rule)."""

from __future__ import annotations

import pytest

from titan_zmq.errors import Refused
from titan_zmq.policy import OPEN, Policy


def test_open_allows_everything_and_read_only_refuses_writes() -> None:
    OPEN.check_specs([{"id": "a", "kind": "shell", "target": "rm -rf /"}])
    ro = Policy.parse(read_only=True)
    with pytest.raises(Refused, match=r"submitting jobs is refused: this server is read-only \(--read-only\)"):
        ro.check_specs([{"id": "a", "kind": "call", "target": "m:f"}])
    assert ro.describe() == "read-only: status, logs and lists only"


def test_kinds_and_targets_name_the_job_and_the_setting() -> None:
    p = Policy.parse(kinds="call, script", targets="mypkg.*:*,*.py")
    p.check("call", "mypkg.etl:load")
    p.check("script", "train.py")
    with pytest.raises(Refused, match=r"job 'x' is a shell job, .* \(allowed kinds: call,script; set by --allow-kinds"):
        p.check("shell", "ls", "x")
    with pytest.raises(Refused, match=r"this job runs 'os:system', which matches none of the allowed targets"):
        p.check("call", "os:system")
    assert p.describe() == "kinds call,script; targets mypkg.*:*,*.py"


def test_a_submission_is_refused_whole_and_services_and_gates_are_judged_by_what_they_run() -> None:
    p = Policy.parse(kinds="call", targets="ok:*")
    specs = [
        {"id": "a", "kind": "call", "target": "ok:f"}, {"id": "g", "kind": "approval", "target": "go?"},
        {"id": "s", "kind": "service", "target": "web", "kwargs": {"kind": "shell", "target": "serve"}},
    ]  # fmt: skip
    with pytest.raises(Refused, match=r"job 's' is a service job"):
        p.check_specs(specs)
    p.check_specs(specs[:2])  # an approval gate runs nothing
    with pytest.raises(Refused, match="service"):
        p.check_service({"name": "web", "kind": "shell", "target": "serve"})


def test_patterns_can_govern_some_kinds_only_and_unknown_kinds_are_refused() -> None:
    p = Policy(kinds=frozenset({"call", "shell"}), targets=("m:*",), target_kinds=frozenset({"call"}))
    p.check("shell", "anything at all")
    with pytest.raises(Refused):
        p.check("call", "other:f")
    with pytest.raises(ValueError, match="unknown job kind"):
        Policy.parse(kinds="call,docker")
