"""``titan mcp``, driven by the MCP SDK's own client over stdio and over streamable HTTP, against a
real local cluster: every tool, the resources, tool errors in the CLI's words, ``--read-only``, the
allow-lists, and the audit (the log file and ``event.mcp``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the MCP server needs the MCP SDK: pip install -e '.[mcp]'")

import anyio
from mcp import Client, StdioServerParameters

from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.process import stop_processes

pytestmark = pytest.mark.timeout(150)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grid() -> Iterator[LocalCluster]:
    with LocalCluster(workers=1, slots=4) as cluster:
        yield cluster


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return {**env, **(extra or {})}


def _stdio(cluster: LocalCluster, *flags: str) -> StdioServerParameters:
    args = ["-m", "titan_zmq", "mcp", "--broker", cluster.address, *flags]
    return StdioServerParameters(command=sys.executable, args=args, env=_env(), cwd=str(ROOT))


def drive(server: Any, scenario: Callable[[Client], Awaitable[Any]]) -> Any:
    """Connect the SDK's client to ``server`` (stdio parameters or an URL), run ``scenario``, disconnect."""

    async def main() -> Any:
        async with Client(server, read_timeout_seconds=90) as client:
            return await scenario(client)

    return anyio.run(main)


async def call(client: Client, tool: str, **args: Any) -> Any:
    """A tool's answer as JSON; fails the test on a tool error."""
    r = await client.call_tool(tool, args)
    text = r.content[0].text if r.content else ""  # type: ignore[union-attr]
    assert not r.is_error, f"{tool} failed: {text}"
    return json.loads(text)


async def refused(client: Client, tool: str, **args: Any) -> str:
    """A tool error's text; fails the test when the call succeeds."""
    r = await client.call_tool(tool, args)
    text = r.content[0].text if r.content else ""  # type: ignore[union-attr]
    assert r.is_error, f"{tool} was expected to fail, got {text}"
    return str(text)


PIPELINE = """
name: mcp-yaml
jobs:
  - id: a
    call: tests.jobs:add
    args: [2, 3]
  - id: b
    shell: echo from-b; echo oops >&2
    after: [a]
  - id: c
    call: tests.jobs:sum_inputs
    after: [a]
"""


def test_every_tool_over_stdio(grid: LocalCluster) -> None:
    """The whole tour an agent takes: list the tools, submit, wait, read logs, a DAG from YAML and one
    from JSON, the KV store, a gate approved, a job spawned into a running DAG, cancel, the resources."""

    async def tour(c: Client) -> None:
        listed = (await c.list_tools()).tools
        names = {t.name for t in listed}
        assert {"submit_job", "submit_dag", "wait_result", "job_status", "job_logs", "cancel", "list_workers",
                "list_jobs", "list_dags", "kv_get", "kv_set", "kv_list", "approve_gate", "reject_gate",
                "deploy_service", "list_services", "stop_service", "spawn_job", "list_gates", "ping"} <= names
        for t in listed:  # something a model can act on: a description and typed, described arguments
            assert len(t.description or "") > 40, t.name
            for arg, schema in (t.input_schema.get("properties") or {}).items():
                assert schema.get("description"), f"{t.name}.{arg} has no description"
        assert (await call(c, "ping"))["workers"] == 1
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert templates == {"titan://jobs/{job_id}/log", "titan://jobs/{job_id}", "titan://dags/{dag_id}"}

        job = await call(c, "submit_job", function="tests.jobs:add", args=[20, 22])
        done = await call(c, "wait_result", job_id=job["id"], timeout=60)
        assert done["ok"] and done["result"] == 42 and done["state"] == "succeeded"

        talk = await call(c, "submit_job", function="tests.jobs:chatty", args=[5], kwargs={"tag": "mcp"})
        await call(c, "wait_result", job_id=talk["id"], timeout=60)
        logs = await call(c, "job_logs", job_id=talk["id"])
        assert len(logs["lines"]) >= 5 and logs["ended"]
        later = await call(c, "job_logs", job_id=talk["id"], after=logs["lines"][1]["n"])
        assert [x["n"] for x in later["lines"]] == [x["n"] for x in logs["lines"][2:]]
        tail = await call(c, "job_logs", job_id=talk["id"], tail=2)
        assert tail["lines"] == logs["lines"][-2:]

        bad = await call(c, "submit_job", function="tests.jobs:boom", args=["mcp says no"])
        failed = await call(c, "wait_result", job_id=bad["id"], timeout=60)
        assert not failed["ok"] and "mcp says no" in failed["message"] and failed["state"] in ("failed", "dead")

        run = await call(c, "submit_dag", pipeline=PIPELINE)
        whole = await call(c, "wait_result", job_id=run["dag"], timeout=90)
        assert whole["done"] and whole["ok"] and whole["states"] == {"succeeded": 3}, whole
        b = next(j for j in run["jobs"] if j.endswith(".b"))
        text = await c.read_resource(f"titan://jobs/{b}/log")
        assert "from-b" in text.contents[0].text and "[err] oops" in text.contents[0].text  # type: ignore[union-attr]
        dag_state = json.loads((await c.read_resource(f"titan://dags/{run['dag']}")).contents[0].text)  # type: ignore[union-attr]
        assert dag_state["ok"] and len(dag_state["jobs"]) == 3
        as_json = json.dumps({"name": "mcp-json", "jobs": [{"id": "x", "call": "tests.jobs:square", "args": [7]}]})
        j = await call(c, "submit_dag", pipeline=as_json)
        assert (await call(c, "wait_result", job_id=j["jobs"][0], timeout=60))["result"] == 49
        assert run["dag"] in {d["dag"] for d in (await call(c, "list_dags"))["dags"]}

        await call(c, "kv_set", key="mcp:model", value={"acc": 0.97})
        assert (await call(c, "kv_get", key="mcp:model")) == {"key": "mcp:model", "found": True, "value": {"acc": 0.97}}
        assert (await call(c, "kv_get", key="mcp:none"))["found"] is False
        assert "mcp:model" in (await call(c, "kv_list", prefix="mcp:"))["keys"]

        gated = """
name: mcp-gate
jobs:
  - {id: train, call: tests.jobs:square, args: [3]}
  - {id: ok, type: approval, message: 'ship it?', after: [train]}
  - {id: ship, shell: echo shipped, after: [ok]}
"""
        g = await call(c, "submit_dag", pipeline=gated)
        gate_id = next(j for j in g["jobs"] if j.endswith(".ok"))
        gates = await wait_async(lambda: call(c, "list_gates"), lambda r: any(x["id"] == gate_id for x in r["gates"]))
        assert next(x for x in gates["gates"] if x["id"] == gate_id)["question"] == "ship it?"
        # The DAG is still running (its gate waits): an agent adds a job to it, after its train step.
        train = next(j for j in g["jobs"] if j.endswith(".train"))
        extra = await call(c, "spawn_job", dag=g["dag"], after=[train], function="tests.jobs:add", args=[1, 1])
        assert extra["dag"] == g["dag"]
        assert (await call(c, "wait_result", job_id=extra["id"], timeout=60))["result"] == 2
        await call(c, "approve_gate", job_id=gate_id, note="looks good")
        final = await call(c, "wait_result", job_id=g["dag"], timeout=90)
        assert final["ok"] and final["states"] == {"succeeded": 4}, final

        slow = await call(c, "submit_job", shell="sleep 60")
        await wait_async(lambda: call(c, "job_status", job_id=slow["id"]), lambda r: r["state"] == "running")
        assert (await call(c, "cancel", job_id=slow["id"]))["state"] == "cancelled"
        still = await call(c, "wait_result", job_id=slow["id"], timeout=0)
        assert still["state"] == "cancelled" and not still["ok"]
        recent = {j["id"] for j in (await call(c, "list_jobs", limit=200))["jobs"]}
        assert {job["id"], bad["id"], slow["id"]} <= recent
        assert (await call(c, "list_workers"))["workers"][0]["name"] == "local-1"

    drive(_stdio(grid), tour)


async def wait_async(get: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    """Poll ``get`` until ``ok`` holds for its answer, or fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            value = await get()
            if ok(value):
                return value
            await anyio.sleep(0.1)


def test_errors_come_back_as_tool_errors_in_the_clis_words(grid: LocalCluster, tmp_path: Path) -> None:
    async def errors(c: Client) -> None:
        unknown = await refused(c, "job_status", job_id="no-such-job")
        cli = subprocess.run([sys.executable, "-m", "titan_zmq", "status", "no-such-job", "--broker", grid.address],
                             capture_output=True, text=True, env=_env(), timeout=60)  # fmt: skip
        assert cli.returncode == 1 and cli.stderr.strip() == f"titan: {unknown}"
        broken = await refused(c, "submit_dag", pipeline="name: x\njobs:\n  - id: [\n")
        assert broken.startswith("pipeline:4: invalid YAML"), broken
        cyclic = "name: loop\njobs:\n  - {id: a, shell: 'true', after: [b]}\n  - {id: b, shell: 'true', after: [a]}\n"
        assert "cycle" in (await refused(c, "submit_dag", pipeline=cyclic)).lower()
        assert "unknown key" in (await refused(c, "submit_dag", pipeline="name: x\njobs:\n  - {id: a, shel: ls}\n"))
        two = await refused(c, "submit_job", function="tests.jobs:add", shell="echo")
        assert "exactly one" in two
        assert "is a job, not a DAG" in await refused(c, "spawn_job", dag=(await call(
            c, "submit_job", function="tests.jobs:noop"))["id"], function="tests.jobs:noop")  # fmt: skip
        schema = await refused(c, "wait_result", job_id="x", timeout=-1)
        assert "timeout" in schema

    drive(_stdio(grid), errors)


def test_a_broker_that_is_away_is_a_tool_error_and_the_server_keeps_serving(grid: LocalCluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    args = ["-m", "titan_zmq", "mcp", "--broker", nobody, "--request-timeout", "2"]
    params = StdioServerParameters(command=sys.executable, cwd=str(ROOT), env=_env(), args=args)

    async def away(c: Client) -> None:
        first = await refused(c, "list_workers")
        assert "broker" in first.lower() and nobody.split(":")[1] in first
        again = await refused(c, "ping")  # the same process answers again
        assert "broker" in again.lower()

    drive(params, away)


def test_read_only_serves_reads_and_refuses_every_write(grid: LocalCluster) -> None:
    client = grid.client()
    before = len(client.jobs(limit=10_000))
    seen = client.submit("tests.jobs:add", args=[1, 2])
    seen.wait(60)

    async def read_only(c: Client) -> None:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        assert listed["submit_job"].description.startswith("(Refused on this server: it is read-only.)")  # type: ignore[union-attr]
        assert listed["job_status"].annotations.read_only_hint is True  # type: ignore[union-attr]
        for tool, args in (("submit_job", {"function": "tests.jobs:noop"}), ("submit_dag", {"pipeline": PIPELINE}),
                           ("cancel", {"job_id": seen.id}), ("kv_set", {"key": "k", "value": 1}),
                           ("approve_gate", {"job_id": seen.id}), ("stop_service", {"name": "x"}),
                           ("deploy_service", {"name": "x", "shell": "sleep 100"}),
                           ("spawn_job", {"dag": "d", "function": "tests.jobs:noop"})):  # fmt: skip
            text = await refused(c, tool, **args)
            assert "read-only (--read-only)" in text, (tool, text)
        assert (await call(c, "job_status", job_id=seen.id))["state"] == "succeeded"
        assert (await call(c, "wait_result", job_id=seen.id, timeout=5))["result"] == 3
        assert (await call(c, "list_jobs", limit=5))["count"] >= 1
        await call(c, "job_logs", job_id=seen.id)
        await call(c, "kv_list")

    drive(_stdio(grid, "--read-only"), read_only)
    assert len(client.jobs(limit=10_000)) == before + 1  # nothing the server refused was submitted


def test_an_allow_list_of_kinds_and_targets(grid: LocalCluster, tmp_path: Path) -> None:
    client = grid.client()
    before = {r.id for r in client.jobs(limit=10_000)}

    async def allowed(c: Client) -> None:
        ok = await call(c, "submit_job", function="tests.jobs:square", args=[5])
        assert (await call(c, "wait_result", job_id=ok["id"], timeout=60))["result"] == 25
        shell = await refused(c, "submit_job", shell="rm -rf /tmp/nothing")
        assert "shell jobs are not allowed here (allowed kinds: call; set by --allow-kinds)" in shell
        other = await refused(c, "submit_job", function="os:system", args=["id"])
        assert "'os:system'" in other and "tests.jobs:*" in other and "--allow-targets" in other
        assert "script jobs are not allowed" in await refused(c, "submit_job", script="print(1)")
        mixed = "name: mixed\njobs:\n  - {id: a, call: tests.jobs:noop}\n  - {id: b, shell: 'echo hi', after: [a]}\n"
        assert "shell jobs are not allowed" in await refused(c, "submit_dag", pipeline=mixed)  # all or nothing
        assert "service jobs are not allowed" in await refused(c, "deploy_service", name="web", shell="sleep 60")
        gate = ("name: gated\njobs:\n  - {id: a, call: tests.jobs:noop}\n"
                "  - {id: g, type: approval, message: 'go on?', after: [a]}\n")  # fmt: skip
        await call(c, "submit_dag", pipeline=gate)  # an approval gate runs nothing: allowed

    drive(_stdio(grid, "--allow-kinds", "call", "--allow-targets", "tests.jobs:*"), allowed)
    new = [r for r in client.jobs(limit=10_000) if r.id not in before]
    assert sorted(r.kind for r in new) == ["approval", "call", "call"], [(r.id, r.kind) for r in new]
    assert not any(r.target.startswith("os:") or r.dag == "mixed" for r in new)


def test_every_call_is_audited_in_a_file_and_as_an_event(grid: LocalCluster, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    client = grid.client()
    feed = client.subscribe("event.mcp")
    try:
        async def calls(c: Client) -> None:
            await call(c, "list_workers")
            await refused(c, "submit_job", shell="echo no")
            await refused(c, "job_status", job_id="ghost")

        drive(_stdio(grid, "--allow-kinds", "call", "--audit-log", str(audit)), calls)
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        assert [(x["tool"], x["outcome"]) for x in lines] == [
            ("list_workers", "ok"), ("submit_job", "refused"), ("job_status", "error")]
        assert lines[1]["args"] == {"shell": "echo no", "script_name": "agent_script.py"}
        assert "not allowed" in lines[1]["error"] and "unknown job id 'ghost'" in lines[2]["error"]
        got: list[Any] = []
        def three() -> bool:
            got.extend(feed.drain())
            return len(got) >= 3

        wait_for(three, 30, "three event.mcp messages")
        assert [(t, b["tool"], b["outcome"]) for t, b in got[:3]] == [
            ("event.mcp", "list_workers", "ok"), ("event.mcp", "submit_job", "refused"),
            ("event.mcp", "job_status", "error")]  # fmt: skip
    finally:
        feed.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(grid: LocalCluster, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "mcp-http.log").open("wb")
    args = ["-m", "titan_zmq", "mcp", "--transport", "http", "--port", str(port), "--broker", grid.address]
    proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=str(ROOT))
    try:
        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "mcp-http.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 60, "titan mcp listening over HTTP")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop_processes([proc], grace=20)
        log.close()


def test_streamable_http(grid: LocalCluster, http_server: str, tmp_path: Path) -> None:
    script = "import sys\nprint('script says', sys.argv[1:])\n"

    async def over_http(c: Client) -> None:
        assert "submit_dag" in {t.name for t in (await c.list_tools()).tools}
        job = await call(c, "submit_job", script=script, args=["hi"])
        assert (await call(c, "wait_result", job_id=job["id"], timeout=60))["ok"]
        lines = (await call(c, "job_logs", job_id=job["id"]))["lines"]
        assert [x["text"] for x in lines] == ["script says ['hi']"]
        assert "unknown job id" in await refused(c, "job_logs", job_id="ghost")
        svc = await call(c, "deploy_service", name="mcp-web", shell="python3 -m http.server $PORT --bind 127.0.0.1",
                         health="tcp", wait=60)  # fmt: skip
        assert svc["state"] == "running" and svc["replicas"][0]["port"]
        assert (await call(c, "list_services", name="mcp-web"))["services"][0]["state"] == "running"
        await call(c, "stop_service", name="mcp-web")
        await wait_async(lambda: call(c, "list_services"),
                         lambda r: "mcp-web" not in {x["name"] for x in r["services"]})  # fmt: skip

    drive(http_server, over_http)


def test_keys_reach_a_curve_broker(tmp_path: Path) -> None:
    """``--keys`` as every command takes it: the server's requests are encrypted and authenticated."""
    from titan_zmq.security import generate

    keys = tmp_path / "keys"
    generate(keys)
    with LocalCluster(workers=1, env={"TITAN_KEYS": str(keys)}) as cluster:
        plain_env = {k: v for k, v in _env().items() if k != "TITAN_KEYS"}

        def server(*flags: str) -> StdioServerParameters:
            args = ["-m", "titan_zmq", "mcp", "--broker", cluster.address, "--request-timeout", "3", *flags]
            return StdioServerParameters(command=sys.executable, args=args, env=plain_env, cwd=str(ROOT))

        async def with_keys(c: Client) -> None:
            job = await call(c, "submit_job", function="tests.jobs:add", args=[2, 2])
            assert (await call(c, "wait_result", job_id=job["id"], timeout=60))["result"] == 4

        async def without(c: Client) -> None:
            assert "broker" in (await refused(c, "ping")).lower()

        drive(server("--keys", str(keys)), with_keys)
        drive(server(), without)


def test_without_the_sdk_the_command_says_what_to_install() -> None:
    code = "import sys; sys.modules['mcp'] = None; from titan_zmq.cli import main; sys.exit(main(['mcp']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 1, out.stderr
    assert "titan mcp needs the MCP SDK: pip install 'titan_zmq[mcp]'" in out.stderr
