"""``titan mcp``: the command line of the MCP server (``server.py``). The SDK is imported only when
the command runs, so ``titan --help`` works without the ``[mcp]`` extra."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``mcp`` on the main parser."""
    env = os.environ.get
    p = sub.add_parser(
        "mcp", parents=[common], help="serve the cluster to AI agents over the Model Context Protocol",
        description="An MCP server (the official mcp SDK; pip install 'titan_zmq[mcp]') whose tools submit jobs "
        "and DAGs, wait for results, read status and logs, cancel, list workers, jobs and DAGs, use the KV store, "
        "decide approval gates, deploy and stop services, and spawn jobs into running DAGs. Over stdio (what a "
        "desktop agent starts) or streamable HTTP. Every call is logged and published as event.mcp.",
        epilog="Environment: TITAN_MCP_TRANSPORT, TITAN_MCP_HOST, TITAN_MCP_PORT, TITAN_MCP_READ_ONLY=1, "
        "TITAN_MCP_ALLOW_KINDS, TITAN_MCP_ALLOW_TARGETS, TITAN_MCP_AUDIT_LOG, TITAN_MCP_REQUEST_TIMEOUT. "
        "Example (Claude Desktop): {\"command\": \"titan\", \"args\": [\"mcp\", \"--broker\", \"host:5555\"]}",
    )  # fmt: skip
    add_broker_addr(p)
    p.add_argument("--transport", choices=("stdio", "http"), default=env("TITAN_MCP_TRANSPORT", "stdio"),
                   help="stdio (default) or http (streamable HTTP at http://HOST:PORT/mcp)")
    p.add_argument("--host", default=env("TITAN_MCP_HOST", "127.0.0.1"), help="with http: the address to listen on")
    p.add_argument("--port", type=int, default=int(env("TITAN_MCP_PORT", "8765")), help="with http: the port (8765)")
    p.add_argument("--read-only", action="store_true", default=env("TITAN_MCP_READ_ONLY", "") not in ("", "0"),
                   help="serve status, logs and lists only: every call that would change the cluster is refused")
    p.add_argument("--allow-kinds", default=env("TITAN_MCP_ALLOW_KINDS"), metavar="KINDS",
                   help="only these job kinds, comma-separated, of: call, shell, script, archive, service "
                        "(approval gates are always allowed; default: all)")
    p.add_argument("--allow-targets", default=env("TITAN_MCP_ALLOW_TARGETS"), metavar="PATTERNS",
                   help="only jobs whose target matches one of these shell patterns, comma-separated: "
                        "'mypkg.*:*' (functions), 'echo *' (commands), 'etl_*.py' (scripts); default: any")
    p.add_argument("--audit-log", default=env("TITAN_MCP_AUDIT_LOG"), metavar="FILE",
                   help="also append each call (tool, arguments, outcome) to FILE as a JSON line")
    p.add_argument("--request-timeout", type=float, default=float(env("TITAN_MCP_REQUEST_TIMEOUT", "10")),
                   metavar="SECONDS", help="how long one request to the broker may take before the tool fails (10)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where a submitted DAG's relative script paths are read from (default: the current folder)")


def cmd_mcp(args: argparse.Namespace) -> int:
    from titan_zmq.mcp.calls import Calls
    from titan_zmq.policy import Policy

    try:
        policy = Policy.parse(read_only=args.read_only, kinds=args.allow_kinds, targets=args.allow_targets)
    except ValueError as exc:
        print(f"titan mcp: {exc} (--allow-kinds)", file=sys.stderr)
        return 2
    try:
        from titan_zmq.mcp.server import build_server
    except ImportError as exc:
        print(f"titan mcp: {exc}", file=sys.stderr)
        return 1
    calls = Calls(args.broker, keys=os.environ.get("TITAN_KEYS"), policy=policy, workdir=args.workdir,
                  timeout=args.request_timeout)
    server = build_server(calls, args.audit_log)
    log.info("titan mcp (%s) for broker %s: %s", args.transport, args.broker or os.environ.get("TITAN_BROKER")
             or "localhost:5555", policy.describe())  # fmt: skip
    try:
        if args.transport == "stdio":
            server.run("stdio")
        else:
            if not _loopback(args.host):
                log.warning("serving MCP on %s without authentication: whoever reaches port %d drives the cluster; "
                            "consider --read-only or --allow-kinds/--allow-targets", args.host, args.port)  # fmt: skip
            url = f"http://{args.host}:{args.port}/mcp"
            print(f"titan mcp: serving streamable HTTP at {url}", file=sys.stderr, flush=True)
            server.run("streamable-http", host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    finally:
        calls.close()
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
