"""The broker's live feed (its PUB socket): ``stats``, ``event.<kind>`` and ``log.<job id>``.

::

    from titan_zmq.client import TitanClient
    client = TitanClient()
    with client.subscribe("stats") as feed:
        for topic, body in feed:                 # blocks; feed.next(timeout) does not
            print(body["rate_out"], "jobs/s")

    for line in client.logs(job_id, follow=True):  # the job's output, live, until it ends
        print(line.stream, line.text)

A subscriber that reads slowly never slows the broker: ZeroMQ drops messages for it once
its queue is full (``hwm``). Logs followed with ``logs(follow=True)`` are also read back
from the broker, so a line dropped from the feed is still printed, in order, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from titan_zmq import protocol as P
from titan_zmq.config import tcp_endpoint

if TYPE_CHECKING:
    from titan_zmq.client.client import TitanClient


class LogLine(NamedTuple):
    """One line a job wrote: its number in the job's log, unix time, "out" or "err", and the text."""

    seq: int
    time: float
    stream: str
    text: str


class Subscription:
    """A SUB socket on the broker's events port, subscribed to topic prefixes."""

    def __init__(self, client: TitanClient, topics: tuple[str, ...], hwm: int = 10_000) -> None:
        info = client.hello()
        self._ctx = client._ctx
        self.sock: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        for t in topics or ("",):
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        if client.keys is not None:
            client.keys.connect(self.sock, "client")
        self.sock.connect(tcp_endpoint(client.host, int(info["events"])))

    def next(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """The next message as (topic, body); None if none came within ``timeout`` seconds."""
        if not self.sock.poll(None if timeout is None else max(0, int(timeout * 1000))):
            return None
        topic, body = self.sock.recv_multipart()
        return topic.decode(errors="replace"), P.unpackb(body)

    def drain(self, limit: int = 10_000) -> list[tuple[str, Any]]:
        """Everything waiting now (up to ``limit`` messages), without blocking."""
        out = []
        for _ in range(limit):
            try:
                topic, body = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            out.append((topic.decode(errors="replace"), P.unpackb(body)))
        return out

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        while True:
            msg = self.next()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_logs(
    client: TitanClient, job_id: str, *, follow: bool = False, after: int = 0, poll: float = 0.5
) -> Iterator[LogLine]:
    """Yield the job's output lines after line ``after``; with ``follow``, until the job ends."""
    sub = Subscription(client, (f"log.{job_id}",)) if follow else None
    broker: tuple[str, int] | None = None  # the member that answered (in a group, the leader moves)
    try:
        while True:
            data = client.request(P.Logs, id=job_id, after=after, limit=5000)
            if broker is None:
                broker = (client.host, client.port)
            elif (client.host, client.port) != broker:
                # Job logs are not replicated in a group: the new leader numbers the lines it receives from 1,
                # and its feed is on its own events port.
                broker, after = (client.host, client.port), 0
                if sub is not None:
                    sub.close()
                    sub = Subscription(client, (f"log.{job_id}",))
                continue
            for row in data["lines"]:
                line = LogLine(*row)
                after = line.seq
                yield line
            if data["more"]:
                continue
            if data["ended"] or sub is None:
                return
            # Wait for the feed: new lines (printed at once), the end of the job, or a quiet spell
            # after which the broker is asked again (a dropped message, or a job with no output).
            deadline = time.monotonic() + poll
            while (left := deadline - time.monotonic()) > 0:
                msg = sub.next(left)
                if msg is None:
                    break
                body = msg[1]
                if "end" in body:
                    break  # ask the broker once more: it has every line now, and says it ended
                for row in body.get("lines", ()):
                    line = LogLine(*row)
                    if line.seq == after + 1:
                        after = line.seq
                        yield line
                    elif line.seq > after + 1:
                        deadline = 0.0  # a gap: fetch what is missing from the broker
                        break
    finally:
        if sub is not None:
            sub.close()
