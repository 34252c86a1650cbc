"""The fork server: script jobs forked from a warm interpreter behave as if started fresh."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from titan_zmq.client import JobFailed, JobState
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.worker.forkserver import ForkedProcess, ForkServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def server() -> Iterator[ForkServer]:
    fs = ForkServer(dict(os.environ))
    try:
        yield fs
    finally:
        fs.close()


def _script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _run(fs: ForkServer, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
         memory_mb: int | None = None) -> tuple[int, str, str]:  # fmt: skip
    proc = fs.spawn([sys.executable, *argv], env or dict(os.environ), cwd, memory_mb)
    out, err = proc.stdout.read(), proc.stderr.read()
    return proc.wait(timeout=10), out.decode(), err.decode()


def test_a_forked_script_sees_what_a_fresh_interpreter_would(server: ForkServer, tmp_path: Path) -> None:
    path = _script(tmp_path, """
        import atexit, os, sys, threading, time
        import helper  # next to the script: sys.path[0] is the script's folder
        atexit.register(lambda: print("atexit ran"))
        def later():
            time.sleep(0.05)
            print("thread done", flush=True)
        threading.Thread(target=later).start()  # not a daemon: the exit waits for it
        print(__name__, sys.argv, os.environ["ONLY_HERE"], os.getcwd(), helper.X)
        print("to stderr", file=sys.stderr)
        print("session leader", os.getsid(0) == os.getpid())
        print("stdin", repr(sys.stdin.read()))
    """)
    (tmp_path / "helper.py").write_text("X = 42\n")
    env = {**os.environ, "ONLY_HERE": "yes"}
    code, out, err = _run(server, [path, "a", "b c"], env=env, cwd=str(tmp_path.parent))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"__main__ {[path, 'a', 'b c']} yes {tmp_path.parent} 42"
    assert lines[1:] == ["session leader True", "stdin ''", "thread done", "atexit ran"]
    assert err == "to stderr\n"
    assert "ONLY_HERE" not in os.environ  # the job's environment is its own


def test_exit_statuses_and_tracebacks(server: ForkServer, tmp_path: Path) -> None:
    raising = _script(tmp_path, "def f():\n    raise ValueError('boom')\nf()\n", "raising.py")
    code, _, err = _run(server, [raising])
    assert code == 1
    assert err.startswith("Traceback (most recent call last):\n")
    assert "runpy" not in err and "forkserver" not in err  # only the script's frames, as python prints them
    assert 'raising.py", line 3' in err and err.rstrip().endswith("ValueError: boom")
    code, _, _ = _run(server, [_script(tmp_path, "import sys; sys.exit(7)", "seven.py")])
    assert code == 7
    code, _, err = _run(server, [_script(tmp_path, "import sys; sys.exit('bad input')", "msg.py")])
    assert (code, err) == (1, "bad input\n")
    code, _, _ = _run(server, [_script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "k.py")])
    assert code == -signal.SIGKILL


def test_memory_limit_applies_in_the_child(server: ForkServer, tmp_path: Path) -> None:
    path = _script(tmp_path, "x = bytearray(400 * 1024 * 1024)\nprint('allocated')\n")
    code, out, err = _run(server, [path], memory_mb=200)
    assert code == 1 and "MemoryError" in err and out == ""
    code, out, _ = _run(server, [path])
    assert (code, out) == (0, "allocated\n")


def test_environment_read_at_interpreter_start_is_not_forked(server: ForkServer) -> None:
    env = dict(os.environ)
    assert server.fits(env)
    assert server.fits({**env, "ANYTHING": "else"})
    assert not server.fits({**env, "PYTHONPATH": "/elsewhere"})
    assert not server.fits({**env, "PYTHONHASHSEED": "1"})
    assert not server.fits({**env, "LD_PRELOAD": "/lib/x.so"})


def test_a_dead_server_kills_its_children_and_restarts(server: ForkServer, tmp_path: Path) -> None:
    path = _script(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    proc = server.spawn([sys.executable, path], dict(os.environ), None, None)
    assert proc.stdout.readline() == b"up\n"
    assert server.popen is not None
    first = server.popen.pid
    os.kill(first, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # Its status is read from the server's report; the kernel may still be tearing it down (a busy machine).
    wait_for(lambda: _gone(proc.pid), 10, "the child of the dead fork server to be gone")
    code, out, _ = _run(server, [_script(tmp_path, "print('again')", "again.py")])
    assert (code, out) == (0, "again\n")
    assert server.popen is not None and server.popen.pid != first


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie not reaped yet (it may be reaped between two looks)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_poll_and_wait_timeout(server: ForkServer, tmp_path: Path) -> None:
    path = _script(tmp_path, "import time; time.sleep(0.3)")
    proc = server.spawn([sys.executable, path], dict(os.environ), None, None)
    assert isinstance(proc, ForkedProcess) and proc.poll() is None
    with pytest.raises(Exception, match="timed out"):
        proc.wait(timeout=0.01)
    assert proc.wait(timeout=10) == 0


# ---- through a cluster ----------------------------------------------------------------------------


def _parent_script(tmp_path: Path) -> str:
    return _script(tmp_path, "import os\nprint(os.getppid())\n", "parent.py")


def _parent_of(client, path: str, **kw) -> int:  # type: ignore[no-untyped-def]
    h = client.submit(script=path, **kw)
    h.result(timeout=30)
    return int(client.status(h.id).stdout.strip())


def test_script_jobs_are_forked_unless_their_environment_or_the_worker_says_no(tmp_path: Path) -> None:
    path = _parent_script(tmp_path)
    with LocalCluster(workers=1, slots=2) as cluster:
        client = cluster.client()
        worker = cluster.workers[0].pid
        forked = _parent_of(client, path)
        assert forked != worker and psutil.Process(forked).ppid() == worker  # the fork server, the worker's child
        assert _parent_of(client, path, env={"PYTHONPATH": str(tmp_path)}) == worker  # spawned fresh
    with LocalCluster(workers=1, slots=1, env={"TITAN_FORK_SERVER": "0"}) as cluster:
        client = cluster.client()
        assert _parent_of(client, path) == cluster.workers[0].pid


def test_forked_jobs_time_out_and_cancel_with_their_whole_tree(tmp_path: Path) -> None:
    path = _script(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    with LocalCluster(workers=1, slots=2) as cluster:
        client = cluster.client()
        h = client.submit(script=path, timeout=1.5)
        with pytest.raises(JobFailed):
            h.result(timeout=30)
        rec = client.status(h.id)
        assert rec.state is JobState.DEAD or rec.state is JobState.FAILED
        assert "timed out" in (rec.error or "")
        grandchild = int(rec.stdout.split()[0])
        deadline = time.monotonic() + 10
        while not _gone(grandchild):
            assert time.monotonic() < deadline, "the job's own child outlived its timeout"
            time.sleep(0.05)
        h = client.submit(script=path)
        deadline = time.monotonic() + 20
        while client.status(h.id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.cancel(h.id)
        deadline = time.monotonic() + 20
        while client.status(h.id).state is not JobState.CANCELLED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
