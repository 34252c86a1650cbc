"""The dashboard's I/O: one thread reads the broker's feed and polls its job list.

Everything it learns goes into a :class:`FeedState` under a lock; the app takes a copy of
what changed a few times a second and repaints once (never once per message). The SUB
socket belongs to the thread: the app asks for a job's log by setting ``follow``, and the
thread changes its subscription.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from titan_zmq import protocol as P
from titan_zmq.client import TitanClient
from titan_zmq.errors import TitanError

log = logging.getLogger(__name__)

STALE = 3.0  # seconds without stats before the dashboard says "disconnected"
LIST_EVERY = 1.0  # seconds between job list polls
MAX_JOBS = 500  # rows in the jobs table


@dataclass
class FeedState:
    """What the dashboard shows, written by the feed thread, read by the app."""

    stats: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record, newest last
    rates: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    log_job: str | None = None  # the job whose lines are in log_lines
    log_lines: list[tuple[int, float, str, str]] = field(default_factory=list)
    log_ended: bool = False
    dag_id: str | None = None
    dag_records: list[dict[str, Any]] = field(default_factory=list)
    last_stats: float = 0.0
    error: str | None = None
    version: int = 0  # bumped on every change: the app repaints only when it moved

    @property
    def connected(self) -> bool:
        return self.last_stats > 0 and time.monotonic() - self.last_stats < STALE


class Feed:
    """Runs in a thread (``run``) until ``stop()``; ``state`` is shared under ``lock``."""

    def __init__(self, broker: str | None) -> None:
        self.broker = broker
        self.state = FeedState()
        self.lock = threading.Lock()
        self.follow: str | None = None  # set by the app: the selected job
        self._stop = threading.Event()
        self._client: TitanClient | None = None
        self.messages = 0  # feed messages taken in, for the record

    def stop(self) -> None:
        self._stop.set()

    @property
    def client(self) -> TitanClient:
        if self._client is None:
            self._client = TitanClient(self.broker, timeout=2.0)
        return self._client

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except TitanError as exc:  # the broker is away: say so, and try again
                with self.lock:
                    self.state.error = str(exc).split(";")[0]
                    self.state.version += 1
                self._stop.wait(1.0)
            except Exception:  # never let the dashboard's thread die silently
                log.exception("dashboard feed failed; retrying")
                self._stop.wait(1.0)
        if self._client is not None:
            self._client.close()

    def _session(self) -> None:
        client = self.client
        sub = client.subscribe("stats", "event.")  # and log.<id> of the selected job only
        where = (client.host, client.port)  # the broker whose events port it is (a group's leader moves)
        following: str | None = None
        next_list = 0.0
        try:
            with self.lock:
                self.state.error = None
            while not self._stop.is_set():
                want = self.follow
                if want != following:
                    if following is not None:
                        sub.sock.setsockopt(zmq.UNSUBSCRIBE, f"log.{following}".encode())
                    if want is not None:
                        sub.sock.setsockopt(zmq.SUBSCRIBE, f"log.{want}".encode())
                    following = want
                    self._load_log(client, want)
                now = time.monotonic()
                if now >= next_list:
                    next_list = now + LIST_EVERY
                    self._list(client)
                    if (client.host, client.port) != where:  # the request went to a new leader: follow its feed
                        return
                msg = sub.next(0.1)
                if msg is None:
                    continue
                batch = [msg, *sub.drain(5000)]
                self._apply(batch, following)
        finally:
            sub.close()

    def _list(self, client: TitanClient) -> None:
        records: list[dict[str, Any]] = client.request(P.List, state=None, limit=MAX_JOBS)
        dag = self.state.dag_id
        dag_records: list[dict[str, Any]] = client.request(P.Status, ids=[dag])["records"] if dag else []
        with self.lock:
            st = self.state
            st.jobs = {r["id"]: r for r in reversed(records)}
            if dag:
                st.dag_records = dag_records
            st.version += 1

    def _load_log(self, client: TitanClient, job_id: str | None) -> None:
        lines: list[tuple[int, float, str, str]] = []
        ended = False
        dag = None
        if job_id is not None:
            try:
                lines = [tuple(x) for x in client.logs(job_id)]  # type: ignore[misc]
                rec = client.status(job_id)
                ended = rec.state.value in ("succeeded", "failed", "cancelled", "dead")
                dag = rec.dag
            except TitanError as exc:
                lines = [(0, time.time(), "err", f"(no log: {exc})")]
        with self.lock:
            st = self.state
            st.log_job, st.log_lines, st.log_ended = job_id, lines, ended
            if dag != st.dag_id:
                st.dag_id, st.dag_records = dag, []
            st.version += 1

    def _apply(self, batch: list[tuple[str, Any]], following: str | None) -> None:
        self.messages += len(batch)
        with self.lock:
            st = self.state
            for topic, body in batch:
                if topic == "stats":
                    st.stats = body
                    st.rates.append(float(body.get("rate_out") or 0.0))
                    st.last_stats = time.monotonic()
                elif topic == "event.job":
                    for ch in body.get("changes", ()):
                        rec = st.jobs.get(ch["id"])
                        if rec is not None:
                            rec.update(state=ch["state"], worker=ch["worker"], attempts=ch["attempts"])
                        for r in st.dag_records:
                            if r.get("id") == ch["id"]:
                                r["state"] = ch["state"]
                elif following is not None and topic == f"log.{following}":
                    if "end" in body:
                        st.log_ended = True
                    last = st.log_lines[-1][0] if st.log_lines else 0
                    st.log_lines.extend(tuple(x) for x in body.get("lines", ()) if x[0] > last)
            st.version += 1

    def snapshot(self) -> FeedState:
        """A copy of the state for the app to render without holding the lock."""
        with self.lock:
            st = self.state
            return FeedState(
                stats=dict(st.stats), jobs={k: dict(v) for k, v in st.jobs.items()}, rates=deque(st.rates),
                log_job=st.log_job, log_lines=list(st.log_lines), log_ended=st.log_ended, dag_id=st.dag_id,
                dag_records=[dict(r) for r in st.dag_records], last_stats=st.last_stats, error=st.error,
                version=st.version,
            )  # fmt: skip
