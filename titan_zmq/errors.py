"""The one exception tree of titan_zmq.

Every error the project raises on purpose is a :class:`TitanError`. An error that crosses the
wire carries its class's ``code`` (the broker's ERROR frame), and :func:`for_code` turns a code
back into the class on the client, so a code is written in exactly one place: here.
"""

from __future__ import annotations

from typing import Any


class TitanError(Exception):
    """Base class of every error titan_zmq raises on purpose."""

    code = "error"


class ConfigError(TitanError):
    """A setting is missing, malformed or out of range."""

    code = "config"


class ProtocolError(TitanError):
    """A message on the wire is malformed, unknown, too large or of another version."""

    code = "protocol"


class PayloadTooLarge(ProtocolError):
    """A message is larger than the configured size limit."""

    code = "too_large"


class BrokerUnavailable(TitanError):
    """The broker did not answer within the timeout."""

    code = "unavailable"


class BrokerError(TitanError):
    """The broker refused a request; the message says why."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None and code != type(self).code:
            self.code = code  # a code this version has no class for (from a newer broker)


class NotLeader(BrokerError):
    """The member asked is not the group's leader now; the reply names the leader when it knows one."""

    code = "not_leader"


class BadRequest(BrokerError):
    """A request names an operation or value the broker does not have (an unknown state, a bad verb)."""

    code = "bad_request"


class Conflict(BrokerError):
    """A request contradicts the broker's state (an id taken by another job, an edge into a started job)."""

    code = "conflict"


class UnknownJob(BrokerError):
    """No job with this id is known to the broker."""

    code = "unknown_job"


class UnknownService(BrokerError):
    """No service with this name is deployed."""

    code = "unknown_service"


class UnknownSchedule(BrokerError):
    """No schedule with this name exists."""

    code = "unknown_schedule"


class NotRunning(BrokerError):
    """A service has no running replica to give the address of (yet)."""

    code = "not_running"


class KVTypeError(BrokerError):
    """A KV operation met a value of the wrong type (``incr`` on a set, ``smembers`` on a string)."""

    code = "kv_type"


class LimitExceeded(BrokerError):
    """A configured limit of the broker refused the request; the message names the limit and how to raise it."""

    code = "limit"


class Forbidden(BrokerError):
    """The key this connection authenticated with may not make this request (a worker key submitting jobs)."""

    code = "forbidden"


class UnknownObject(BrokerError):
    """No object with this id is known (never made, or freed); the message names it."""

    code = "unknown_object"


class ObjectError(TitanError):
    """An object could not be stored, read or moved."""

    code = "object"


class ObjectStoreFull(ObjectError):
    """A store refused an object: it would pass the store's size limit, or the disk is full."""

    code = "store_full"


class TransferError(ObjectError):
    """An object could not be fetched from a holder (gone, unreachable, a bad checksum)."""

    code = "transfer"


class ObjectCorrupt(ObjectError):
    """A stored or received object does not match its format or its checksum."""

    code = "object_corrupt"


class JobError(TitanError):
    """A job specification is invalid."""

    code = "bad_job"


class ExprError(JobError):
    """A ``when:`` expression is not allowed, or failed to evaluate."""


class PipelineError(JobError):
    """A YAML pipeline is malformed; the message names the file, the line and the key."""


class IterationLimit(JobError):
    """A feedback loop reached its bound: the successor was not spawned."""


class JobFailed(TitanError):
    """A job ended without success; carries its record and the remote traceback."""

    code = "job_failed"

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record

    @property
    def remote_traceback(self) -> str | None:
        """The traceback the job raised on its worker, if it was a Python error."""
        return getattr(self.record, "traceback", None)


class JobTimeout(JobFailed):
    """A job ran past its timeout and was killed."""


class JobCancelled(JobFailed):
    """A job was cancelled before it could finish."""


class WaitTimeout(TitanError, TimeoutError):
    """Waiting for a job's result took longer than the caller allowed."""

    code = "wait_timeout"


class AOFCorrupt(TitanError):
    """The broker's journal is damaged in a way a crash does not explain; the message names file and offset."""

    code = "aof_corrupt"


class JournalWriteError(TitanError):
    """The journal could not be written; nothing unwritten was acknowledged."""

    code = "journal_write"


class DataDirLocked(TitanError):
    """Another broker (or ``titan aof``) is using this data directory."""

    code = "data_dir_locked"


class ServiceFailed(TitanError):
    """A service could not be kept running (a crash loop, a port in use, a start that failed)."""

    code = "service_failed"


class Refused(TitanError):
    """A call that the caller's policy does not allow (``titan mcp --read-only``, an allow-list of
    job kinds or targets): nothing was sent to the broker."""

    code = "refused"


class ForkServerError(TitanError):
    """The fork server could not start a job; the caller spawns it fresh instead."""

    code = "fork_server"


def _tree(cls: type[TitanError]) -> list[type[TitanError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_tree(sub))
    return out


def for_code(code: str) -> type[TitanError]:
    """The error class whose ``code`` this is (the first defined, for codes subclasses inherit);
    :class:`BrokerError` for a code this version does not know."""
    for cls in _tree(TitanError)[1:]:
        if cls.code == code:
            return cls
    return BrokerError


def from_wire(code: str, message: str) -> TitanError:
    """The exception a client raises for the broker's ERROR frame ``(code, message)``."""
    cls = for_code(code)
    if issubclass(cls, BrokerError):
        return cls(message, code)
    return cls(message)
