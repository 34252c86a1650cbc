"""The data plane's parts on their own: the object layout, a store, the chunk protocol, the relay."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from titan_zmq.errors import ObjectCorrupt, ObjectError, ObjectStoreFull, TransferError
from titan_zmq.local import wait_for
from titan_zmq.objects.codec import (
    ObjectRef,
    decode_value,
    encode_path,
    encode_value,
    extract,
    is_ref,
    map_file,
    parse,
    refs_in,
    write_object,
)  # fmt: skip
from titan_zmq.objects.relay import Relay
from titan_zmq.objects.store import ObjectStore
from titan_zmq.objects.transfer import DATA, GET, TAG, Fetcher, ObjectServer, Sink, Source, checksum, upload

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ctx() -> Any:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _server(ctx: Any, store: ObjectStore, name: str, relay: str | None = None, direct: bool = True) -> ObjectServer:
    srv = ObjectServer(ctx, store, name, "127.0.0.1" if direct else None, "127.0.0.1", relay)
    srv.start()
    return srv


# ---- the layout --------------------------------------------------------------------------------


def test_a_numpy_array_travels_out_of_band_and_loads_as_a_writable_view(tmp_path: Path) -> None:
    arr = np.arange(1_000_000, dtype=np.float64)
    enc = encode_value({"a": arr, "tag": "x"})
    assert len(enc.segments) == 2 and enc.segments[1].nbytes == arr.nbytes  # the array's buffer is its own segment
    assert enc.segments[0].nbytes < 1000  # the pickle stream itself is small: no copy of the data in it
    oid, size, path = write_object(enc, tmp_path)
    assert len(oid) == 64 and size == os.path.getsize(path)
    value = decode_value(map_file(path, writable=True))
    assert value["tag"] == "x" and np.array_equal(value["a"], arr)
    assert not value["a"].flags.owndata  # a view on the mapped file
    assert value["a"].ctypes.data % 64 == 0  # aligned
    value["a"][0] = -1.0  # copy-on-write: the file keeps its content
    assert decode_value(map_file(path))["a"][0] == 0.0


def test_bytes_are_stored_as_they_are_and_the_id_is_the_content(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    a = write_object(encode_value(data), tmp_path)
    b = write_object(encode_value(bytearray(data)), tmp_path)
    assert a[0] == b[0]  # same content, same id: stored once
    assert decode_value(map_file(a[2])) == data
    assert write_object(encode_value(data + b"!"), tmp_path)[0] != a[0]


def test_files_and_folders_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_text("hello")
    (src / "y.bin").write_bytes(b"\x00" * 10)
    _, _, path = write_object(encode_path(src, tmp_path / "tmp"), tmp_path / "store")
    out = extract(map_file(path), tmp_path / "out")
    assert (out / "sub" / "x.txt").read_text() == "hello" and (out / "y.bin").read_bytes() == b"\x00" * 10
    f = tmp_path / "model.pkl"
    f.write_bytes(b"weights")
    f.chmod(0o640)
    _, _, fpath = write_object(encode_path(f, tmp_path / "tmp"), tmp_path / "store")
    dest = tmp_path / "dl"
    dest.mkdir()
    got = extract(map_file(fpath), dest)
    assert got == dest / "model.pkl" and got.read_bytes() == b"weights" and (got.stat().st_mode & 0o777) == 0o640
    with pytest.raises(ObjectError, match="download"):
        decode_value(map_file(fpath))
    with pytest.raises(ObjectError, match="neither a file nor a folder"):
        encode_path(tmp_path / "missing", tmp_path)


def test_damaged_objects_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ObjectCorrupt, match="not a titan object"):
        parse(memoryview(b"XXXX" + bytes(20)))
    good = encode_value(b"abc").tobytes()
    with pytest.raises(ObjectCorrupt, match="runs past"):
        parse(memoryview(good[:-70]))
    with pytest.raises(ObjectCorrupt, match="shorter"):
        parse(memoryview(b"TZ"))


def test_references_are_plain_mappings_found_at_any_depth() -> None:
    ref = ObjectRef("ab" * 32, 10)
    wire = msgpack.unpackb(msgpack.packb({"x": [1, {"y": ref}]}), raw=False)
    assert is_ref(wire["x"][1]["y"]) and [r.id for r in refs_in(wire)] == ["ab" * 32]
    assert not is_ref({"other": 1})


# ---- a store -----------------------------------------------------------------------------------


def test_small_objects_stay_in_memory_large_ones_on_disk(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, limit=64 << 20, memory_limit=4 << 20, memory_object_max=1 << 20)
    small, _ = store.put(encode_value(b"s" * 1000))
    large, _ = store.put(encode_value(b"l" * (2 << 20)))
    assert not (tmp_path / small).exists() and (tmp_path / large).exists()
    assert store.stats()["memory_bytes"] > 0
    assert decode_value(store.view(small)) == b"s" * 1000  # type: ignore[arg-type]
    assert Path(store.path(small) or "").exists()  # written out when a job process needs a file


def test_the_store_evicts_unheld_copies_first_and_refuses_past_its_limit(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, limit=5 << 20, memory_limit=0, memory_object_max=0, limit_name="object_store_mb")
    held, _ = store.put(encode_value(b"h" * (2 << 20)))
    cached, _ = store.put(encode_value(b"c" * (2 << 20)), held=False)
    store.pin(cached)
    with pytest.raises(ObjectStoreFull, match="object_store_mb"):  # the copy is in use: nothing to evict
        store.put(encode_value(b"n" * (2 << 20)))
    store.unpin(cached)
    fresh, _ = store.put(encode_value(b"n" * (2 << 20)))  # now the copy goes (least recently used, unheld)
    assert not store.has(cached) and store.has(held) and store.has(fresh) and store.stats()["evicted"] == 1
    with pytest.raises(ObjectStoreFull, match="larger than the object store's limit"):
        store.put(encode_value(b"x" * (6 << 20)))
    assert store.has(held)  # refusing one object changed nothing else


def test_a_file_written_by_a_job_process_is_adopted(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, limit=1 << 30)
    oid, size, _ = write_object(encode_value(b"z" * 5000), tmp_path)  # as ctx.put does, from another process
    assert not store.has(oid)
    assert store.adopt(oid) is not None and store.size(oid) == size


# ---- moving objects ------------------------------------------------------------------------------


def test_fetch_direct_in_chunks_and_verified(tmp_path: Path, ctx: Any) -> None:
    store = ObjectStore(tmp_path / "a", limit=1 << 30)
    data = os.urandom(9 * (1 << 20) + 123)
    oid, size = store.put(encode_value(data))
    srv = _server(ctx, store, "a")
    try:
        sink = Sink(size)
        stats = Fetcher(ctx, chunk=1 << 20, window=3).fetch(oid, size, [Source("a", srv.endpoint)], sink)
        assert stats.route == "direct" and stats.holder == "a"
        assert decode_value(memoryview(sink.buf)) == data  # type: ignore[arg-type]
        with pytest.raises(TransferError, match="not held here"):
            Fetcher(ctx).fetch("0" * 64, 10, [Source("a", srv.endpoint)], Sink(10))
    finally:
        srv.stop()


def test_an_unreachable_holder_is_reached_through_the_relay(tmp_path: Path, ctx: Any) -> None:
    relay = Relay(ctx, "127.0.0.1", 0)
    relay.start()
    store = ObjectStore(tmp_path / "a", limit=1 << 30)
    oid, size = store.put(encode_value(os.urandom(3 << 20)))
    srv = _server(ctx, store, "hidden", relay=f"tcp://127.0.0.1:{relay.port}", direct=False)
    try:
        wait_for(lambda: b"hidden" in relay.holders, 10, "the holder to register with the relay")
        # Its advertised address does not answer (another network, a NAT): the relay carries the chunks.
        src = Source("hidden", "tcp://127.0.0.1:1", f"tcp://127.0.0.1:{relay.port}")
        sink = Sink(size)
        stats = Fetcher(ctx, connect_timeout=0.5).fetch(oid, size, [src], sink)
        assert stats.route == "relay" and relay.relayed_bytes >= size
        assert bytes(sink.buf or b"") == bytes(store.view(oid) or b"")
        with pytest.raises(TransferError, match="not connected to the relay"):
            Fetcher(ctx, connect_timeout=0.5).fetch(oid, size, [Source("nobody", None, src.relay)], Sink(size))
    finally:
        srv.stop()
        relay.stop()


def test_a_transfer_cut_by_a_lost_holder_resumes_from_another(tmp_path: Path, ctx: Any) -> None:
    data = os.urandom(8 << 20)
    a = ObjectStore(tmp_path / "a", limit=1 << 30)
    b = ObjectStore(tmp_path / "b", limit=1 << 30)
    oid, size = a.put(encode_value(data))
    b.put(encode_value(data))
    srv_b = _server(ctx, b, "b")
    # Holder "a" answers the first chunk and then goes silent, as a worker that died mid-transfer.
    dying = ctx.socket(zmq.ROUTER)
    port = dying.bind_to_random_port("tcp://127.0.0.1")
    view = a.view(oid)
    assert view is not None
    answered = []

    import threading

    def serve_once() -> None:
        while len(answered) < 1:
            if dying.poll(5000):
                frames = dying.recv_multipart()
                oid_, off, n = msgpack.unpackb(frames[3])
                assert n > 0
                piece = view[off : off + n]
                meta = msgpack.packb([oid_, off, checksum(piece), size])
                dying.send_multipart([frames[0], TAG, DATA, meta, piece])
                answered.append(off)

    t = threading.Thread(target=serve_once, daemon=True)
    t.start()
    try:
        sink = Sink(size)
        fetcher = Fetcher(ctx, chunk=1 << 20, window=1, stall_timeout=1.0)
        stats = fetcher.fetch(oid, size, [Source("a", f"tcp://127.0.0.1:{port}"), Source("b", srv_b.endpoint)], sink)
        assert stats.holder == "b" and answered == [0]
        assert bytes(sink.buf or b"") == bytes(view)
    finally:
        t.join(timeout=5)
        dying.close(0)
        srv_b.stop()


def test_a_chunk_that_fails_its_checksum_is_refused(tmp_path: Path, ctx: Any) -> None:
    liar = ctx.socket(zmq.ROUTER)
    port = liar.bind_to_random_port("tcp://127.0.0.1")
    import threading

    def lie() -> None:
        if liar.poll(5000):
            frames = liar.recv_multipart()
            oid, off, _ = msgpack.unpackb(frames[3])
            liar.send_multipart([frames[0], TAG, DATA, msgpack.packb([oid, off, 12345, 16]), b"x" * 16])

    t = threading.Thread(target=lie, daemon=True)
    t.start()
    try:
        with pytest.raises(TransferError, match="checksum"):
            Fetcher(ctx).fetch("ab" * 32, 16, [Source("liar", f"tcp://127.0.0.1:{port}")], Sink(16))
    finally:
        t.join(timeout=5)
        liar.close(0)


def test_upload_to_a_store_is_verified_against_its_id(tmp_path: Path, ctx: Any) -> None:
    store = ObjectStore(tmp_path / "s", limit=8 << 20)
    srv = _server(ctx, store, "s")
    try:
        enc = encode_value(os.urandom(3 << 20))
        oid = enc.digest()
        upload(ctx, srv.endpoint or "", [], oid, enc.pieces(), enc.size, chunk=1 << 20)
        assert store.has(oid)
        enc2 = encode_value(b"other")
        with pytest.raises(TransferError, match="do not match"):
            upload(ctx, srv.endpoint or "", [], "ab" * 32, enc2.pieces(), enc2.size)
        big = encode_value(os.urandom(9 << 20))
        from titan_zmq.errors import ObjectStoreFull as Full

        with pytest.raises(Full, match="limit"):
            upload(ctx, srv.endpoint or "", [], big.digest(), big.pieces(), big.size, chunk=1 << 20)
        with pytest.raises(TransferError, match="did not connect"):
            upload(ctx, "tcp://127.0.0.1:1", [], oid, enc.pieces(), enc.size, connect_timeout=0.3)
    finally:
        srv.stop()


def test_a_malformed_request_gets_an_error_and_the_server_keeps_serving(tmp_path: Path, ctx: Any) -> None:
    store = ObjectStore(tmp_path / "s", limit=1 << 30)
    oid, size = store.put(encode_value(b"q" * 2000))
    srv = _server(ctx, store, "s")
    s = ctx.socket(zmq.DEALER)
    s.connect(srv.endpoint)
    try:
        s.send_multipart([TAG, GET, b"\xc1not msgpack"])
        assert s.poll(5000)
        assert s.recv_multipart()[1] == b"X"
        s.send_multipart([TAG, b"?", msgpack.packb([])])
        assert s.poll(5000) and s.recv_multipart()[1] == b"X"
        sink = Sink(size)
        Fetcher(ctx).fetch(oid, size, [Source("s", srv.endpoint)], sink)
        assert decode_value(memoryview(sink.buf)) == b"q" * 2000  # type: ignore[arg-type]
    finally:
        s.close(0)
        srv.stop()


def test_a_full_disk_refuses_new_objects_with_the_free_space_named(tmp_path: Path, monkeypatch: Any) -> None:
    import shutil as real_shutil

    from titan_zmq.objects import store as store_mod

    store = ObjectStore(tmp_path / "s", limit=1 << 30, memory_limit=0, memory_object_max=0)
    kept, _ = store.put(encode_value(b"k" * 5000))
    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ObjectStoreFull, match="1,000 bytes free"):
        store.put(encode_value(b"x" * 5000))
    assert store.has(kept) and decode_value(store.view(kept)) == b"k" * 5000  # type: ignore[arg-type]
