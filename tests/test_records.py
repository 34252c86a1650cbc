"""The journal's typed records (titan_zmq/aof/records.py): one definition each for writing and
reading, one meaning per letter, and clear errors for records that do not fit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from titan_zmq.aof import records as R
from titan_zmq.aof.journal import SNAPSHOT_VERSION, read_snapshot, write_snapshot
from titan_zmq.aof.log import COMMIT, frame
from titan_zmq.errors import AOFCorrupt

pytestmark = pytest.mark.timeout(30)

SAMPLES: list[Any] = [
    R.Commit(3), R.Header(1, 2, 3.5), R.SnapshotEnd(10),
    R.Accepted({"id": "j", "kind": "call", "target": "m:f"}, 1.5), R.Blob("ab" * 32, b"print(1)"),
    R.Progress("j", "running", 1, 7, "w1", 0, 0, 1.0, 2.0, None, 0.0, None, False, None, None, None, None,
               None, "", "", {"p": 1}, 1, 2, {"ab" * 32: {"from": "w2", "route": "direct", "bytes": 9}}),
    R.Forgotten("j"), R.LastLease(9), R.EndOrder(["a", "b"]), R.Edge("p", "c"),
    R.KvSet("k", {"v": 1}, None), R.KvDel("k"), R.KvSadd("s", [1, 2]), R.KvSrem("s", [1]), R.KvExpire("k", 5.0),
    R.KvDone("t0k3n", 7),
    R.ServiceDeployed({"name": "web"}, None), R.ServiceStopped("web"), R.ReplicaFailed("web", "web.0", "boom"),
    R.ScheduleAdded("n", "* * * * *", [], "skip", None), R.ScheduleRemoved("n"), R.ScheduleFired("n", 60.0),
    R.ObjectAdded("ab" * 32, 100, "value", None, "j", "dag:d", None, False), R.ObjectReleased("ab" * 32, "dag:d"),
]  # fmt: skip


def test_every_kind_is_written_and_read_through_one_definition() -> None:
    kinds = {type(rec) for rec in SAMPLES}
    assert kinds == set(R.KINDS.values()) | set(R.KV_VERBS.values())  # the samples cover every kind
    for rec in SAMPLES:
        op = R.encode(rec)
        assert isinstance(op, list) and isinstance(op[0], str)
        assert R.decode(op) == rec and type(R.decode(op)) is type(rec)


def test_no_letter_or_verb_means_two_things() -> None:
    letters = list(R.KINDS)
    assert len(letters) == len(set(letters)) and R.KV not in R.KINDS
    assert len(set(R.KINDS.values())) == len(R.KINDS)
    assert len(set(R.KV_VERBS.values())) == len(R.KV_VERBS)
    assert R.letter(R.Edge) != R.letter(R.SnapshotEnd)  # "E" used to mean both


def test_records_of_older_journals_get_the_later_fields_defaults() -> None:
    old = R.encode(SAMPLES[5])[:21]  # Progress before inputs, level and fb_base existed
    rec = R.decode(old)
    assert (rec.inputs, rec.level, rec.fb_base) == (None, 0, 0)
    assert R.decode(["Y", "n", "* * * * *", [], "skip"]).blobs is None


@pytest.mark.parametrize(
    ("op", "words"),
    [
        (["Q", 1], "unknown journal record kind 'Q'"),
        (["K", "zap", "k"], "unknown KV record"),
        (["F"], "has 0 field(s), which does not fit its definition (id)"),
        (["E", "p", "c", "extra"], "'E' (Edge) has 3 field(s)"),
        ([], "not an array that starts with its kind"),
        ({"A": 1}, "not an array that starts with its kind"),
    ],
)
def test_records_that_do_not_fit_are_refused_by_name(op: Any, words: str) -> None:
    with pytest.raises(AOFCorrupt, match=words.replace("(", r"\(").replace(")", r"\)")):
        R.decode(op)


def test_snapshots_end_with_their_own_letter_and_old_ones_still_load(tmp_path: Path) -> None:
    ops = [R.encode(R.Forgotten("a")), R.encode(R.LastLease(4))]
    new = tmp_path / "snapshot-00000002.tzs"
    write_snapshot(new, ops, 2)
    got: list[Any] = []
    assert read_snapshot(new, got.append) == 2 and got == ops
    # A snapshot written before SnapshotEnd had its letter ended with ["E", n].
    old = tmp_path / "snapshot-00000001.tzs"
    body = [frame(["H", SNAPSHOT_VERSION, 1, time.time()]), frame([COMMIT, 1]), *map(frame, ops),
            frame([COMMIT, 2]), frame(["E", 2]), frame([COMMIT, 1])]  # fmt: skip
    old.write_bytes(b"".join(body))
    got.clear()
    assert read_snapshot(old, got.append) == 2 and got == ops
