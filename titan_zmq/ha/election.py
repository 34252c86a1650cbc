"""Who leads the group: pysyncobj's Raft election, with nothing replicated through it.

pysyncobj (an embedded Raft in pure Python, on PyPI since 2016) runs the election: random
timeouts, votes, the leader's heartbeats, its quorum check and its step-down when it loses
the majority (``leaderFallbackTimeout``). Titan uses only that: the journal travels on
titan's own stream, and the fencing epoch comes from :mod:`titan_zmq.ha.grants`, because
pysyncobj keeps its term and vote in memory only, so after a restart it could let two
members lead in one Raft term; the durable grants make that harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObj, SyncObjConf

log = logging.getLogger(__name__)

_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class Election:
    """One member's part in the election, on ``me`` (``HOST:PORT``, the raft port)."""

    def __init__(self, me: str, others: list[str], timeout: float, on_change: Callable[[], None]) -> None:
        self.me = me
        self.others = others
        self.timeout = timeout
        self._on_change = on_change
        self._raft = self._start()

    def _start(self) -> SyncObj:
        timeout = self.timeout
        conf = SyncObjConf(
            raftMinTimeout=timeout,
            raftMaxTimeout=2 * timeout,
            appendEntriesPeriod=timeout / 8,
            leaderFallbackTimeout=2.5 * timeout,  # a leader cut off from the majority steps down after this
            connectionTimeout=30.0,  # followers exchange nothing between elections: an idle link must stay up
            connectionRetryTime=min(0.5, timeout),
            autoTickPeriod=0.02,
            useFork=False,
            dynamicMembershipChange=False,
            onStateChanged=self._changed,
        )
        return SyncObj(self.me, self.others, conf)

    def restart(self) -> None:
        """Leave the election and join it again: Raft forgets that this member leads (pysyncobj has no
        call to step down), and a member whose Raft log is longer wins the next election."""
        self.stop()
        self._raft = self._start()

    def _changed(self, old: int, new: int) -> None:
        log.info("election state %s -> %s (term %s)", old, new, self.raft_term)
        self._on_change()

    @property
    def leading(self) -> bool:
        """Whether Raft has made this member leader (a claim the grants must still confirm)."""
        return bool(self._raft._isLeader())

    @property
    def raft_term(self) -> int:
        return int(self._raft.raftCurrentTerm)

    def leader(self) -> str | None:
        """The raft address of the leader this member knows of, if any."""
        node: Any = self._raft._getLeader()
        return None if node is None else str(node.address if hasattr(node, "address") else node)

    def stop(self) -> None:
        try:
            self._raft.destroy()
        except Exception as exc:  # pysyncobj's own teardown: nothing of ours depends on it
            log.debug("stopping the election: %s", exc)
