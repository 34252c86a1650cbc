"""The broker: routes jobs to workers, tracks their progress, survives their failures."""

from titan_zmq.broker.loop import Broker
from titan_zmq.broker.scheduler import Scheduler

__all__ = ["Broker", "Scheduler"]
