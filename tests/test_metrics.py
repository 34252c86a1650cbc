"""``titan broker --metrics-port``: Prometheus metrics through prometheus-client, scraped over HTTP and
read with prometheus-client's own parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from titan_zmq.client import Dag
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("data")
    with LocalCluster(workers=2, slots=2, broker_args=["--metrics-port", "0", "--data-dir", str(data)]) as c:
        yield c


def scrape(cluster: LocalCluster) -> dict[str, Any]:
    """Every sample of one scrape: {name: {labels as a sorted tuple: value}}."""
    url = f"http://127.0.0.1:{cluster.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict[str, Any], name: str, **labels: str) -> float:
    return float(m.get(name, {}).get(tuple(sorted(labels.items())), 0.0))


def test_jobs_workers_latencies_and_the_journal(metered: LocalCluster) -> None:
    client = metered.client()
    assert client.map("tests.jobs:square", range(30), timeout=60) == [i * i for i in range(30)]
    client.submit("tests.jobs:boom", retries=1, backoff=0.01).wait(60)
    dag = Dag("metrics-gate")
    first = dag.add("tests.jobs:noop", id="metrics-gate.a")
    dag.add(approval="ship it?", after=[first], id="metrics-gate.ok", timeout=600)
    client.submit_dag(dag)

    def settled() -> dict[str, Any] | None:
        m = scrape(metered)
        done = value(m, "titan_jobs_succeeded_total") >= 31 and value(m, "titan_gates_pending") == 1
        return m if done else None

    m = wait_for(settled, 30, "the metrics of the jobs")
    assert value(m, "titan_jobs_submitted_total") >= 33
    assert value(m, "titan_jobs_failed_total") >= 1 and value(m, "titan_jobs_retried_total") >= 1
    assert value(m, "titan_jobs", state="dead") >= 1 and value(m, "titan_jobs", state="succeeded") >= 31
    assert value(m, "titan_workers") == 2 and value(m, "titan_slots") == 4
    # Histograms: cumulative buckets up to +Inf, which counts every observation.
    assert value(m, "titan_job_dispatch_latency_seconds_count") >= 32
    assert value(m, "titan_job_dispatch_latency_seconds_bucket", le="+Inf") == value(
        m, "titan_job_dispatch_latency_seconds_count")  # fmt: skip
    assert value(m, "titan_job_runtime_seconds_count") >= 31
    assert value(m, "titan_journal_commit_seconds_count") >= 1 and value(m, "titan_journal_bytes") > 0
    assert "titan_uptime_seconds" in m and "titan_journal_compactions_total" in m


def test_queued_jobs_by_capability_set_and_services(metered: LocalCluster) -> None:
    client = metered.client()
    waiting = client.submit("tests.jobs:noop", requires=["gpu"])  # no gpu worker: it waits
    client.deploy("metrics-web", shell="python3 -m http.server $PORT --bind 127.0.0.1", health="tcp", wait=60)
    try:
        def both() -> dict[str, Any] | None:
            m = scrape(metered)
            ok = value(m, "titan_jobs_queued", requires="gpu") >= 1 and value(m, "titan_services", state="running")
            return m if ok else None

        m = wait_for(both, 30, "a queued gpu job and a running service")
        assert value(m, "titan_jobs_queued", requires="gpu") == 1
    finally:
        client.cancel(waiting.id)
        client.stop_service("metrics-web")
