"""The ``titan`` command. Exit codes: 0 success, 1 failure (a job or the broker), 2 usage.

This module builds the parser, runs the command and turns errors into exit codes; the commands
are those of ``serve_cli.py`` (broker, worker, up), ``client/job_commands.py`` (submit, run,
status, cancel, workers), ``client/commands.py`` (services, approvals, schedules, logs, kv),
``aof/cli.py`` (aof), and ``keys`` here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from titan_zmq import __version__, serve_cli
from titan_zmq.broker import aof_cli
from titan_zmq.client import cluster_commands as cluster_cli
from titan_zmq.client import commands as client_cli
from titan_zmq.client import job_commands as job_cli
from titan_zmq.client import object_commands as object_cli
from titan_zmq.client import retry_commands as retry_cli
from titan_zmq.errors import ConfigError, JobFailed, TitanError
from titan_zmq.mcp import cli as mcp_cli

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _add_broker_addr(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", default=None, metavar="HOST[:PORT]",
        help="the broker's front address (default: $TITAN_BROKER, else localhost:5555)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titan",
        description="titan_zmq: run functions, shell commands and Python scripts on a grid of workers.",
        epilog="Every command takes --help. The broker address comes from --broker, $TITAN_BROKER, or localhost:5555.",
    )
    parser.add_argument("--version", action="version", version=f"titan_zmq {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("TITAN_LOG_LEVEL", ""),
        help="DEBUG, INFO, WARNING or ERROR (default INFO for broker/worker/up, WARNING otherwise)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --log-level is accepted after the command as well (SUPPRESS keeps the top-level value otherwise).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR")
    common.add_argument(
        "--keys", default=argparse.SUPPRESS, metavar="DIR",
        help="CURVE key folder from 'titan keys generate': encrypt and authenticate (default: $TITAN_KEYS)",
    )  # fmt: skip

    serve_cli.add_parsers(sub, common, _add_broker_addr)
    job_cli.add_parsers(sub, common, _add_broker_addr)
    p = sub.add_parser(
        "keys", parents=[common], help="make CURVE key pairs",
        description="titan keys generate DIR: write broker, client and worker key pairs and the broker's "
        "allow-lists (DIR/allowed/clients, DIR/allowed/workers). Give --keys DIR (or TITAN_KEYS=DIR) to the "
        "broker, the workers and the clients; each needs broker.key and its own pair.",
    )  # fmt: skip
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION")
    q = keys.add_parser("generate", parents=[common], help="write the key pairs and allow-lists into DIR",
                        description="Write the key pairs and allow-lists into DIR.")  # fmt: skip
    q.add_argument("dir", metavar="DIR", help="the folder to write (created if missing)")
    q.add_argument("--force", action="store_true", help="replace keys already there")
    q.add_argument("--json", action="store_true", help="print the files written as JSON")
    aof_cli.add_parsers(sub, common)
    client_cli.add_parsers(sub, common, _add_broker_addr)
    retry_cli.add_parsers(sub, common, _add_broker_addr)
    object_cli.add_parsers(sub, common, _add_broker_addr)
    cluster_cli.add_parsers(sub, common, _add_broker_addr)
    mcp_cli.add_parsers(sub, common, _add_broker_addr)
    return parser


def cmd_keys(args: argparse.Namespace) -> int:
    from titan_zmq.security import generate

    if getattr(args, "keys_command", None) != "generate":
        print("titan keys: say what to do: titan keys generate DIR", file=sys.stderr)
        return EXIT_USAGE
    files = generate(args.dir, force=args.force)
    if args.json:
        print(json.dumps([str(f) for f in files], indent=2))
    else:
        for f in files:
            print(f)
        print(f"give --keys {args.dir} (or TITAN_KEYS={args.dir}) to the broker, the workers and the clients; "
              "keep the *.key_secret files private")  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if rest and args.command not in ("submit", "deploy", "schedule"):
        parser.error(f"'titan {args.command}' takes nothing after --")
    serving = args.command in ("broker", "worker", "up")
    _setup_logging(args.log_level or ("INFO" if serving else "WARNING"))
    if getattr(args, "keys", None) and args.command != "keys":
        # One place for every role: the broker's and workers' settings, clients, and processes started here.
        os.environ["TITAN_KEYS"] = os.path.abspath(args.keys)
    try:
        if args.command == "submit":
            return job_cli.cmd_submit(args, rest)
        if args.command == "deploy":
            return client_cli.cmd_deploy(args, rest)
        if args.command == "schedule":
            return client_cli.cmd_schedule(args, rest)
        handler = {
            "broker": serve_cli.cmd_broker, "worker": serve_cli.cmd_worker, "up": serve_cli.cmd_up,
            "status": job_cli.cmd_status, "run": job_cli.cmd_run, "cancel": job_cli.cmd_cancel,
            "workers": job_cli.cmd_workers, "aof": aof_cli.cmd_aof, "kv": client_cli.cmd_kv,
            "logs": client_cli.cmd_logs, "services": client_cli.cmd_services, "stop": client_cli.cmd_stop,
            "approve": client_cli.cmd_decide, "reject": client_cli.cmd_decide, "keys": cmd_keys,
            "dead": retry_cli.cmd_dead, "retry": retry_cli.cmd_retry, "gates": client_cli.cmd_gates,
            "objects": object_cli.cmd_objects, "put": object_cli.cmd_put, "get": object_cli.cmd_get,
            "release": object_cli.cmd_release, "cluster": cluster_cli.cmd_cluster, "mcp": mcp_cli.cmd_mcp,
        }[args.command]  # fmt: skip
        return handler(args)
    except ConfigError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailed as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except TitanError as exc:
        print(f"titan: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`titan status | head`): stop quietly, as command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
