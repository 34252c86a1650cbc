"""The quick start: an embedded local cluster runs a function, a shell command and a script.

pip install . && python examples/quickstart.py
"""

from __future__ import annotations

import math
from pathlib import Path

from titan_zmq import LocalCluster


def hypotenuse(a: float, b: float) -> float:
    """Runs on a worker: this file is shipped to it, as multiprocessing would."""
    return math.hypot(a, b)


def main() -> None:
    with LocalCluster(workers=2) as cluster:
        client = cluster.client()
        print("workers:", ", ".join(f"{w['name']} {w['tags']}" for w in client.workers()))

        job = client.submit(hypotenuse, args=[3, 4])
        print("hypotenuse(3, 4) =", job.result(timeout=30))

        print("factorials 0..9:", client.map(math.factorial, range(10)))

        shell = client.submit(shell="echo hello from $(hostname), job $TITAN_JOB_ID").wait(30)
        print("shell:", shell.stdout.strip(), f"(exit {shell.exit_code}, on {shell.worker})")

        script = Path(__file__).with_name("hello_script.py")
        rec = client.submit(script=str(script), args=["world"]).wait(30)
        print("script:", rec.stdout.strip())


if __name__ == "__main__":
    main()
