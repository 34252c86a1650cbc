"""The client as its caller sees it: the answer to a job submitted again under its id, a closed client."""

from __future__ import annotations

from typing import Any

import pytest

from titan_zmq import protocol as P
from titan_zmq.errors import TitanError
from titan_zmq.local import LocalCluster

pytestmark = pytest.mark.timeout(60)


def test_resubmitting_a_finished_job_answers_at_once(shared_cluster: LocalCluster, monkeypatch: Any) -> None:
    first = shared_cluster.client()
    assert first.submit("tests.jobs:add", args=[20, 22], id="fixed-answer").result(20) == 42
    second = shared_cluster.client()
    sent: list[type[P.Message]] = []
    request = second.request

    def counted(msg_type: type[P.Message], **fields: Any) -> Any:
        sent.append(msg_type)
        return request(msg_type, **fields)

    monkeypatch.setattr(second, "request", counted)
    assert second.submit("tests.jobs:add", args=[20, 22], id="fixed-answer").result(20) == 42
    # The broker said DONE with its acceptance of the known job: the client never had to ask again
    # (it re-sends a WATCH only when no answer came for a while).
    assert P.Submit in sent and P.Watch not in sent, sent


def test_closed_client_says_so(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    h = client.submit("tests.jobs:add", args=[1, 2])
    client.close()
    with pytest.raises(TitanError, match="closed"):
        h.wait(5)
    with pytest.raises(TitanError, match="closed"):
        client.workers()
