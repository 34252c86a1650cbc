"""Crash tests: kill -9 the broker again and again under load; nothing acknowledged is lost."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from titan_zmq.client import Dag, JobState, TitanClient
from titan_zmq.errors import TitanError
from titan_zmq.local import LocalCluster, wait_for

SINGLES = 4000
DAGS = 250  # diamonds of 4 jobs: 1,000 jobs
KILLS = 5


def _executions(path: Path) -> dict[str, list[tuple[float, float]]]:
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            token, start, end, _pid = line.split()
            runs[token].append((float(start), float(end)))
    return runs


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


class Submitter(threading.Thread):
    """Submits singles in chunks and diamond DAGs, retrying each batch (same ids) until acknowledged."""

    def __init__(self, address: str, log: Path, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.address, self.log, self.rng = address, log, rng
        self.acked: list[str] = []
        self.edges: list[tuple[str, str]] = []
        self.retries = 0
        self.acked_at_kill = 0
        self.error: BaseException | None = None

    def _batches(self, client: TitanClient) -> list[list[dict[str, Any]]]:
        batches: list[list[dict[str, Any]]] = []
        dags_per_round = DAGS // (SINGLES // 100)
        d = 0
        for r in range(SINGLES // 100):
            specs = []
            for i in range(100):
                jid = f"s{r}-{i}"
                specs.append(client.build("tests.jobs:log_run", args=[str(self.log), jid], id=jid))
            batches.append(specs)
            for _ in range(dags_per_round + (1 if r < DAGS % (SINGLES // 100) else 0)):
                dag = Dag(f"d{d}")
                d += 1
                top = dag.add("tests.jobs:log_run", args=[str(self.log), f"{dag.id}.a"], id=f"{dag.id}.a")
                mids = [dag.add("tests.jobs:log_run", args=[str(self.log), f"{dag.id}.{x}"], id=f"{dag.id}.{x}",
                                after=[top]) for x in ("b", "c")]  # fmt: skip
                end = dag.add("tests.jobs:log_run", args=[str(self.log), f"{dag.id}.d"], id=f"{dag.id}.d", after=mids)
                self.edges += [(top, m) for m in mids] + [(m, end) for m in mids]
                batches.append(dag.specs(client))
        return batches

    def run(self) -> None:
        try:
            client = TitanClient(self.address, timeout=2.0)
            for specs in self._batches(client):
                # Keep pace with the workers, so that kills land while batches are still coming.
                backlog = len(self.acked) - 400
                wait_for(lambda b=backlog: _count(self.log) >= b, 60, "the workers to catch up")
                deadline = time.monotonic() + 60
                while True:
                    try:
                        handles = client.submit_specs(specs, watch=False)
                        break
                    except TitanError:
                        self.retries += 1
                        if time.monotonic() > deadline:
                            raise
                self.acked += [h.id for h in handles]
            client.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _crash_run(
    tmp_path: Path, fsync: str, env: dict[str, str] | None = None, mid_compaction: bool = False
) -> dict[str, Any]:
    rng = random.Random(1234)
    log = tmp_path / "executions.log"
    data = tmp_path / "data"
    cluster = LocalCluster(
        workers=2, slots=2, broker_args=["--data-dir", str(data), "--fsync", fsync],
        env={"TITAN_ORPHAN_WAIT": "5", **(env or {})},
    )  # fmt: skip
    in_compaction = 0
    with cluster:
        sub = Submitter(cluster.address, log, rng)
        sub.start()
        kills: list[float] = []
        for _ in range(KILLS):
            base = _count(log)
            step = rng.randint(150, 700)
            try:
                wait_for(lambda b=base, s=step: _count(log) >= b + s, 30, "jobs to run before the next kill")
                if mid_compaction:  # a snapshot is being written: journal g+1 is open, snapshot g+1 is not done
                    wait_for(lambda: any(data.glob("*.tmp")), 30, "a compaction to be under way", 0.001)
            except TimeoutError:
                pass  # everything ran already: kill anyway, and the replay is tested all the same
            kills.append(time.time())
            sub.acked_at_kill = len(sub.acked)
            cluster.kill_broker(signal.SIGKILL)
            in_compaction += bool(list(data.glob("*.tmp")))
            cluster.start_broker()
        sub.join(180)
        assert not sub.is_alive(), "the submitter did not finish"
        assert sub.error is None, f"the submitter failed: {sub.error!r}"
        client = cluster.client(timeout=10.0)
        records = client.wait(sub.acked, timeout=180)
    assert len(sub.acked) == SINGLES + 4 * DAGS
    failed = {j: r.state.value for j, r in records.items() if r.state is not JobState.SUCCEEDED}
    assert not failed, f"{len(failed)} acknowledged job(s) did not succeed: {list(failed.items())[:5]}"
    runs = _executions(log)
    never = [j for j in sub.acked if j not in runs]
    assert not never, f"{len(never)} acknowledged job(s) never ran: {never[:5]}"
    dups = {j: r for j, r in runs.items() if len(r) > 1}
    for jid, execs in dups.items():
        # Only a job running at a kill may run twice (its worker did not come back in time).
        assert any(s <= k <= e + 1.0 for s, e in execs for k in kills), f"{jid} ran twice, not around a kill"
    for parent, child in sub.edges:
        first_end = min(e for _, e in runs[parent])
        assert all(s >= first_end - 0.001 for s, _ in runs[child]), f"{child} started before {parent} ended"
    return {
        "kills": len(kills), "duplicates": len(dups), "retried_batches": sub.retries, "jobs": len(sub.acked),
        "reran": sum(1 for r in records.values() if r.attempts > 1), "acked_before_last_kill": sub.acked_at_kill,
        "killed_mid_compaction": in_compaction,
    }  # fmt: skip


@pytest.mark.timeout(400)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_kill_9_the_broker_five_times_under_load(tmp_path: Path, fsync: str) -> None:
    # everysec writes every turn too, so a killed broker loses nothing: the OS holds the data. Only a
    # machine crash can lose what was not yet fsynced (at most about a second; see benchmarks.aof).
    stats = _crash_run(tmp_path, fsync)
    print(f"crash test ({fsync}): {stats}")
    assert stats["kills"] == KILLS


@pytest.mark.timeout(400)
def test_kill_9_in_the_middle_of_compactions(tmp_path: Path) -> None:
    # Compact whenever the journal outgrows the last snapshot (and 20 KB): snapshots are written
    # all the time, and every kill waits for one to be under way.
    stats = _crash_run(tmp_path, "always", {"TITAN_COMPACT_RATIO": "1", "TITAN_COMPACT_MIN_MB": "0.02"}, True)
    print(f"crash test (compaction): {stats}")
    assert stats["killed_mid_compaction"] >= 3
