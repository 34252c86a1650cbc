"""Broker groups with real processes: replication, failover under SIGKILL, restarts, catch-up."""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GROUP_PORTS
from tests.ha_check import Load, verdict
from titan_zmq.aof.journal import generations, journal_path
from titan_zmq.client.client import TitanClient
from titan_zmq.ha.local import LocalGroup
from titan_zmq.local import wait_for
from titan_zmq.process import stop_processes

pytestmark = pytest.mark.timeout(240)

Group = functools.partial(LocalGroup, ports=GROUP_PORTS)  # this test process's slice of the ports


def _workers(peers: str, tmp: Path, n: int = 2) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        log = open(tmp / f"worker{i}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "titan_zmq", "--log-level", "INFO", "worker", "--broker", peers, "--slots", "2",
             "--name", f"w{i}", "--cache-dir", str(tmp / f"cache{i}")],
            stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    return procs


@pytest.fixture
def group(tmp_path: Path) -> Iterator[LocalGroup]:
    with Group(tmp_path) as g:
        yield g


def _same_journals(g: LocalGroup, members: list[int]) -> bool:
    """Whether these members hold byte for byte the same journal files."""
    first = g.dirs[members[0]]
    _, gens = generations(first)
    for i in members[1:]:
        if generations(g.dirs[i])[1] != gens:
            return False
        for gen in gens:
            if journal_path(first, gen).read_bytes() != journal_path(g.dirs[i], gen).read_bytes():
                return False
    return True


def test_one_leads_the_others_copy_its_journal(group: LocalGroup, tmp_path: Path) -> None:
    g = group
    leader = g.leader()
    workers = _workers(g.peers, tmp_path, 1)
    try:
        with TitanClient(g.names[(leader + 1) % 3], timeout=15) as c:  # a follower's address: it points the way
            hs = [c.submit("tests.jobs:add", args=(i, 1)) for i in range(20)]
            assert [h.result(timeout=60) for h in hs] == [i + 1 for i in range(20)]
            c.kv["greeting"] = "hello"
            info = c.hello()["group"]
        assert info["role"] == "leader" and info["name"] == g.names[leader]
        assert sorted(info["members"]) == sorted(g.names)
        wait_for(lambda: _same_journals(g, [0, 1, 2]), 20, "the followers' journals to equal the leader's")
        for i in range(3):
            gi = g.info(i)
            assert gi is not None and gi["epoch"] == info["epoch"] and gi["leader"] == g.names[leader]
        # titan cluster status: every member's role, epoch, position and lag
        out = subprocess.run(
            [sys.executable, "-m", "titan_zmq", "cluster", "status", "--broker", g.names[0], "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["members"]
        assert {r["name"]: r["role"] for r in rows} == {
            n: ("leader" if i == leader else "follower") for i, n in enumerate(g.names)
        }
        assert all(r["lag"] == 0 for r in rows if r["role"] == "follower")
        table = subprocess.run(
            [sys.executable, "-m", "titan_zmq", "cluster", "status", "--broker", g.peers],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert table.returncode == 0 and "leader" in table.stdout and "follower" in table.stdout, table.stdout
    finally:
        stop_processes(workers)


def test_leader_killed_ten_times_under_load_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the leader ten times while a client submits jobs and writes KV keys; restart each killed
    member. Every acknowledged job ends succeeded, every acknowledged KV write is there, no job runs
    twice at once."""
    runs = tmp_path / "runs.log"
    with Group(tmp_path) as g:
        workers = _workers(g.peers, tmp_path, 2)
        load = Load(g.peers, runs).start()
        failovers = []
        try:
            leader = g.leader()
            for _ in range(10):
                wait_for(load.grew(5), 60, "the load to go on")
                others = [i for i in range(3) if i != leader]
                t0 = time.monotonic()
                g.kill(leader, signal.SIGKILL)
                new = g.leader(60, among=others)
                failovers.append(time.monotonic() - t0)
                g.start(leader)
                wait_for(functools.partial(g.follows, leader), 60, "the killed member to follow again")
                leader = new
            wait_for(load.grew(5), 60, "the load to go on after the last kill")
        finally:
            load.stop()
        try:
            result = verdict(g.peers, load)
        finally:
            stop_processes(workers)
    print("failover seconds:", [round(f, 2) for f in failovers], "verdict:", result)
    assert result["jobs_acknowledged"] >= 50 and result["kv_acknowledged"] >= 50
    assert result["jobs_lost"] == 0, result
    assert result["kv_lost"] == 0, result
    assert result["ran_twice_at_once"] == 0, result


def test_whole_group_restarts_at_once(tmp_path: Path) -> None:
    with Group(tmp_path) as g:
        g.leader()
        with TitanClient(g.peers, timeout=15) as c:
            ids = [h.id for h in (c.submit("tests.jobs:add", args=(i, i), delay=3600) for i in range(30))]
            for i in range(30):
                c.kv[f"k{i}"] = i
        for i in range(3):
            g.kill(i, signal.SIGKILL)
        for i in range(3):
            g.start(i)
        g.leader(60)
        with TitanClient(g.peers, timeout=15) as c:
            assert all(c.status(j).state.value == "queued" or c.status(j).state.value == "pending" for j in ids) \
                or all(c.status(j) for j in ids)
            assert [c.kv[f"k{i}"] for i in range(30)] == list(range(30))
            states = {c.status(j).state.value for j in ids}
        assert states <= {"queued", "pending", "retrying"}, states


def test_new_empty_member_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    """A member replaced by an empty one copies the leader's snapshot, then the stream; compaction
    in a group writes the snapshot on the leader and ships it whole."""
    with Group(tmp_path, args=("--config", str(_compact_often(tmp_path)))) as g:
        leader = g.leader()
        with TitanClient(g.peers, timeout=15) as c:
            for i in range(400):
                c.kv[f"k{i}"] = "x" * 2000
        wait_for(lambda: any(generations(g.dirs[leader])[0]), 60, "a compaction on the leader")
        victim = (leader + 1) % 3
        g.kill(victim, signal.SIGKILL)
        for p in list(g.dirs[victim].iterdir()):
            p.unlink()
        g.start(victim)
        snaps = generations(g.dirs[leader])[0]
        wait_for(lambda: generations(g.dirs[victim])[0][-1:] == snaps[-1:], 60, "the snapshot on the new member")
        with TitanClient(g.peers, timeout=15) as c:
            c.kv["after"] = 1
        wait_for(lambda: _same_journals(g, [leader, victim]), 30, "the new member to follow the stream")
        # and it can lead: kill the others' leader; the new member and the third one go on with everything
        g.kill(leader, signal.SIGKILL)
        g.leader(60, among=[i for i in range(3) if i != leader])
        with TitanClient(g.peers, timeout=15) as c:
            assert c.kv["after"] == 1 and c.kv["k399"] == "x" * 2000


def _compact_often(tmp: Path) -> Path:
    cfg = tmp / "broker.yaml"
    cfg.write_text("compact_min_mb: 0.2\ncompact_ratio: 1.0\n")
    return cfg


def test_group_member_refuses_bad_settings(tmp_path: Path) -> None:
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-m", "titan_zmq", "broker", "--peers", "127.0.0.1:5555,127.0.0.1:6555", "--front", "5555"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2 and "odd number" in out.stderr, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "titan_zmq", "broker", "--peers", "127.0.0.1:5555,127.0.0.1:6555,127.0.0.1:7555",
         "--front", "5555"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2 and "--data-dir" in out.stderr, out.stderr


def _mount_tmpfs(path: Path, mb: int) -> None:
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"a small disk for the follower needs `mount -t tmpfs` (root): {res.stderr.strip()}")


def test_a_follower_whose_disk_fills_up_falls_behind_then_catches_up(tmp_path: Path) -> None:
    small = tmp_path / "small"
    _mount_tmpfs(small, 8)
    try:
        with Group(tmp_path, dirs=[tmp_path / "m0", tmp_path / "m1", small / "m2"]) as g:
            leader = g.leader()
            if leader == 2:  # the small disk must be a follower's
                g.kill(2)
                leader = g.leader(60, among=[0, 1])
                g.start(2)
            wait_for(lambda: (g.info(2) or {}).get("following"), 60, "member 2 to follow")
            st = os.statvfs(small)
            filler = small / "filler"
            filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 256 * 1024))
            with TitanClient(g.peers, timeout=15) as c:
                for i in range(200):  # ~1 MB of journal: past what is left on member 2's disk
                    c.kv[f"big{i}"] = "y" * 5000
                wait_for(lambda: "No space left" in str((g.info(2) or {}).get("error")), 30,
                         "member 2 to report its full disk")  # fmt: skip
                c.kv["while-full"] = 1  # still acknowledged: the leader and the other follower are a majority
                out = subprocess.run([sys.executable, "-m", "titan_zmq", "cluster", "status", "--broker", g.peers],
                                     capture_output=True, text=True, timeout=60)  # fmt: skip
                assert "No space left" in out.stdout, out.stdout
                filler.unlink()
                wait_for(lambda: _same_journals(g, [leader, 2]), 60, "member 2 to catch up once space is free")
                assert not (g.info(2) or {}).get("error")
                assert c.kv["while-full"] == 1 and c.kv["big199"] == "y" * 5000
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


def test_a_waiting_result_and_titan_run_go_on_across_a_failover(group: LocalGroup, tmp_path: Path) -> None:
    """A client blocked in result() on a running job, and `titan run` following a pipeline, both given the
    members' addresses, see the leader killed under them and finish as if nothing happened."""
    g = group
    leader = g.leader()
    workers = _workers(g.peers, tmp_path, 2)
    steps = "".join(f"  - id: step{i}\n    call: tests.jobs:sleep\n    args: [0.5]\n"
                    + (f"    after: [step{i - 1}]\n" if i else "") for i in range(6))  # fmt: skip
    pipeline = tmp_path / "steps.yaml"
    pipeline.write_text(f"name: steps\njobs:\n{steps}")
    try:
        run = subprocess.Popen([sys.executable, "-m", "titan_zmq", "run", str(pipeline), "--broker", g.peers, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        with TitanClient(g.peers, timeout=15) as c:
            h = c.submit("tests.jobs:sleep", args=(2.5,))
            wait_for(lambda: c.status(h.id).state.value == "running", 60, "the long job to run")
            g.kill(leader, signal.SIGKILL)
            assert h.result(timeout=120) == 2.5
            assert c.status(h.id).attempts == 1  # it kept running on its worker: no second attempt
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        report = json.loads(out)
        assert report["ok"] and len(report["jobs"]) == 6, out[-2000:]
    finally:
        stop_processes(workers)


def test_a_leader_whose_disk_fills_up_hands_over(tmp_path: Path) -> None:
    """The leader cannot write its journal: its broker stops (nothing more is acknowledged), it cannot lead
    again, so it leaves the election, and a member with a disk that works leads with everything."""
    small = tmp_path / "small"
    _mount_tmpfs(small, 8)
    try:
        with Group(tmp_path, dirs=[small / "m0", tmp_path / "m1", tmp_path / "m2"]) as g:
            leader = g.leader()
            while leader != 0:  # the small disk must be the leader's
                g.kill(leader)
                others = [i for i in range(3) if i != leader]
                g.start(leader)
                wait_for(functools.partial(g.follows, leader), 60, "the killed member to follow again")
                leader = g.leader(60, among=others)
            with TitanClient(g.peers, timeout=60) as c:
                c.kv["before"] = 1
                st = os.statvfs(small)
                (small / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))
                for i in range(100):  # each acknowledged write is on a majority, whoever leads
                    c.kv[f"k{i}"] = "z" * 2000
                new = g.leader(60)
                assert new != 0
                assert c.kv["before"] == 1 and [c.kv[f"k{i}"] for i in range(100)] == ["z" * 2000] * 100
            assert "No space left" in g.text(0)  # it did hit the full disk (as leader, or as a follower by then)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


def test_a_kv_incr_resent_to_the_new_leader_is_not_applied_twice(group: LocalGroup) -> None:
    """The reply to an incr can be lost with the leader that applied it; the client sends it again, with
    the same token, to the next leader, which answers what the first one did."""
    from titan_zmq import protocol as P

    g = group
    leader = g.leader()
    with TitanClient(g.peers, timeout=15) as c:
        assert c.request(P.Kv, op="incr", key="n", args=[3], token="resent-token") == 3
        g.kill(leader)
        assert c.request(P.Kv, op="incr", key="n", args=[3], token="resent-token") == 3
        assert c.kv["n"] == 3
        assert c.kv.incr("n") == 4  # a new call: a new token


def test_logs_follow_moves_to_the_new_leader(group: LocalGroup, tmp_path: Path) -> None:
    """`titan logs -f` across a failover: it follows the new leader's feed from its first line (job logs are
    not replicated, and the new leader numbers the lines it receives from 1) and exits 0 when the job ends."""
    g = group
    leader = g.leader()
    workers = _workers(g.peers, tmp_path, 1)
    try:
        with TitanClient(g.peers, timeout=15) as c:
            h = c.submit(shell="for i in $(seq 1 40); do echo line $i; sleep 0.2; done")
            follow = subprocess.Popen([sys.executable, "-m", "titan_zmq", "logs", h.id, "-f", "--broker", g.peers],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            assert follow.stdout is not None
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(follow.stdout or []), daemon=True)
            reader.start()
            wait_for(lambda: len(lines) >= 3, 60, "the follower to print the first lines")
            g.kill(leader)
            assert h.wait(timeout=120).state.value == "succeeded"
            follow.wait(120)
            reader.join(30)
            kept = [line.text for line in c.logs(h.id)]  # what the new leader received
        assert follow.returncode == 0, (follow.stderr.read() if follow.stderr else "")[-2000:]
        out = [x.rstrip("\n") for x in lines]
        nums = [int(w.split()[-1]) for w in out if w.split()[-2:-1] == ["line"]]
        gaps = [(a, b) for a, b in itertools.pairwise(nums) if b != a + 1]
        # Lines the worker sent while no leader was there are gone with the old one: one gap at most,
        # then every line the new leader received, to the last, none twice.
        assert nums and nums[-1] == 40 and len(gaps) <= 1 and len(set(nums)) == len(nums), out[-40:]
        assert kept and all(text in out for text in kept), (kept, out[-40:])
    finally:
        stop_processes(workers)
