"""A client of a broker group: following the leader when the member in use is not it, or is gone.

:class:`GroupCalls` is a part of :class:`~titan_zmq.client.client.TitanClient`. Its request path
calls :meth:`GroupCalls._failover` only when something went wrong (a ``not_leader`` answer; in a
group, no answer within ``MEMBER_WAIT``): the socket moves to the leader named, or to the next
member (``titan_zmq.members``), and the request is sent again there, until its deadline. Job ids
are made by the client, so a submission sent again is recognised, not run twice. After a move the
broker there knows none of the client's watches: ``_restarts`` goes up, and ``wait()`` and
``map()`` send theirs again.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import zmq

from titan_zmq import errors
from titan_zmq import protocol as P
from titan_zmq.errors import BrokerUnavailable
from titan_zmq.members import Members

log = logging.getLogger(__name__)

MEMBER_WAIT = 2.0  # in a group: seconds without an answer before the next member is asked
_PAUSE_MAX = 0.5  # seconds between rounds of a group none of whose members leads (an election)
_CONNECT_FIRST = 0.25  # seconds a send to the next member may wait for its connection...
_SHORT_ROUNDS = 6  # ...in the first rounds through the members; doubled each round after


def leader_hint(reply: P.Message | None) -> str | None:
    """The leader a member named when it is not the leader ("" if it knows none); None when ``reply``
    does not say "not the leader" (a leader's answer, another error, or no reply)."""
    if type(reply) is P.Error:
        return reply.leader if reply.code == P.E_NOT_LEADER else None
    if type(reply) is P.Reply and type(reply.data) is dict:
        group = reply.data.get("group")
        if isinstance(group, dict) and group.get("role") != "leader":  # a follower's HELLO answer
            return str(group.get("leader") or "")
    return None


class GroupCalls:
    """The broker-group part of :class:`~titan_zmq.client.client.TitanClient`."""

    members: Members
    address: str
    host: str
    port: int
    timeout: float
    _group: bool
    _restarts: int
    _rids: itertools.count[int]
    _replies: dict[int, P.Message]
    _lock: Any
    _sock: zmq.Socket[bytes] | None
    _lost: bool

    def _send(self, msg: P.Message) -> bool:
        raise NotImplementedError

    def _pump(self, timeout: float) -> bool:
        raise NotImplementedError

    def _open(self) -> None:
        raise NotImplementedError

    def _drop_socket(self) -> None:
        raise NotImplementedError

    def request(self, msg_type: type[P.Message], **fields: Any) -> Any:
        raise NotImplementedError

    def hello(self) -> dict[str, Any]:
        """The broker's version and ports (the leader's, in a group: its ``group`` says who is who)."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            data: dict[str, Any] = dict(self.request(P.Hello))
            hint = leader_hint(P.Reply(rid=0, data=data))
            if hint is not None:  # a follower answers HELLO too, without its ports: ask the leader
                said = P.Error(rid=0, code=P.E_NOT_LEADER, message="", leader=hint)
                reply = self._failover(P.Hello, {}, deadline, said)
                if isinstance(reply, P.Error):
                    raise errors.from_wire(reply.code, reply.message)
                assert isinstance(reply, P.Reply)
                data = dict(reply.data)
            group = data.get("group")
            if isinstance(group, dict):
                here = (self.host, self.port)
                self.members.learn(group)  # the members it names
                self.members.prefer(here)  # the one that answered leads (whatever name it gives itself)
                self._group = self.members.grouped
            return data

    def _failover(
        self, msg_type: type[P.Message], fields: dict[str, Any], deadline: float, reply: P.Message | None
    ) -> P.Message:
        """The member in use said it is not the leader (``reply``), or did not answer (None): move
        to the leader it named or to the next member, and send the request again there, until one
        answers as the leader (its reply is returned, whatever it is) or ``deadline`` passes
        (BrokerUnavailable naming every member tried). Called with the client's lock held."""
        what = msg_type.__name__.upper()
        tried = [self.address]
        self.members.new_round()
        pause = 0.05
        # How long a send may wait for a connection: short in the first rounds (a member that died is
        # refused at once, and must not hold up a request through an election), then longer each round.
        connect, rounds = _CONNECT_FIRST, 0
        last = ""  # what the last member said, for the error
        while True:
            hint = leader_hint(reply)
            if hint is None:
                last = f"{self.address}: no answer"
                self.members.next()
            else:
                last = f"{self.address}: not the leader" + (f", it named {hint}" if hint else "")
                self.members.redirect(hint)
            if self.members.exhausted():  # every member tried: the group may be electing a leader
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, _PAUSE_MAX)
                rounds += 1
                if rounds >= _SHORT_ROUNDS:
                    connect = min(connect * 2, MEMBER_WAIT)
                self.members.new_round()
            if time.monotonic() >= deadline:
                break
            self._switch()
            if self._sock is not None:  # not past the deadline, should the member not be reachable
                self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(min(connect, deadline - time.monotonic()) * 1000)))
            if self.address not in tried:
                tried.append(self.address)
            rid = next(self._rids)
            reply = None
            if self._send(msg_type(rid=rid, **fields)):  # type: ignore[call-arg]
                patience = min(deadline, time.monotonic() + MEMBER_WAIT)
                while rid not in self._replies and time.monotonic() < patience and not self._lost:
                    self._pump(patience - time.monotonic())
                reply = self._replies.pop(rid, None)
            if reply is not None and leader_hint(reply) is None:
                if self._sock is not None:  # as _open sets it
                    wait = min(self.timeout, MEMBER_WAIT) if self._group else self.timeout
                    self._sock.setsockopt(zmq.SNDTIMEO, int(wait * 1000))
                self.members.new_round()
                log.info("broker group: %s answered %s as the leader", self.address, what)
                return reply
        self._switch()  # a new socket (nothing sent before is delivered late), to the member to try next
        raise BrokerUnavailable(
            f"{what}: no leader answered among the brokers tried ({', '.join(tried)}) within {self.timeout:g}s "
            f"(last: {last}); are the group's members (`titan broker --peers ...`) running? "
            "set --broker or TITAN_BROKER to HOST:PORT,HOST:PORT,..."
        )

    def _switch(self) -> None:
        """Point the socket at the member now in use. The broker there knows none of our watches."""
        self._drop_socket()
        self.host, self.port = self.members.current()
        self.address = self.members.address()
        self._open()
        self._restarts += 1  # wait() and map() send their watches again
        log.info("broker group: trying %s", self.address)
