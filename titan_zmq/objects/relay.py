"""The broker's object relay: a thread that passes chunks between peers that cannot see each other.

Every holder keeps a DEALER open to the relay's ROUTER and registers its name on it (``TZO1 R
name``). A requester that cannot reach a holder directly sends its requests here prefixed with
``@<name>``; the relay passes them to the holder with the requester's identity in front, and the
holder's replies, which begin with that identity, back to the requester. Frames are passed on as
they came, never decoded or copied. The relay also answers requests for the broker's own store
(published artifacts kept in its data directory) with the same :class:`Handler` as any holder.

It runs in its own thread with its own socket and touches none of the broker's state, so the
broker's loop never waits on a transfer, and the broker spends nothing on objects while the
workers reach each other directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from titan_zmq.objects.store import ObjectStore
from titan_zmq.objects.transfer import REG, TAG, Handler, error_frames

log = logging.getLogger(__name__)


class Relay(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context[Any],
        host: str,
        port: int,
        store: ObjectStore | None = None,
        setup: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        super().__init__(name="titan-relay", daemon=True)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.SNDHWM, 4096)  # chunks queued for requesters (each asks for a window of them)
        if setup is not None:
            setup(self.sock)
        self.port = self.sock.bind_to_random_port(f"tcp://{host}") if port == 0 else port
        if port:
            self.sock.bind(f"tcp://{host}:{port}")
        self.inproc = f"inproc://titan-relay-{id(self):x}"
        self.sock.bind(self.inproc)  # the broker's own keeper fetches through here
        self.handler = Handler(store)
        self.holders: dict[bytes, bytes] = {}  # holder name -> its DEALER's identity here
        self.relayed_bytes = 0
        self._halt = threading.Event()
        from titan_zmq.process import Waker

        self._waker = Waker()  # stop() wakes the poll at once: the broker's shutdown does not wait for it

    def stop(self) -> None:
        self._halt.set()
        self._waker.wake()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                if self.sock not in dict(poller.poll(1000)):
                    continue
                for _ in range(512):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) >= 3:
                        self._one(frames)
        except Exception:
            log.exception("the object relay stopped")
        finally:
            self.sock.close(0)
            self._waker.close()

    def _one(self, frames: list[Any]) -> None:
        rid = frames[0].bytes
        first = frames[1].bytes
        try:
            if first == TAG:
                if frames[2].bytes == REG and len(frames) > 3:
                    self.holders[frames[3].bytes] = rid
                else:
                    self.handler.handle(self.sock, [rid], frames[1:])
            elif first[:1] == b"@":
                target = self.holders.get(first[1:])
                if target is None:
                    name = first[1:].decode(errors="replace")
                    why = f"holder {name} is not connected to the relay"
                    self.sock.send_multipart([rid, *error_frames("", "unreachable", why)])
                    return
                self.sock.send_multipart([target, frames[0], *frames[2:]], copy=False)
            else:  # a holder's reply: its first frame is the requester's identity
                self.relayed_bytes += sum(len(f.buffer) for f in frames[2:])
                self.sock.send_multipart(frames[1:], copy=False)
        except zmq.ZMQError as exc:  # a peer gone (ROUTER_MANDATORY): the requester times out and tries another
            if first[:1] == b"@":
                self.holders = {k: v for k, v in self.holders.items() if v != self.holders.get(first[1:])}
            log.debug("relay could not pass a message on: %s", exc)
