# Shared by the orchestrator scripts: poll get_job_status the way the original's users do.
import time

TERMINAL = ("COMPLETED", "FAILED", "DEAD", "CANCELLED", "REJECTED")


def wait_all(client, job_ids, timeout=90):
    deadline = time.time() + timeout
    status = {}
    while time.time() < deadline:
        status = {j: client.get_job_status(f"DAG-{j}") for j in job_ids}
        if all(s in TERMINAL for s in status.values()):
            return status
        time.sleep(0.2)
    raise SystemExit(f"timed out: {status}")
