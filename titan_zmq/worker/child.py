"""The process that runs `call` jobs, one at a time, for a worker.

It is started by the worker with two pipe descriptors: it reads jobs from the
first and writes outcomes to the second, each a ``[u32 length][msgpack]`` frame.
Its stdout and stderr are pipes the worker reads, so whatever a job prints is
captured. A job that crashes or hangs this process costs the worker nothing but
a new child.

Run as ``python -m titan_zmq.worker.child READ_FD WRITE_FD [MEMORY_MB]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import struct
import sys
import traceback
from types import ModuleType
from typing import Any

import msgpack

_HEADER = struct.Struct("!I")
_main_modules: dict[str, ModuleType] = {}


def read_frame(fd: int) -> bytes | None:
    """Read one length-prefixed frame; None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = _HEADER.unpack(head)
    body = _read_exact(fd, n)
    if body is None:
        return None
    return body


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_frame(fd: int, body: bytes) -> None:
    data = _HEADER.pack(len(body)) + body
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_resolved: dict[tuple[str, str | None], Any] = {}
_inputs_param: dict[Any, bool] = {}


def _takes_inputs(fn: Any) -> bool:
    """Whether ``fn`` has a parameter named ``inputs`` (or ``**kwargs``) for its parents' results."""
    known = _inputs_param.get(fn)
    if known is None:
        import inspect

        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        known = any(p.name == "inputs" or p.kind is p.VAR_KEYWORD for p in params)
        _inputs_param[fn] = known
    return known


def resolve(target: str, module_path: str | None, sha: str | None) -> Any:
    """Find the function ``module:qualname`` (cached); a ``__main__`` module comes from ``module_path``."""
    key = (target, sha)
    fn = _resolved.get(key)
    if fn is None:
        fn = _resolved[key] = _resolve(target, module_path, sha)
    return fn


def _resolve(target: str, module_path: str | None, sha: str | None) -> Any:
    mod_name, _, qual = target.partition(":")
    if mod_name == "__main__":
        if module_path is None or sha is None:
            raise ImportError("the job calls a function of __main__ but its module source was not shipped")
        mod = _main_modules.get(sha)
        if mod is None:
            spec = importlib.util.spec_from_file_location("__titan_main__", module_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load the shipped __main__ module from {module_path}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules["__titan_main__"] = mod
            spec.loader.exec_module(mod)
            _main_modules[sha] = mod
    else:
        mod = importlib.import_module(mod_name)
    obj: Any = mod
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {mod_name!r} has no attribute {qual!r}") from None
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run one call job and describe its outcome."""
    saved_env: dict[str, str | None] = {}
    for k, v in (job.get("env") or {}).items():
        saved_env[k] = os.environ.get(k)
        os.environ[k] = v
    try:
        fn = resolve(job["target"], job.get("module_path"), job.get("blob"))
        kwargs = job.get("kwargs", {})
        if "inputs" in job and _takes_inputs(fn):
            kwargs = {**kwargs, "inputs": job["inputs"]}  # parents' results, by parent id
        value = fn(*job.get("args", ()), **kwargs)
        return {"outcome": "succeeded", "result": value}
    except BaseException as exc:  # the job's own failure, whatever it is, is its outcome
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        return {
            "outcome": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "error_type": type(exc).__name__,
            "traceback": tb,
        }
    finally:
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def main(argv: list[str]) -> int:
    rfd, wfd = int(argv[0]), int(argv[1])
    # Processes a job starts must not hold these pipes: a crash here has to close them.
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    if len(argv) > 2 and argv[2] != "0":
        import resource

        limit = int(argv[2]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    while True:
        frame = read_frame(rfd)
        if frame is None:
            return 0
        job = msgpack.unpackb(frame, raw=False)
        os.environ["TITAN_JOB_ID"] = job["id"]
        os.environ["TITAN_ATTEMPT"] = str(job.get("attempt", 1))
        os.environ["TITAN_DAG_ID"] = job.get("dag") or ""
        os.environ["TITAN_ITERATION"] = str((job.get("labels") or {}).get("titan.iteration", "0"))
        out = run_one(job)
        out["id"] = job["id"]
        try:
            packed = msgpack.packb(out, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            value = out.get("result")
            packed = msgpack.packb(
                {
                    "id": job["id"],
                    "outcome": "failed",
                    "error": f"the result of type {type(value).__name__} cannot be sent back ({exc}); "
                    "return msgpack values: None, bool, int, float, str, bytes, list, dict",
                    "error_type": "ResultNotSerializable",
                },
                use_bin_type=True,
            )
        write_frame(wfd, packed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
