"""The pieces of a broker group on their own: grants, where two journals agree, the mirror, the stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from titan_zmq.aof.journal import DataDir, generations, journal_path
from titan_zmq.aof.records import KvSet, encode
from titan_zmq.config import BrokerConfig
from titan_zmq.errors import AOFCorrupt, ConfigError
from titan_zmq.ha.follower import Follower
from titan_zmq.ha.grants import START, Grants, agreed_end, last_epoch
from titan_zmq.ha.mirror import Gone, Mirror, StreamGap
from titan_zmq.ha.source import Source
from titan_zmq.local import wait_for

pytestmark = pytest.mark.timeout(60)


def test_an_epoch_is_granted_once_and_the_promise_survives_a_restart(tmp_path: Path) -> None:
    g = Grants(tmp_path)
    assert g.grant(1) and not g.grant(1) and g.grant(3) and not g.grant(2)
    g.begin(3, (1, 100))
    again = Grants(tmp_path)  # read back from group.json
    assert again.promised == 3 and again.history == [(3, (1, 100))]
    assert not again.grant(3)


def test_a_damaged_grants_file_stops_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "group.json").write_text("{not json")
    with pytest.raises(AOFCorrupt, match="Remove the member's whole data directory"):
        Grants(tmp_path)


@pytest.mark.parametrize(
    ("mine", "my_end", "theirs", "their_end", "agreed"),
    [
        # the same history: they agree up to the shorter
        ([(1, (1, 0))], (1, 500), [(1, (1, 0))], (1, 300), (1, 300)),
        # they wrote on in epoch 1 after this member's epoch 2 began at 400: cut at 400
        ([(1, (1, 0)), (2, (1, 400))], (1, 900), [(1, (1, 0))], (1, 700), (1, 400)),
        # their last epoch (3) is unknown here: back to where it began
        ([(1, (1, 0)), (4, (1, 600))], (1, 900), [(1, (1, 0)), (3, (1, 500))], (1, 800), (1, 500)),
        # nothing in common: only the empty journal
        ([(2, (1, 0))], (1, 900), [(1, (1, 0))], (1, 800), START),
        # a follower behind: nothing to cut
        ([(1, (1, 0)), (2, (2, 10))], (2, 90), [(1, (1, 0))], (1, 50), (1, 50)),
    ],
)
def test_where_two_journals_agree(mine, my_end, theirs, their_end, agreed) -> None:  # type: ignore[no-untyped-def]
    assert agreed_end(mine, my_end, theirs, their_end) == agreed


def test_last_epoch_of_a_journal() -> None:
    h = [(1, (1, 0)), (3, (1, 400)), (5, (2, 0))]
    assert [last_epoch(h, p) for p in ((1, 10), (1, 400), (1, 999), (2, 5))] == [1, 3, 3, 5]
    assert last_epoch([], (1, 0)) == 0


def _journal(root: Path, n: int) -> DataDir:
    d = DataDir(root, "always")
    d.load(lambda op: None)
    for i in range(n):
        d.append(encode(KvSet(f"k{i}", i, None)))
        d.commit()
    return d


def test_the_mirror_reads_and_writes_the_same_bytes_by_position(tmp_path: Path) -> None:
    src = _journal(tmp_path / "a", 20)
    end = (src.gen, src.journal_bytes)
    m = Mirror(tmp_path / "a")
    assert m.end() == end and m.first() == START
    copy = Mirror(tmp_path / "b", "always")
    (tmp_path / "b").mkdir()
    at = START
    while (got := m.read(at, end, 100)) is not None:  # small pieces: records cut in the middle
        pos, data = got
        at = copy.append(pos, data)
    copy.close()
    assert journal_path(tmp_path / "b", 1).read_bytes() == journal_path(tmp_path / "a", 1).read_bytes()
    with pytest.raises(StreamGap):
        copy.append((1, 5), b"x")
    # cut back and check that a torn batch left by a cut in the middle is found and dropped
    copy.truncate((1, end[1] - 3))
    assert copy.cut_torn() < (1, end[1] - 3)
    src.close()


def test_a_compacted_journal_is_gone_and_a_snapshot_replaces_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    src = _journal(a, 5)
    src.compact([encode(KvSet("k", 1, None))], background=False)
    m = Mirror(a)
    assert m.base() == 2 and m.first() == (2, 0)
    with pytest.raises(Gone):
        m.read((1, 0), m.end(), 100)
    copy = Mirror(b)
    size = m.snapshot_size(2)
    copy.snapshot_part(2, 0, m.read_snapshot(2, 0, 10), last=False)
    copy.snapshot_part(2, 10, m.read_snapshot(2, 10, size), last=True)
    assert generations(b)[0] == [2] and copy.end() == (2, 0)
    src.close()


@dataclass
class Pair:
    """A Source leading epoch 2 over a journal of ``src`` (directory a) and a Follower copying it to b,
    in this process over real sockets; stopped by ``close()``."""

    src: DataDir
    leader: Grants
    follower_grants: Grants
    source: Source
    follower: Follower
    mirror: Mirror
    ctx: zmq.Context[zmq.Socket[bytes]]
    end: tuple[int, int]
    committed: threading.Event
    deposed: threading.Event

    def write(self) -> None:
        """One more batch on the leader, offered to the stream."""
        self.src.append(encode(KvSet("late", 1, None)))
        self.src.commit()
        self.source.advance((self.src.gen, self.src.journal_bytes))

    def close(self) -> None:
        self.follower.stop()
        self.source.stop()
        self.mirror.close()
        self.ctx.term()
        self.src.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    src = _journal(a, 50)
    ga, gb = Grants(a), Grants(b)
    ga.grant(2)
    ga.begin(2, START)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    committed, deposed = threading.Event(), threading.Event()
    source = Source(ctx, "tcp://127.0.0.1:*", a, ga, ["a", "b", "c"], "a", committed.set, lambda why: deposed.set())
    endpoint = source.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    end = (src.gen, src.journal_bytes)
    source.lead(2, end)
    source.start()
    mirror = Mirror(b, "no")
    follower = Follower(ctx, "b", mirror, gb, True, lambda: endpoint)
    follower.start()
    p = Pair(src, ga, gb, source, follower, mirror, ctx, end, committed, deposed)
    try:
        wait_for(lambda: source.committed >= end, 20, "a majority (the leader and b) to hold the journal")
        yield p
    finally:
        p.close()


def test_a_follower_copies_a_leaders_journal_and_refuses_an_older_epoch(pair: Pair, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert pair.committed.is_set() and pair.follower_grants.promised == 2
    assert pair.follower_grants.history == [(2, START)]
    assert journal_path(b, 1).read_bytes() == journal_path(a, 1).read_bytes()
    # b promises epoch 3 to another candidate: data of epoch 2 is no longer taken
    assert pair.follower_grants.grant(3)
    pair.write()
    wait_for(pair.deposed.is_set, 20, "b to refuse the leader of epoch 2, which then knows it is deposed")
    assert journal_path(b, 1).stat().st_size == pair.end[1]  # nothing of epoch 2 after the promise


def test_group_settings_are_checked() -> None:
    peers = "127.0.0.1:5555,127.0.0.1:6555,127.0.0.1:7555"
    with pytest.raises(ConfigError, match="odd number"):
        BrokerConfig(peers="127.0.0.1:5555,127.0.0.1:6555", data_dir="/tmp/x").validate()
    with pytest.raises(ConfigError, match="--data-dir"):
        BrokerConfig(peers=peers).validate()
    with pytest.raises(ConfigError, match="no member with this broker's front port"):
        BrokerConfig(peers=peers, data_dir="/tmp/x", front=8555).validate()
    BrokerConfig(peers=peers, data_dir="/tmp/x").validate()


def test_the_ha_benchmark_report_judges_its_targets() -> None:
    from benchmarks import ha

    side = {"median_jobs_per_s": 800.0, "p50_ms": 4.0}
    fig = {"always": {"group": side, "single": {**side, "median_jobs_per_s": 1000.0, "p50_ms": 2.0}, "ratio": 0.8,
                      "pair_ratios": [0.7, 0.8, 0.9]},
           "failover_s": [1.5, 2.5, 2.0]}  # fmt: skip
    rows, targets, notes = ha.report(fig)
    by_name = {t[0]: t for t in targets}
    assert by_name["group / single broker throughput, fsync always (median of pairs)"][1] == 0.8
    assert by_name["failover p50, SIGKILL to first dispatch (s)"][1] == 2.0
    assert any(r.figure.startswith("max of 3") and r.value == 2500.0 for r in rows)
    assert "70%, 80%, 90%" in notes[0] and "1.50, 2.50, 2.00" in notes[1]


def test_a_new_member_grants_nothing_until_it_has_followed_a_leader(tmp_path: Path) -> None:
    """An empty directory without group.json may be a member whose disk was replaced: it may have granted
    epochs it no longer knows of. It grants none until a leader's epoch is its floor, except to bootstrap."""
    g = Grants(tmp_path, empty=True)
    assert g.fresh and not g.grant(1)
    assert g.grant(1, bootstrap=True) and not g.fresh  # every member new and empty: a new group
    other = tmp_path / "x"
    other.mkdir()
    h = Grants(other, empty=True)
    assert h.fresh and not h.grant(5)
    h.adopt(4)  # it followed the leader of epoch 4
    assert not h.fresh and not h.grant(4) and h.grant(5)
    assert not Grants(tmp_path / "x", empty=True).fresh  # group.json is there now: not new any more


def test_a_leader_that_granted_a_higher_epoch_counts_and_sends_nothing_more(pair: Pair, tmp_path: Path) -> None:
    assert pair.leader.grant(3)  # another candidate asked this leader for epoch 3, and got it
    pair.write()
    assert not pair.source.leading
    turns = pair.source.turns
    wait_for(lambda: pair.source.turns >= turns + 3, 10, "the stream's thread to take turns after the write")
    assert pair.source.committed == pair.end  # nothing after the grant counts...
    assert journal_path(tmp_path / "b", 1).stat().st_size == pair.end[1]  # ...nor goes out


def test_a_tokened_kv_write_sent_again_gets_its_first_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """incr, cas, sadd, srem and delete come with a token: the same token again (a resend after a lost
    reply, or to a new leader) returns the first result and applies nothing, also after a replay."""
    from titan_zmq.aof import kv as K

    ops: list[list[object]] = []
    store = K.KVStore(journal=ops.append)
    assert store.request("incr", "n", [5], token="t1") == 5
    assert store.request("incr", "n", [5], token="t1") == 5  # not 10
    assert store.request("incr", "n", [5], token="t2") == 10
    assert store.request("cas", "c", [None, "x"], token="t3") is True
    assert store.request("cas", "c", [None, "x"], token="t3") is True  # its first answer, though "c" is set now
    again = K.KVStore()
    for op in ops:
        again.apply(op)
    assert again.request("incr", "n", [5], token="t2") == 10 and again.get("n") == 10
    snap = K.KVStore()
    for op in again.capture():  # the tokens survive a compaction too
        snap.apply(op)
    assert snap.request("cas", "c", [None, "y"], token="t3") is True and snap.get("c") == "x"
    monkeypatch.setattr(K, "MAX_TOKENS", 2)
    small = K.KVStore()
    for i in range(3):
        small.request("incr", "m", [1], token=f"u{i}")
    assert list(small.done) == ["u1", "u2"]  # bounded: the oldest go first
