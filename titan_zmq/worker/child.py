"""The process that runs `call` jobs, one at a time, for a worker.

It is started by the worker with three pipe descriptors: it reads jobs from the
first, writes outcomes to the second, and reads skip requests from the third, each
a ``[u32 length][msgpack]`` frame (a job frame holds one job, or a list of them). A
job that crashes or hangs this process costs the worker nothing but a new child.

The worker may send several jobs ahead (a pipeline, for short jobs): they run in
order. A thread reads ``{"skip": id}`` requests as they come, even while a long job
runs: a job not started yet is answered ``skipped`` at once and never runs; one
that started is left alone (the worker kills it if it must). What a job prints through ``sys.stdout`` and
``sys.stderr`` travels as ``{"o": "out"|"err", "d": bytes}`` frames on the outcome
pipe, ahead of the job's outcome, so each line is the job's that was running when
it was written, however far ahead the worker sent the next jobs. Writes straight
to descriptors 1 and 2 (C code, subprocesses) go to pipes the worker reads.

Run as ``python -m titan_zmq.worker.child READ_FD WRITE_FD [MEMORY_MB]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import select
import struct
import sys
import threading
import time
import traceback
from collections import deque
from types import ModuleType
from typing import Any

import msgpack

from titan_zmq.job import Outcome

_HEADER = struct.Struct("!I")
_RECENT = 4096  # started job ids remembered, to tell a late skip request from an early one
_main_modules: dict[str, ModuleType] = {}
# A queued job this process will not run, answered at once to a skip request: the worker's word with
# its call executor, not an Outcome (the worker settles the job: handed back, cancelled...).
SKIPPED = "skipped"
_SUCCEEDED, _FAILED = Outcome.SUCCEEDED, Outcome.FAILED  # bound once: Outcome.X is a lookup per job


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
    n = os.write(fd, data)
    if n < len(data):  # a large frame into a full pipe: the rest as the worker reads
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view) :]


def split_frames(buf: bytearray) -> tuple[list[Any], int]:
    """The whole ``[u32 length][msgpack]`` frames at the start of ``buf``, decoded, and how many
    bytes they took (the caller drops those at once: dropping each frame would copy the rest)."""
    out = []
    view = memoryview(buf)
    end = len(buf)
    pos = 0
    try:
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            out.append(msgpack.unpackb(view[pos + 4 : pos + 4 + n], raw=False, strict_map_key=False))
            pos += 4 + n
    finally:
        view.release()
    return out, pos


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
    if job.get("env"):
        _env_set.clear()  # it may set the TITAN_* ones: the next job sets them again
    for k, v in (job.get("env") or {}).items():
        saved_env[k] = os.environ.get(k)
        os.environ[k] = v
    try:
        fn = resolve(job["target"], job.get("module_path"), job.get("blob"))
        args, kwargs, inputs = job.get("args", ()), job.get("kwargs", {}), job.get("inputs")
        if "object_paths" in job:  # objects it receives: read in place from the worker's store
            from titan_zmq.worker.child_objects import resolve as resolve_objects

            args, kwargs, inputs = resolve_objects(job)
        if "inputs" in job and _takes_inputs(fn):
            kwargs = {**kwargs, "inputs": inputs}  # parents' results, by parent id
        value = fn(*args, **kwargs)
        return {"outcome": _SUCCEEDED, "result": value}
    except BaseException as exc:  # the job's own failure, whatever it is, is its outcome
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        return {
            "outcome": _FAILED,
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


_env_set: dict[str, str] = {}  # what _set_env last set each variable to


def _set_env(name: str, value: str) -> None:
    """Set a variable only when it changes: each write is a putenv, each read of os.environ
    encodes and decodes, and most of these stay the same job to job. (A job that sets one of
    these variables itself changes them for itself only while the next job's value differs.)"""
    if _env_set.get(name) != value:
        os.environ[name] = value
        _env_set[name] = value


class Outbox:
    """The outcome pipe: outcomes and output frames, each written whole (two threads write)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        self.write(msgpack.packb(msg, use_bin_type=True))

    def write(self, body: bytes) -> None:
        with self.lock:
            write_frame(self.fd, body)


class JobStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a job: whole lines go to the worker as frames, in order with outcomes."""

    def __init__(self, stream: str, outbox: Outbox, fd: int) -> None:
        super().__init__()
        self.stream = stream
        self.outbox = outbox
        self._fd = fd
        self._parts: list[str] = []
        self._size = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd  # writes through the descriptor reach the worker's pipe for it

    @property
    def buffer(self) -> Any:  # binary writes go through the descriptor, after what is waiting here
        self.flush()
        return (sys.__stdout__ if self.stream == "out" else sys.__stderr__).buffer  # type: ignore[union-attr]

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._parts.append(s)
        self._size += len(s)
        if "\n" in s or "\r" in s or self._size >= 8192:
            self.flush()
        return len(s)

    def flush(self) -> None:
        if self._parts:
            data = "".join(self._parts).encode("utf-8", "replace")
            self._parts.clear()
            self._size = 0
            self.outbox.send({"o": self.stream, "d": data})


class Inbox:
    """Jobs from the worker, read ahead of the job that runs, and the skip requests for them."""

    def __init__(self, fd: int, outbox: Outbox) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.outbox = outbox
        self.buf = bytearray()
        self.jobs: deque[dict[str, Any]] = deque()
        self.skip: set[str] = set()  # answered already; dropped when read
        self.started: deque[str] = deque(maxlen=_RECENT)  # ids started lately (a skip comes too late for them)
        self.started_set: set[str] = set()
        self.lock = threading.Lock()
        self.open = True

    def pull(self, block: bool) -> None:
        """Read what the pipe holds; with ``block``, wait for at least one job (or the end)."""
        while self.open:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                if block and not self.jobs:
                    select.select([self.fd], [], [])
                    continue
                return
            if not chunk:
                self.open = False
                return
            self.buf += chunk
            msgs, used = split_frames(self.buf)
            del self.buf[:used]
            with self.lock:
                for frame in msgs:
                    for msg in frame if type(frame) is list else (frame,):  # the worker frames a batch as a list
                        if msg["id"] in self.skip:
                            self.skip.discard(msg["id"])
                        else:
                            self.jobs.append(msg)

    def next(self) -> dict[str, Any] | None:
        """The next job to run, now counted as started."""
        with self.lock:
            if not self.jobs:
                return None
            job = self.jobs.popleft()
            if len(self.started) == self.started.maxlen:
                self.started_set.discard(self.started[0])
            self.started.append(job["id"])
            self.started_set.add(job["id"])
            return job

    def skip_requests(self, fd: int) -> None:
        """The skip thread: answer each request at once, for a job that has not started."""
        buf = bytearray()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            requests, used = split_frames(buf)
            del buf[:used]
            for request in requests:
                jid = request["skip"]
                with self.lock:
                    if jid in self.started_set or jid in self.skip:
                        continue  # it runs or ran: the worker hears of it as usual
                    kept = [job for job in self.jobs if job["id"] != jid]
                    if len(kept) == len(self.jobs):
                        self.skip.add(jid)  # still in the job pipe: dropped when read
                    else:
                        self.jobs = deque(kept)
                    self.outbox.send({"id": jid, "outcome": SKIPPED})


_INLINE_MAX = int(os.environ.get("TITAN_INLINE_MAX") or 0)  # results packed larger are stored as objects
_BUFFERS = (bytes, bytearray, memoryview)


def _packed(out: dict[str, Any]) -> bytes:
    """An outcome for the pipe. A success whose result is too large to go inline, or that msgpack
    cannot carry, is stored as an object first (``child_objects``), and carries its reference."""
    if _INLINE_MAX and out.get("outcome") == _SUCCEEDED:
        value = out.get("result")
        if type(value) in _BUFFERS or hasattr(value, "nbytes"):  # a buffer: its size, without packing it
            from titan_zmq.worker.child_objects import is_big

            big = is_big(value, _INLINE_MAX)
        else:
            big = False
        if not big:
            try:
                body = msgpack.packb(out, use_bin_type=True)
            except (TypeError, ValueError, OverflowError):
                big = True
            else:
                if len(body) <= _INLINE_MAX:
                    return body
        from titan_zmq.worker.child_objects import store_result

        out = store_result(out, _FAILED)
    try:
        return msgpack.packb(out, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        value = out.get("result")
        return msgpack.packb(
            {
                "id": out["id"],
                "outcome": _FAILED,
                "error": f"the result of type {type(value).__name__} cannot be sent back ({exc}); "
                "return msgpack values: None, bool, int, float, str, bytes, list, dict",
                "error_type": "ResultNotSerializable",
                "runtime": out.get("runtime"),
            },
            use_bin_type=True,
        )


def main(argv: list[str]) -> int:
    rfd, wfd, ctl = int(argv[0]), int(argv[1]), int(argv[3])
    # Processes a job starts must not hold these pipes: a crash here has to close them.
    for fd in (rfd, wfd, ctl):
        os.set_inheritable(fd, False)
    if len(argv) > 2 and argv[2] != "0":
        import resource

        limit = int(argv[2]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    outbox = Outbox(wfd)
    inbox = Inbox(rfd, outbox)
    threading.Thread(target=inbox.skip_requests, args=(ctl,), name="titan-skips", daemon=True).start()
    sys.stdout = JobStream("out", outbox, 1)
    sys.stderr = JobStream("err", outbox, 2)
    while True:
        if not inbox.jobs:  # what the worker sent ahead is read in one go, not a read per job
            inbox.pull(block=True)
        job = inbox.next()
        if job is None:
            if not inbox.open:
                return 0  # the worker closed the pipe
            continue
        _set_env("TITAN_JOB_ID", job["id"])
        _set_env("TITAN_ATTEMPT", str(job.get("attempt", 1)))
        _set_env("TITAN_DAG_ID", job.get("dag") or "")
        _set_env("TITAN_ITERATION", str((job.get("labels") or {}).get("titan.iteration", "0")))
        started = time.monotonic()
        out = run_one(job)
        out["id"] = job["id"]
        out["runtime"] = time.monotonic() - started
        outbox.write(_packed(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
