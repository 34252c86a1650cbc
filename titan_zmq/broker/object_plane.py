"""The broker's side of the data plane: the object requests, the relay, and the artifact keeper.

- ``OBJECTS`` requests (``TitanClient.put/get/...``, ``ctx.put``) read and change the scheduler's
  object directory (``scheduler/objects.py``): ``locate``, ``add``, ``place``, ``release``, ``list``.
- The relay thread (``objects/relay.py``) passes chunks between peers that cannot see each other,
  on the ``objects`` port (5558 by default) that ``HELLO`` announces.
- With ``--data-dir``, the keeper thread copies every published artifact into
  ``<data-dir>/objects/`` (fetched through the relay, so any worker is reachable), so that an
  artifact outlives its worker; the broker is then one of its holders, ``@broker``.

The threads never touch the broker's state: the keeper hands what it copied back to the loop
through a queue and the loop's waker.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from titan_zmq import protocol as P
from titan_zmq.broker.scheduler.dispatch import least_loaded
from titan_zmq.broker.scheduler.objects import BROKER
from titan_zmq.errors import BadRequest, TitanError
from titan_zmq.objects.relay import Relay
from titan_zmq.objects.store import ObjectStore
from titan_zmq.objects.transfer import Fetcher, Sink, Source

if TYPE_CHECKING:
    from titan_zmq.broker.loop import Broker

log = logging.getLogger(__name__)

_OWNER = re.compile(r"^(client|ttl|job:.+|dag:.+)$")
KINDS = ("value", "bytes", "file", "dir")


class ObjectPlane:
    def __init__(self, broker: Broker) -> None:
        self.b = broker
        cfg = broker.config
        self.store: ObjectStore | None = None
        self.relay: Relay | None = None
        self._store_dir = Path(cfg.data_dir) / "objects" if cfg.data_dir else None
        if self._store_dir is not None:
            if self._store_dir.is_dir():  # made when the first artifact was kept
                self._open_store()
            broker.sched.keeps_artifacts = True
        self._keep: queue.Queue[tuple[str, int, list[str]] | None] = queue.Queue()
        self._kept: deque[tuple[str, str | None]] = deque()  # (id, error) from the keeper thread
        self._keeper: threading.Thread | None = None
        self._next_expiry = 0.0

    # ---- life cycle ------------------------------------------------------------------------------

    def _open_store(self) -> ObjectStore:
        assert self._store_dir is not None
        if self.store is None:
            self.store = ObjectStore(self._store_dir, limit=1 << 62, memory_limit=0, memory_object_max=0,
                                     fsync=True, clear=False)  # fmt: skip
            if self.relay is not None:
                self.relay.handler.store = self.store
        return self.store

    def bind(self, host: str, port: int) -> int:
        b = self.b
        setup = None
        if b.keys is not None:
            keys = b.keys

            def setup(sock: Any) -> None:
                keys.serve(sock, "objects")

        try:
            self.relay = Relay(b.ctx, host, port, self.store, setup)
        except Exception as exc:
            raise TitanError(f"cannot listen on {host}:{port} for the object relay ({exc}); choose another "
                             "port with --objects") from None  # fmt: skip
        self.relay.start()
        if self._store_dir is not None:
            self._keeper = threading.Thread(target=self._keep_loop, name="titan-keeper", daemon=True)
            self._keeper.start()
        return self.relay.port

    def restored(self) -> None:
        """After a replay: the broker holds the artifacts its store kept; the others it fetches again."""
        if self.store is None:
            return
        sched = self.b.sched
        held = self.store.inventory()
        for oid in held:
            if oid in sched.objects:
                sched.directory.kept(oid)
            else:
                self.store.delete(oid)  # freed while the broker was down
        for info in sched.objects.values():
            if info.artifact and info.id not in held:
                sched.fx.keep.append(info.id)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay.join(timeout=2)
        if self._keeper is not None:
            self._keep.put(None)
            self._keeper.join(timeout=2)

    # ---- each turn ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        directory = self.b.sched.directory
        while self._kept:
            oid, error = self._kept.popleft()
            if error is None:
                directory.kept(oid)
            else:
                log.warning("artifact %s not kept with the broker: %s", oid[:12], error)
        if now >= self._next_expiry:
            self._next_expiry = now + 1.0
            if self.b.sched.objects:
                directory.expire()

    def flush(self) -> None:
        """Send this turn's object effects: frees to workers, copies to keep, copies to drop."""
        b = self.b
        fx = b.sched.fx
        for ident, ids in fx.free.items():
            b.to_worker(ident, P.ObjFree(ids=ids).encode())
        if fx.keep and self.store is None:
            self._open_store()
        for oid in fx.keep:  # what the keeper needs, read here: it never reads the directory itself
            info = b.sched.objects.get(oid)
            if info is not None:
                self._keep.put((oid, info.size, sorted(info.holders - {BROKER})))
        if self.store is not None:
            for oid in fx.unkeep:
                self.store.delete(oid)

    # ---- requests ----------------------------------------------------------------------------------

    def request(self, ident: bytes, msg: P.Objects) -> Any:
        verb, a = msg.verb, msg.args
        directory = self.b.sched.directory
        if verb == "locate":
            info = directory.lookup(_str(a, "id"))
            return {**info.record(self.b.sched.endpoints), "relay": self.relay.port if self.relay else 0}
        if verb == "add":
            return self._add(a)
        if verb == "place":
            return self._place(int(a.get("size") or 0))
        if verb == "release":
            owner = str(a.get("owner") or "client")
            directory.lookup(_str(a, "id"))
            return {"released": directory.release(_str(a, "id"), owner)}
        if verb == "list":
            holder = a.get("holder")
            return {"objects": directory.listing(holder if isinstance(holder, str) else None)}
        raise BadRequest(f"unknown object verb {verb!r}; use locate, add, place, release or list")

    def _add(self, a: dict[str, Any]) -> Any:
        sched = self.b.sched
        oid = _str(a, "id")
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise BadRequest(f"object id {oid!r} is not an object id (64 hex digits)")
        holder = _str(a, "holder")
        if holder not in {w.name for w in sched.workers.values()}:
            raise BadRequest(f"holder {holder!r} is not a connected worker; objects live on workers")
        owner = str(a.get("owner") or "client")
        if not _OWNER.match(owner):
            raise BadRequest(f"owner {owner!r} is not client, ttl, job:<id> or dag:<id>")
        kind = str(a.get("kind") or "value")
        if kind not in KINDS:
            raise BadRequest(f"object kind {kind!r} is not one of {', '.join(KINDS)}")
        ttl = a.get("ttl")
        info = sched.directory.add(
            oid, int(a.get("size") or 0), kind=kind, name=a.get("name"), holder=holder,
            producer=a.get("producer"), owner=owner, ttl=float(ttl) if ttl else None, artifact=bool(a.get("artifact")),
        )  # fmt: skip
        return info.record(sched.endpoints)

    def _place(self, size: int) -> Any:
        """A worker to hold a client's object: the least loaded one that takes jobs."""
        sched = self.b.sched
        ws = [w for w in sched.workers.values() if not w.draining]
        if not ws:
            raise BadRequest("no worker is connected to hold the object; start a worker (titan worker) first")
        w = least_loaded(ws, None)
        return {"holder": w.name, "endpoint": w.endpoint, "relay": self.relay.port if self.relay else 0}

    # ---- the keeper thread -----------------------------------------------------------------------

    def _keep_loop(self) -> None:
        fetcher = Fetcher(self.b.ctx, connect_timeout=2.0, stall_timeout=30.0)
        tries: dict[str, int] = {}
        while True:
            item = self._keep.get()
            if item is None:
                return
            oid, size, holders = item
            store = self.store  # opened by the loop before it hands over the first artifact
            error = None if store is not None and store.has(oid) else self._copy(fetcher, oid, size, holders)
            if error is not None and tries.get(oid, 0) < 5:  # its worker may still be joining: again, later
                tries[oid] = tries.get(oid, 0) + 1
                timer = threading.Timer(2.0 * tries[oid], self._keep.put, args=(item,))
                timer.daemon = True
                timer.start()
                continue
            tries.pop(oid, None)
            self._kept.append((oid, error))
            self.b.wake()

    def _copy(self, fetcher: Fetcher, oid: str, size: int, holders: list[str]) -> str | None:
        assert self.store is not None and self.relay is not None
        if not holders:
            return "no holder is connected"
        tmp = self.store.tmp_path()
        sink = Sink(size, tmp)
        try:
            fetcher.fetch(oid, size, [Source(h, None, self.relay.inproc) for h in holders], sink)
            sink.close()
            self.store.commit(tmp, oid, size, held=True)
            return None
        except (TitanError, OSError) as exc:
            sink.close()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return str(exc)


def _str(a: dict[str, Any], key: str) -> str:
    v = a.get(key)
    if not isinstance(v, str) or not v:
        raise BadRequest(f"the request needs {key!r} (a string)")
    return v


