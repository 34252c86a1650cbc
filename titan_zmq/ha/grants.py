"""A member's durable promises: the highest epoch it granted, and where each epoch's journal began.

An epoch is the fencing term of one leadership. A candidate that Raft made leader asks every
member to grant it an epoch higher than any it has granted; a member grants each epoch once
and remembers it on disk (``group.json``, replaced atomically and fsynced) before it answers,
so two members can never both collect a majority for the same epoch, whatever Raft's own
terms (pysyncobj keeps its term and vote in memory only) do across restarts. Once it has
granted epoch E, a member takes no journal data from a leader of an older epoch.

The history lists ``(epoch, generation, offset)``: the journal position at which each epoch's
leader started writing. Two members' journals agree up to the end of the last epoch both
know; a member that comes back with bytes past that point wrote them alone, unacknowledged,
and cuts them (the same comparison Kafka makes with its leader epochs).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from titan_zmq.aof.log import fsync_dir
from titan_zmq.errors import AOFCorrupt

log = logging.getLogger(__name__)

Pos = tuple[int, int]  # (journal generation, byte offset in it)
START: Pos = (1, 0)  # an empty data directory's end: the first journal, nothing in it
FILE = "group.json"


def pos(value: Any) -> Pos:
    """A position from its wire or JSON form ``[generation, offset]``."""
    return (int(value[0]), int(value[1]))


class Grants:
    """``promised`` and ``history`` of one member, with the lock that orders grants and appends.

    A member whose data directory is empty and has no ``group.json`` is **fresh**: a new member,
    or one whose disk was replaced. It may have granted epochs before it lost them, so it grants
    none until it has followed a leader (its epoch is then the floor), except to bootstrap a
    group whose every member is fresh and empty: then nothing was ever acknowledged anywhere.
    """

    def __init__(self, root: Path, empty: bool = False) -> None:
        self.path = root / FILE
        self.lock = threading.RLock()  # held while granting, and while appending a leader's data
        self.promised = 0
        self.history: list[tuple[int, Pos]] = []
        self.fresh = empty and not self.path.exists()
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.promised = int(data["promised"])
                self.history = [(int(e), pos(p)) for e, p in data["history"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise AOFCorrupt(
                    f"{self.path} cannot be read ({exc}); it holds this member's promises to the group. "
                    "Remove the member's whole data directory: it then joins as a new member and copies the "
                    "journal from the leader"
                ) from None

    def _save(self, promised: int, history: list[tuple[int, Pos]]) -> None:
        """Write both to disk (atomically, fsynced), then take them: a promise counts once it is on disk."""
        tmp = self.path.with_name(FILE + ".tmp")
        body = json.dumps({"promised": promised, "history": [[e, list(p)] for e, p in history]})
        with open(tmp, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.promised, self.history = promised, list(history)

    # ---- epochs -------------------------------------------------------------------------

    def grant(self, epoch: int, bootstrap: bool = False) -> bool:
        """Promise ``epoch`` (durably) if it is above every epoch promised so far (and, fresh, only to
        bootstrap a new group)."""
        with self.lock:
            if epoch <= self.promised or (self.fresh and not bootstrap):
                return False
            self._save(epoch, self.history)
            self.fresh = False
            return True

    def adopt(self, epoch: int) -> None:
        """Learn of a higher epoch from its leader (the same promise, made on its word)."""
        with self.lock:
            if epoch > self.promised:
                self._save(epoch, self.history)
            self.fresh = False

    def begin(self, epoch: int, at: Pos) -> None:
        """This member leads ``epoch`` from journal position ``at``."""
        with self.lock:
            kept = [h for h in self.history if h[1] <= at and h[0] < epoch]
            self._save(max(self.promised, epoch), [*kept, (epoch, at)])

    def follow(self, history: list[tuple[int, Pos]]) -> None:
        """Take the leader's history (after cutting what differs from it)."""
        with self.lock:
            if history != self.history:
                self._save(self.promised, history)

    def wire(self) -> list[list[Any]]:
        return [[e, list(p)] for e, p in self.history]


def last_epoch(history: list[tuple[int, Pos]], end: Pos) -> int:
    """The epoch under which a journal ending at ``end`` was last written (0: none)."""
    last = 0
    for epoch, start in history:
        if start <= end:
            last = epoch
    return last


def history_from(wire: Any) -> list[tuple[int, Pos]]:
    """A history from its wire form, checked."""
    if not isinstance(wire, list):
        raise ValueError("history must be a list")
    return [(int(e), pos(p)) for e, p in wire]


def agreed_end(mine: list[tuple[int, Pos]], my_end: Pos, theirs: list[tuple[int, Pos]], their_end: Pos) -> Pos:
    """How far another member's journal (``theirs`` up to ``their_end``) agrees with this one.

    Take their last epoch that this member also has: both journals hold the same bytes up to
    where that epoch ends here (the start of this member's next epoch, or its end), and up to
    where their next (unknown here) epoch began. Past that point they differ.
    """
    starts = dict(mine)
    their = [h for h in theirs if h[1] <= their_end]
    for i in range(len(their) - 1, -1, -1):
        epoch, _ = their[i]
        if epoch not in starts:
            continue
        later = [p for e, p in mine if e > epoch]
        ends_here = min(later) if later else my_end
        theirs_next = their[i + 1][1] if i + 1 < len(their) else their_end
        return min(ends_here, theirs_next, their_end, my_end)
    return min(START, their_end)  # no epoch in common: only the empty journal is sure to agree
