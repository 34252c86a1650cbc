"""LangChain tools through which an agent submits titan jobs and reads their results (``[langchain]``).

::

    from titan_zmq.integrations.langchain import TitanToolkit, run_agent

    toolkit = TitanToolkit(broker="broker-host:5555", allowed_targets=["mypkg.tasks:*"])
    model = ChatOpenAI(model="...").bind_tools(toolkit.get_tools())  # any chat model with tool calling
    conversation = run_agent(model, toolkit.get_tools(), "train on the 2026 data and report the loss")

The tools (``titan_submit``, ``titan_wait``, ``titan_status``, ``titan_logs``, ``titan_cancel``) take
pydantic-checked arguments and answer with JSON text. What goes wrong (a refused target, an unknown
job id, a broker that does not answer) comes back to the model as a tool error (a ``ToolMessage``
with ``status="error"``) in the words titan's own errors use, so the agent can read it and change
course. A job that failed is not a tool error: ``titan_wait`` reports its state and error text.

The agent runs only what the toolkit allows: functions whose ``module:function`` matches one of
``allowed_targets`` (fnmatch patterns; ``["*"]`` for any), and shell commands only with
``allow_shell=True``. The toolkit's tools share one :class:`TitanClient`, used by one thread at a
time (LangChain may run tools in threads); a long wait takes it in slices of a second, so other
tools called meanwhile are not held up for the whole wait. See docs/langchain.md.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

try:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
    from langchain_core.runnables import Runnable
    from langchain_core.tools import BaseTool, BaseToolkit, ToolException
    from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised by a test in a process without it
    raise ImportError(
        f"the LangChain integration needs langchain-core ({exc}): pip install 'titan_zmq[langchain]'"
    ) from exc

from titan_zmq.client import TitanClient
from titan_zmq.errors import ConfigError, Refused, TitanError, UnknownJob, WaitTimeout
from titan_zmq.job import JobRecord, JobState
from titan_zmq.objects.codec import as_ref
from titan_zmq.policy import Policy

log = logging.getLogger(__name__)
_FLAGS = {"read_only": "TitanToolkit(read_only=True)", "kinds": "TitanToolkit's allow_shell and allowed_targets",
          "targets": "TitanToolkit's allowed_targets"}  # fmt: skip

__all__ = [
    "CancelArgs",
    "LogsArgs",
    "StatusArgs",
    "SubmitArgs",
    "TitanCancelTool",
    "TitanLogsTool",
    "TitanSession",
    "TitanStatusTool",
    "TitanSubmitTool",
    "TitanToolkit",
    "TitanWaitTool",
    "WaitArgs",
    "run_agent",
    "run_tool_calls",
]

_SLICE = 1.0  # seconds a wait holds the client at a time
_TRACEBACK_CHARS = 2000  # the end of a remote traceback the model sees
_STREAM_CHARS = 1500  # the end of a job's stdout / stderr in a record
_LINE_CHARS = 1000  # one log line, at most
_T = TypeVar("_T")


# ---- the arguments the model gives (their descriptions are what it reads) ------------------------


class SubmitArgs(BaseModel):
    """Arguments of ``titan_submit``."""

    model_config = ConfigDict(extra="forbid")

    call: str | None = Field(
        default=None,
        description='The function to run, as "package.module:function" importable on the workers '
        '(e.g. "mypkg.tasks:train"). Give either call or shell.',
    )
    shell: str | None = Field(
        default=None, description="A shell command line to run on a worker (only where shell commands are allowed)."
    )
    args: list[Any] = Field(default_factory=list, description="Positional arguments of the function, as JSON values.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the function, a JSON object."
    )
    requires: list[str] = Field(
        default_factory=list, description='Capability tags the worker must have, e.g. ["gpu"]; empty: any worker.'
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds after which the job is killed; none: no limit."
    )
    retries: int = Field(default=0, ge=0, le=10, description="How many times to run it again if it fails.")
    job_id: str | None = Field(
        default=None,
        description="An id of your choosing (letters, digits and _.:@-, up to 128); none: a fresh one is made.",
    )
    wait: float = Field(
        default=0.0,
        ge=0,
        description="Seconds to wait for the result before answering; 0: answer at once with the job id.",
    )


class WaitArgs(BaseModel):
    """Arguments of ``titan_wait``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="The id titan_submit returned.")
    timeout: float = Field(
        default=30.0, ge=0, description="Seconds to wait at most; if the job is still running then, you are told so."
    )


class StatusArgs(BaseModel):
    """Arguments of ``titan_status``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="The id of the job.")


class CancelArgs(BaseModel):
    """Arguments of ``titan_cancel``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="The id of the queued or running job to cancel.")


class LogsArgs(BaseModel):
    """Arguments of ``titan_logs``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="The id of the job.")
    after: int = Field(
        default=0, ge=0, description="Only lines after this line number (next_after of an earlier call); 0: all."
    )
    tail: int = Field(default=50, ge=1, le=500, description="At most this many lines: the last ones.")


# ---- JSON text for the model ---------------------------------------------------------------------


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON values: bytes as text (or base64), other objects as their repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 40:
        return repr(value)[:200]
    ref = as_ref(value)
    if ref is not None:
        note = "kept on its worker (too large to return inline); pass it to another job as an argument"
        return {"object": ref.id, "kind": ref.kind, "bytes": ref.size, "note": note}
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(_jsonable(data), ensure_ascii=False)


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def _error_line(rec: JobRecord) -> str:
    """How a job that did not succeed ended, in the words of ``JobFailed`` (``raise_for``)."""
    where = f" on {rec.worker}" if rec.worker else ""
    return f"job {rec.id} {rec.state.value}{where} after {rec.attempts} attempt(s): {rec.error}"


def _explain_validation(tool: str, fields: Sequence[str], exc: Exception) -> str:
    """A model's malformed arguments, field by field, with the names it may use."""
    errors = getattr(exc, "errors", None)
    parts = []
    for err in errors() if callable(errors) else []:
        where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    said = "; ".join(parts) or str(exc)
    return f"invalid arguments for {tool}: {said}. Its arguments are: {', '.join(fields)}; fix them and call it again."


# ---- what the tools share ------------------------------------------------------------------------


class TitanSession:
    """One :class:`TitanClient`, the lock that lets one thread use it at a time, and the policy
    (what may run) that a toolkit's tools share. ``close`` closes the client if it made it."""

    def __init__(
        self,
        client: TitanClient,
        *,
        owns_client: bool = False,
        allowed_targets: Sequence[str] = (),
        allow_shell: bool = False,
        read_only: bool = False,
        max_wait: float = 300.0,
        max_result_chars: int = 4000,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.owns_client = owns_client
        self.allowed_targets = tuple(allowed_targets)
        self.allow_shell = allow_shell
        self.read_only = read_only
        self.max_wait = max_wait
        self.max_result_chars = max_result_chars
        self.labels = dict(labels or {})
        self.lock = threading.Lock()
        # The one rule of what an agent may run (titan_zmq.policy, as titan mcp uses it): the patterns
        # govern calls; shell commands are allowed or not as a whole; no patterns, no calls.
        kinds = ({"call"} if self.allowed_targets else set()) | ({"shell"} if allow_shell else set())
        self.policy = Policy(read_only=read_only, kinds=frozenset(kinds), targets=self.allowed_targets,
                             target_kinds=frozenset({"call"}), flags=_FLAGS)  # fmt: skip

    def use(self, fn: Callable[[TitanClient], _T]) -> _T:
        """``fn(client)`` with the client to itself; a titan error becomes a ToolException in its words."""
        with self.lock:
            try:
                return fn(self.client)
            except TitanError as exc:
                raise ToolException(str(exc)) from exc

    def close(self) -> None:
        """Close the client if it was made for this session (``owns_client``)."""
        if self.owns_client:
            self.client.close()

    # -- policy

    def check(self, call: str | None, shell: str | None) -> None:
        """Refuse (ToolException) what this toolkit does not allow, before anything is sent."""
        if (call is None) == (shell is None):
            got = "both" if call is not None else "neither"
            raise ToolException(f"give exactly one of call (a function, 'package.module:function') or shell "
                                f"(a command line); got {got}")  # fmt: skip
        try:
            self.policy.check("shell" if call is None else "call", call or shell or "")
        except Refused as exc:
            raise ToolException(str(exc)) from None

    # -- what the tools answer

    def bounded(self, value: Any) -> Any:
        """A result as JSON values, or (past ``max_result_chars``) the start of its JSON text."""
        plain = _jsonable(value)
        text = json.dumps(plain, ensure_ascii=False)
        if len(text) <= self.max_result_chars:
            return plain
        return {"truncated": True, "chars": len(text), "preview": text[: self.max_result_chars]}

    def describe(self, rec: JobRecord, full: bool = False) -> dict[str, Any]:
        """A job's record as the model reads it: its state, and its result or its error once ended."""
        out: dict[str, Any] = {"job_id": rec.id, "state": rec.state.value, "finished": rec.state.final,
                               "kind": rec.kind, "target": rec.target, "attempts": rec.attempts}  # fmt: skip
        if rec.worker:
            out["worker"] = rec.worker
        if rec.waiting and not rec.state.final:
            out["waiting"] = rec.waiting
        if rec.state is JobState.SUCCEEDED:
            out["result"] = self.bounded(rec.result)
        elif rec.state.final:
            out["error"] = _error_line(rec)
            out["error_type"] = rec.error_type
            if rec.exit_code is not None:
                out["exit_code"] = rec.exit_code
            if rec.traceback:
                out["traceback"] = _tail(rec.traceback, _TRACEBACK_CHARS)
        for name, text in (("stdout", rec.stdout), ("stderr", rec.stderr)):
            if text:
                out[name] = _tail(text, _STREAM_CHARS)
        if rec.duration is not None:
            out["seconds"] = round(rec.duration, 3)
        if full:
            out.update(requires=rec.requires, retries=rec.retries, labels=rec.labels)
            if rec.depends_on:
                out.update(depends_on=rec.depends_on, dag=rec.dag)
        return out

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` (at most ``max_wait``) seconds for the job; its record, or where it stands."""
        timeout = min(max(0.0, timeout), self.max_wait)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            rec = self.use(functools.partial(_wait_slice, job_id=job_id, seconds=max(0.0, min(_SLICE, left))))
            if rec is not None:
                return self.describe(rec)
            if left > _SLICE:
                continue  # the client is free between slices: other tools' calls go through
            now = self.use(lambda c: c.status(job_id))
            out = self.describe(now)
            more = "titan_logs to see its output" + ("" if self.read_only else ", or titan_cancel to stop it")
            out["message"] = (f"job {job_id} still not finished after {timeout:g}s (state {now.state.value}); "
                              f"call titan_wait again to keep waiting, {more}")  # fmt: skip
            return out


def _wait_slice(client: TitanClient, job_id: str, seconds: float) -> JobRecord | None:
    """The job's final record if it ends within ``seconds``, else None."""
    try:
        return client.wait([job_id], seconds)[job_id]
    except WaitTimeout:
        return None


# ---- the tools -----------------------------------------------------------------------------------


class _TitanTool(BaseTool):
    """A tool on a :class:`TitanSession`: titan's errors reach the model as tool errors."""

    session: TitanSession = Field(exclude=True)

    def __init__(self, **kwargs: Any) -> None:
        cls = type(self)
        name = kwargs.get("name") or cls.model_fields["name"].default
        schema = cls.model_fields["args_schema"].default
        kwargs.setdefault("handle_tool_error", True)
        kwargs.setdefault(
            "handle_validation_error", lambda exc: _explain_validation(name, list(schema.model_fields), exc)
        )
        super().__init__(**kwargs)


def _text(value: str | None) -> str | None:
    """A string argument, or None when the model left it empty (models often send "" for "not given")."""
    return value.strip() if value is not None and value.strip() else None


class TitanSubmitTool(_TitanTool):
    """Submit a job (a function, or a shell command where allowed); answers its id, or its outcome with ``wait``."""

    name: str = "titan_submit"
    description: str = "Submit a job to the titan grid."
    args_schema: type[BaseModel] = SubmitArgs

    def _run(
        self, call: str | None = None, shell: str | None = None, args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None, requires: list[str] | None = None, timeout: float | None = None,
        retries: int = 0, job_id: str | None = None, wait: float = 0.0,
    ) -> str:  # fmt: skip
        s = self.session
        call, shell = _text(call), _text(shell)
        s.check(call, shell)
        handle = s.use(lambda c: c.submit(
            call, shell=shell, args=args or None, kwargs=kwargs or None, requires=requires or None,
            timeout=timeout, retries=retries or None, labels=s.labels or None, id=_text(job_id),
        ))  # fmt: skip
        log.info("langchain agent submitted job %s (%s)", handle.id, call or shell)
        if wait > 0:
            return _dump(s.wait(handle.id, wait))
        return _dump({"job_id": handle.id, "state": JobState.QUEUED.value, "finished": False,
                      "target": call or shell, "next": "call titan_wait with this job_id for its result"})  # fmt: skip


class TitanWaitTool(_TitanTool):
    """Wait for a job: its result, its error, or (after ``timeout``) that it is still running."""

    name: str = "titan_wait"
    description: str = (
        "Wait for a titan job to finish and return its outcome as JSON: state 'succeeded' with its result, or "
        "'failed'/'dead'/'cancelled' with its error text and traceback. If it has not finished within timeout "
        "seconds you get finished=false and its state; call again to keep waiting."
    )
    args_schema: type[BaseModel] = WaitArgs

    def _run(self, job_id: str, timeout: float = 30.0) -> str:
        return _dump(self.session.wait(job_id.strip(), timeout))


class TitanStatusTool(_TitanTool):
    """A job's record now, without waiting."""

    name: str = "titan_status"
    description: str = (
        "Get a titan job's state now, without waiting (queued, running, retrying, succeeded, failed, dead, "
        "cancelled), with its result or error once it has finished. JSON."
    )
    args_schema: type[BaseModel] = StatusArgs

    def _run(self, job_id: str) -> str:
        s = self.session
        return _dump(s.describe(s.use(lambda c: c.status(job_id.strip())), full=True))


class TitanCancelTool(_TitanTool):
    """Cancel a queued or running job."""

    name: str = "titan_cancel"
    description: str = "Cancel a queued or running titan job (its processes are killed). Returns its record as JSON."
    args_schema: type[BaseModel] = CancelArgs

    def _run(self, job_id: str) -> str:
        s = self.session
        return _dump(s.describe(s.use(lambda c: c.cancel(job_id.strip()))))


class TitanLogsTool(_TitanTool):
    """The last lines a job wrote to stdout and stderr."""

    name: str = "titan_logs"
    description: str = (
        "Read the last lines a titan job printed (stdout 'out' and stderr 'err'), while it runs or after it "
        "ended. Pass after=next_after from an earlier answer to get only newer lines. JSON."
    )
    args_schema: type[BaseModel] = LogsArgs

    def _run(self, job_id: str, after: int = 0, tail: int = 50) -> str:
        s, job_id = self.session, job_id.strip()
        tail = max(1, min(tail, 500))

        def read(c: TitanClient) -> tuple[list[Any], int, str | None]:
            lines: deque[Any] = deque(maxlen=tail)
            total = 0
            for line in c.logs(job_id, after=after):
                lines.append(line)
                total += 1
            try:
                state: str | None = c.status(job_id).state.value
            except UnknownJob:
                state = None  # its log outlived its record
            return list(lines), total, state

        lines, total, state = s.use(read)
        return _dump({
            "job_id": job_id, "state": state,
            "lines": [{"seq": ln.seq, "stream": ln.stream, "text": ln.text[:_LINE_CHARS]} for ln in lines],
            "skipped": total - len(lines), "next_after": lines[-1].seq if lines else after,
        })  # fmt: skip


# ---- the toolkit ---------------------------------------------------------------------------------


class TitanToolkit(BaseToolkit):
    """Tools through which a LangChain agent runs jobs on a titan grid and reads their results.

    ``client``: a :class:`TitanClient` to use (left open by :meth:`close`); else one is made for
    ``broker`` (``HOST[:PORT]`` or a group's members; default ``TITAN_BROKER``, else localhost:5555)
    with ``keys`` (a CURVE key folder) and ``request_timeout``. ``allowed_targets``: fnmatch patterns
    of the ``module:function`` names the agent may call (``["mypkg.*:*"]``; ``["*"]`` for any).
    ``allow_shell``: let it run shell commands. ``read_only``: only ``titan_wait``, ``titan_status``
    and ``titan_logs``. ``max_wait`` caps a wait's seconds; ``max_result_chars`` a result's JSON.
    A toolkit that could submit nothing (no targets, no shell, not read-only) is a ConfigError.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: TitanClient | None = Field(default=None, exclude=True)
    broker: str | None = None
    keys: str | None = None
    allow_shell: bool = False
    allowed_targets: list[str] | None = None
    read_only: bool = False
    request_timeout: float = Field(default=10.0, gt=0)
    max_wait: float = Field(default=300.0, ge=0)
    max_result_chars: int = Field(default=4000, ge=100)
    labels: dict[str, str] = Field(default_factory=lambda: {"via": "langchain"})
    _session: TitanSession = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Check the policy and open the client, so a mistake shows here and not in the agent's first call."""
        targets = [p.strip() for p in self.allowed_targets or [] if p.strip()]
        if self.client is not None and (self.broker is not None or self.keys is not None):
            raise ConfigError("TitanToolkit: give client= or broker=/keys=, not both (a client has its own broker)")
        if not (targets or self.allow_shell or self.read_only):
            raise ConfigError(
                "TitanToolkit: its submit tool could run nothing: pass allowed_targets (fnmatch patterns of "
                "'module:function', e.g. ['mypkg.tasks:*'], or ['*'] for any function), allow_shell=True, "
                "or read_only=True"
            )
        owns = self.client is None
        client = self.client or TitanClient(self.broker, timeout=self.request_timeout, keys=self.keys)
        self._session = TitanSession(
            client, owns_client=owns, allowed_targets=targets, allow_shell=self.allow_shell,
            read_only=self.read_only, max_wait=self.max_wait, max_result_chars=self.max_result_chars,
            labels=self.labels,
        )  # fmt: skip

    @property
    def session(self) -> TitanSession:
        """What the tools share: the client, its lock and the policy."""
        return self._session

    def get_tools(self) -> list[BaseTool]:
        """The tools, for ``model.bind_tools(...)`` and for running the calls the model makes."""
        s = self._session
        readers: list[BaseTool] = [TitanWaitTool(session=s), TitanStatusTool(session=s), TitanLogsTool(session=s)]
        if self.read_only:
            return readers
        submit = TitanSubmitTool(session=s, description=self._submit_description())
        return [submit, *readers, TitanCancelTool(session=s)]

    def _submit_description(self) -> str:
        s = self._session
        allowed = (f"Allowed functions: {', '.join(s.allowed_targets)} (fnmatch patterns)." if s.allowed_targets
                   else "No functions are allowed: use shell.")  # fmt: skip
        shell = " Shell commands are allowed." if s.allow_shell else " Shell commands are not allowed."
        return (
            "Submit a job to the titan grid: a Python function by its 'package.module:function' name with JSON "
            f"args and kwargs, or a shell command. {allowed}{shell} Returns JSON with the job_id; then call "
            "titan_wait with it for the result (or give wait=seconds here to wait at once)."
        )

    def close(self) -> None:
        """Close the client if the toolkit made it (a client given to it stays open)."""
        self._session.close()

    def __enter__(self) -> TitanToolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- running what a model asks for ---------------------------------------------------------------


def run_tool_calls(message: AIMessage, tools: Sequence[BaseTool]) -> list[ToolMessage]:
    """Run every tool call of ``message`` and return their ToolMessages in order. A call of a tool not
    in ``tools`` answers an error message naming the tools there are, as a failed call would."""
    by_name = {t.name: t for t in tools}
    out: list[ToolMessage] = []
    for call in message.tool_calls:
        tool = by_name.get(call["name"])
        if tool is None:
            out.append(ToolMessage(
                content=f"unknown tool {call['name']!r}; the tools are: {', '.join(sorted(by_name))}",
                tool_call_id=call.get("id") or "", name=call["name"], status="error",
            ))  # fmt: skip
            continue
        reply = tool.invoke(call)
        out.append(reply if isinstance(reply, ToolMessage) else ToolMessage(
            content=str(reply), tool_call_id=call.get("id") or "", name=tool.name))  # fmt: skip
    return out


def run_agent(
    model: Runnable[Any, Any], tools: Sequence[BaseTool], prompt: str | list[BaseMessage], max_steps: int = 10
) -> list[BaseMessage]:
    """A minimal agent loop: ask ``model`` (one with the tools bound: ``chat.bind_tools(tools)``), run the
    tool calls it makes, give it their answers, until it answers without calls. Returns the conversation.
    RuntimeError if it still calls tools after ``max_steps`` turns."""
    messages: list[BaseMessage] = [HumanMessage(prompt)] if isinstance(prompt, str) else list(prompt)
    for _ in range(max_steps):
        reply = model.invoke(messages)
        if not isinstance(reply, AIMessage):
            raise TypeError(f"the model answered a {type(reply).__name__}, not an AIMessage: is it a chat model?")
        messages.append(reply)
        if not reply.tool_calls:
            return messages
        messages.extend(run_tool_calls(reply, tools))
    raise RuntimeError(f"the model still called tools after {max_steps} steps; raise max_steps or check the prompt")
