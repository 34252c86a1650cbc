"""A follower's front and back sockets: they say who leads, and serve nothing else.

A client or worker that reaches a follower gets ``not_leader`` with the leader's front
address (``Error.leader``), and HELLO returns the member's place in the group, so that a
client given any one member finds the others and the leader by itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq

from titan_zmq import protocol as P
from titan_zmq.config import BrokerConfig, tcp_endpoint
from titan_zmq.errors import ProtocolError, TitanError

if TYPE_CHECKING:
    from titan_zmq.ha.member import Member

log = logging.getLogger(__name__)


class Redirector:
    """Bound to the broker's front and back ports while this member follows."""

    def __init__(self, config: BrokerConfig, member: Member) -> None:
        self.member = member
        self.max_size = config.max_message_size
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.front = self._bind(config.host, config.front, "front")
        self.back = self._bind(config.host, config.back, "back")
        self.poller = zmq.Poller()
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.back, zmq.POLLIN)

    def _bind(self, host: str, port: int, name: str) -> zmq.Socket[bytes]:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.max_size + (64 << 10))
        try:
            s.bind(tcp_endpoint(host, port))
        except zmq.ZMQError as exc:
            s.close(0)
            for other in (getattr(self, "front", None),):  # bound already: closed, or term() would wait on it
                if other is not None:
                    other.close(0)
            self.ctx.term()
            raise TitanError(f"cannot listen on {host}:{port} for the {name} socket ({exc}); "
                             f"is another broker running? choose another port with --{name}") from None  # fmt: skip
        return s

    def _not_leader(self, rid: int) -> list[bytes]:
        leader = self.member.leader_name()
        where = f"the leader is {leader}" if leader else "no leader is elected yet (try again in a moment)"
        text = (f"{self.member.name} follows in a broker group; {where}. Give clients and workers every member's "
                "address (HOST:PORT,HOST:PORT,...) and they find the leader by themselves")  # fmt: skip
        return P.Error(rid=rid, code=P.E_NOT_LEADER, message=text, leader=leader).encode()

    def serve(self, timeout: float) -> None:
        """Answer what arrives within ``timeout`` seconds."""
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            while True:
                try:
                    frames = P.recv_frames(sock)
                except zmq.Again:
                    break
                try:
                    self._answer(sock, frames)
                except zmq.ZMQError as exc:
                    log.debug("answer to a peer that went away dropped (%s)", exc)

    def _answer(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        ident, body = frames[0], frames[1:]
        if sock is self.back:
            sock.send_multipart([ident, *self._not_leader(0)], zmq.NOBLOCK)
            return
        try:
            msg = P.decode(body, P.FRONT_COMMANDS, self.max_size)
        except ProtocolError as exc:
            reply = P.Error(rid=P.peek_rid(body), code=exc.code, message=str(exc)).encode()
            sock.send_multipart([ident, *reply], zmq.NOBLOCK)
            return
        rid = int(getattr(msg, "rid", 0))
        if isinstance(msg, P.Hello):
            data = {"version": P.VERSION.decode(), "group": self.member.group()}
            sock.send_multipart([ident, *P.Reply(rid=rid, data=data).encode()], zmq.NOBLOCK)
        else:
            sock.send_multipart([ident, *self._not_leader(rid)], zmq.NOBLOCK)

    def close(self) -> None:
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()
