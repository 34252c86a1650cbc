"""The `titan` command as a user runs it: real processes, real exit codes, real output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(90)


def titan(*args: str, broker: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if broker:
        env["TITAN_BROKER"] = broker
    return subprocess.run(
        [sys.executable, "-m", "titan_zmq", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_help_everywhere() -> None:
    out = titan("--help")
    assert out.returncode == 0 and "submit" in out.stdout
    for cmd in ("broker", "worker", "up", "submit", "status", "cancel", "workers"):
        res = titan(cmd, "--help")
        assert res.returncode == 0, cmd
        assert "usage: titan" in res.stdout
    assert titan().returncode == 2
    assert titan("nonsense").returncode == 2


def test_submit_wait_exit_codes_and_json(shared_cluster: LocalCluster) -> None:
    addr = shared_cluster.address
    ok = titan("submit", "--wait", "--", "echo", "hello world", broker=addr)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello world\n"
    bad = titan("submit", "--wait", "--", "exit 3", broker=addr)
    assert bad.returncode == 1
    assert "exit code 3" in bad.stderr
    call = titan("submit", "--call", "tests.jobs:add", "--arg", "2", "--arg", "40", "--wait", broker=addr)
    assert call.returncode == 0 and call.stdout.strip() == "42"
    js = titan("submit", "--json", "--call", "tests.jobs:add", "--arg", "1", "--arg", "1", broker=addr)
    assert js.returncode == 0
    rec = json.loads(js.stdout)
    job_id = rec["id"]
    wait_for(
        lambda: json.loads(titan("status", job_id, "--json", broker=addr).stdout)["state"] == "succeeded", 20, "ok"
    )
    st = json.loads(titan("status", job_id, "--json", broker=addr).stdout)
    assert st["result"] == 2 and st["attempts"] == 1
    human = titan("status", job_id, broker=addr)
    assert "succeeded" in human.stdout and "result: 2" in human.stdout
    listing = titan("status", "--json", broker=addr)
    assert job_id in [r["id"] for r in json.loads(listing.stdout)]
    failing = titan("submit", "--wait", "--call", "tests.jobs:boom", "--arg", '"x"', broker=addr)
    assert failing.returncode == 1 and "ValueError: x" in failing.stderr


def test_script_with_args(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint('got', sys.argv[1:])\n")
    out = titan("submit", "--wait", "--script", str(script), "--", "--epochs", "3", broker=shared_cluster.address)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "got ['--epochs', '3']\n"


def test_script_args_keep_the_order_given(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "a.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    res = titan(
        "submit", "--wait", "--script", str(script), "--arg", "first", "--", "second", broker=shared_cluster.address
    )
    assert res.stdout.strip() == "['first', 'second']"


def test_log_level_may_follow_the_command(shared_cluster: LocalCluster) -> None:
    res = titan("workers", "--log-level", "ERROR", broker=shared_cluster.address)
    assert res.returncode == 0 and "local-1" in res.stdout


def test_workers_status_cancel_and_errors(shared_cluster: LocalCluster) -> None:
    addr = shared_cluster.address
    ws = json.loads(titan("workers", "--json", broker=addr).stdout)
    assert sorted(w["name"] for w in ws) == ["local-1", "local-2"]
    table = titan("workers", broker=addr).stdout
    assert "local-1" in table and "HEARTBEAT" in table
    unknown = titan("status", "no-such-job", broker=addr)
    assert unknown.returncode == 1 and "unknown job id 'no-such-job'" in unknown.stderr
    job_id = titan("submit", "--delay", "60", "--", "true", broker=addr).stdout.strip()
    cancelled = titan("cancel", job_id, broker=addr)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{job_id}: cancelled"
    nothing = titan("submit", broker=addr)
    assert nothing.returncode == 2 and "nothing to run" in nothing.stderr
    badarg = titan("submit", "--call", "nocolon", broker=addr)
    assert badarg.returncode == 1 and "must look like 'package.module:function'" in badarg.stderr


def test_no_broker_is_a_clear_error() -> None:
    res = titan("workers", "--broker", "127.0.0.1:1", timeout=60)
    assert res.returncode == 1
    assert "no answer from the broker at 127.0.0.1:1" in res.stderr


def test_up_runs_jobs_and_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        front = s.getsockname()[1]
    env = dict(os.environ, TITAN_GPU_PROBE="false", TITAN_CACHE_DIR=str(tmp_path / "cache"))
    up = subprocess.Popen(
        [sys.executable, "-m", "titan_zmq", "up", "--workers", "2", "--front", str(front), "--back", "0",
         "--events", "0", "--slots", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        addr = f"127.0.0.1:{front}"

        def two_workers() -> bool:
            res = titan("workers", "--json", broker=addr, timeout=20)
            return res.returncode == 0 and len(json.loads(res.stdout)) == 2

        wait_for(two_workers, 30, "titan up's workers", 0.2)
        tree = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
        assert len(tree) >= 2
        res = titan("submit", "--wait", "--call", "tests.jobs:add", "--arg", "1", "--arg", "2", broker=addr)
        assert res.returncode == 0 and res.stdout.strip() == "3"
        tree = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=30)
        assert up.returncode == 0, out
        assert "stopped" in out
        wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in tree),
                 10, "every process of titan up to exit")  # fmt: skip
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_python_m_and_tui_entry() -> None:
    res = subprocess.run([sys.executable, "-m", "titan_zmq", "--version"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.startswith("titan_zmq ")
    res = subprocess.run([sys.executable, "-m", "tui.app", "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "--broker" in res.stdout


def test_output_into_a_closed_pipe_is_quiet(shared_cluster: LocalCluster) -> None:
    env = dict(os.environ, TITAN_BROKER=shared_cluster.address)
    # More output than a pipe holds (the 64 KiB stdout tail), so the write must meet the closed pipe.
    job_id = titan("submit", "--", "seq 1 30000", broker=shared_cluster.address).stdout.strip()
    wait_for(
        lambda: '"succeeded"' in titan("status", job_id, "--json", broker=shared_cluster.address).stdout, 20, "job"
    )
    res = subprocess.run(
        f"{sys.executable} -m titan_zmq status {job_id} | head -1",
        shell=True, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert res.stdout.startswith("        id: ")
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr
