"""How the original Titan's words map onto ours: states, arguments, delays, requirements, ids, address."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from typing import Any

from titan_zmq.config import DEFAULT_FRONT
from titan_zmq.errors import JobError
from titan_zmq.job import JobRecord, JobState

# Our states -> the names the original's get_job_status returns. Its PENDING covers everything
# that has not started (waiting on parents, queued, between retries); an approval gate waiting for
# a person shows RUNNING, as the original's gate (a job that polls for the decision) does.
STATE_NAMES: dict[JobState, str] = {
    JobState.PENDING: "PENDING",
    JobState.QUEUED: "PENDING",
    JobState.RETRYING: "PENDING",
    JobState.RUNNING: "RUNNING",
    JobState.AWAITING: "RUNNING",
    JobState.SUCCEEDED: "COMPLETED",
    JobState.FAILED: "FAILED",
    JobState.CANCELLED: "CANCELLED",
    JobState.DEAD: "DEAD",
}
UNKNOWN = "NULL"  # what the original answers for a job (or a key) it does not know
SERVICE_TYPES = ("SERVICE", "DEPLOY_PAYLOAD")
_BAD_ID = re.compile(r"[^A-Za-z0-9_.:@-]")


def state_name(record: JobRecord) -> str:
    """The original's name for the job's state (``REJECTED`` for an approval gate that was rejected)."""
    if record.kind == "approval" and record.state is JobState.FAILED:
        return "REJECTED"
    return STATE_NAMES.get(record.state, record.state.value.upper())


def split_args(args: str | Iterable[Any] | None) -> list[str]:
    """The original gives a job's arguments as one string (``"--epochs 3"``); a list is taken as is."""
    if args is None or args == "":
        return []
    if isinstance(args, str):
        try:
            return shlex.split(args)
        except ValueError:  # an unbalanced quote: split on blanks, as a plain command line would
            return args.split()
    return [str(a) for a in args]


def delay_seconds(delay_ms: float | int | None) -> float | None:
    """``TitanJob.delay`` is in milliseconds; ours in seconds (None: no delay)."""
    if not delay_ms:
        return None
    if float(delay_ms) < 0:
        raise JobError(f"delay must be >= 0 milliseconds, got {delay_ms}")
    return float(delay_ms) / 1000.0


def requirement_tags(requirement: str | None) -> list[str] | None:
    """``GENERAL`` (or nothing) means any worker; another requirement is a worker tag, in lower case
    (the original writes ``GPU``; our workers are tagged ``gpu``). None: no requirement."""
    if requirement is None:
        return None
    tag = requirement.replace("|", "").strip().lower()
    if not tag or tag == "general":
        return None
    return [tag]


def strip_dag_prefix(job_id: str) -> str:
    """The original's master keys a DAG's jobs ``DAG-<id>``; its users pass either form."""
    return job_id[4:] if job_id.startswith("DAG-") else job_id


def safe_id(text: str, limit: int = 60) -> str:
    """``text`` as a valid id of ours (letters, digits, ``_.:@-``, a letter or digit first), at most ``limit`` long."""
    out = _BAD_ID.sub("_", str(text).strip())
    if not out or not out[0].isalnum():
        out = "j" + out
    return out[:limit]


def broker_address(explicit: str | None = None, env: dict[str, str] | None = None) -> str:
    """The broker's ``host:port``: explicit, else the original's TITAN_HOST/TITAN_PORT, else our TITAN_BROKER."""
    if explicit:
        return explicit
    env = dict(os.environ) if env is None else env
    host, port = env.get("TITAN_HOST"), env.get("TITAN_PORT")
    if host or port:
        host = (host or "127.0.0.1").strip()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{(port or str(DEFAULT_FRONT)).strip()}"
    return env.get("TITAN_BROKER") or f"localhost:{DEFAULT_FRONT}"
