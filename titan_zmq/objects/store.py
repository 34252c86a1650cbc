"""A worker's (or the broker's) object store: small objects in memory, the rest in a spill folder.

Objects are named by content (:mod:`titan_zmq.objects.codec`). The store keeps every object the
grid still refers to (*held*: it made it, or the broker asked it to keep a copy), and copies it
fetched for its jobs, which it may evict, least recently used first, once no running job uses
them (*pins*). It never passes ``limit`` bytes in all: an object that would is refused with
:class:`ObjectStoreFull`, naming the limit, and so is one that finds the disk full. The store is
shared by the worker's loop, its object server thread and its fetch threads, behind one lock.
Job processes on the same host write their objects straight into the folder (``ctx.put``);
:meth:`adopt` takes such a file in.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from titan_zmq.errors import ObjectCorrupt, ObjectStoreFull
from titan_zmq.objects.codec import Encoded, content_id, map_file, parse, write_object

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass
class Item:
    size: int
    data: bytes | None = None  # in memory
    path: str | None = None  # in the spill folder
    held: bool = True  # the grid refers to it: never evicted
    pins: int = 0  # running jobs that use it


class ObjectStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        limit: int = 10 * 1024 * MiB,
        memory_limit: int = 256 * MiB,
        memory_object_max: int = 1 * MiB,
        limit_name: str = "object_store_mb",
        fsync: bool = False,
        clear: bool = True,
    ) -> None:
        self.root = Path(root)
        if clear and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)  # a fresh worker holds nothing yet
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.memory_limit = memory_limit
        self.memory_object_max = memory_object_max
        self.limit_name = limit_name
        self.fsync = fsync
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0
        self.memory_used = 0
        self.evicted = 0
        self.deletions = 0  # counts every object dropped: whoever caches views of objects checks it
        self.evictions: list[str] = []  # ids evicted since the owner last took them (the worker tells the broker)
        if not clear:
            for p in self.root.iterdir():
                if p.is_file() and len(p.name) == 64 and not p.name.startswith("."):
                    self.adopt(p.name)

    # -- adding --------------------------------------------------------------------------------

    def put(self, enc: Encoded, held: bool = True) -> tuple[str, int]:
        """Store an encoded object; returns (id, size)."""
        size = enc.size
        if size <= self.memory_object_max:
            return self.put_bytes(enc.tobytes(), held=held)
        with self._lock:
            self._reserve(size)
        oid, size, path = write_object(enc, self.root, fsync=self.fsync)
        with self._lock:
            self._add(oid, Item(size, path=path, held=held))
        return oid, size

    def put_bytes(self, data: bytes, oid: str | None = None, held: bool = True) -> tuple[str, int]:
        """Store an object's bytes (checked against ``oid`` when given)."""
        digest = content_id(data)
        if oid is not None and digest != oid:
            raise ObjectCorrupt(f"object {oid} arrived with other content (id {digest})")
        parse(memoryview(data))
        size = len(data)
        with self._lock:
            self._reserve(size)
            if size <= self.memory_object_max and self.memory_used + size <= self.memory_limit:
                self._add(digest, Item(size, data=data, held=held))
                return digest, size
        path = self.root / digest
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise ObjectStoreFull(f"no space in {self.root} for an object of {size} bytes ({exc.strerror})") from None
        with self._lock:
            self._add(digest, Item(size, path=str(path), held=held))
        return digest, size

    def adopt(self, oid: str, held: bool = True) -> Item | None:
        """Take in ``<root>/<oid>``, written by a job process on this host (None if absent)."""
        with self._lock:
            item = self._items.get(oid)
            if item is not None:
                item.held = item.held or held
                return item
        path = self.root / oid
        try:
            size = path.stat().st_size
        except OSError:
            return None
        with self._lock:
            if oid in self._items:
                return self._items[oid]
            if self.used + size > self.limit:
                self._evict(self.used + size - self.limit)
            item = Item(size, path=str(path), held=held)
            self._add(oid, item)
            return item

    def scan(self) -> None:
        """Take in every object file job processes wrote into the folder since the last look."""
        for p in self.root.iterdir():
            name = p.name
            if len(name) == 64 and not name.startswith(".") and name not in self._items and p.is_file():
                self.adopt(name)

    def tmp_path(self) -> str:
        """A fresh temporary file in the spill folder, for an object being received."""
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        os.close(fd)
        return tmp

    def reserve(self, size: int) -> None:
        """Make room for ``size`` bytes (evicting what no one holds), or raise ObjectStoreFull."""
        with self._lock:
            self._reserve(size)

    def commit(self, tmp: str, oid: str, size: int, held: bool = False) -> None:
        """Make a received file (``tmp``, already verified) the object ``oid``."""
        final = str(self.root / oid)
        os.replace(tmp, final)
        with self._lock:
            if oid not in self._items:
                self._add(oid, Item(size, path=final, held=held))
            elif held:
                self._items[oid].held = True

    def _add(self, oid: str, item: Item) -> None:
        if oid in self._items:
            old = self._items[oid]
            old.held = old.held or item.held
            return
        self._items[oid] = item
        self.used += item.size
        if item.data is not None:
            self.memory_used += item.size

    def _reserve(self, size: int) -> None:
        if size > self.limit:
            raise ObjectStoreFull(
                f"an object of {size:,} bytes is larger than the object store's limit of {self.limit:,} bytes "
                f"({self.limit_name}); raise {self.limit_name} or make the object smaller"
            )
        if self.used + size > self.limit:
            self._evict(self.used + size - self.limit)
        if self.used + size > self.limit:
            raise ObjectStoreFull(
                f"the object store holds {self.used:,} of its {self.limit:,} bytes ({self.limit_name}) in objects "
                f"still in use; an object of {size:,} bytes does not fit. Free objects, or raise {self.limit_name}"
            )
        free = shutil.disk_usage(self.root).free
        if size > free:
            raise ObjectStoreFull(
                f"the disk of {self.root} has {free:,} bytes free; an object of {size:,} bytes does not fit"
            )

    def _evict(self, need: int) -> None:
        freed = 0
        for oid in list(self._items):
            if freed >= need:
                break
            item = self._items[oid]
            if item.held or item.pins:
                continue
            freed += item.size
            self._drop(oid)
            self.evicted += 1
            self.evictions.append(oid)

    # -- reading -------------------------------------------------------------------------------

    def has(self, oid: str) -> bool:
        with self._lock:
            return oid in self._items

    def view(self, oid: str) -> memoryview | None:
        """The object's bytes (in memory, or mapped from its file); marks it recently used."""
        with self._lock:
            item = self._items.get(oid)
            if item is None:
                return None
            self._items.move_to_end(oid)
            if item.data is not None:
                return memoryview(item.data)
            path = item.path
        try:
            return map_file(path) if path else None
        except OSError:
            return None

    def path(self, oid: str) -> str | None:
        """The object's file, written out first if it is held in memory."""
        with self._lock:
            item = self._items.get(oid)
            if item is None:
                return None
            self._items.move_to_end(oid)
            if item.path is None and item.data is not None:
                p = self.root / oid
                p.write_bytes(item.data)
                item.path = str(p)
            return item.path

    def size(self, oid: str) -> int | None:
        with self._lock:
            item = self._items.get(oid)
            return None if item is None else item.size

    # -- lifetime ------------------------------------------------------------------------------

    def pin(self, oid: str) -> None:
        with self._lock:
            item = self._items.get(oid)
            if item is not None:
                item.pins += 1

    def unpin(self, oid: str) -> None:
        with self._lock:
            item = self._items.get(oid)
            if item is not None and item.pins:
                item.pins -= 1

    def release(self, oid: str) -> None:
        """The grid no longer needs this copy: evictable from now on."""
        with self._lock:
            item = self._items.get(oid)
            if item is not None:
                item.held = False

    def delete(self, oid: str) -> bool:
        with self._lock:
            if oid not in self._items:
                return False
            self._drop(oid)
            return True

    def _drop(self, oid: str) -> None:
        item = self._items.pop(oid)
        self.deletions += 1
        self.used -= item.size
        if item.data is not None:
            self.memory_used -= item.size
        if item.path:
            try:
                os.unlink(item.path)
            except OSError:
                pass

    def inventory(self) -> dict[str, int]:
        """Every object here, with its size."""
        with self._lock:
            return {oid: item.size for oid, item in self._items.items()}

    def take_evictions(self) -> list[str]:
        with self._lock:
            out, self.evictions = self.evictions, []
            return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "objects": len(self._items),
                "bytes": self.used,
                "memory_bytes": self.memory_used,
                "limit": self.limit,
                "evicted": self.evicted,
            }
