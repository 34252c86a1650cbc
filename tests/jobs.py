"""Functions the tests run as `call` jobs (imported by the workers as tests.jobs)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


def noop(x: Any = None) -> Any:
    return x


def echo_env(name: str) -> str | None:
    return os.environ.get(name)


def whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "worker": os.environ.get("TITAN_WORKER"), "attempt": os.environ.get("TITAN_ATTEMPT")}


def boom(msg: str = "boom") -> None:
    raise ValueError(msg)


def talk(n: int) -> int:
    for i in range(n):
        print(f"out line {i}")
    print("to stderr", file=sys.stderr)
    return n


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def crash() -> None:
    os._exit(7)


def hog_memory(mb: int) -> int:
    blob = bytearray(mb * 1024 * 1024)
    return len(blob)


def unserializable() -> object:
    return object()


def fail_until(path: str, succeed_on: int) -> int:
    """Fail until this has been called ``succeed_on`` times (counted in a file)."""
    n = 1
    if os.path.exists(path):
        with open(path) as fh:
            n = int(fh.read()) + 1
    with open(path, "w") as fh:
        fh.write(str(n))
    if n < succeed_on:
        raise RuntimeError(f"attempt {n} fails on purpose")
    return n


def write_pid_and_sleep(path: str, seconds: float) -> int:
    with open(path + ".tmp", "w") as fh:  # then renamed: a test that sees the file sees the whole pid
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return os.getpid()


def crash_leaving_a_grandchild() -> None:
    """Start a background process that inherits our descriptors, then die."""
    os.system("sleep 20 &")
    os._exit(7)


def count_words(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def add_counts(*, inputs: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in inputs.values():
        for word, n in counts.items():
            total[word] = total.get(word, 0) + n
    return dict(sorted(total.items()))


def ignore_inputs(x: int) -> int:
    return x * 2


def log_run(path: str, token: str, seconds: float = 0.0) -> str:
    """Append ``token start end pid`` to ``path`` (one line per execution, O_APPEND), sleeping ``seconds``."""
    start = time.time()
    if seconds:
        time.sleep(seconds)
    line = f"{token} {start:.6f} {time.time():.6f} {os.getpid()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return token


def kv_from_inside(key: str) -> Any:
    """Use the broker's KV store from inside a job (TITAN_BROKER is set by the worker)."""
    from titan_zmq.client import TitanClient

    with TitanClient() as client:
        n = client.kv.incr(key)
        client.kv.sadd(key + ":workers", os.environ.get("TITAN_WORKER", "?"))
        return n


def chatty(n: int, tag: str = "x") -> int:
    """Print ``n`` lines to stdout and one to stderr."""
    for i in range(n):
        print(f"{tag} {i}")
    print(f"{tag} done", file=sys.stderr)
    return n


def fan_out(n: int) -> list[str]:
    """Spawn n squares and a sum that waits for all of them (a DAG grown at run time)."""
    import titan_zmq

    ctx = titan_zmq.current()
    parts = [ctx.spawn("tests.jobs:square", args=[i]) for i in range(n)]
    total = ctx.spawn("tests.jobs:sum_inputs", after=parts)
    return [*parts, total]


def square(x: int) -> int:
    return x * x


def sum_inputs(*, inputs: dict[str, int]) -> int:
    return sum(inputs.values())


def fragile_until(key: str, succeed_at: int, max_iterations: int) -> str:
    """Fail-prone work in a feedback loop: count tries in the KV store; spawn a successor until one succeeds."""
    import titan_zmq

    ctx = titan_zmq.current()
    tries = ctx.kv.incr(key)
    if tries < succeed_at:
        ctx.successor("tests.jobs:fragile_until", args=[key, succeed_at, max_iterations], max_iterations=max_iterations)
        return f"try {tries} failed; successor spawned"
    return f"succeeded on try {tries} (iteration {ctx.iteration})"


def spawn_a_cycle() -> str:
    import titan_zmq

    ctx = titan_zmq.current()
    a, b = f"{ctx.dag_id}.cyc-a", f"{ctx.dag_id}.cyc-b"
    specs = [ctx.client.build("tests.jobs:noop", id=a, depends_on=[b]), ctx.client.build("tests.jobs:noop", id=b,
             depends_on=[a])]  # fmt: skip
    try:
        ctx.spawn_many(specs)
    except Exception as exc:
        return f"refused: {exc}"
    return "accepted"


def wire_later(path: str) -> list[str]:
    """Spawn two jobs, then add an edge between them; also try an edge into this running job."""
    import titan_zmq

    ctx = titan_zmq.current()
    first = ctx.spawn("tests.jobs:log_run", args=[path, "first", 0.5], delay=0.3)
    second = ctx.spawn("tests.jobs:log_run", args=[path, "second"], delay=0.3)
    ctx.add_edge(first, second)
    try:
        ctx.add_edge(first, ctx.job_id)
    except Exception as exc:
        return [first, second, str(exc)]
    return [first, second, "accepted"]


def raw_write(text: str) -> int:
    """Write to descriptor 1 directly, as C code or a subprocess would, bypassing sys.stdout."""
    return os.write(1, text.encode())


def append_line(path: str, line: str) -> str:
    """Append ``line`` to the file at ``path`` (the order jobs ran in); returns it."""
    with open(path, "a") as fh:
        fh.write(line + "\n")
    return line


def wait_for_file(path: str, limit: float = 30.0) -> bool:
    """A gate the test opens: return True once ``path`` exists, False if it did not within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
