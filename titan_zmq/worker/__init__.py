"""The worker: connects to the broker, runs jobs in separate processes, reports results."""

from titan_zmq.worker.connection import Worker

__all__ = ["Worker"]
