"""The data plane from the command line: ``titan objects`` (what is held where), ``titan put``
(a file or folder as an artifact), ``titan get`` (an object written out) and ``titan release``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, add_broker_addr: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``objects``, ``put``, ``get`` and ``release`` on the main parser."""
    p = sub.add_parser(
        "objects", parents=[common], help="the objects the grid holds: size, kind, holders, owners",
        description="List the objects the broker knows: results kept on their workers, objects put by "
        "clients and jobs, published artifacts. Each row gives its holders (workers, and @broker for "
        "artifacts kept in its data directory) and who refers to it.",
    )  # fmt: skip
    p.add_argument("--holder", default=None, metavar="WORKER", help="only what this worker holds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_broker_addr(p)
    p = sub.add_parser("put", parents=[common], help="store a file or folder as an artifact; prints its id",
                       description="Upload a file or a folder to a worker's object store, as an artifact. "
                       "Jobs receive it (as a path) when given its reference.")  # fmt: skip
    p.add_argument("path", metavar="PATH")
    p.add_argument("--ttl", type=float, default=None, metavar="S", help="free it after S seconds")
    p.add_argument("--json", action="store_true", help="print the reference as JSON")
    add_broker_addr(p)
    p = sub.add_parser("get", parents=[common], help="write an object out: a file, a folder, or a value's bytes",
                       description="Fetch an object from a holder and write it to DEST (a file or folder "
                       "artifact as itself; a value pickled; bytes as they are).")  # fmt: skip
    p.add_argument("id", metavar="ID")
    p.add_argument("dest", metavar="DEST")
    add_broker_addr(p)
    p = sub.add_parser("release", parents=[common], help="release an object this client's side stored",
                       description="Drop the client's reference to an object (titan put, TitanClient.put); "
                       "it is freed once nothing else refers to it.")  # fmt: skip
    p.add_argument("id", metavar="ID")
    add_broker_addr(p)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _progress(verb: str) -> Any:
    """A progress line on stderr when it is a terminal (None otherwise: scripts read clean output)."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        pct = 100 * done / total if total else 100.0
        bar = "#" * int(pct / 4)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{verb} [{bar:<25}] {pct:5.1f}%  {_size(done)} of {_size(total)}{end}")
        sys.stderr.flush()

    return show


def cmd_objects(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        objs = client.objects(args.holder)
    if args.json:
        print(json.dumps(objs, indent=2))
        return EXIT_OK
    if not objs:
        print("no objects")
        return EXIT_OK
    rows = [("ID", "SIZE", "KIND", "NAME", "HOLDERS", "OWNERS", "MADE BY", "AGE")]
    now = time.time()
    for o in objs:
        owners = ",".join(f"{k}" + (f"x{v}" if v > 1 else "") for k, v in sorted(o["owners"].items()))
        rows.append((o["id"][:16], _size(int(o["size"])), o["kind"], o.get("name") or "-",
                     ",".join(o["holders"]) or "(lost)", owners or "-", o.get("producer") or "-",
                     f"{now - float(o['created']):.0f}s"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    total = sum(int(o["size"]) for o in objs)
    print(f"{len(objs)} object(s), {_size(total)}")
    return EXIT_OK


def cmd_put(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        ref = client.upload(args.path, ttl=args.ttl, progress=_progress("put"))
    if args.json:
        print(json.dumps(dict(ref)))
    else:
        print(ref.id)
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient
    from titan_zmq.objects import ObjectRef

    with TitanClient(args.broker) as client:
        info = client.locate(args.id)
        ref = ObjectRef(info["id"], int(info["size"]), info["kind"], info.get("name"))
        if ref.kind in ("file", "dir"):
            out = client.download(ref, args.dest, progress=_progress("get"))
        else:
            import pickle
            from pathlib import Path

            value = client.get(ref, progress=_progress("get"))
            out = Path(args.dest)
            out.write_bytes(value if isinstance(value, bytes) else pickle.dumps(value, protocol=5))
    print(out, file=sys.stderr)
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from titan_zmq.client import TitanClient

    with TitanClient(args.broker) as client:
        released = client.release(args.id)
    if not released:
        print(f"titan: object {args.id} holds no reference of a client's", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
