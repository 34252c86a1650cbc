"""What one fuzz input is, and the fixed vocabulary the strategies, the model and the harness share:
the fuzzed broker's limits, the names and ids fuzzed messages draw from, the command codes per socket."""

from __future__ import annotations

from dataclasses import dataclass

from titan_zmq import protocol as P

LIMIT = 64 * 1024  # the fuzzed broker's max_message_size
SLACK = 64 * 1024  # broker/loop.py _HARD_SLACK: a frame above LIMIT + SLACK costs the connection, so none is sent
HEALTH_TAG = "fuzz-health"  # only the real worker has it: health jobs run there and nowhere else
NEVER_TAG = "fuzz-nobody"  # no worker has it: a fuzzed service that deploys is placed nowhere
REAL_WORKER = "fuzz-real-worker"
SAFE_TARGETS = ("tests.jobs:noop", "tests.jobs:add")
SERVICE_NAMES = ("fuzz-svc-0", "fuzz-svc-1")
SCHEDULE_NAMES = ("fuzz-sched-0", "fuzz-sched-1")
JOB_IDS = tuple(f"fz-{i}" for i in range(24))  # fuzzed jobs share these ids: conflicts, status, edges, cancels
KV_KEYS = ("k0", "k1", "k2", "counter", "set")
MAX_FINISHED = 2000  # the fuzzed broker's max_finished_jobs: what it keeps of ended jobs is bounded
SENTINEL_RID = 2**62  # + sequence number: HELLO rids that mark the end of a batch on the front socket

NAMES = {code: cls.__name__.upper() for code, cls in P.MESSAGES.items()}
ALL_CODES = tuple(sorted(P.MESSAGES))
SOCKET_CODES = {"front": tuple(sorted(P.FRONT_COMMANDS)), "back": tuple(sorted(P.BACK_COMMANDS))}
ALLOWED = {"front": P.FRONT_COMMANDS, "back": P.BACK_COMMANDS}


@dataclass(frozen=True)
class FuzzInput:
    """One message to send: which socket, its frames, and what it is (``command/mutation``)."""

    sock: str
    frames: tuple[bytes, ...]
    label: str

    def __repr__(self) -> str:  # frames in full up to 4 KiB each: a reproducer to paste
        shown = [repr(f) if len(f) <= 4096 else f"{f[:256]!r} + ... ({len(f)} bytes)" for f in self.frames]
        return f"FuzzInput({self.sock!r}, [{', '.join(shown)}], {self.label!r})"

