"""The ``stats`` feed: one picture of the cluster, published every second on the events socket."""

from __future__ import annotations

import time
from typing import Any

from titan_zmq.broker.scheduler import Scheduler
from titan_zmq.job import FINAL_STATES, JobState

MAX_DAGS = 50  # DAGs in one stats message: the unfinished ones first, newest first


class StatsFeed:
    """Builds the stats message; remembers the last counters to give rates per second."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self._last: tuple[float, int, int] | None = None

    def build(self, now: float, interval: float, liveness: int) -> dict[str, Any]:
        sched = self.sched
        states: dict[str, int] = {}
        queues: dict[str, int] = {}
        dags: dict[str, dict[str, int]] = {}
        for e in sched.jobs.values():
            st = e.state.value
            states[st] = states.get(st, 0) + 1
            if e.state is JobState.QUEUED or e.state is JobState.RETRYING:
                key = ",".join(sorted(e.job.level(e.level)[0])) or "cpu"
                queues[key] = queues.get(key, 0) + 1
            if e.job.dag is not None:
                d = dags.get(e.job.dag)
                if d is None:
                    d = dags[e.job.dag] = {"total": 0, "done": 0}
                d["total"] += 1
                d[st] = d.get(st, 0) + 1
                if e.state in FINAL_STATES:
                    d["done"] += 1
        c = sched.counters
        out_count = c["succeeded"] + c["failed"]
        t = time.monotonic()
        rate_in = rate_out = 0.0
        if self._last is not None:
            dt = max(1e-6, t - self._last[0])
            rate_in = (c["submitted"] - self._last[1]) / dt
            rate_out = (out_count - self._last[2]) / dt
        self._last = (t, c["submitted"], out_count)
        newest_first: list[dict[str, Any]] = [{"id": k, **v} for k, v in reversed(dags.items())]
        unfinished = [d for d in newest_first if d["done"] < d["total"]]
        finished = [d for d in newest_first if d["done"] >= d["total"]]
        shown = (unfinished + finished)[:MAX_DAGS]
        workers = [w.describe(now, interval, liveness) for w in sched.workers.values()]
        return {
            "time": time.time(),
            "workers": len(workers),
            "slots": sum(w.slots for w in sched.workers.values()),
            "busy": sum(min(len(w.running), w.slots) for w in sched.workers.values()),
            "jobs": states,
            "queued": states.get("queued", 0) + states.get("retrying", 0),
            "running": states.get("running", 0),
            "queues": queues,
            "rate_in": rate_in,
            "rate_out": rate_out,
            "worker_list": workers,
            "dags": shown,
            "services": [],  # filled by the broker (services live beside the scheduler)
            **c,
        }


def broker_stats(b: Any) -> dict[str, Any]:
    """Broker ``b``'s stats message: the scheduler's picture (:class:`StatsFeed`), with its uptime,
    services, KV keys, group and journal (the ``stats`` feed, the metrics exporter)."""
    cfg = b.config
    s = b.feed.build(b.clock(), cfg.heartbeat_interval, cfg.heartbeat_liveness)
    s["uptime"] = time.time() - b.started
    s["log_lines"] = b.logs.lines_in
    s["services"] = [
        {"name": r["name"], "state": r["state"], "restarts": r["restarts"],
         "port": ",".join(str(x["port"]) for x in r["replicas"] if x["port"]) or None,
         "addresses": [x["address"] for x in r["replicas"] if x["state"] == "running"]}
        for r in b.services.records()
    ]  # fmt: skip
    s["kv_keys"] = len(b.kv)
    if b.replica is not None:
        s["group"] = b.replica.group()
    data = b.data
    if data is not None and data.writer is not None:
        s["journal"] = {
            "dir": str(data.root), "fsync": data.fsync, "generation": data.gen, "bytes": data.journal_bytes,
            "snapshot_bytes": data.snapshot_bytes, "compactions": data.compactions, **data.writer.stats,
        }  # fmt: skip
    return s
