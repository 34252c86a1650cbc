"""Configurable limits: each refuses what goes past it with an error that names the limit, and the broker carries on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_scheduler import FakeClock, dispatch, report, spec
from titan_zmq.broker.logs import LogStore
from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.client import LimitExceeded
from titan_zmq.config import BrokerConfig, ConfigError, load
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(60)


def _sched(**kw: Any) -> Scheduler:
    clock = FakeClock()
    return Scheduler(clock=lambda: clock.now, wall=lambda: clock.now, **kw)


def test_a_dag_past_max_dag_jobs_is_refused_whole() -> None:
    s = _sched(max_dag_jobs=3)
    with pytest.raises(LimitExceeded, match=r"DAG 'd' would hold 4 jobs, over the limit of 3 \(max_dag_jobs\)"):
        s.submit([spec(f"j{i}", dag="d") for i in range(4)], {})
    assert not s.jobs  # all or nothing
    s.submit([spec(f"j{i}", dag="d") for i in range(3)], {})
    with pytest.raises(LimitExceeded, match="TITAN_MAX_DAG_JOBS"):
        s.submit([spec("j3", dag="d")], {})  # a job spawned into it later counts too
    s.submit([spec("j0", dag="d")], {})  # resubmitting a known job adds nothing: accepted
    s.submit([spec("k0", dag="other")], {})


def test_unfinished_jobs_per_client_are_capped() -> None:
    s = _sched(max_pending_per_client=2)
    w = s.worker_ready(b"w", {"name": "w", "host": "h", "tags": [], "slots": 1, "pid": 1})
    s.seen(w)
    s.submit([spec("a"), spec("b")], {}, owner=b"c1")
    with pytest.raises(LimitExceeded, match=r"already has 2 unfinished jobs; 1 more would pass the limit of 2"):
        s.submit([spec("c")], {}, owner=b"c1")
    s.submit([spec("x")], {}, owner=b"c2")  # another client has its own allowance
    assert dispatch(s) == {"w": ["a"]}
    report(s, w, "a")
    s.submit([spec("c")], {}, owner=b"c1")  # one ended: room for one more
    assert s.pending == {b"c1": 2, b"c2": 1}
    s.cancel("b")
    assert s.pending[b"c1"] == 1


def test_long_log_lines_are_cut_and_say_so() -> None:
    store = LogStore(max_line=10)
    got = store.add([["j", 1.0, "out", "x" * 25], ["j", 1.0, "out", "short"]], {"j"})
    texts = [line[3] for line in got["j"]]
    assert texts == ["x" * 10 + " [... 15 characters cut: max_log_line]", "short"]


def test_limits_are_validated() -> None:
    for name in ("max_dag_jobs", "max_pending_per_client", "max_kv_value", "max_log_line"):
        with pytest.raises(ConfigError, match=f"{name} must be at least 1"):
            load(BrokerConfig, **{name: 0})


def test_limits_through_a_running_broker() -> None:
    env = {"TITAN_MAX_KV_VALUE": "1024", "TITAN_MAX_PENDING_PER_CLIENT": "3"}
    with LocalCluster(workers=0, env=env) as cluster:
        client = cluster.client()
        with pytest.raises(LimitExceeded, match=r"KV set of key 'big': the value is \d+ bytes, over the limit of 1024"):
            client.kv.set("big", "x" * 2000)
        client.kv.set("small", "x" * 100)
        assert client.kv.get("small") == "x" * 100
        with pytest.raises(LimitExceeded, match="max_kv_value"):
            client.kv.sadd("s", "y" * 5000)
        handles = [client.submit("tests.jobs:noop", args=[i]) for i in range(3)]
        with pytest.raises(LimitExceeded, match="max_pending_per_client"):
            client.submit("tests.jobs:noop", args=[3])
        other = cluster.client()  # its own connection, its own allowance
        other.submit("tests.jobs:noop", args=[4])
        client.cancel(handles[0].id)
        client.submit("tests.jobs:noop", args=[5])  # room again
        assert client.hello()  # the broker carries on
