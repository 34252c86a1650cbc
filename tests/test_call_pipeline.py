"""Short call jobs sent ahead to a call executor: each keeps its own output, clock, cancel and fate."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from titan_zmq.worker.cache import BlobCache
from titan_zmq.worker.executors import Executor

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[Executor]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    executor = Executor(BlobCache(tmp_path / "cache"), env, slots=1, pipeline=4, fork_server=False)
    try:
        yield executor
    finally:
        executor.shutdown()


def _job(n: int, target: str, *args: Any, timeout: float | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"id": f"job{n}", "kind": "call", "target": target, "args": list(args), "lease": n}
    if timeout is not None:
        job["timeout"] = timeout
    return job


def _run_until(ex: Executor, done: Callable[[dict[str, dict[str, Any]]], bool], limit: float = 30.0,
               ) -> dict[str, dict[str, Any]]:  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + limit
    while not done(out):
        assert time.monotonic() < deadline, f"outcomes so far: {out}"
        wait = ex.next_wakeup()
        ready = select.select(ex.fds(), [], [], min(0.05, wait if wait is not None else 0.05))[0]
        for fd in ready:
            ex.on_readable(fd)
        ex.poll()
        for res in ex.take_finished():
            out[res["id"]] = res
    return out


def _all(n: int) -> Callable[[dict[str, dict[str, Any]]], bool]:
    return lambda out: len(out) >= n


def test_queued_jobs_keep_their_own_output(ex: Executor) -> None:
    before = time.monotonic()
    for i in range(5):
        ex.submit(_job(i, "tests.jobs:chatty", 3, f"j{i}"))
    assert len(ex.children) == 1 and len(ex.children[0].queue) == 5  # one slot: four wait in its pipeline
    assert ex.running() == 1
    out = _run_until(ex, _all(5))
    whole = time.monotonic() - before
    for i in range(5):
        res = out[f"job{i}"]
        assert res["outcome"] == "succeeded" and res["result"] == 3
        assert res["stdout"] == f"j{i} 0\nj{i} 1\nj{i} 2\n"
        assert res["stderr"] == f"j{i} done\n"
        assert res["runtime"] >= 0
    # Each job's clock starts when it starts, not when it was queued: run one after another in one
    # slot, their runtimes add up to no more than the whole run (queue waits counted would pass it).
    assert sum(out[f"job{i}"]["runtime"] for i in range(5)) <= whole
    lines = [(line[0], line[2], line[3]) for line in ex.logs.take()]
    assert ("job3", "out", "j3 1") in lines and ("job4", "err", "j4 done") in lines


def test_descriptor_writes_are_captured(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:raw_write", "straight to fd 1\n"))
    res = _run_until(ex, _all(1))["job1"]
    assert res["outcome"] == "succeeded" and res["stdout"] == "straight to fd 1\n"


def test_a_queued_job_cancelled_never_runs(ex: Executor, tmp_path: Path) -> None:
    path = str(tmp_path / "runs.log")
    ex.submit(_job(1, "tests.jobs:log_run", path, "A", 0.3))
    ex.submit(_job(2, "tests.jobs:log_run", path, "B"))
    ex.submit(_job(3, "tests.jobs:log_run", path, "C"))
    assert ex.children[0].queue[1].id == "job2"
    assert ex.kill("job2", "cancelled")
    out = _run_until(ex, _all(3))
    assert out["job2"]["outcome"] == "cancelled"
    assert (out["job1"]["outcome"], out["job3"]["outcome"]) == ("succeeded", "succeeded")
    assert [line.split()[0] for line in Path(path).read_text().splitlines()] == ["A", "C"]


def test_a_queued_job_is_timed_from_its_own_start(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:sleep", 0.4))
    ex.submit(_job(2, "tests.jobs:sleep", 0.4, timeout=0.7))  # 0.8 s after it was sent, 0.4 s of its own
    ex.submit(_job(3, "tests.jobs:sleep", 3, timeout=0.5))
    ex.submit(_job(4, "tests.jobs:noop", 4))
    out = _run_until(ex, _all(4))
    assert out["job2"]["outcome"] == "succeeded"
    assert out["job3"]["outcome"] == "timeout"
    assert out["job4"]["outcome"] == "returned"  # queued behind the killed job: never started, handed back
    ex.submit(_job(5, "tests.jobs:noop", 5))  # a fresh executor takes the next job
    assert _run_until(ex, _all(1))["job5"]["result"] == 5


def test_a_crash_fails_its_own_job_and_hands_back_the_queue(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:crash"))
    ex.submit(_job(2, "tests.jobs:noop", 2))
    ex.submit(_job(3, "tests.jobs:noop", 3))
    out = _run_until(ex, _all(3))
    assert out["job1"]["outcome"] == "failed" and "exit code 7" in out["job1"]["error"]
    assert out["job2"]["outcome"] == out["job3"]["outcome"] == "returned"
    assert out["job2"]["lease"] == 2  # the broker requeues it under that lease, no attempt counted


def test_cancelling_the_running_job_returns_those_behind_it(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:sleep", 10))
    ex.submit(_job(2, "tests.jobs:noop", 2))
    _run_until(ex, lambda out: ex.tasks["job1"].child is not None, 5)
    assert ex.kill("job1", "cancelled")
    out = _run_until(ex, _all(2))
    assert out["job1"]["outcome"] == "cancelled"
    assert out["job2"]["outcome"] == "returned"


def test_long_jobs_are_not_queued_behind(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:sleep", 0.3))
    _run_until(ex, lambda out: time.monotonic() - ex.tasks["job1"].started > 0.1, 5)
    ex.submit(_job(2, "tests.jobs:noop", 2))
    assert "job2" in ex.waiting and len(ex.children[0].queue) == 1  # waits in the worker, can go back
    out = _run_until(ex, _all(2))
    assert out["job2"]["outcome"] == "succeeded"


def test_jobs_queued_behind_a_long_one_go_back_after_prefetch_wait(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ex = Executor(BlobCache(tmp_path / "cache"), env, slots=1, pipeline=4, fork_server=False, prefetch_wait=0.3)
    gate = tmp_path / "gate"
    try:
        ex.submit(_job(1, "tests.jobs:wait_for_file", str(gate)))  # runs until the test opens the gate
        ex.submit(_job(2, "tests.jobs:noop", 2))  # queued at once: the first has only just started
        ex.submit(_job(3, "tests.jobs:noop", 3))
        assert len(ex.children[0].queue) == 3
        out = _run_until(ex, _all(2), 20)
        # Both went back while the long job still ran: it cannot end before the gate opens.
        assert out.keys() == {"job2", "job3"}
        assert out["job2"]["outcome"] == out["job3"]["outcome"] == "returned"
        assert ex.children[0].task is not None and ex.children[0].task.id == "job1"
        gate.touch()
        out = _run_until(ex, lambda out: "job1" in out, 20)
        assert out["job1"]["outcome"] == "succeeded" and out["job1"]["result"] is True
    finally:
        ex.shutdown()


def test_a_skip_that_comes_too_late_leaves_the_job_alone(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:noop", 1))
    ex.submit(_job(2, "tests.jobs:noop", 2))
    out = _run_until(ex, _all(2))
    child = ex.children[0]
    child.skip("job2")  # already ran: the executor ignores it and says nothing
    ex.submit(_job(3, "tests.jobs:noop", 3))
    out = _run_until(ex, _all(1))
    assert out["job3"]["outcome"] == "succeeded" and ex.children == [child]


def test_a_full_pipe_does_not_block_the_worker(ex: Executor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # The first job holds the call executor until the gate opens: meanwhile it reads no job pipe.
    ex.submit(_job(1, "tests.jobs:wait_for_file", str(gate)))
    big = "x" * (300 * 1024)  # far over a pipe's 64 KiB: written in pieces as the executor reads
    ex.submit(_job(2, "tests.jobs:noop", big))
    ex.submit(_job(3, "tests.jobs:noop", 3))
    # Both submissions returned with the gate still shut: neither waited for the pipe to drain
    # (had one blocked, it would have waited for the first job, and that one for the gate).
    gate.touch()
    out = _run_until(ex, _all(3))
    assert out["job1"]["outcome"] == "succeeded" and out["job1"]["result"] is True  # the gate, not its limit
    assert out["job2"]["outcome"] == "succeeded" and out["job2"]["result"] == big
    assert out["job3"]["result"] == 3


def test_split_frames_takes_whole_frames_and_leaves_a_partial_one() -> None:
    import struct

    import msgpack

    from titan_zmq.worker.child import split_frames

    frames = [msgpack.packb({"id": f"j{i}", "args": [i] * i}) for i in range(5)]
    data = bytearray(b"".join(struct.pack("!I", len(f)) + f for f in frames))
    cut = len(data) - 3  # the last frame arrives in two reads
    msgs, used = split_frames(bytearray(data[:cut]))
    assert [m["id"] for m in msgs] == ["j0", "j1", "j2", "j3"] and used == cut - (len(frames[4]) + 4 - 3)
    rest = bytearray(data[used:])
    assert split_frames(rest) == ([{"id": "j4", "args": [4, 4, 4, 4]}], len(rest))
    assert split_frames(bytearray(b"\x00\x00")) == ([], 0)


def test_a_batch_goes_as_one_frame_and_runs_in_order(ex: Executor, tmp_path: Path) -> None:
    log = tmp_path / "order"
    ex.submit(_job(1, "tests.jobs:sleep", 0.2))  # holds the slot: the rest queue behind it
    for i in range(2, 6):  # the fixture's pipeline takes four behind the running one
        ex.submit(_job(i, "tests.jobs:append_line", str(log), f"job{i}"), fill=False)
    ex.fill()  # one write of one frame for the four
    (child,) = ex.children
    assert [t.id for t in child.queue] == [f"job{i}" for i in range(1, 6)] and not child.batch
    out = _run_until(ex, _all(5))
    assert all(r["outcome"] == "succeeded" for r in out.values())
    assert log.read_text().split() == [f"job{i}" for i in range(2, 6)]


def test_jobs_never_written_to_a_dead_executor_go_back_unstarted(ex: Executor) -> None:
    ex.submit(_job(1, "tests.jobs:sleep", 5))
    out = _run_until(ex, lambda _: bool(ex.children) and ex.children[0].task is not None, 10)
    (child,) = ex.children
    child.popen.kill()
    child.popen.wait(5)
    for i in range(2, 4):
        ex.submit(_job(i, "tests.jobs:noop", i), fill=False)
    ex.fill()
    out = _run_until(ex, _all(3))
    assert out["job1"]["outcome"] == "failed"  # its process died under it
    assert {out[j]["outcome"] for j in ("job2", "job3")} <= {"returned", "succeeded"}
