"""A warm interpreter for script jobs: a process that has started Python once and forks per job.

Starting ``python script.py`` costs a whole interpreter start (about 20 ms on a lean install,
and 180 ms where ``site`` has many ``.pth`` files to read). The fork server pays it once. For each
script job the worker sends it, over a ``SOCK_SEQPACKET`` socket pair, the job's argv, environment,
working directory and memory limit, with the write ends of the job's stdout and stderr pipes as
``SCM_RIGHTS``. The server forks; the child starts a new session, takes those pipes as its stdout
and stderr, and runs the script as ``__main__`` with ``runpy``, exactly where a fresh interpreter
would run it. The server answers with the child's pid, and reports its exit status when it ends
(negative for a signal, as ``subprocess`` does).

The worker side is :class:`ForkServer`, and :class:`ForkedProcess` looks to the executor like a
``subprocess.Popen``. Jobs whose environment changes what an interpreter reads at start
(``PYTHON*``, ``LD_*``) are spawned fresh instead: a fork could not honour it.

Run as ``python -m titan_zmq.worker.forkserver FD``.
"""

from __future__ import annotations

import atexit
import logging
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import Any, NoReturn

import msgpack

from titan_zmq.errors import ForkServerError
from titan_zmq.process import die_with_parent, kill_tree

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # bytes of one request (argv and environment); larger ones are spawned fresh
STARTUP_VARS = ("PYTHON", "LD_")  # variables an interpreter reads when it starts


def startup_env(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` that only takes effect when an interpreter starts."""
    return {k: v for k, v in env.items() if k.startswith(STARTUP_VARS)}


# ---- the worker's side --------------------------------------------------------------------


class ForkServer:
    """The worker's handle on one fork server process, started on first use."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.startup = startup_env(self.env)
        self.exits: dict[int, int] = {}  # pid -> exit status, reported but not yet collected
        self.live: set[int] = set()  # pids forked and not yet reported
        self.sock: socket.socket | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def fits(self, env: dict[str, str]) -> bool:
        """Whether a job with this environment can be forked rather than spawned."""
        return startup_env(env) == self.startup

    def fileno(self) -> int | None:
        return None if self.sock is None else self.sock.fileno()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "titan_zmq.worker.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=self.env,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        log.info("fork server started, pid %d", self.popen.pid)
        return ours

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None, memory_mb: int | None) -> ForkedProcess:
        """Fork a child that runs ``argv[1:]`` (a script and its arguments) as a fresh interpreter would."""
        body = msgpack.packb({"argv": argv, "env": env, "cwd": cwd, "memory_mb": memory_mb or 0}, use_bin_type=True)
        if len(body) > MAX_REQUEST:
            raise ForkServerError(f"the request is {len(body)} bytes, over {MAX_REQUEST}")
        sock = self.sock or self._start()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                socket.send_fds(sock, [body], [out_w, err_w])
            except OSError as exc:
                self._lost(f"could not send it a job ({exc})")
                raise ForkServerError(str(exc)) from None
            pid = self._await_pid(deadline=time.monotonic() + 10.0)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self.live.add(pid)
        return ForkedProcess(self, pid, out_r, err_r)

    def _await_pid(self, deadline: float) -> int:
        while True:
            for msg in self._receive(block_until=deadline):
                if "pid" in msg:
                    return int(msg["pid"])
                if "error" in msg:
                    raise ForkServerError(str(msg["error"]))
            if self.sock is None:
                raise ForkServerError("the fork server died")
            if time.monotonic() >= deadline:
                self._lost("it did not answer within 10 s")
                raise ForkServerError("the fork server did not answer")

    def pump(self) -> None:
        """Read every exit report waiting (non-blocking)."""
        for msg in self._receive(block_until=None):
            if "pid" in msg:  # an answer nobody waits for any more: its job was given up on
                self.live.add(int(msg["pid"]))

    def _receive(self, block_until: float | None) -> list[dict[str, Any]]:
        """Messages from the server; exit reports are recorded, everything else is returned."""
        sock = self.sock
        if sock is None:
            return []
        if block_until is not None:
            wait = max(0.0, block_until - time.monotonic())
            if not select.select([sock], [], [], wait)[0]:
                return []
        out = []
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(f"its socket failed ({exc})")
                break
            if not data:
                self._lost("it exited")
                break
            msg = msgpack.unpackb(data, raw=False)
            if "exit" in msg:
                pid = int(msg["exit"])
                self.live.discard(pid)
                self.exits[pid] = int(msg["code"])
            else:
                out.append(msg)
        return out

    def _lost(self, why: str) -> None:
        """The server is gone: its children can no longer be reaped through it, so they are killed."""
        log.warning("the fork server failed: %s; its %d job(s) are killed and it restarts on next use",
                    why, len(self.live))  # fmt: skip
        for pid in self.live:
            kill_tree(pid)
            self.exits[pid] = -signal.SIGKILL
        self.live.clear()
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.popen is not None:
            kill_tree(self.popen.pid)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("fork server %d did not exit after SIGKILL", self.popen.pid)
            self.popen = None


class ForkedProcess:
    """A job process forked by the fork server, with the part of ``subprocess.Popen`` the executor uses."""

    def __init__(self, server: ForkServer, pid: int, out_fd: int, err_fd: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = os.fdopen(out_fd, "rb", buffering=0)
        self.stderr = os.fdopen(err_fd, "rb", buffering=0)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump()
            self._collect()
        return self.returncode

    def _collect(self) -> None:
        code = self.server.exits.pop(self.pid, None)
        if code is not None:
            self.returncode = code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if self.server.sock is None and self.pid not in self.server.exits:
                self.returncode = -signal.SIGKILL  # the server died and took the status with it
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            self.server._receive(block_until=min(deadline or now + 0.1, now + 0.1))
            self._collect()
        assert self.returncode is not None
        return self.returncode


# ---- the server's side --------------------------------------------------------------------


class _Become(BaseException):
    """Raised in a freshly forked child: unwinds the server's loop, then the child runs its script.

    Not an error, so not a TitanError: a control-flow signal that only ``main`` catches, and a
    BaseException (like SystemExit) so that no handler of errors on the way can swallow it."""

    def __init__(self, req: dict[str, Any]) -> None:
        super().__init__()
        self.req = req


def serve(fd: int) -> None:
    """Fork one child per request until the worker closes the socket."""
    sock = socket.socket(fileno=fd)
    import ctypes  # noqa: F401  # loaded once here, not in every child (die_with_parent needs it)
    import resource  # noqa: F401

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready = select.select([sock.fileno(), wake_r], [], [])[0]
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        _reap(sock)
        if sock.fileno() in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST + 1024, 2)
            except OSError:
                return
            if not data:
                return  # the worker is gone
            if len(fds) != 2:
                for f in fds:
                    os.close(f)
                _reply(sock, {"error": f"a request came with {len(fds)} descriptors instead of 2"})
                continue
            try:
                req = msgpack.unpackb(data, raw=False)
                pid = os.fork()
            except Exception as exc:
                for f in fds:
                    os.close(f)
                _reply(sock, {"error": f"{type(exc).__name__}: {exc}"})
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                req["fds"] = fds
                raise _Become(req)
            for f in fds:
                os.close(f)
            _reply(sock, {"pid": pid})


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reply(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _reply(sock: socket.socket, msg: dict[str, Any]) -> None:
    try:
        sock.send(msgpack.packb(msg, use_bin_type=True))
    except OSError:
        pass  # the worker is gone; the next recv sees it


def run_script(req: dict[str, Any]) -> int:
    """In the forked child: become the job's interpreter and run its script. Returns the exit status."""
    die_with_parent()
    os.setsid()
    out_fd, err_fd = req["fds"]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for f in (null, out_fd, err_fd):
        os.close(f)
    if req.get("memory_mb"):
        import resource

        limit = int(req["memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if req.get("cwd"):
        os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    script = req["argv"][1]
    sys.argv = list(req["argv"][1:])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:  # what an interpreter prints for an uncaught exception, without our frames
        tb = _script_frames(exc.__traceback__)
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    return _finish(code)


def _finish(code: int) -> NoReturn:
    """What an interpreter does on its way out that a job can see, without tearing down every module.

    Non-daemon threads are joined and atexit functions run, as at a normal exit; then the process
    ends at once. Tearing down the modules the server had imported would cost tens of milliseconds
    per job and nothing a job can observe (Python does not promise finalizers at exit).
    """
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads, as Py_Finalize does
    except BaseException:  # a thread that will not end is interrupted here, as with a Ctrl-C at exit
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _script_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame that is not runpy's or ours."""
    here = os.path.abspath(__file__)
    while tb is not None and (tb.tb_frame.f_code.co_filename in (here, "<frozen runpy>")
                              or tb.tb_frame.f_code.co_filename.endswith("runpy.py")):  # fmt: skip
        tb = tb.tb_next
    return tb


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def main(argv: list[str]) -> int:
    try:
        serve(int(argv[0]))
        return 0
    except _Become as child:
        req = child.req  # outside the handler, so that the script's own exceptions carry no context of ours
    return run_script(req)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
