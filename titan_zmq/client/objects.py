"""Objects from a client: put a value or upload a file to a worker's store, get or download one.

The bytes go straight between the client and a worker (or through the broker's relay when the
worker cannot be reached); the broker only records the reference::

    ref = client.put(big_array)                 # an ObjectRef: pass it to jobs as an argument
    h = client.submit("mypkg:train", args=[ref])  # the job receives the array itself
    model = client.get(h.result(fetch=False))   # a result stored as an object, fetched
    art = client.upload("data/")                # a folder, as an artifact
    client.download(art, "copy/")
    client.release(ref)                         # a client's objects live until released (or a TTL)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from titan_zmq import protocol as P
from titan_zmq.config import tcp_endpoint
from titan_zmq.errors import TransferError
from titan_zmq.objects.codec import (
    KIND_NAMES,
    Encoded,
    ObjectRef,
    as_ref,
    decode_value,
    encode_path,
    encode_value,
    extract,
    map_file,
)  # fmt: skip
from titan_zmq.objects.transfer import Fetcher, Sink, Source, upload

if TYPE_CHECKING:
    import zmq

BROKER = "@broker"
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def _ref(ref: Any) -> ObjectRef:
    r = as_ref(ref)
    if r is None:
        if isinstance(ref, str) and len(ref) == 64:
            return ObjectRef(ref, 0)
        raise TypeError(f"expected an ObjectRef (or an object id), got {type(ref).__name__}")
    return r


class ObjectCalls:
    """The object methods of :class:`~titan_zmq.client.client.TitanClient`."""

    host: str
    keys: Any
    _ctx: zmq.Context[Any]

    def request(self, msg_type: type[P.Message], **fields: Any) -> Any:
        raise NotImplementedError  # TitanClient.request

    def _setup(self, sock: Any, relayed: bool = True) -> None:
        if self.keys is not None:
            self.keys.connect(sock, "client")

    # ---- storing -----------------------------------------------------------------------------

    def put(self, value: Any, *, ttl: float | None = None, progress: Progress | None = None) -> ObjectRef:
        """Store ``value`` on a worker (pickled, its buffers out of band; bytes as they are)."""
        return self._store(encode_value(value), ttl=ttl, artifact=False, progress=progress)

    def upload(
        self, path: str | os.PathLike[str], *, ttl: float | None = None, progress: Progress | None = None
    ) -> ObjectRef:
        """Store a file or a folder as an artifact; jobs get it back with ``ctx.download`` or as a path.
        ``progress(bytes done, bytes in all)`` is called as it goes (get and download take one too)."""
        with tempfile.TemporaryDirectory(prefix="titan-upload-") as tmp:
            return self._store(encode_path(path, tmp), ttl=ttl, artifact=True, progress=progress)

    def _store(self, enc: Encoded, *, ttl: float | None, artifact: bool, progress: Progress | None) -> ObjectRef:
        oid, size = enc.digest(), enc.size
        kind = KIND_NAMES[enc.kind]
        name = enc.meta.get("name")
        try:
            place = self.request(P.Objects, verb="place", args={"size": size})
            holder = place["holder"]
            routes: list[tuple[str, list[bytes]]] = []
            if place.get("endpoint"):
                routes.append((place["endpoint"], []))
            if place.get("relay"):
                routes.append((tcp_endpoint(self.host, int(place["relay"])), [b"@" + holder.encode()]))
            errors = []
            for endpoint, prefix in routes:
                try:
                    upload(self._ctx, endpoint, prefix, oid, enc.pieces(), size, setup=self._setup, progress=progress)
                    break
                except TransferError as exc:
                    errors.append(f"{'relay' if prefix else endpoint}: {exc}")
            else:
                raise TransferError(f"object {oid} could not be stored on {holder}: {'; '.join(errors)}")
        finally:
            enc.discard()
        args = {"id": oid, "size": size, "kind": kind, "name": name, "holder": holder, "owner": "client",
                "ttl": ttl, "artifact": artifact}  # fmt: skip
        self.request(P.Objects, verb="add", args=args)
        return ObjectRef(oid, size, kind, name)

    # ---- reading -----------------------------------------------------------------------------

    def locate(self, ref: Any) -> dict[str, Any]:
        """Where an object is held: its record (size, kind, holders and their endpoints, owners)."""
        return dict(self.request(P.Objects, verb="locate", args={"id": _ref(ref).id}))

    def _fetch(self, ref: Any, path: str | None, progress: Progress | None = None) -> tuple[dict[str, Any], Sink]:
        info = self.locate(ref)
        relay = tcp_endpoint(self.host, int(info["relay"])) if info.get("relay") else None
        sources = [
            Source(h, relay, None) if h == BROKER else Source(h, ep or None, relay) for h, ep in info["sources"]
        ]
        sink = Sink(int(info["size"]), path)
        try:
            Fetcher(self._ctx, setup=self._setup).fetch(info["id"], int(info["size"]), sources, sink, progress)
        finally:
            sink.close()
        return info, sink

    def get(self, ref: Any, *, progress: Progress | None = None) -> Any:
        """The value an object holds (a numpy array comes back as a view on the received bytes)."""
        _, sink = self._fetch(ref, None, progress)
        assert sink.buf is not None
        return decode_value(memoryview(sink.buf))

    def download(self, ref: Any, dest: str | os.PathLike[str], *, progress: Progress | None = None) -> Path:
        """Write a file or folder object out to ``dest`` (into it, if it is an existing folder)."""
        d = Path(dest)
        parent = d if d.is_dir() else d.parent
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".titan-download-", dir=parent)
        os.close(fd)
        try:
            self._fetch(ref, tmp, progress)
            return extract(map_file(tmp), d)
        finally:
            os.unlink(tmp)

    def release(self, ref: Any) -> bool:
        """This client no longer needs an object it stored; it is freed once nobody refers to it."""
        return bool(self.request(P.Objects, verb="release", args={"id": _ref(ref).id, "owner": "client"})["released"])

    def objects(self, holder: str | None = None) -> list[dict[str, Any]]:
        """Every object the broker knows (or those ``holder`` holds), with holders and owners."""
        args = {"holder": holder} if holder else {}
        return list(self.request(P.Objects, verb="list", args=args)["objects"])

    def fetch_result(self, result: Any) -> Any:
        """``result`` itself, or the value it names when it is a reference to a value (a file or
        folder stays a reference: ``download`` writes it out)."""
        ref = as_ref(result)
        if ref is None:
            return result
        return self.get(ref) if ref.kind in ("value", "bytes") else ref
