"""The journal on its own: record format, damage, fsync policies, generations, compaction, KV."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from titan_zmq.aof import tools
from titan_zmq.aof.journal import DataDir, journal_path, snapshot_path, write_snapshot
from titan_zmq.aof.kv import KVStore
from titan_zmq.aof.log import HEADER, AppendLog, frame, scan
from titan_zmq.errors import AOFCorrupt, BrokerError, ConfigError, DataDirLocked, KVTypeError

pytestmark = pytest.mark.timeout(60)


def _write(path: Path, batches: list[list[list[Any]]], policy: str = "no") -> None:
    w = AppendLog(path, policy)
    for batch in batches:
        for op in batch:
            w.add(op)
        w.commit()
    w.close()


def _ops(path: Path) -> list[list[Any]]:
    got: list[list[Any]] = []
    res = scan(path, got.append)
    assert res.damage is None, res.damage
    return got


# ---- record format ---------------------------------------------------------------------------------


def test_record_layout_is_length_crc_msgpack(tmp_path: Path) -> None:
    rec = frame(["K", "set", "a", 1, None])
    length, crc = HEADER.unpack_from(rec)
    assert length == len(rec) - 8 and crc == zlib.crc32(rec[8:])
    p = tmp_path / "j.aof"
    _write(p, [[["K", "set", "a", 1, None], ["K", "del", "a"]], [["K", "set", "b", b"\x00", 5.0]]])
    assert _ops(p) == [["K", "set", "a", 1, None], ["K", "del", "a"], ["K", "set", "b", b"\x00", 5.0]]
    res = scan(p, None)
    assert (res.records, res.batches, res.good_end) == (3, 2, p.stat().st_size)


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_every_policy_writes_each_commit_before_returning(tmp_path: Path, policy: str) -> None:
    p = tmp_path / "j.aof"
    w = AppendLog(p, policy)
    w.add(["K", "set", "a", 1, None])
    w.commit()
    # Another reader sees the batch at once: a crash of this process would lose nothing.
    assert _ops(p) == [["K", "set", "a", 1, None]]
    assert (w.stats["fsyncs"] >= 1) == (policy == "always")
    w.close()


def test_bad_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="always, everysec, no"):
        AppendLog(tmp_path / "j.aof", "sometimes")


# ---- damage ---------------------------------------------------------------------------------------


def _two_batches(tmp_path: Path) -> tuple[Path, int]:
    p = tmp_path / "journal-00000001.aof"
    _write(p, [[["K", "set", "a", 1, None]], [["K", "set", "b", 2, None], ["K", "set", "c", 3, None]]])
    first = len(frame(["K", "set", "a", 1, None])) + len(frame(["C", 1]))
    return p, first


def test_torn_last_record_is_torn(tmp_path: Path) -> None:
    p, first = _two_batches(tmp_path)
    size = p.stat().st_size
    os.truncate(p, size - 3)
    res = scan(p, None)
    assert res.damage is not None and res.damage.torn
    assert res.damage.offset == first and res.records == 1


def test_uncommitted_batch_is_torn(tmp_path: Path) -> None:
    p, first = _two_batches(tmp_path)
    os.truncate(p, p.stat().st_size - len(frame(["C", 2])))  # the commit record never made it
    res = scan(p, None)
    assert res.damage is not None and res.damage.torn and res.damage.offset == first
    assert "never committed" in res.damage.reason


def test_zero_fill_is_torn(tmp_path: Path) -> None:
    p, _first = _two_batches(tmp_path)
    with open(p, "ab") as fh:
        fh.write(b"\x00" * 4096)
    res = scan(p, None)
    assert res.damage is not None and res.damage.torn and res.records == 3


def test_flipped_byte_in_the_middle_is_corrupt(tmp_path: Path) -> None:
    p, _first = _two_batches(tmp_path)
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF  # inside the first record's body; the second batch follows intact
    p.write_bytes(bytes(data))
    res = scan(p, None)
    assert res.damage is not None and not res.damage.torn
    assert res.damage.at == 0 and res.damage.offset == 0 and "checksum" in res.damage.reason


def test_start_cuts_a_torn_tail_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p, first = _two_batches(tmp_path)
    os.truncate(p, p.stat().st_size - 3)
    d = DataDir(tmp_path)
    got: list[list[Any]] = []
    report = d.load(got.append)
    d.close()
    assert got == [["K", "set", "a", 1, None]]
    assert report.cut is not None and p.stat().st_size == first
    assert f"offset {first}" in caplog.text and "torn" in caplog.text


def test_start_stops_on_corruption_naming_file_and_offset(tmp_path: Path) -> None:
    p, first = _two_batches(tmp_path)
    data = bytearray(p.read_bytes())
    data[first + 12] ^= 0xFF  # the second batch's first record; its second record follows
    p.write_bytes(bytes(data))
    d = DataDir(tmp_path)
    with pytest.raises(AOFCorrupt) as err:
        d.load(lambda op: None)
    text = str(err.value)
    assert str(p) in text and f"offset {first}" in text and "titan aof repair" in text
    assert p.stat().st_size > first  # nothing was cut: corruption is for a person to decide


def test_repair_keeps_everything_before_the_damage(tmp_path: Path) -> None:
    p, first = _two_batches(tmp_path)
    size = p.stat().st_size
    data = bytearray(p.read_bytes())
    data[first + 12] ^= 0xFF
    p.write_bytes(bytes(data))
    report = tools.repair(tmp_path)
    assert report["dropped_bytes"] == size - first
    assert report["repaired"]["kept_records"] == 1
    assert _ops(p) == [["K", "set", "a", 1, None]]
    assert list(tmp_path.glob("*.damaged-*"))  # the original is kept aside
    assert tools.check(tmp_path)["ok"]


# ---- data directory ---------------------------------------------------------------------------


def test_data_dir_is_locked_by_its_user(tmp_path: Path) -> None:
    a = DataDir(tmp_path)
    a.lock()
    try:
        with pytest.raises(DataDirLocked, match=str(os.getpid())):
            DataDir(tmp_path).lock()
    finally:
        a.unlock()
    b = DataDir(tmp_path)
    b.lock()
    b.unlock()


def _live(n: int) -> list[list[Any]]:
    return [["K", "set", f"k{i}", i, None] for i in range(n)]


def test_compaction_replaces_the_journal_by_a_snapshot(tmp_path: Path) -> None:
    d = DataDir(tmp_path, "always")
    d.load(lambda op: None)
    for i in range(50):
        d.append(["K", "set", "k", i, None])
        d.commit()
    d.compact(_live(3), background=False)
    d.append(["K", "set", "after", 1, None])
    d.commit()
    d.close()
    assert not journal_path(tmp_path, 1).exists() and snapshot_path(tmp_path, 2).exists()
    got: list[list[Any]] = []
    d2 = DataDir(tmp_path)
    d2.load(got.append)
    d2.close()
    assert got == [*_live(3), ["K", "set", "after", 1, None]]


def test_compaction_cut_short_keeps_the_old_generation(tmp_path: Path) -> None:
    """A crash after journal 2 started but before snapshot 2 was renamed into place."""
    d = DataDir(tmp_path, "always")
    d.load(lambda op: None)
    d.append(["K", "set", "old", 1, None])
    d.commit()
    d.close()
    _write(journal_path(tmp_path, 2), [[["K", "set", "new", 2, None]]])
    (tmp_path / "snapshot-00000002.tzs.tmp").write_bytes(frame(["H", 1, 2, 0.0]))  # half written
    got: list[list[Any]] = []
    d2 = DataDir(tmp_path)
    d2.load(got.append)
    d2.close()
    assert got == [["K", "set", "old", 1, None], ["K", "set", "new", 2, None]]
    assert not (tmp_path / "snapshot-00000002.tzs.tmp").exists()


def test_compaction_done_but_old_files_not_yet_deleted(tmp_path: Path) -> None:
    _write(journal_path(tmp_path, 1), [[["K", "set", "old", 1, None]]])
    write_snapshot(snapshot_path(tmp_path, 2), [["K", "set", "old", 1, None]], 2)
    _write(journal_path(tmp_path, 2), [[["K", "set", "new", 2, None]]])
    got: list[list[Any]] = []
    d = DataDir(tmp_path)
    d.load(got.append)
    d.close()
    assert got == [["K", "set", "old", 1, None], ["K", "set", "new", 2, None]]  # journal 1 not replayed twice
    assert not journal_path(tmp_path, 1).exists()


def test_an_incomplete_snapshot_under_its_final_name_is_corruption(tmp_path: Path) -> None:
    write_snapshot(snapshot_path(tmp_path, 2), _live(5), 2)
    p = snapshot_path(tmp_path, 2)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - len(frame(["E", 5])) - len(frame(["C", 1]))])
    with pytest.raises(AOFCorrupt, match="incomplete"):
        DataDir(tmp_path).load(lambda op: None)


def test_auto_compaction_threshold(tmp_path: Path) -> None:
    d = DataDir(tmp_path, "no", compact_ratio=2.0, compact_min_bytes=1000)
    d.load(lambda op: None)
    while not d.needs_compaction():
        d.append(["K", "set", "k", "x" * 50, None])
        d.commit()
    assert d.journal_bytes > 1000
    d.compact(_live(1))
    d.wait_compaction(10)
    assert d.compactions == 1 and not d.needs_compaction()
    d.close()


# ---- KV store ---------------------------------------------------------------------------------


class FakeWall:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_kv_operations_and_their_replay() -> None:
    journal: list[list[Any]] = []
    wall = FakeWall()
    kv = KVStore(journal.append, wall)
    kv.set("a", {"x": [1, 2]})
    assert kv.get("a") == {"x": [1, 2]} and kv.get("missing", 7) == 7
    assert kv.incr("n") == 1 and kv.incr("n", 10) == 11
    assert kv.cas("n", 11, 12) and not kv.cas("n", 11, 13) and kv.get("n") == 12
    assert kv.cas("fresh", None, "v") and not kv.cas("fresh", None, "w")
    assert kv.sadd("s", "a", "b", "a", 3) == 3 and kv.sadd("s", "a") == 0
    assert kv.srem("s", "b", "zz") == 1 and kv.smembers("s") == [3, "a"]
    assert kv.keys() == ["a", "fresh", "n", "s"] and kv.keys("f") == ["fresh"]
    assert kv.delete("fresh") and not kv.delete("fresh")
    kv.set("t", 1, ttl=5)
    assert kv.expire("a", 10) and not kv.expire("nope", 1)
    assert kv.ttl("t") == 5 and kv.ttl("n") is None
    wall.t += 6
    assert kv.get("t") is None and "t" not in kv.data
    replayed = KVStore(None, wall)
    for op in journal:
        replayed.apply(op)
    assert replayed.data == kv.data and replayed.expires == kv.expires
    snap = KVStore(None, wall)
    for op in kv.capture():
        snap.apply(op)
    assert snap.data == kv.data and snap.expires == kv.expires


def test_kv_sweep_expires_keys_and_journals_it() -> None:
    journal: list[list[Any]] = []
    wall = FakeWall()
    kv = KVStore(journal.append, wall)
    for i in range(5):
        kv.set(f"k{i}", i, ttl=1 + i)
    wall.t += 3.5
    assert kv.sweep() == 3 and kv.keys() == ["k3", "k4"]
    assert journal[-1][:2] == ["K", "del"]


def test_kv_wrong_types_get_clear_errors() -> None:
    kv = KVStore()
    kv.sadd("s", "a")
    kv.set("str", "x")
    with pytest.raises(KVTypeError, match="holds a set"):
        kv.incr("s")
    with pytest.raises(KVTypeError, match="holds a str, not an integer"):
        kv.incr("str")
    with pytest.raises(KVTypeError, match="smembers"):
        kv.get("s")
    with pytest.raises(KVTypeError, match="not a set"):
        kv.sadd("str", "b")
    with pytest.raises(BrokerError, match="unknown KV operation 'pop'"):
        kv.request("pop", "k", [])
    with pytest.raises(BrokerError, match="non-empty string"):
        kv.request("get", "", [])
    with pytest.raises(BrokerError, match="set members"):
        kv.sadd("s2", [1, 2])
    with pytest.raises(BrokerError, match="wrong arguments"):
        kv.request("set", "k", [])
    with pytest.raises(BrokerError, match="ttl"):
        kv.set("k", 1, ttl=-1)


def test_two_journals_without_a_snapshot_are_both_kept(tmp_path: Path) -> None:
    """The first compaction was cut short: journals 1 and 2, no snapshot. Both must survive a start."""
    _write(journal_path(tmp_path, 1), [[["K", "set", "one", 1, None]]])
    _write(journal_path(tmp_path, 2), [[["K", "set", "two", 2, None]]])
    for _ in range(2):  # a second start must still see journal 1
        got: list[list[Any]] = []
        d = DataDir(tmp_path)
        d.load(got.append)
        d.close()
        assert got == [["K", "set", "one", 1, None], ["K", "set", "two", 2, None]]


def test_a_failed_write_raises_and_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from titan_zmq.aof.log import JournalWriteError

    w = AppendLog(tmp_path / "j.aof", "always")

    def full(data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w._fh, "write", full)
    w.add(["K", "set", "a", 1, None])
    with pytest.raises(JournalWriteError, match=r"No space left on device.*free space"):
        w.commit()


def test_garbage_in_the_last_uncommitted_batch_is_a_torn_tail(tmp_path: Path) -> None:
    """A power cut can leave zeros then stale bytes inside the batch being written: nothing
    committed follows, so it is cut like any torn tail, not refused as corruption."""
    p, first = _two_batches(tmp_path)
    size = p.stat().st_size
    data = bytearray(p.read_bytes())
    data[first + 8 : first + 20] = b"\x00" * 12  # the second batch's first record, zeroed in part
    data[size - 3 :] = b"\x7f\x7f\x7f"  # and its end is stale, not zeros
    p.write_bytes(bytes(data))
    res = scan(p, None)
    assert res.damage is not None and res.damage.torn and res.damage.offset == first


def test_kv_edge_cases() -> None:
    kv = KVStore()
    kv.set("n", 2**63 - 1)
    with pytest.raises(BrokerError, match="64-bit range; nothing was changed"):
        kv.incr("n", 2**64)
    assert kv.get("n") == 2**63 - 1
    with pytest.raises(BrokerError, match="at least one member"):
        kv.sadd("s")
    kv.set("one", 1)
    assert not kv.cas("one", True, 2) and not kv.cas("one", 1.0, 2) and kv.cas("one", 1, 2)
