"""The KV store, from a client or from inside a job.

::

    from titan_zmq.client import TitanClient
    kv = TitanClient().kv          # inside a job, TITAN_BROKER already names the broker
    kv.set("model:best", {"loss": 0.12})
    kv.incr("epochs")
    kv.sadd("seen", "a", "b")

Values are any msgpack value (None, bool, int, float, str, bytes, lists, maps). Writes are
journaled by a broker started with ``--data-dir``, so they survive its restart.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from titan_zmq import protocol as P

if TYPE_CHECKING:
    from titan_zmq.client.client import TitanClient

class KV:
    """KV operations over a client's connection. Wrong types raise KVTypeError."""

    def __init__(self, client: TitanClient) -> None:
        self._client = client

    def _do(self, op: str, key: str = "", *args: Any) -> Any:
        if op in P.KV_TOKENED:  # sent again after a lost reply (a failover), it must not apply twice
            return self._client.request(P.Kv, op=op, key=key, args=list(args), token=os.urandom(12).hex())
        return self._client.request(P.Kv, op=op, key=key, args=list(args))

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if it is missing (or expired)."""
        return self._do("get", key, default)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; with ``ttl``, it expires after that many seconds."""
        self._do("set", key, value, ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return bool(self._do("delete", key))

    def exists(self, key: str) -> bool:
        return bool(self._do("exists", key))

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (a missing key counts as 0); returns the new value."""
        return int(self._do("incr", key, by))

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Compare and set: store ``new`` only if ``key`` holds ``expected`` (None: only if missing)."""
        return bool(self._do("cas", key, expected, new))

    def sadd(self, key: str, *members: Any) -> int:
        """Add members to the set at ``key``; returns how many were new."""
        return int(self._do("sadd", key, *members))

    def srem(self, key: str, *members: Any) -> int:
        """Remove members from the set at ``key``; returns how many were there."""
        return int(self._do("srem", key, *members))

    def smembers(self, key: str) -> list[Any]:
        """The members of the set at ``key``, sorted (empty if missing)."""
        return list(self._do("smembers", key))

    def keys(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted."""
        return list(self._do("keys", prefix))

    def expire(self, key: str, seconds: float | None) -> bool:
        """Expire ``key`` in ``seconds`` (None: never); False if there is no such key."""
        return bool(self._do("expire", key, seconds))

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if it never does or does not exist."""
        value = self._do("ttl", key)
        return None if value is None else float(value)

    def __getitem__(self, key: str) -> Any:
        value = self._do("get", key, _SENTINEL)
        if value == _SENTINEL:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)


_SENTINEL = "\x00titan:missing\x00"  # travels as a default and back when the key is missing
