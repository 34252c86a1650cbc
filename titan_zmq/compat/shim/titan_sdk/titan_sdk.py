"""``titan_sdk.titan_sdk``: the module path the original's scripts sometimes import from."""

from titan_zmq.compat.sdk import TitanClient, TitanJob

__all__ = ["TitanClient", "TitanJob"]
