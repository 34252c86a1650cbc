"""Running ended jobs again: ``titan dead`` (the dead-letter list, and ``--requeue``) and
``titan retry DAG [--from JOB]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``dead`` and ``retry`` on the main parser."""
    p = sub.add_parser(
        "dead", parents=[common], help="the dead-letter list: jobs whose retries are spent; --requeue runs them again",
        description="List the jobs whose retries are spent (state dead), newest first. With --requeue, run "
        "them again (all of them, or the IDs given), with the jobs that were cancelled because of them.",
    )  # fmt: skip
    p.add_argument("--requeue", nargs="*", metavar="ID", default=None, help="run these (default: every dead job) again")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(p)
    p = sub.add_parser(
        "retry", parents=[common], help="run a failed or cancelled DAG again from its failed jobs on",
        description="Run a DAG again: the jobs that did not succeed run again and those that succeeded keep "
        "their results. With --from JOB, that job and every job after it run again, whatever their state.",
    )  # fmt: skip
    p.add_argument("dag", metavar="DAG", help="the DAG's id (titan status DAG lists its jobs)")
    p.add_argument("--from", dest="from_job", metavar="JOB", default=None, help="run again from this job on")
    p.add_argument("--wait", action="store_true", help="wait for the DAG to end; exit 0 only if all succeeded")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(p)


def _row(rec: Any) -> str:
    why = (rec.error or "").splitlines()[0][:100] if rec.error else ""
    return f"{rec.id:<40} {rec.state.value:<10} {rec.attempts:>3} attempt(s)  {why}"


def cmd_dead(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        dead = client.dead(limit=max(1, args.limit))
        if args.requeue is None:
            if args.json:
                print(json.dumps([r.to_dict() for r in dead], indent=2, default=str))
            else:
                for rec in dead:
                    print(_row(rec))
                print(f"{len(dead)} dead job(s)" + ("; titan dead --requeue runs them again" if dead else ""))
            return EXIT_OK
        ids = args.requeue or [r.id for r in dead]
        again = client.requeue(ids) if ids else []
    if args.json:
        print(json.dumps([r.to_dict() for r in again], indent=2, default=str))
    else:
        for rec in again:
            print(_row(rec))
        print(f"{len(again)} job(s) run again")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient
    from titan_zmq.job import JobState

    with TitanClient(args.broker) as client:
        run = client.retry_dag(args.dag, from_job=args.from_job)
        recs = client.dag_status(args.dag)
        again = [r for r in recs if r.finished_at is None]  # reset to run again
        if not args.wait:
            if args.json:
                print(json.dumps({"dag": args.dag, "jobs": [r.to_dict() for r in recs]}, indent=2, default=str))
            else:
                print(f"DAG {args.dag}: {len(again)} job(s) run again; titan status {args.dag} follows them")
            return EXIT_OK
        final = run.wait(args.timeout)
    ok = all(r.state is JobState.SUCCEEDED for r in final.values())
    if args.json:
        print(json.dumps({"dag": args.dag, "ok": ok, "jobs": [r.to_dict() for r in final.values()]},
                         indent=2, default=str))  # fmt: skip
    else:
        for rec in final.values():
            print(_row(rec))
        print(f"DAG {args.dag}: " + ("every job succeeded" if ok else "some jobs did not succeed"))
    return EXIT_OK if ok else EXIT_FAIL
