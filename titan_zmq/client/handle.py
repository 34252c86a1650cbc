"""A submitted job (:class:`JobHandle`), and the exception for a job that did not succeed (:func:`raise_for`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from titan_zmq.errors import JobCancelled, JobFailed, JobTimeout
from titan_zmq.job import JobRecord, JobState

if TYPE_CHECKING:
    from titan_zmq.client.client import TitanClient


def raise_for(record: JobRecord) -> None:
    """Raise the exception that matches a job that did not succeed."""
    if record.state is JobState.SUCCEEDED:
        return
    where = f" on {record.worker}" if record.worker else ""
    msg = f"job {record.id} {record.state.value}{where} after {record.attempts} attempt(s): {record.error}"
    if record.traceback:
        msg += "\n--- remote traceback ---\n" + record.traceback.rstrip()
    if record.state is JobState.CANCELLED:
        raise JobCancelled(msg, record)
    if record.error_type == "Timeout":
        raise JobTimeout(msg, record)
    raise JobFailed(msg, record)


class JobHandle:
    """A submitted job: its id, and ways to wait for it, ask about it, or cancel it."""

    def __init__(self, client: TitanClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Block until the job ends; return its final record whatever the outcome."""
        return self.client.wait([self.id], timeout)[self.id]

    def result(self, timeout: float | None = None, fetch: bool = True) -> Any:
        """Block until the job ends; return its result or raise JobFailed / JobTimeout / JobCancelled.
        A result its worker kept as an object (a large one) is fetched from there, unless ``fetch`` is
        False: then its ObjectRef comes back, to pass on to other jobs or to ``client.get`` later."""
        rec = self.wait(timeout)
        raise_for(rec)
        if fetch:
            return self.client.fetch_result(rec.result)
        from titan_zmq.objects.codec import as_ref

        return as_ref(rec.result) or rec.result

    def status(self) -> JobRecord:
        return self.client.status(self.id)

    def cancel(self) -> JobRecord:
        return self.client.cancel(self.id)
