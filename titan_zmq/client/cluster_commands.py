"""``titan cluster status``: every member of a broker group, its role, epoch, journal position and lag."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import zmq

from titan_zmq import protocol as P
from titan_zmq.config import parse_members, resolve_broker, tcp_endpoint
from titan_zmq.errors import ProtocolError

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``cluster`` on the main parser."""
    p = sub.add_parser(
        "cluster", parents=[common], help="a broker group: each member's role, epoch, position and lag",
        description="Ask every member of a broker group (titan broker --peers) for its place: leader or "
        "follower, the fencing epoch, the Raft term, where its journal ends and how far it is behind the "
        "leader. Give any one member's address (or several) with --broker; the others are found from it.",
    )  # fmt: skip
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    s = csub.add_parser("status", parents=[common], help="each member's role, epoch, journal position and lag")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--timeout", type=float, default=2.0, metavar="S", help="how long each member may take (2)")
    add_broker_addr(s)


def ask(address: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """HELLO to one address; its reply's data, or None when it does not answer in time."""
    host, port = parse_members(address)[0]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(tcp_endpoint(host, port))
        P.send_frames(sock, P.Hello(rid=1).encode())
        if not sock.poll(int(timeout * 1000)):
            return None
        msg = P.decode(P.recv_frames(sock))
    except ProtocolError:
        return None
    finally:
        sock.close(0)
    return msg.data if isinstance(msg, P.Reply) and isinstance(msg.data, dict) else None


def survey(addresses: str, timeout: float) -> list[dict[str, Any]]:
    """Every member reachable from ``addresses``: one row each (``answered`` False for the silent)."""
    todo = [f"{h}:{p}" for h, p in parse_members(addresses)]
    rows: dict[str, dict[str, Any]] = {}
    while todo:
        name = todo.pop(0)
        if name in rows:
            continue
        data = ask(name, timeout)
        group = (data or {}).get("group")
        if data is not None and group is None:
            rows[name] = {"name": name, "answered": True, "role": "standalone", "epoch": 0, "raft_term": 0,
                          "position": None, "lag": None, "leader": name}  # fmt: skip
            continue
        if group is None:
            rows[name] = {"name": name, "answered": False, "role": "unreachable", "epoch": None, "raft_term": None,
                          "position": None, "lag": None, "leader": ""}  # fmt: skip
            continue
        rows[name] = {**group, "answered": True}
        if group["name"] != name:  # reached under another spelling of its address
            rows[group["name"]] = rows.pop(name)
        todo.extend(m for m in group.get("members", []) if m not in rows)
    leaders = [r for r in rows.values() if r["role"] == "leader"]
    lags: dict[str, int] = leaders[0].get("lag", {}) if len(leaders) == 1 else {}
    for r in rows.values():
        if r["role"] == "leader":
            r["lag"] = 0
        elif r["role"] == "follower":
            r["lag"] = lags.get(r["name"])
    return sorted(rows.values(), key=lambda r: r["name"])


def cmd_cluster(args: argparse.Namespace) -> int:
    rows = survey(resolve_broker(args.broker), args.timeout)
    leaders = [r["name"] for r in rows if r["role"] in ("leader", "standalone")]
    if args.json:
        print(json.dumps({"leader": leaders[0] if len(leaders) == 1 else None, "members": rows}, indent=2))
    else:
        print(f"{'MEMBER':<24} {'ROLE':<12} {'EPOCH':>5} {'TERM':>5} {'POSITION':<16} {'LAG':>10}  NOTE")
        for r in rows:
            where = f"{r['position'][0]}:{r['position'][1]}" if r.get("position") else "-"
            lag = "-" if r.get("lag") is None else f"{r['lag']:,}B"
            note = r.get("error") or ("" if r["answered"] else "no answer")
            epoch = "-" if r.get("epoch") is None else r["epoch"]
            term = "-" if r.get("raft_term") is None else r["raft_term"]
            print(f"{r['name']:<24} {r['role']:<12} {epoch:>5} {term:>5} {where:<16} {lag:>10}  {note}")
        if len(leaders) != 1:
            print("no leader now" if not leaders else f"{len(leaders)} members claim to lead: {', '.join(leaders)}")
    return EXIT_OK if len(leaders) == 1 else EXIT_FAIL
