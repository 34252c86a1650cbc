"""GPU detection: ask ``nvidia-smi`` which GPUs this host has, and turn them into tags."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

log = logging.getLogger(__name__)


def model_tag(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``gpu:h100-80gb-hbm3``."""
    name = re.sub(r"^(nvidia\s+)", "", name.strip(), flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"gpu:{slug}" if slug else "gpu"


def probe_gpus(command: str = "nvidia-smi", timeout: float = 10.0) -> list[str]:
    """Names of the NVIDIA GPUs ``nvidia-smi`` reports; empty when there is none or no driver."""
    exe = shutil.which(command)
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("GPU probe %s failed: %s; no gpu tag", exe, exc)
        return []
    if out.returncode != 0:
        log.info("GPU probe %s exited %d (%s); no gpu tag", exe, out.returncode, out.stderr.strip()[:200])
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def gpu_tags(command: str = "nvidia-smi") -> list[str]:
    """Tags for this host's GPUs: ``gpu`` and one ``gpu:<model>`` per model."""
    names = probe_gpus(command)
    if not names:
        return []
    return ["gpu", *sorted({model_tag(n) for n in names})]
