"""Route a job to a GPU worker: the worker finds its GPU with nvidia-smi and gets the tags gpu and gpu:<model>.

    python examples/gpu_job.py          # on a machine with an NVIDIA GPU (and, for the matmul, PyTorch)

On a machine without a GPU the job waits ("waiting for a worker with tags {gpu}") and the
example says so after a few seconds.
"""

from __future__ import annotations

import sys
from typing import Any

from titan_zmq import LocalCluster
from titan_zmq.errors import WaitTimeout


def on_gpu(n: int) -> dict[str, Any]:
    """Runs on the GPU worker: a matrix product on the device, if PyTorch is there."""
    import os

    out: dict[str, Any] = {"worker": os.environ.get("TITAN_WORKER")}
    try:
        import torch
    except ImportError:
        out["torch"] = "not installed"
        return out
    a = torch.randn(n, n, device="cuda")
    out["device"] = torch.cuda.get_device_name(0)
    out["trace"] = float((a @ a.T).trace().item())
    return out


def main() -> int:
    with LocalCluster(workers=0) as cluster:
        cluster.add_worker(name="cpu-box", env={"TITAN_GPU_PROBE": "false"})
        cluster.add_worker(name="gpu-box", env={"TITAN_GPU_PROBE": "true"})
        client = cluster.client()
        cluster.wait_workers(2)
        for w in client.workers():
            print(f"worker {w['name']}: tags {w['tags']}")
        job = client.submit(on_gpu, args=[1024], requires=["gpu"])
        try:
            rec = job.wait(timeout=60 if any("gpu" in w["tags"] for w in client.workers()) else 3)
        except WaitTimeout:
            print("no GPU worker:", client.status(job.id).waiting)
            return 1
        print(f"job {rec.id} {rec.state.value} on {rec.worker}: {rec.result or rec.error}")
        return 0 if rec.ok else 1


if __name__ == "__main__":
    sys.exit(main())
