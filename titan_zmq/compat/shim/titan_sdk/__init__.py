"""``titan_sdk``, as titan_zmq provides it: the original Titan SDK's names, from :mod:`titan_zmq.compat.sdk`."""

from titan_zmq.compat.sdk import TitanClient, TitanJob

__all__ = ["TitanClient", "TitanJob"]
