"""The LangChain toolkit: a fake chat model calls its tools, and the jobs run on a real local cluster."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core", reason="the LangChain integration needs: pip install -e '.[langchain]'")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from titan_zmq.client import TitanClient
from titan_zmq.errors import ConfigError, UnknownJob
from titan_zmq.integrations.langchain import TitanToolkit, run_agent, run_tool_calls
from titan_zmq.local import LocalCluster, wait_for

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["tests.jobs:*"]


@pytest.fixture(scope="module")
def client(shared_cluster: LocalCluster) -> TitanClient:
    """The test's own view of the cluster, to check what the agent did (closed with the cluster)."""
    return shared_cluster.client()


@pytest.fixture
def toolkit(shared_cluster: LocalCluster) -> Iterator[TitanToolkit]:
    """A toolkit that makes its own client for the shared cluster, and closes it."""
    with TitanToolkit(broker=shared_cluster.address, allowed_targets=TARGETS) as tk:
        yield tk


def tools_of(toolkit: TitanToolkit) -> dict[str, BaseTool]:
    return {t.name: t for t in toolkit.get_tools()}


def call(name: str, call_id: str = "c1", **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def model(*turns: AIMessage) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(turns))


def asks(*calls: dict[str, Any]) -> AIMessage:
    return AIMessage(content="", tool_calls=list(calls))


def replies(conversation: list[BaseMessage]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in conversation if isinstance(m, ToolMessage)}


def answer(msg: ToolMessage) -> dict[str, Any]:
    assert msg.status == "success", msg.content
    out: dict[str, Any] = json.loads(str(msg.content))
    return out


def job_ids(client: TitanClient) -> set[str]:
    return {r.id for r in client.jobs(limit=10_000)}


def test_the_tools_and_their_schemas_are_as_documented() -> None:
    # Building a toolkit contacts no broker: a client connects on its first request.
    with TitanToolkit(broker="127.0.0.1:9", allowed_targets=["mypkg.*:*"]) as tk:
        tools = tools_of(tk)
        assert list(tools) == ["titan_submit", "titan_wait", "titan_status", "titan_logs", "titan_cancel"]
        schemas = {n: set(t.args) for n, t in tools.items()}
        assert schemas == {
            "titan_submit": {"call", "shell", "args", "kwargs", "requires", "timeout", "retries", "job_id", "wait"},
            "titan_wait": {"job_id", "timeout"},
            "titan_status": {"job_id"},
            "titan_logs": {"job_id", "after", "tail"},
            "titan_cancel": {"job_id"},
        }
        for tool in tools.values():
            assert tool.handle_tool_error is True and tool.description
            spec = convert_to_openai_tool(tool)["function"]  # what a provider is sent
            assert spec["name"] == tool.name and spec["parameters"]["properties"]
            assert all(p.get("description") for p in spec["parameters"]["properties"].values())
        submit = tools["titan_submit"].description
        assert "mypkg.*:*" in submit and "Shell commands are not allowed" in submit
        assert tools["titan_wait"].args["timeout"]["default"] == 30.0
        assert tools["titan_logs"].args["tail"]["maximum"] == 500
    with TitanToolkit(broker="127.0.0.1:9", read_only=True) as tk:
        assert [t.name for t in tk.get_tools()] == ["titan_wait", "titan_status", "titan_logs"]
    with TitanToolkit(broker="127.0.0.1:9", allow_shell=True) as tk:
        assert "Shell commands are allowed" in tools_of(tk)["titan_submit"].description


def test_a_toolkit_that_could_run_nothing_or_has_two_brokers_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"could run nothing: pass allowed_targets"):
        TitanToolkit(broker="127.0.0.1:9")
    with TitanClient("127.0.0.1:9") as c, pytest.raises(ConfigError, match="not both"):
        TitanToolkit(client=c, broker="127.0.0.1:9", read_only=True)


def test_the_agent_submits_a_job_and_reads_its_result(shared_cluster: LocalCluster, client: TitanClient) -> None:
    jid = f"lc-add-{uuid.uuid4().hex[:8]}"
    with TitanToolkit(client=client, allowed_targets=TARGETS) as tk:
        fake = model(
            asks(call("titan_submit", "s", call="tests.jobs:add", args=[2, 3], job_id=jid)),
            asks(call("titan_wait", "w", job_id=jid, timeout=30)),
            AIMessage(content="2 + 3 = 5"),
        )
        conversation = run_agent(fake, tk.get_tools(), "What is 2 + 3? Use the grid.")
    assert conversation[-1].content == "2 + 3 = 5"
    told = replies(conversation)
    assert answer(told["s"]) == {"job_id": jid, "state": "queued", "finished": False, "target": "tests.jobs:add",
                                 "next": "call titan_wait with this job_id for its result"}  # fmt: skip
    waited = answer(told["w"])
    assert waited["state"] == "succeeded" and waited["finished"] is True and waited["result"] == 5
    rec = client.status(jid)  # the broker ran it: a worker of this cluster did
    assert rec.ok and rec.result == 5 and rec.labels == {"via": "langchain"}
    assert waited["worker"] == rec.worker and rec.worker in {w["name"] for w in client.workers()}
    assert client.status(jid).ok  # the toolkit closed; the client given to it stays open


def test_the_model_reads_the_job_id_from_the_tools_answer(toolkit: TitanToolkit, client: TitanClient) -> None:
    """As a real model would: no id of its own; it reads the one titan_submit answered."""
    conversation: list[BaseMessage] = [HumanMessage("square 12")]

    def turns() -> Iterator[AIMessage]:
        yield asks(call("titan_submit", "s", call="tests.jobs:square", args=[12]))
        submitted = json.loads(str(conversation[-1].content))
        yield asks(call("titan_wait", "w", job_id=submitted["job_id"], timeout=30))
        yield AIMessage(content=f"it is {json.loads(str(conversation[-1].content))['result']}")

    fake = GenericFakeChatModel(messages=turns())
    tools = toolkit.get_tools()
    for _ in range(5):
        reply = fake.invoke(conversation)
        assert isinstance(reply, AIMessage)
        conversation.append(reply)
        if not reply.tool_calls:
            break
        conversation.extend(run_tool_calls(reply, tools))
    assert conversation[-1].content == "it is 144"
    jid = json.loads(str(conversation[2].content))["job_id"]
    assert client.status(jid).result == 144


def test_a_failing_jobs_error_text_reaches_the_model(toolkit: TitanToolkit) -> None:
    fake = model(asks(call("titan_submit", "s", call="tests.jobs:boom", args=["disk on fire"], wait=30)),
                 AIMessage(content="it failed"))  # fmt: skip
    told = replies(run_agent(fake, toolkit.get_tools(), "run boom"))
    out = answer(told["s"])  # the tool worked; the job failed, and the model is told how
    assert out["state"] == "failed" and out["finished"] is True and out["error_type"] == "ValueError"
    assert out["error"].startswith(f"job {out['job_id']} failed on ")
    assert out["error"].endswith("after 1 attempt(s): ValueError: disk on fire")
    assert "raise ValueError(msg)" in out["traceback"]
    assert "result" not in out


def test_a_refused_target_or_shell_command_submits_nothing(toolkit: TitanToolkit, client: TitanClient) -> None:
    before = job_ids(client)
    refused_id = f"lc-refused-{uuid.uuid4().hex[:8]}"
    fake = model(
        asks(call("titan_submit", "a", call="os:system", args=["echo pwned"], job_id=refused_id),
             call("titan_submit", "b", shell="echo pwned", job_id=refused_id + "b"),
             call("titan_submit", "c", call="tests.jobsx:add", args=[1, 2])),  # near miss of the pattern
        AIMessage(content="not allowed"),
    )  # fmt: skip
    told = replies(run_agent(fake, toolkit.get_tools(), "do something bad"))
    assert all(m.status == "error" for m in told.values())
    assert told["a"].content == ("this job runs 'os:system', which matches none of the allowed targets "
                                 "(tests.jobs:*; set by TitanToolkit's allowed_targets)")  # fmt: skip
    assert told["b"].content == ("this job is a shell job, and shell jobs are not allowed here (allowed kinds: call; "
                                 "set by TitanToolkit's allow_shell and allowed_targets)")  # fmt: skip
    assert "runs 'tests.jobsx:add', which matches none" in str(told["c"].content)
    assert job_ids(client) == before
    with pytest.raises(UnknownJob):
        client.status(refused_id)


def test_shell_commands_run_where_allowed(shared_cluster: LocalCluster) -> None:
    with TitanToolkit(broker=shared_cluster.address, allow_shell=True) as tk:
        tools = tools_of(tk)
        out = answer(tools["titan_submit"].invoke(call("titan_submit", shell="echo from-the-agent", wait=30)))
        assert out["state"] == "succeeded" and out["stdout"] == "from-the-agent\n"
        refused = tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:add", args=[1, 1]))
        assert refused.status == "error" and "call jobs are not allowed here (allowed kinds: shell;" in refused.content


def test_bad_arguments_and_unknown_jobs_are_tool_errors(toolkit: TitanToolkit) -> None:
    tools = tools_of(toolkit)
    msg = tools["titan_wait"].invoke(call("titan_wait", job_id="lc-no-such-job", timeout=1))
    assert msg.status == "error" and msg.content.startswith("unknown job id 'lc-no-such-job'")
    for name in ("titan_status", "titan_logs", "titan_cancel"):
        msg = tools[name].invoke(call(name, job_id="lc-no-such-job"))
        assert msg.status == "error" and "unknown job id 'lc-no-such-job'" in msg.content, (name, msg.content)
    msg = tools["titan_submit"].invoke(call("titan_submit", function="tests.jobs:add"))
    assert msg.status == "error"
    assert msg.content.startswith("invalid arguments for titan_submit: function: Extra inputs are not permitted")
    assert "call, shell, args, kwargs, requires, timeout, retries, job_id, wait" in msg.content
    msg = tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:add", timeout=-1))
    assert msg.status == "error" and "timeout: Input should be greater than 0" in msg.content
    msg = tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:add", shell="true", args=[1]))
    assert msg.status == "error" and "give exactly one of call" in msg.content and "got both" in msg.content
    msg = tools["titan_submit"].invoke(call("titan_submit", call="", shell=""))  # "" is "not given"
    assert msg.status == "error" and "got neither" in msg.content
    msg = tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:add", job_id="bad id!"))
    assert msg.status == "error" and "job id 'bad id!' is invalid" in msg.content  # the broker's words


def test_a_wait_that_times_out_says_the_job_still_runs(toolkit: TitanToolkit, client: TitanClient) -> None:
    tools = tools_of(toolkit)
    jid = answer(tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:sleep", args=[60])))["job_id"]
    try:
        wait_for(lambda: client.status(jid).state.value == "running", 30, "the sleeping job to start")
        out = answer(tools["titan_wait"].invoke(call("titan_wait", job_id=jid, timeout=0.2)))
        assert out["finished"] is False and out["state"] == "running" and "result" not in out
        assert out["message"].startswith(f"job {jid} still not finished after 0.2s (state running)")
        assert "titan_cancel" in out["message"]
        status = answer(tools["titan_status"].invoke(call("titan_status", job_id=jid)))
        assert status["state"] == "running" and status["labels"] == {"via": "langchain"}
        cancelled = answer(tools["titan_cancel"].invoke(call("titan_cancel", job_id=jid)))
        assert cancelled["job_id"] == jid
        final = answer(tools["titan_wait"].invoke(call("titan_wait", job_id=jid, timeout=30)))
        assert final["state"] == "cancelled" and final["finished"] is True and "error" in final
    finally:
        if not client.status(jid).state.final:
            client.cancel(jid)


def test_logs_give_the_last_lines_and_where_to_go_on(toolkit: TitanToolkit, client: TitanClient) -> None:
    tools = tools_of(toolkit)
    out = answer(tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:chatty", args=[5, "lc"], wait=30)))
    jid = out["job_id"]
    assert out["result"] == 5 and out["stdout"].startswith("lc 0\n")
    wait_for(lambda: len(list(client.logs(jid))) == 6, 30, "the job's 6 log lines at the broker")
    logs = answer(tools["titan_logs"].invoke(call("titan_logs", job_id=jid, tail=3)))
    assert logs["state"] == "succeeded" and logs["skipped"] == 3 and logs["next_after"] == 6
    lines = [(ln["stream"], ln["text"]) for ln in logs["lines"]]
    assert lines == [("out", "lc 3"), ("out", "lc 4"), ("err", "lc done")]
    newer = answer(tools["titan_logs"].invoke(call("titan_logs", job_id=jid, after=6)))
    assert newer["lines"] == [] and newer["next_after"] == 6


def test_results_are_json_text_and_large_ones_are_cut(shared_cluster: LocalCluster) -> None:
    with TitanToolkit(broker=shared_cluster.address, allowed_targets=TARGETS, max_result_chars=100) as tk:
        submit = tools_of(tk)["titan_submit"]
        out = answer(submit.invoke(call("titan_submit", call="tests.jobs:noop", args=["x" * 5000], wait=30)))
        assert out["result"]["truncated"] is True and out["result"]["chars"] == 5002
        assert out["result"]["preview"] == '"' + "x" * 99
        small = answer(submit.invoke(call("titan_submit", call="tests.jobs:count_words", args=["a b a"], wait=30)))
        assert small["result"] == {"a": 2, "b": 1}
        plain = tk.session.bounded({"raw": b"\xff\x00", "text": b"hi", 1: float("nan"), "s": {3}, "o": object})
        assert plain == {"raw": {"base64": "/wA="}, "text": "hi", "1": "nan", "s": [3], "o": "<class 'object'>"}
        json.dumps(plain)


def test_tools_used_from_many_threads_share_the_client_safely(toolkit: TitanToolkit) -> None:
    """LangChain runs tools in threads (batch, and async calls of sync tools): one client, one at a time."""
    submit = tools_of(toolkit)["titan_submit"]
    calls: list[Any] = [call("titan_submit", f"c{i}", call="tests.jobs:add", args=[i, i], wait=30) for i in range(8)]
    results = submit.batch(calls, config={"max_concurrency": 8})
    assert [answer(m)["result"] for m in results] == [2 * i for i in range(8)]

    async def concurrently() -> list[Any]:
        return list(await asyncio.gather(*(submit.ainvoke(c) for c in calls[:4])))

    assert [answer(m)["result"] for m in asyncio.run(concurrently())] == [0, 2, 4, 6]


def test_a_broker_that_does_not_answer_is_a_tool_error() -> None:
    with socket.socket() as s:  # a free port, with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with TitanToolkit(broker=f"127.0.0.1:{port}", allowed_targets=TARGETS, request_timeout=0.3) as tk:
        tools = tools_of(tk)
        msg = tools["titan_status"].invoke(call("titan_status", job_id="anything"))
        assert msg.status == "error" and "no answer from the broker at 127.0.0.1:" in msg.content
        msg = tools["titan_submit"].invoke(call("titan_submit", call="tests.jobs:add", args=[1, 2]))
        assert msg.status == "error" and "is `titan broker` (or `titan up`) running there?" in msg.content


def test_a_call_of_a_tool_the_model_invented_is_answered_with_the_real_ones(toolkit: TitanToolkit) -> None:
    (msg,) = run_tool_calls(asks(call("titan_run", "x", job_id="1")), toolkit.get_tools())
    assert msg.status == "error" and msg.tool_call_id == "x"
    assert msg.content == "unknown tool 'titan_run'; the tools are: titan_cancel, titan_logs, titan_status, " \
                          "titan_submit, titan_wait"  # fmt: skip
    endless = GenericFakeChatModel(messages=iter([asks(call("titan_status", f"s{i}", job_id="x")) for i in range(3)]))
    with pytest.raises(RuntimeError, match="still called tools after 2 steps"):
        run_agent(endless, toolkit.get_tools(), "loop", max_steps=2)


@pytest.mark.timeout(60)
def test_without_langchain_the_import_error_names_the_extra() -> None:
    code = ("import sys; sys.modules['langchain_core'] = None\n"
            "try:\n    import titan_zmq.integrations.langchain\nexcept ImportError as e:\n    print(e)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "pip install 'titan_zmq[langchain]'" in out.stdout, out.stdout + out.stderr


def test_the_example_runs_offline() -> None:
    from examples import langchain_agent

    out = langchain_agent.run()
    tools = out["tools"]
    assert tools["c1"]["answer"]["result"] == 2432902008176640000
    assert tools["c2"]["answer"]["result"] == 2.5
    assert tools["c3"]["answer"]["state"] == "failed" and "math domain error" in tools["c3"]["answer"]["error"]
    assert tools["c4"]["ok"] is False and "runs 'os:listdir', which matches none" in tools["c4"]["answer"]
    assert out["reply"].startswith("20! is 2432902008176640000")
