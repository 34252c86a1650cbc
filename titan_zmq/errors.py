"""The one exception tree of titan_zmq."""

from __future__ import annotations

from typing import Any


class TitanError(Exception):
    """Base class of every error titan_zmq raises on purpose."""


class ConfigError(TitanError):
    """A setting is missing, malformed or out of range."""


class ProtocolError(TitanError):
    """A message on the wire is malformed, unknown, too large or of another version."""


class PayloadTooLarge(ProtocolError):
    """A message is larger than the configured size limit."""


class BrokerUnavailable(TitanError):
    """The broker did not answer within the timeout."""


class BrokerError(TitanError):
    """The broker refused a request; the message says why."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class UnknownJob(BrokerError):
    """No job with this id is known to the broker."""


class JobError(TitanError):
    """A job specification is invalid."""


class JobFailed(TitanError):
    """A job ended without success; carries its record and the remote traceback."""

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


class AOFCorrupt(TitanError):
    """The broker's journal is damaged in a way a crash does not explain; the message names file and offset."""


class DataDirLocked(TitanError):
    """Another broker (or ``titan aof``) is using this data directory."""


class KVTypeError(BrokerError):
    """A KV operation met a value of the wrong type (``incr`` on a set, ``smembers`` on a string)."""


class LimitExceeded(BrokerError):
    """A configured limit of the broker refused the request; the message names the limit and how to raise it."""


class Forbidden(BrokerError):
    """The key this connection authenticated with may not make this request (a worker key submitting jobs)."""


class ServiceFailed(TitanError):
    """A service could not be kept running (a crash loop, a port in use, a start that failed)."""
