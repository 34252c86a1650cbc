"""``titan mcp``: an MCP server on the official ``mcp`` SDK (``pip install 'titan_zmq[mcp]'``).

::

    titan mcp                                   # stdio: what Claude Desktop, Cursor and others start
    titan mcp --transport http --port 8765      # streamable HTTP at http://127.0.0.1:8765/mcp
    titan mcp --read-only                       # status, logs and lists only
    titan mcp --allow-kinds call --allow-targets 'mypkg.*:*'   # only these functions, no shell

The tools are ``tools.Tools``'s methods; resources give a job's log (``titan://jobs/{id}/log``),
a job's record (``titan://jobs/{id}``) and a DAG's state (``titan://dags/{id}``). Every call is
audited: logged (logger ``titan_zmq.mcp.audit``), published by the broker as ``event.mcp`` (the
dashboard's feed and ``client.subscribe("event.mcp")`` see it), and written to ``--audit-log`` as
a JSON line, with the tool, its arguments (long strings cut), its outcome and its time. A titan
error comes back as an MCP tool error (``isError``) whose text is what the CLI prints.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ResourceError
    from mcp_types import CallToolResult, TextContent, ToolAnnotations
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"titan mcp needs the MCP SDK: pip install 'titan_zmq[mcp]' ({exc})") from None

from titan_zmq import __version__
from titan_zmq import protocol as P
from titan_zmq.errors import Refused, TitanError
from titan_zmq.mcp.calls import Calls
from titan_zmq.mcp.tools import WRITES, Tools

log = logging.getLogger(__name__)
audit_log = logging.getLogger("titan_zmq.mcp.audit")

_ARG_CHARS = 200  # a string argument longer than this is cut in the audit (a script's text, a pipeline)
_DESTRUCTIVE = frozenset({"cancel", "stop_service", "reject_gate"})
_IDEMPOTENT = frozenset({"kv_set", "approve_gate", "reject_gate", "stop_service", "cancel"})


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _ARG_CHARS:
        return value[:_ARG_CHARS] + f"... ({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value[:50]]
    return value


class Audit:
    """Where each call is recorded: the log, the broker's ``event.mcp``, and an optional JSON-lines file."""

    def __init__(self, calls: Calls, path: str | Path | None = None) -> None:
        self.calls = calls
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def record(self, tool: str, args: dict[str, Any], outcome: str, error: str, ms: float) -> None:
        body = {"tool": tool, "args": _cut({k: v for k, v in args.items() if v is not None}), "outcome": outcome,
                "ms": round(ms, 1), "time": time.time()}  # fmt: skip
        if error:
            body["error"] = error[:2000]
        audit_log.info("%s %s %s%s", tool, outcome, json.dumps(body["args"], default=repr)[:400],
                       f": {error[:300]}" if error else "")  # fmt: skip
        if self.path is not None:
            line = json.dumps(body, default=repr)
            try:
                with self._lock, self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:
                log.error("cannot write the audit log %s: %s (the call is still logged here)", self.path, exc)
        try:
            self.calls.client.request(P.Notify, kind="mcp", body=body)
        except TitanError as exc:  # the broker is away: the log and the file still have it
            log.warning("audit event of %s not published: %s", tool, exc)


def _error(text: str) -> CallToolResult:
    """An MCP tool error (``isError``) whose text is titan's message, as the CLI prints it."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _audited(name: str, fn: Callable[..., Any], audit: Audit) -> Callable[..., Any]:
    @functools.wraps(fn)
    def tool(**kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            out = fn(**kwargs)
        except Refused as exc:
            audit.record(name, kwargs, "refused", str(exc), (time.monotonic() - t0) * 1000)
            return _error(str(exc))
        except TitanError as exc:
            audit.record(name, kwargs, "error", str(exc), (time.monotonic() - t0) * 1000)
            return _error(str(exc))
        except Exception as exc:
            log.exception("tool %s crashed", name)
            audit.record(name, kwargs, "crashed", f"{type(exc).__name__}: {exc}", (time.monotonic() - t0) * 1000)
            return _error(f"{name} failed inside the titan MCP server ({type(exc).__name__}: {exc}); "
                          "its log has the traceback")  # fmt: skip
        audit.record(name, kwargs, "ok", "", (time.monotonic() - t0) * 1000)
        return out

    return tool


def _instructions(calls: Calls) -> str:
    return (
        "You are connected to a titan_zmq cluster: a broker that runs jobs (Python functions by "
        "'module:function' name, shell commands, Python scripts), DAGs of them, and long-running services "
        "on capability-tagged workers. Start with ping and list_workers. submit_job and submit_dag return "
        "ids at once; wait_result waits for results; job_logs reads output. Approval gates wait for "
        f"approve_gate or reject_gate. This server allows: {calls.policy.describe()}."
    )


def build_server(calls: Calls, audit_path: str | Path | None = None) -> MCPServer:
    """The MCP server for ``calls`` (its broker, keys and policy): every tool and resource registered."""
    server: MCPServer = MCPServer("titan", title="titan_zmq", instructions=_instructions(calls), version=__version__)
    tools, audit = Tools(calls), Audit(calls, audit_path)
    read_only = calls.policy.read_only
    for name in tools.names():
        fn = getattr(tools, name)
        description = " ".join((fn.__doc__ or "").split())
        if read_only and name in WRITES:
            description = f"(Refused on this server: it is read-only.) {description}"
        hints = ToolAnnotations(
            title=name.replace("_", " "), read_only_hint=name not in WRITES, destructive_hint=name in _DESTRUCTIVE,
            idempotent_hint=name not in WRITES or name in _IDEMPOTENT, open_world_hint=False,
        )  # fmt: skip
        server.add_tool(_audited(name, fn, audit), name=name, description=description, annotations=hints,
                        structured_output=True)  # fmt: skip
    _add_resources(server, calls, audit)
    return server


def _resource(calls: Calls, audit: Audit, what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    try:
        out = fn()
    except TitanError as exc:
        audit.record("resource", {"uri": what}, "error", str(exc), (time.monotonic() - t0) * 1000)
        raise ResourceError(str(exc)) from None
    audit.record("resource", {"uri": what}, "ok", "", (time.monotonic() - t0) * 1000)
    return out


def _add_resources(server: MCPServer, calls: Calls, audit: Audit) -> None:
    @server.resource("titan://jobs/{job_id}/log", name="job-log", mime_type="text/plain",
                     description="Everything a job (or a service replica) printed; stderr lines start with [err].")
    def job_log(job_id: str) -> str:  # fmt: skip
        return str(_resource(calls, audit, f"titan://jobs/{job_id}/log", lambda: calls.log_text(job_id)))

    @server.resource("titan://jobs/{job_id}", name="job", mime_type="application/json",
                     description="A job's record now: state, worker, attempts, error.")
    def job(job_id: str) -> str:  # fmt: skip
        return json.dumps(_resource(calls, audit, f"titan://jobs/{job_id}", lambda: calls.status(job_id)), default=repr)

    @server.resource("titan://dags/{dag_id}", name="dag", mime_type="application/json",
                     description="A DAG's state: each job's state, and whether all ended and succeeded.")
    def dag(dag_id: str) -> str:  # fmt: skip
        def state() -> dict[str, Any]:
            out = calls.status(dag_id)
            if "dag" not in out:
                raise TitanError(f"{dag_id!r} is a job, not a DAG: read titan://jobs/{dag_id}")
            return out

        return json.dumps(_resource(calls, audit, f"titan://dags/{dag_id}", state), default=repr)
