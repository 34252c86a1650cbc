"""Multi-host tests: the broker and two workers, each in its own network namespace.

Topology (created per test, always deleted at teardown)::

    root namespace (pytest, the client)          10.231.N.254 ─┐
    broker namespace: bridge br0                 10.231.N.1    ├─ br0 (in the broker's namespace)
    hostA namespace: eth0                        10.231.N.2   ─┤
    hostB namespace: eth0                        10.231.N.3   ─┘

The two hosts and the root namespace each join the bridge with a veth pair; N is a /24 of
10.231.0.0/16 that the root namespace does not use yet. Workers reach the broker at
10.231.N.1:5555; the client (this process) too. A worker's link is cut with ``ip link set ...
down`` at either end of its veth pair: nothing is refused, its TCP connection just goes silent.

The module is skipped, with the reason, where namespaces cannot be made (not root, no
CAP_NET_ADMIN, no ``ip``, no veth or bridge support).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, HEARTBEAT_WINDOW
from tests.test_crash import _executions
from titan_zmq.client import Dag, JobState, TitanClient
from titan_zmq.errors import TitanError
from titan_zmq.local import wait_for
from titan_zmq.process import die_with_parent

pytestmark = pytest.mark.timeout(90)

PREFIX = "tznet"  # namespace names: tznet-<pytest pid>-<random>-<role>
HOSTS = ("hostA", "hostB")
FRONT, BACK, EVENTS = 5555, 5556, 5557  # a fresh namespace has every port free
# Heartbeats as in the rest of the suite (tests/conftest.py): a worker or broker silent for HEARTBEAT_WINDOW
# seconds is given up, wide enough for a busy machine; a cut link is noticed by that silence alone.
ORPHAN_WAIT = 2 * HEARTBEAT_WINDOW  # after a broker restart, jobs that were running wait this long for their worker


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _why_no_netns() -> str | None:
    """None if this machine lets us build the topology; else why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` could not run: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed (needs root or CAP_NET_ADMIN): {made.stderr.strip()}"
    try:
        for args in (("link", "add", "br0", "type", "bridge"), ("link", "add", "v0", "type", "veth", "peer", "v1")):
            res = _ip("-n", probe, *args, check=False)
            if res.returncode != 0:
                return f"`ip link add ... type {args[4]}` failed in a namespace: {res.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _sweep_stale() -> None:
    """Delete namespaces left by an earlier run of this module whose pytest process is gone (killed)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not _alive(int(parts[1])):
            _ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet(first: int = 1, last: int = 127) -> int:
    """A third octet N in first..last such that the root namespace has no address or route in 10.231.N.0/24.
    Each test module has its own range (tests/test_ha_netns.py: 128-254): two modules may run at once."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout + _ip("-4", "route", "show", "table", "all",
                                                                        check=False).stdout  # fmt: skip
    taken = {int(tok.split(".")[2]) for tok in used.replace("/", " ").split() if tok.startswith("10.231.")
             and tok.count(".") == 3 and tok.split(".")[2].isdigit()}  # fmt: skip
    free = [n for n in range(first, last + 1) if n not in taken]
    return random.choice(free)


@pytest.fixture(scope="module")
def netns_ok() -> None:
    why = _why_no_netns()
    if why is not None:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    _sweep_stale()


class Grid:
    """Three namespaces on one bridge, a broker in one and a worker per host in the others."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tag = secrets.token_hex(3)
        self.ns = {role: f"{PREFIX}-{os.getpid()}-{tag}-{role}" for role in ("broker", *HOSTS)}
        self.root_if = f"tzr{tag}"  # the root namespace's end of its veth pair (15 characters at most)
        self.net = f"10.231.{_free_subnet()}"
        self.ip = {"broker": f"{self.net}.1", "hostA": f"{self.net}.2", "hostB": f"{self.net}.3"}
        self.address = f"{self.ip['broker']}:{FRONT}"
        self.data = tmp / "data"
        # Only the settings named here: none inherited from this process's TITAN_* variables.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
        self.env.update({"TITAN_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
                         "TITAN_HEARTBEAT_LIVENESS": str(HEARTBEAT_LIVENESS), "TITAN_ORPHAN_WAIT": str(ORPHAN_WAIT),
                         "TITAN_GPU_PROBE": "false", "TITAN_LOG_LEVEL": "INFO"})  # fmt: skip
        self.broker: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[TitanClient] = []
        self.made: list[str] = []

    # ---- network -------------------------------------------------------------------------

    def build(self) -> None:
        b = self.ns["broker"]
        for ns in self.ns.values():
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", b, "link", "add", "br0", "type", "bridge")
        _ip("-n", b, "addr", "add", f"{self.ip['broker']}/24", "dev", "br0")
        _ip("-n", b, "link", "set", "br0", "up")
        for host in HOSTS:
            port = f"p{host[-1]}"
            _ip("-n", b, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns[host])
            _ip("-n", b, "link", "set", port, "master", "br0", "up")
            _ip("-n", self.ns[host], "addr", "add", f"{self.ip[host]}/24", "dev", "eth0")
            _ip("-n", self.ns[host], "link", "set", "eth0", "up")
        # The root namespace (this process, the client) joins the bridge too. Its end goes away
        # with the broker's namespace, whatever happens to this process.
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", "pR", "netns", b)
        _ip("-n", b, "link", "set", "pR", "master", "br0", "up")
        _ip("addr", "add", f"{self.net}.254/24", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")

    def _link(self, host: str, end: str) -> tuple[str, str]:
        """(namespace, interface) of ``host``'s cable at its ``end``: "host" (its eth0) or "bridge" (its port)."""
        return (self.ns[host], "eth0") if end == "host" else (self.ns["broker"], f"p{host[-1]}")

    def cut(self, host: str, end: str = "host") -> None:
        """Unplug ``host``'s cable, at the host or at the bridge."""
        ns, dev = self._link(host, end)
        _ip("-n", ns, "link", "set", dev, "down")

    def plug(self, host: str, end: str = "host") -> None:
        ns, dev = self._link(host, end)
        _ip("-n", ns, "link", "set", dev, "up")

    # ---- processes -----------------------------------------------------------------------

    def _spawn(self, role: str, args: list[str], logname: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / logname, "ab")  # noqa: SIM115 - the child owns it
        try:
            # `ip netns exec` execs the command: the Popen's pid is titan's own process.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[role], sys.executable, "-m", "titan_zmq", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def start_broker(self) -> float:
        """Start the broker on its journal; returns the seconds until it listened."""
        t0 = time.monotonic()
        ready = self.tmp / "broker.ready"
        ready.unlink(missing_ok=True)
        args = ["broker", "--host", self.ip["broker"], "--front", str(FRONT), "--back", str(BACK),
                "--events", str(EVENTS), "--data-dir", str(self.data), "--ready-file", str(ready)]  # fmt: skip
        proc = self.broker = self._spawn("broker", args, "broker.log")

        def bound() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the broker exited with {proc.returncode}:\n{self.tail('broker.log')}")
            return ready.exists() and ready.stat().st_size > 0

        wait_for(bound, 30, "the broker to listen")
        return time.monotonic() - t0

    def kill_broker(self) -> None:
        assert self.broker is not None
        self.broker.send_signal(signal.SIGKILL)
        self.broker.wait(10)

    def start_worker(self, host: str, slots: int = 2) -> subprocess.Popen[bytes]:
        args = ["worker", "--broker", self.address, "--name", host, "--tags", host, "--slots", str(slots),
                "--cache-dir", str(self.tmp / f"cache-{host}")]  # fmt: skip
        self.workers[host] = proc = self._spawn(host, args, f"worker-{host}.log")
        return proc

    def client(self) -> TitanClient:
        c = TitanClient(self.address, timeout=5.0)
        self.clients.append(c)
        return c

    def tail(self, logname: str, n: int = 3000) -> str:
        path = self.tmp / logname
        return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"

    def close(self) -> None:
        for c in self.clients:
            c.close()
        teardown(self.made, self.procs)


def teardown(namespaces: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill every process in ``namespaces`` (all ours: titan's processes, their executors and jobs) and
    the ones started here, then delete the namespaces."""
    for ns in namespaces:
        for _ in range(5):
            pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for ns in reversed(namespaces):
        _ip("netns", "del", ns, check=False)


@pytest.fixture
def grid(netns_ok: None, tmp_path: Path) -> Iterator[Grid]:
    """The three namespaces with a broker on its journal; tests start the workers they need."""
    g = Grid(tmp_path)
    try:
        g.build()
        g.start_broker()
        yield g
    finally:
        for name in ("broker.log", *(f"worker-{h}.log" for h in HOSTS)):
            print(f"---- {name} ----\n{g.tail(name)}")  # shown when the test failed
        g.close()


# ---- helpers ---------------------------------------------------------------------------------


def _names(client: TitanClient) -> set[str] | None:
    try:
        return {w["name"] for w in client.workers()}
    except TitanError:
        return None


def _wait_workers(client: TitanClient, want: set[str], timeout: float = 20) -> float:
    """Wait until the broker lists exactly ``want``; the seconds it took."""
    t0 = time.monotonic()
    wait_for(lambda: _names(client) == want, timeout, f"the broker to list workers {sorted(want)}", 0.05)
    return time.monotonic() - t0


# ---- tests -----------------------------------------------------------------------------------


def test_a_dag_runs_across_hosts(grid: Grid) -> None:
    for host in HOSTS:
        grid.start_worker(host)
    client = grid.client()
    _wait_workers(client, set(HOSTS))
    texts = ["a b a", "b c", "c c a", "d", "a d b", "e"]
    dag = Dag("across")
    maps = [dag.add("tests.jobs:count_words", args=[t], id=f"across.map{i}", requires=[HOSTS[i % 2]])
            for i, t in enumerate(texts)]  # fmt: skip
    total = dag.add("tests.jobs:add_counts", after=maps, id="across.total", requires=["hostB"])
    last = dag.add("tests.jobs:whoami", after=[total], id="across.last", requires=["hostA"])
    run = client.submit_dag(dag)
    records = run.wait(30)
    assert {j: r.state for j, r in records.items() if not r.ok} == {}
    # Map results crossed from both hosts to hostB, and its result went on to hostA.
    assert records[total].result == {"a": 4, "b": 3, "c": 3, "d": 2, "e": 1}
    assert {j: records[j].worker for j in maps} == {j: HOSTS[i % 2] for i, j in enumerate(maps)}
    assert records[total].worker == "hostB"
    assert records[last].worker == "hostA" and records[last].result["worker"] == "hostA"
    assert (records[total].started_at or 0.0) >= max(records[m].finished_at or 0.0 for m in maps) - 0.001
    # Where the jobs ran, from their own records (a worker's count in the broker's listing starts again
    # if it reconnects): four on each host.
    assert Counter(r.worker for r in records.values()) == {"hostA": 4, "hostB": 4}


@pytest.mark.parametrize("end", ["host", "bridge"])
def test_a_cut_link_reruns_the_job_elsewhere_and_the_worker_rejoins(grid: Grid, tmp_path: Path, end: str) -> None:
    # Cut at the host (admin down), its route goes: its reconnects fail at once (unreachable). Cut at
    # the bridge, it keeps its route but loses carrier: its packets vanish and reconnects hang in
    # SYN_SENT, and the broker's end of the old connection stays half-open.
    client = grid.client()
    grid.start_worker("hostA", slots=1)
    _wait_workers(client, {"hostA"})
    marks = tmp_path / "marks"
    seconds = 20.0  # hostA's copy runs on past the cut, past the broker giving hostA up, past the outage
    # A shell job that says where and when it started and ended (the file is on a disk all hosts share).
    job = client.submit(shell=f'echo "start $TITAN_WORKER $(date +%s.%N)" >> {marks}; sleep {seconds}; '
                              f'echo "end $TITAN_WORKER $(date +%s.%N)" >> {marks}')  # fmt: skip

    def running_on(host: str, attempt: int) -> bool:
        rec = client.status(job.id)
        return rec.state is JobState.RUNNING and rec.worker == host and rec.attempts == attempt

    def marked() -> dict[str, float]:
        text = marks.read_text() if marks.exists() else ""
        return {f"{w[0]} {w[1]}": float(w[2]) for w in (ln.split() for ln in text.splitlines())}

    wait_for(lambda: running_on("hostA", 1) and "start hostA" in marked(), 20, "the job to start on hostA")
    grid.start_worker("hostB", slots=1)
    _wait_workers(client, {"hostA", "hostB"})

    worker_log = tmp_path / "worker-hostA.log"
    seen = len(worker_log.read_text(errors="replace"))
    grid.cut("hostA", end)
    cut_at = time.monotonic()
    # Nothing says the link is gone: the broker gives hostA up after a heartbeat window of silence.
    detected = _wait_workers(client, {"hostB"}, HEARTBEAT_WINDOW + 15)
    wait_for(lambda: running_on("hostB", 2), 15, "the job to run again on hostB, attempt 2")
    wait_for(lambda: "start hostB" in marked(), 10, "the second attempt to start on hostB")
    # ...while hostA's copy, cut off, still runs: the job was run again in time, not after the fact.
    assert not [m for m in marked() if m.startswith("end")]
    # The outage lasts until hostA, cut off, has given the broker up too and failed to reach it again
    # (its reconnect attempts back off meanwhile).
    wait_for(lambda: "not answering" in worker_log.read_text(errors="replace")[seen:], HEARTBEAT_WINDOW + 20,
             "hostA to fail to reach the broker")  # fmt: skip

    grid.plug("hostA", end)
    plugged_at = time.monotonic()
    rejoin = _wait_workers(client, {"hostA", "hostB"}, 20)
    rejoined_wall = time.time()
    print(f"[{end} end] cut link noticed after {detected:.2f}s (heartbeat window {HEARTBEAT_WINDOW:g}s); link down "
          f"{plugged_at - cut_at:.2f}s; hostA rejoined {rejoin:.2f}s after it came back")  # fmt: skip

    rec = job.wait(30)
    assert rec.state is JobState.SUCCEEDED and rec.attempts == 2, rec
    m = marked()
    lines = marks.read_text().splitlines()
    assert sorted(k for k in m if k.startswith("start")) == ["start hostA", "start hostB"], lines
    if rejoined_wall < m["start hostA"] + seconds - 0.5:
        # hostA came back while its stale copy still ran: the broker had it stopped (the job runs on
        # hostB now), so only hostB's copy ends.
        assert rec.worker == "hostB", rec
        assert [k for k in m if k.startswith("end")] == ["end hostB"], lines
    else:  # a slow machine: hostA's copy ended while cut off; one success counts and the job is done
        assert f"end {rec.worker}" in m, (rec, lines)
    # hostA serves again: a job only it can run, runs there.
    assert client.submit("tests.jobs:whoami", requires=["hostA"]).result(20)["worker"] == "hostA"


def test_broker_sigkill_mid_dag_across_hosts_loses_nothing(grid: Grid, tmp_path: Path) -> None:
    for host in HOSTS:
        grid.start_worker(host)
    client = grid.client()
    _wait_workers(client, set(HOSTS))
    log = tmp_path / "executions.log"
    dag = Dag("wide")
    edges: list[tuple[str, str]] = []

    def add(token: str, seconds: float, host: str, after: list[str]) -> str:
        jid = dag.add("tests.jobs:log_run", args=[str(log), token, seconds], id=token, requires=[host], after=after)
        edges.extend((p, jid) for p in after)
        return jid

    a = [add(f"a{i}", 0.3, HOSTS[i % 2], []) for i in range(4)]
    b = [add(f"b{i}", 1.2, HOSTS[i % 2], [a[i % 4], a[(i + 1) % 4]]) for i in range(6)]
    c = [add(f"c{i}", 0.4, HOSTS[i % 2], [b[i], b[i + 2]]) for i in range(4)]
    end = add("end", 0.0, "hostA", c)
    run = client.submit_dag(dag)

    def b_running() -> bool:
        recs = {r.id: r for r in client.dag_status(dag.id)}
        running = [j for j in b if recs[j].state is JobState.RUNNING]
        return len(running) >= 2 and {recs[j].worker for j in running} == set(HOSTS)

    wait_for(b_running, 30, "the second layer to run on both hosts")
    killed_at = time.time()
    grid.kill_broker()
    # Jobs that were running go on without the broker: let one of them finish while it is down.
    wait_for(lambda: any(e > killed_at for execs in _executions(log).values() for _, e in execs), 10,
             "a job to finish while the broker is down")  # fmt: skip
    t0 = time.monotonic()
    listening = grid.start_broker()
    rejoin = _wait_workers(client, set(HOSTS), 20)
    back = time.monotonic() - t0
    print(f"broker restarted: listening after {listening:.2f}s, both workers listed {rejoin:.2f}s later")

    records = run.wait(60)
    failed = {j: r.state.value for j, r in records.items() if r.state is not JobState.SUCCEEDED}
    assert not failed, f"job(s) did not succeed after the restart: {failed}"
    assert len(records) == 15
    runs = _executions(log)
    never = [j for j in records if j not in runs]
    assert not never, f"job(s) never ran: {never}"
    dups = {j: r for j, r in runs.items() if len(r) > 1}
    for jid, execs in dups.items():
        # Only a job running at the kill may run twice (its worker did not come back in time).
        assert any(s <= killed_at <= e + 1.0 for s, e in execs), f"{jid} ran twice, not around the kill: {execs}"
    for parent, child in edges:
        first_end = min(e for _, e in runs[parent])
        assert all(s >= first_end - 0.001 for s, _ in runs[child]), f"{child} started before {parent} ended"
    hosts = {j: r.worker for j, r in records.items()}
    assert {hosts[j] for j in a + b + c} == set(HOSTS) and hosts[end] == "hostA"
    if back < ORPHAN_WAIT:  # measured above: the workers were back in time
        # ...and then their jobs, finished or not, were not run again (README: "Durable broker").
        assert not dups, f"job(s) ran twice although their workers came back in time: {dups}"


def test_hosts_that_cannot_see_each_other_move_objects_through_the_relay(grid: Grid) -> None:
    # Each host reaches the broker but not the other, as two sites behind their own NATs would.
    _ip("-n", grid.ns["hostA"], "route", "add", "blackhole", f"{grid.ip['hostB']}/32")
    _ip("-n", grid.ns["hostB"], "route", "add", "blackhole", f"{grid.ip['hostA']}/32")
    for host in HOSTS:
        grid.start_worker(host, slots=1)
    client = grid.client()
    _wait_workers(client, set(HOSTS))
    size = 6 << 20
    ref = client.submit("tests.data_jobs:blob", args=[size, 3], requires=["hostA"]).result(timeout=60, fetch=False)
    [(holder, endpoint)] = client.locate(ref)["sources"]
    assert holder == "hostA" and endpoint.startswith(f"tcp://{grid.ip['hostA']}:")  # its own port, out of B's reach
    h = client.submit("tests.data_jobs:length", args=[ref], requires=["hostB"])
    assert h.result(timeout=60) == {"len": size, "worker": "hostB"}
    assert client.status(h.id).fetched == {ref.id: {"from": "hostA", "route": "relay", "bytes": ref.size}}
    from tests.data_jobs import blob

    assert client.get(ref) == blob(size, 3)  # this process sees hostA: straight from there
