"""The Python client: ``from titan_zmq.client import TitanClient``."""

from titan_zmq.client.client import JobHandle, TitanClient, raise_for
from titan_zmq.client.dag import Dag, DagRun
from titan_zmq.client.feed import LogLine, Subscription
from titan_zmq.client.kv import KV
from titan_zmq.errors import (
    BrokerUnavailable,
    Forbidden,
    JobCancelled,
    JobFailed,
    JobTimeout,
    KVTypeError,
    LimitExceeded,
    PayloadTooLarge,
    UnknownJob,
    WaitTimeout,
)
from titan_zmq.job import JobRecord, JobState

__all__ = [
    "KV",
    "BrokerUnavailable",
    "Dag",
    "DagRun",
    "Forbidden",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobRecord",
    "JobState",
    "JobTimeout",
    "KVTypeError",
    "LimitExceeded",
    "LogLine",
    "PayloadTooLarge",
    "Subscription",
    "TitanClient",
    "UnknownJob",
    "WaitTimeout",
    "raise_for",
]
