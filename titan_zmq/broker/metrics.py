"""Prometheus metrics of the broker: ``titan broker --metrics-port 9464`` (through ``prometheus-client``).

The broker's loop never waits on a scrape and a scrape never reads the loop's state while it
changes: each stats tick (once a second) the loop hands :meth:`Metrics.publish` its stats (the
same picture the ``stats`` feed carries) and the journal's figures, and the exporter's HTTP
thread serves the latest of those. Latencies are counted by the loop into fixed buckets
(:class:`Buckets`: a bisect and two additions per job) and copied at the tick.

Metric names follow Prometheus' conventions (``titan_`` prefix, base units, ``_total`` for
counters); ``docs`` of each say what it counts.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - a dependency of titan_zmq
    raise ImportError(f"broker metrics need prometheus-client ({exc}): pip install prometheus-client") from None

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUNTIME_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class Buckets:
    """A histogram the loop fills: counts per upper bound, their sum, all observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs, +Inf last, and the sum (what HistogramMetricFamily takes)."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out, self.sum


class Metrics:
    """The exporter: a registry of one collector, served over HTTP on ``host:port``."""

    def __init__(self) -> None:
        self.dispatch = Buckets(LATENCY_BUCKETS)  # queued -> leased
        self.runtime = Buckets(RUNTIME_BUCKETS)  # a success's runtime, as its worker measured it
        self.commit = Buckets(COMMIT_BUCKETS)  # one turn's journal write (and fsync, under always)
        self._snap: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)  # a collector: it has collect()
        self._server: Any = None

    @classmethod
    def for_broker(cls, sched: Any) -> Metrics:
        """An exporter whose latencies the scheduler ``sched`` fills (its dispatch and runtime hooks)."""
        m = cls()
        sched.dispatch_hist, sched.runtime_hist = m.dispatch, m.runtime
        return m

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; returns the port it listens on."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("Prometheus metrics at http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def publish(self, stats: dict[str, Any]) -> None:
        """Take the loop's picture of this tick (``Broker.stats()``) and copy the histograms."""
        snap = dict(stats)
        snap["_hist"] = {"dispatch": self.dispatch.snapshot(), "runtime": self.runtime.snapshot(),
                         "commit": self.commit.snapshot()}  # fmt: skip
        with self._lock:
            self._snap = snap

    def collect(self) -> Iterator[Metric]:
        """What a scrape reads (the exporter's thread): the last published picture."""
        with self._lock:
            s = self._snap
        if not s:
            return
        yield from _jobs(s)
        yield from _grid(s)
        yield from _histograms(s["_hist"])
        yield from _journal(s.get("journal"))


def _jobs(s: dict[str, Any]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("titan_jobs", "Jobs the broker holds, by state", labels=["state"])
    for state, n in sorted(s.get("jobs", {}).items()):
        jobs.add_metric([state], n)
    yield jobs
    queued = GaugeMetricFamily("titan_jobs_queued", "Jobs waiting for a worker, by the capability set they need",
                               labels=["requires"])  # fmt: skip
    for tags, n in sorted(s.get("queues", {}).items()):
        queued.add_metric([tags], n)
    yield queued
    for name, key, text in (
        ("titan_jobs_submitted", "submitted", "Jobs accepted"),
        ("titan_jobs_succeeded", "succeeded", "Jobs that succeeded"),
        ("titan_jobs_failed", "failed", "Jobs that failed for good (failed or dead)"),
        ("titan_jobs_retried", "retried", "Attempts that failed and were retried"),
        ("titan_jobs_dispatched", "dispatched", "Leases given to workers"),
    ):
        yield CounterMetricFamily(name, text, value=s.get(key, 0))
    yield GaugeMetricFamily("titan_gates_pending", "Approval gates waiting for a person's decision",
                            value=s.get("jobs", {}).get("awaiting_approval", 0))  # fmt: skip


def _grid(s: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("titan_workers", "Connected workers", value=s.get("workers", 0))
    yield GaugeMetricFamily("titan_slots", "Job slots of the connected workers", value=s.get("slots", 0))
    yield GaugeMetricFamily("titan_slots_busy", "Job slots running a job", value=s.get("busy", 0))
    services = GaugeMetricFamily("titan_services", "Services, by state", labels=["state"])
    counts: dict[str, int] = {}
    for svc in s.get("services", []):
        counts[svc["state"]] = counts.get(svc["state"], 0) + 1
    for state, n in sorted(counts.items()):
        services.add_metric([state], n)
    yield services
    yield GaugeMetricFamily("titan_uptime_seconds", "Seconds since the broker started", value=s.get("uptime", 0.0))


def _histograms(h: dict[str, Any]) -> Iterator[Metric]:
    for name, key, text in (
        ("titan_job_dispatch_latency_seconds", "dispatch", "From queued (ready to run) to leased to a worker"),
        ("titan_job_runtime_seconds", "runtime", "Runtime of jobs that succeeded, as their worker measured it"),
        ("titan_journal_commit_seconds", "commit", "One turn's journal write, with its fsync under always"),
    ):
        buckets, total = h[key]
        yield HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)


def _journal(j: dict[str, Any] | None) -> Iterator[Metric]:
    if not j:
        return
    yield GaugeMetricFamily("titan_journal_bytes", "Bytes of the journal's current generation", value=j["bytes"])
    yield GaugeMetricFamily("titan_journal_snapshot_bytes", "Bytes of the last snapshot", value=j["snapshot_bytes"])
    yield GaugeMetricFamily("titan_journal_generation", "The journal's generation (one per compaction)",
                            value=j["generation"])  # fmt: skip
    yield CounterMetricFamily("titan_journal_compactions", "Compactions since the broker started",
                              value=j["compactions"])  # fmt: skip
    yield CounterMetricFamily("titan_journal_commits", "Batches written to the current generation",
                              value=j.get("commits", 0))  # fmt: skip
    yield CounterMetricFamily("titan_journal_fsyncs", "fsyncs of the current generation", value=j.get("fsyncs", 0))
