"""The harness: a live broker with one real worker, raw sockets on its front and back, and the checks of each
batch of inputs against the model (answers, log, liveness, memory)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import zmq
from hypothesis import HealthCheck, Phase, settings

from tests.fuzz.inputs import HEALTH_TAG, LIMIT, MAX_FINISHED, NAMES, REAL_WORKER, SENTINEL_RID, FuzzInput
from tests.fuzz.model import Expect, classify
from titan_zmq import protocol as P
from titan_zmq.client import TitanClient
from titan_zmq.errors import ProtocolError, TitanError
from titan_zmq.local import LocalCluster

ROOT = Path(__file__).resolve().parents[2]

class Violation(AssertionError):
    """The broker broke a promise about hostile input."""


@dataclass
class Stats:
    sent: Counter[str] = dataclasses.field(default_factory=Counter)  # "sock COMMAND" -> inputs
    shapes: Counter[str] = dataclasses.field(default_factory=Counter)  # mutation kind -> inputs
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)  # why an input was not sent
    answers: Counter[str] = dataclasses.field(default_factory=Counter)  # "sock KIND[code]" -> messages
    refused: int = 0  # inputs that did not decode (each must get a protocol error)
    errors: int = 0  # protocol/too_large errors received for them
    health_checks: int = 0
    rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (inputs sent, broker RSS bytes)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Harness:
    """A broker with one real worker, two raw DEALERs (front, back), and the checks of each batch."""

    def __init__(self, cluster: LocalCluster, rss_bound: int = 50 << 20, warmup: int = 2000) -> None:
        self.cluster = cluster
        assert cluster.broker is not None
        self.proc = psutil.Process(cluster.broker.pid)
        self.rss_bound, self.warmup = rss_bound, warmup
        self.ctx = zmq.Context()
        self.socks = {name: self._dealer(name) for name in ("front", "back")}
        self.log_path = cluster.log_dir / "broker.log"
        self.log_offset = self.log_path.stat().st_size
        self.stats = Stats()
        self.seq = 0
        self.rss_start = self.rss_peak = self.rss()
        self.rss_warm: int | None = None
        self.next_health = 0
        self.health_every = 5000
        self.on_progress: Callable[[Harness], None] | None = None

    def _dealer(self, port: str) -> zmq.Socket[bytes]:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 10_000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(f"tcp://127.0.0.1:{self.cluster.ports[port]}")
        return s

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)
        self.ctx.term()

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def hwm(self) -> int:
        """The broker's peak RSS so far (Linux VmHWM: catches spikes between samples), else its RSS now."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.rss()

    def alive(self) -> None:
        broker = self.cluster.broker
        if broker is None or broker.poll() is not None:
            rc = None if broker is None else broker.returncode
            raise Violation(f"the broker died (exit status {rc}); log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def new_log(self) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            data = fh.read()
        self.log_offset += len(data)
        return data.decode(errors="replace")

    # ---- one batch ------------------------------------------------------------------------------------

    def check(self, batch: list[FuzzInput]) -> None:
        """Send a batch (unsafe inputs left out), read every answer, and check them; raise Violation."""
        todo = []
        for inp in batch:
            why, e = classify(inp)
            if why:
                self.stats.skipped[why] += 1
            else:
                todo.append((inp, e))
        try:
            self._exchange(todo)
        except Violation as exc:
            text = self.new_log()
            if "Traceback" in text:
                raise Violation(f"{exc}\nThe broker logged:\n{text[-3000:]}") from None
            raise
        text = self.new_log()
        if "Traceback" in text:
            culprit = self._pinpoint(todo) if len(todo) > 1 else (todo[0][0] if todo else None)
            raise Violation(
                f"the broker logged a traceback handling {culprit!r} (batch of {len(todo)}):\n{text[-3000:]}"
            )
        total = self.stats.total
        if self.on_progress is not None:
            self.on_progress(self)
        if total >= self.next_health:
            self.next_health = total + self.health_every
            self.health()

    def _exchange(self, todo: list[tuple[FuzzInput, Expect]]) -> None:
        exp: dict[str, list[tuple[FuzzInput, Expect]]] = {"front": [], "back": []}
        for inp, e in todo:
            exp[inp.sock].append((inp, e))
            self.stats.sent[f"{inp.sock} {inp.label.partition('/')[0]}"] += 1
            self.stats.shapes[inp.label.partition("/")[2]] += 1
            if e.error is not None:
                self.stats.refused += 1
            self.socks[inp.sock].send_multipart(list(inp.frames))
        self.seq += 1
        sentinel_rid = SENTINEL_RID + self.seq
        sentinel_version = b"~sentinel%07d" % (self.seq % 10_000_000)
        self.socks["front"].send_multipart(P.Hello(rid=sentinel_rid).encode())
        self.socks["back"].send_multipart([sentinel_version, P.HELLO, b""])
        front, back = self._collect(sentinel_rid, sentinel_version, len(todo))
        self._check_front(exp["front"], front)
        self._check_back(exp["back"], back)

    def _collect(self, rid: int, version: bytes, n: int) -> tuple[list[P.Message], list[P.Error]]:
        """Answers on the front (DONE pushes left out) and errors on the back, up to the sentinels."""
        front: list[P.Message] = []
        back: list[P.Error] = []
        done = {"front": False, "back": False}
        poller = zmq.Poller()
        for s in self.socks.values():
            poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + 20 + n * 0.05
        marker = repr(version)
        while not (done["front"] and done["back"]):
            left = deadline - time.monotonic()
            if left <= 0:
                self.alive()
                missing = [k for k, v in done.items() if not v]
                raise Violation(f"no sentinel answer on {missing} within the deadline; the broker hangs or lost "
                                f"answers (front answers so far: {len(front)}, back errors: {len(back)})")  # fmt: skip
            for sock, _ in poller.poll(int(min(left, 1.0) * 1000)):
                side = "front" if sock is self.socks["front"] else "back"
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = P.decode(frames)
                    except ProtocolError as exc:
                        raise Violation(f"{side}: the broker sent a message that does not decode ({exc}): "
                                        f"{frames!r}") from None  # fmt: skip
                    kind = NAMES[msg.CODE] + (f"[{msg.code}]" if isinstance(msg, P.Error) else "")
                    if side == "front":
                        if isinstance(msg, P.Reply) and msg.rid == rid:
                            done["front"] = True
                            continue
                        self.stats.answers[f"front {kind}"] += 1
                        if not isinstance(msg, P.Done):
                            front.append(msg)
                    else:
                        if isinstance(msg, P.Error) and marker in msg.message:
                            done["back"] = True
                            continue
                        self.stats.answers[f"back {kind}"] += 1
                        if isinstance(msg, P.Error):
                            back.append(msg)
            if not (done["front"] and done["back"]):
                self.alive()
        return front, back

    def _check_front(self, exp: list[tuple[FuzzInput, Expect]], got: list[P.Message]) -> None:
        for i, (inp, e) in enumerate(exp):
            if i >= len(got):
                raise Violation(f"front: no answer to {inp!r} (answers to the {len(got)} before it came)")
            ans = got[i]
            if e.error is not None:
                code, rid, text = e.error
                if not (isinstance(ans, P.Error) and (ans.code, ans.rid, ans.message) == (code, rid, text)):
                    raise Violation(f"front: {inp!r} must get ERROR {code} rid {rid} {text!r}, got {ans!r}")
                self.stats.errors += 1
            else:
                rid = getattr(e.msg, "rid", 0)
                if not isinstance(ans, (P.Reply, P.Error)) or ans.rid != rid:
                    raise Violation(f"front: {inp!r} (decodes as {e.msg!r}) must get a REPLY or ERROR of rid {rid}, "
                                    f"got {ans!r}")  # fmt: skip
        if len(got) > len(exp):
            raise Violation(f"front: {len(got) - len(exp)} answer(s) more than inputs: {got[len(exp) :][:3]!r}")

    def _check_back(self, exp: list[tuple[FuzzInput, Expect]], got: list[P.Error]) -> None:
        want = [(inp, e.error) for inp, e in exp if e.error is not None]
        for i, (inp, err) in enumerate(want):
            assert err is not None
            if i >= len(got):
                raise Violation(f"back: no ERROR for {inp!r} ({len(got)} errors came for {len(want)} refused inputs)")
            ans = got[i]
            if (ans.code, ans.rid, ans.message) != err:
                raise Violation(f"back: {inp!r} must get ERROR {err!r}, got {ans!r}")
            self.stats.errors += 1
        if len(got) > len(want):
            raise Violation(
                f"back: ERRORs for valid messages: {got[len(want) :][:3]!r}; inputs {[i for i, _ in exp]!r}"
            )

    def _pinpoint(self, todo: list[tuple[FuzzInput, Expect]]) -> FuzzInput | list[FuzzInput]:
        """Replay a batch one input at a time to find the one that makes the broker log a traceback."""
        for pair in todo:
            self._exchange([pair])
            if "Traceback" in self.new_log():
                return pair[0]
        return [inp for inp, _ in todo]

    # ---- between batches ------------------------------------------------------------------------------

    def health(self) -> None:
        """A fresh client gets a job run to its end, and the broker's memory is within the bound."""
        self.alive()
        n = self.stats.health_checks
        with TitanClient(self.cluster.address, timeout=10) as client:
            handle = client.submit("tests.jobs:add", args=[n, 1], requires=[HEALTH_TAG], priority=2**31)
            try:
                got = handle.result(timeout=30)
            except TitanError as exc:
                raise Violation(f"health check {n}: the job did not complete ({exc})") from None
            if got != n + 1:
                raise Violation(f"health check {n}: wrong result {got!r}")
        self.stats.health_checks += 1
        rss = self.rss()
        self.rss_peak = max(self.rss_peak, rss, self.hwm())
        self.stats.rss.append((self.stats.total, rss))
        if self.rss_warm is None:
            if self.stats.total >= self.warmup:
                self.rss_warm = rss
        elif max(rss, self.rss_peak) - self.rss_warm > self.rss_bound:
            raise Violation(f"broker RSS grew from {self.rss_warm >> 20} MiB after warm-up to {rss >> 20} MiB "
                            f"(peak {self.rss_peak >> 20} MiB; bound +{self.rss_bound >> 20} MiB) after "
                            f"{self.stats.total} inputs")  # fmt: skip


@contextlib.contextmanager
def fuzz_cluster(durable: bool = False, log_dir: str | None = None) -> Iterator[Harness]:
    """A broker (max message 64 KiB, at most 2,000 ended jobs kept) with one real worker, and a harness."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    broker_args = ["--max-message-size", str(LIMIT), "--log-level", "WARNING"]
    with contextlib.ExitStack() as stack:
        if durable:
            import tempfile

            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="titan-fuzz-data-"))
            broker_args += ["--data-dir", data, "--fsync", "no"]
        cluster = LocalCluster(workers=0, broker_args=broker_args, log_dir=log_dir,
                               env={"TITAN_MAX_FINISHED_JOBS": str(MAX_FINISHED)})  # fmt: skip
        stack.enter_context(cluster)
        cluster.add_worker(name=REAL_WORKER, tags=[HEALTH_TAG], slots=2)
        cluster.wait_workers(1)
        harness = Harness(cluster)
        try:
            yield harness
        finally:
            harness.close()


def fuzz_settings(max_examples: int, derandomize: bool) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        # No shrinking: the broker's state moves on between examples; a Violation names its input.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
