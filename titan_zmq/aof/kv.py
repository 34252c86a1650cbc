"""The KV store ("TitanStore"): keys holding msgpack values or sets, with expiry.

It lives in the broker and is journaled with the rest of its state: every write
returns the record that replays it (``aof.records``: ``KvSet``, ``KvDel``...), and :meth:`KVStore.apply`
replays those ops. A read journals nothing, except that a read which finds a key past its
expiry removes it and journals that ``KvDel``. ``incr`` and ``cas`` journal as a plain ``set`` of
the value they produced, so replay needs no arithmetic and no clock.
"""

from __future__ import annotations

import builtins
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack

from titan_zmq.aof.records import KvDel, KvDone, KvExpire, KvSadd, KvSet, KvSrem, decode, encode
from titan_zmq.errors import AOFCorrupt, BadRequest, BrokerError, KVTypeError, LimitExceeded

MAX_KEY = 1024  # bytes of a key, UTF-8
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry
_WRITES = frozenset({"set", "cas", "sadd"})  # operations that store client values
OPS = ("get", "set", "delete", "incr", "cas", "sadd", "srem", "smembers", "keys", "expire", "ttl", "exists")
# A write whose answer differs when applied twice comes with a token (protocol.KV_TOKENED says which);
# the store keeps the results of the last MAX_TOKENS tokens, journaled (KvDone), so a request sent
# again after a lost reply (or to a new leader of a broker group) gets its first answer back.
MAX_TOKENS = 100_000

Journal = Callable[[list[Any]], None]


def _bad(message: str) -> BrokerError:
    return BadRequest(message)


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise _bad(f"a KV key must be a non-empty string, got {key!r}")
    if len(key.encode()) > MAX_KEY:
        raise _bad(f"KV key of {len(key.encode())} bytes is longer than {MAX_KEY}; use a shorter key")
    return key


def _member(m: Any) -> Any:
    if isinstance(m, (str, bytes, int, float, bool)) or m is None:
        return m
    raise _bad(f"set members must be strings, numbers, bytes, booleans or nil, not {type(m).__name__}")


def _kind(value: Any) -> str:
    return "a set" if isinstance(value, set) else f"a {type(value).__name__}"


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (so 1, 1.0 and True are three different values, as on the wire)."""
    return type(a) is type(b) and a == b


def _sort_key(m: Any) -> tuple[str, Any]:
    return (type(m).__name__, m if m is not None else 0)


class KVStore:
    """Keys to values (any msgpack value) or sets; ``journal`` receives every write's op."""

    def __init__(self, journal: Journal | None = None, wall: Callable[[], float] = time.time) -> None:
        self.data: dict[str, Any] = {}
        self.expires: dict[str, float] = {}  # key -> wall-clock deadline
        self._heap: list[tuple[float, str]] = []
        self.journal = journal
        self.wall = wall
        self.max_value = 0  # bytes of one write's value(s), msgpack-encoded; 0: no limit (the broker sets it)
        self.done: OrderedDict[str, Any] = OrderedDict()  # token -> result of a tokened write, newest last

    def _log(self, op: list[Any]) -> None:
        if self.journal is not None:
            self.journal(op)

    # ---- the request entry point ----------------------------------------------------

    def request(self, op: str, key: str, args: list[Any], token: str = "") -> Any:
        """Run one client operation; raises BrokerError with a clear message on bad input. A ``token``
        seen before returns that operation's result again, and applies nothing."""
        if token and token in self.done:
            self.done.move_to_end(token)
            return self.done[token]
        result = self._request(op, key, args)
        if token:
            self._remember(token, result)
            self._log(encode(KvDone(token, result)))
        return result

    def _remember(self, token: str, result: Any) -> None:
        self.done[token] = result
        if len(self.done) > MAX_TOKENS:
            self.done.popitem(last=False)

    def _request(self, op: str, key: str, args: list[Any]) -> Any:
        if op not in OPS:
            raise _bad(f"unknown KV operation {op!r}; one of {', '.join(OPS)}")
        if op in _WRITES and self.max_value:
            size = len(msgpack.packb(args, use_bin_type=True))
            if size > self.max_value:
                raise LimitExceeded(
                    f"KV {op} of key {key[:100]!r}: the value is {size} bytes, over the limit of {self.max_value} "
                    "(max_kv_value); keep large data in files or artifacts and store a reference, or raise "
                    "max_kv_value (TITAN_MAX_KV_VALUE)"
                )
        if op == "keys":
            return self.keys(key)
        fn = getattr(self, op)
        try:
            return fn(_check_key(key), *args)
        except TypeError as exc:
            raise _bad(f"KV {op}: wrong arguments ({exc})") from None

    # ---- reads ---------------------------------------------------------------------------

    def _live(self, key: str) -> Any:
        """The value of ``key``, or None if missing or expired (an expired key is removed)."""
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.wall():
            self._remove(key)
            return None
        return self.data.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._live(key)
        if isinstance(value, set):
            raise KVTypeError(f"key {key!r} holds a set; read it with smembers")
        return default if value is None and key not in self.data else value

    def exists(self, key: str) -> bool:
        self._live(key)
        return key in self.data

    def smembers(self, key: str) -> list[Any]:
        value = self._live(key)
        if value is None and key not in self.data:
            return []
        if not isinstance(value, set):
            raise KVTypeError(f"key {key!r} holds {_kind(value)}, not a set; read it with get")
        return sorted(value, key=_sort_key)

    def keys(self, prefix: str = "") -> list[str]:
        if not isinstance(prefix, str):
            raise _bad(f"a key prefix must be a string, got {prefix!r}")
        now = self.wall()
        return sorted(k for k in self.data if k.startswith(prefix) and self.expires.get(k, now + 1) > now)

    def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires; None if it never does (or does not exist)."""
        if self._live(key) is None and key not in self.data:
            return None
        deadline = self.expires.get(key)
        return None if deadline is None else max(0.0, deadline - self.wall())

    # ---- writes --------------------------------------------------------------------------

    def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        if ttl is not None and (not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0):
            raise _bad(f"ttl must be a positive number of seconds, got {ttl!r}")
        deadline = None if ttl is None else self.wall() + ttl
        self._set(key, value, deadline)
        self._log(encode(KvSet(key, value, deadline)))
        return True

    def _set(self, key: str, value: Any, deadline: float | None) -> None:
        self.data[key] = value
        if deadline is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = deadline
            heapq.heappush(self._heap, (deadline, key))

    def delete(self, key: str) -> bool:
        existed = self._live(key) is not None or key in self.data
        if existed:
            self._remove(key)
        return existed

    def _remove(self, key: str) -> None:
        self.data.pop(key, None)
        self.expires.pop(key, None)
        self._log(encode(KvDel(key)))

    def incr(self, key: str, by: int = 1) -> int:
        if not isinstance(by, int) or isinstance(by, bool):
            raise _bad(f"incr by must be an integer, got {by!r}")
        value = self._live(key)
        if value is None and key not in self.data:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise KVTypeError(
                f"key {key!r} holds {_kind(value)}, not an integer; incr works on integers and missing keys"
            )
        value += by
        if not _INT_MIN <= value <= _INT_MAX:
            raise _bad(f"incr of {key!r} by {by} leaves the 64-bit range; nothing was changed")
        deadline = self.expires.get(key)
        self.data[key] = value
        self._log(encode(KvSet(key, value, deadline)))
        return value

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` only if it holds ``expected`` now (None: only if it is missing)."""
        value = self._live(key)
        present = key in self.data
        if isinstance(value, set):
            raise KVTypeError(f"key {key!r} holds a set; cas works on plain values")
        if (expected is None and present) or (expected is not None and (not present or not _same(value, expected))):
            return False
        deadline = self.expires.get(key)
        self.data[key] = new
        self._log(encode(KvSet(key, new, deadline)))
        return True

    def _set_of(self, key: str) -> builtins.set[Any] | None:
        value = self._live(key)
        if value is None and key not in self.data:
            return None
        if not isinstance(value, set):
            raise KVTypeError(f"key {key!r} holds {_kind(value)}, not a set")
        return value

    def sadd(self, key: str, *members: Any) -> int:
        """Add members; returns how many were new."""
        if not members:
            raise _bad("sadd needs at least one member")
        ms = [_member(m) for m in members]
        current = self._set_of(key)
        if current is None:
            current = self.data[key] = set()
        new = [m for m in dict.fromkeys(ms) if m not in current]
        current.update(new)
        if new:
            self._log(encode(KvSadd(key, new)))
        return len(new)

    def srem(self, key: str, *members: Any) -> int:
        """Remove members; returns how many were there. An emptied set is deleted."""
        ms = [_member(m) for m in members]
        current = self._set_of(key)
        if current is None:
            return 0
        gone = [m for m in dict.fromkeys(ms) if m in current]
        current.difference_update(gone)
        if gone:
            self._log(encode(KvSrem(key, gone)))
        if not current:
            self._remove(key)
        return len(gone)

    def expire(self, key: str, seconds: float | None) -> bool:
        """Expire ``key`` in ``seconds`` (None: never). Returns False if the key does not exist."""
        if self._live(key) is None and key not in self.data:
            return False
        if seconds is None:
            self.expires.pop(key, None)
            self._log(encode(KvExpire(key, None)))
            return True
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
            raise _bad(f"expire takes a finite number of seconds, got {seconds!r}")
        if seconds <= 0:
            self._remove(key)
            return True
        deadline = self.wall() + seconds
        self.expires[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        self._log(encode(KvExpire(key, deadline)))
        return True

    def sweep(self, limit: int = 1000) -> int:
        """Remove up to ``limit`` expired keys (the broker calls this each turn). Returns how many."""
        now = self.wall()
        heap = self._heap
        n = 0
        while heap and heap[0][0] <= now and n < limit:
            deadline, key = heapq.heappop(heap)
            if self.expires.get(key) == deadline:
                self._remove(key)
                n += 1
        return n

    # ---- replay and snapshot ----------------------------------------------------------

    def apply(self, rec: Any) -> None:
        """Replay one journaled write (a KV record of ``aof.records``, or the array it was written as)
        without journaling it again."""
        if isinstance(rec, list):
            rec = decode(rec)
        if type(rec) is KvDone:
            self._remember(rec.token, rec.result)
            return
        key = rec.key
        if type(rec) is KvSet:
            self.data[key] = rec.value
            self._expire_at(key, rec.deadline)
        elif type(rec) is KvDel:
            self.data.pop(key, None)
            self.expires.pop(key, None)
        elif type(rec) is KvSadd:
            current = self.data.get(key)
            if not isinstance(current, set):
                current = self.data[key] = set()
            current.update(rec.members)
        elif type(rec) is KvSrem:
            current = self.data.get(key)
            if isinstance(current, set):
                current.difference_update(rec.members)
        elif type(rec) is KvExpire:
            self._expire_at(key, rec.deadline)
        else:
            raise AOFCorrupt(f"{type(rec).__name__} is not a KV record")

    def _expire_at(self, key: str, deadline: float | None) -> None:
        if deadline is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = deadline
            heapq.heappush(self._heap, (deadline, key))

    def capture(self) -> list[list[Any]]:
        """Ops that rebuild the store as it is now (for a snapshot)."""
        ops: list[list[Any]] = []
        for key, value in self.data.items():
            deadline = self.expires.get(key)
            if isinstance(value, set):
                ops.append(encode(KvSadd(key, list(value))))
                if deadline is not None:
                    ops.append(encode(KvExpire(key, deadline)))
            else:
                ops.append(encode(KvSet(key, value, deadline)))
        ops += [encode(KvDone(token, result)) for token, result in self.done.items()]
        return ops

    def __len__(self) -> int:
        return len(self.data)
