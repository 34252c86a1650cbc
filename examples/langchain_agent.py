"""A LangChain agent runs jobs on a local titan cluster through TitanToolkit.

The model here is langchain-core's fake chat model, scripted with the tool calls a real model
would make, so this runs offline. With a real one, bind the same tools to it instead:
``ChatOpenAI(model=...).bind_tools(tools)`` (any chat model that supports tool calling).

pip install -e '.[langchain]' && python -m examples.langchain_agent
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

from titan_zmq import LocalCluster
from titan_zmq.integrations.langchain import TitanToolkit, run_agent

QUESTION = "What are 20 factorial, the mean of 1, 2, 3 and 4, and the square root of -1? And list /etc."


def scripted_model() -> GenericFakeChatModel:
    """The turns a model would take: four tool calls at once (one of them not allowed), then an answer."""

    def submit(call_id: str, call: str, *args: Any) -> dict[str, Any]:
        return {"name": "titan_submit", "id": call_id, "args": {"call": call, "args": list(args), "wait": 30}}

    calls = [
        submit("c1", "math:factorial", 20),
        submit("c2", "statistics:mean", [1, 2, 3, 4]),
        submit("c3", "math:sqrt", -1),  # fails on its worker: the model reads the error
        submit("c4", "os:listdir", "/etc"),  # outside allowed_targets: refused, nothing runs
    ]
    answer = "20! is 2432902008176640000 and the mean is 2.5; -1 has no real square root; listing files is not allowed."
    return GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=calls), AIMessage(content=answer)]))


def run() -> dict[str, Any]:
    """Run the conversation on a fresh local cluster; return each tool call's answer and the final reply."""
    with (
        LocalCluster(workers=2) as cluster,
        TitanToolkit(client=cluster.client(), allowed_targets=["math:*", "statistics:*"]) as toolkit,
    ):
        conversation = run_agent(scripted_model(), toolkit.get_tools(), QUESTION)
    answers: dict[str, Any] = {}
    for msg in conversation:
        if isinstance(msg, ToolMessage):
            ok = msg.status == "success"
            answers[msg.tool_call_id] = {"ok": ok, "answer": json.loads(str(msg.content)) if ok else msg.content}
    return {"tools": answers, "reply": conversation[-1].content}


def main() -> None:
    out = run()
    for call_id, told in out["tools"].items():
        answer = told["answer"]
        if not told["ok"]:
            print(f"{call_id}: refused: {answer}")
        elif answer["state"] == "succeeded":
            print(f"{call_id}: {answer['target']} -> {answer['result']} (job {answer['job_id']} on {answer['worker']})")
        else:
            print(f"{call_id}: {answer['target']} {answer['state']}: {answer['error']}")
    print("agent:", out["reply"])


if __name__ == "__main__":
    main()
