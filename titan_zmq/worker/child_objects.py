"""The data plane inside a call executor: object arguments read in place, large results stored.

A job receives each object it was given at the top level of its arguments (or from a parent) as
the value it names, loaded from this worker's store with its buffers mapped copy-on-write (a
numpy array is a view on the mapped file: no copy, and writable). A result too large to travel
inline (``TITAN_INLINE_MAX`` bytes packed), or one msgpack cannot carry, is stored instead: small
ones go back through the pipe as bytes, the rest are written straight into the store's folder,
and the worker reports a reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from titan_zmq.objects.codec import BYTES, DIR, FILE, REF_KEY, VALUE, Encoded, encode_value, extract, map_file, parse

_KINDS = {VALUE: "value", BYTES: "bytes", FILE: "file", DIR: "dir"}


def resolve(job: dict[str, Any]) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    """The job's args, kwargs and inputs, with their top-level references replaced by values."""
    paths: dict[str, str] = job.get("object_paths") or {}
    args = list(job.get("args", ()))
    kwargs = dict(job.get("kwargs") or {})
    inputs = job.get("inputs")
    if not paths:
        return args, kwargs, inputs
    args = [_value(a, paths) for a in args]
    kwargs = {k: _value(v, paths) for k, v in kwargs.items()}
    if isinstance(inputs, dict):
        inputs = {k: _value(v, paths) for k, v in inputs.items()}
    return args, kwargs, inputs


def _value(v: Any, paths: dict[str, str]) -> Any:
    if type(v) is not dict or REF_KEY not in v or v[REF_KEY] not in paths:
        return v
    return load(paths[v[REF_KEY]])


def load(path: str) -> Any:
    """An object file's value; a file or folder artifact is extracted next to it, and its path given."""
    view = map_file(path, writable=True)
    obj = parse(view)
    if obj.kind in (VALUE, BYTES):
        from titan_zmq.objects.codec import decode_value

        return decode_value(view)
    out = Path(path).parent / ".extracted" / Path(path).name
    name = obj.meta.get("name") or "object"
    if not (out / name).exists():
        out.mkdir(parents=True, exist_ok=True)
        extract(view, out)
    return out / name


def store_result(out: dict[str, Any], failed: str) -> dict[str, Any]:
    """Store a succeeded job's result as an object; ``out`` carries its reference (or a failure)."""
    value = out.get("result")
    limit = int(os.environ.get("TITAN_OBJECT_LIMIT") or 0)
    try:
        enc: Encoded = encode_value(value)
    except Exception as exc:
        return _fail(out, failed, "ResultNotSerializable", f"the result of type {type(value).__name__} can be "
                     f"neither packed nor pickled ({exc})")  # fmt: skip
    size = enc.size
    if limit and size > limit:
        return _fail(out, failed, "ResultTooLarge", f"the result is {size:,} bytes, larger than the worker's "
                     f"object store limit of {limit:,} bytes (object_store_mb); return less, or raise it")  # fmt: skip
    kind = _KINDS[enc.kind]
    if size <= int(os.environ.get("TITAN_OBJECT_MEMORY_MAX") or 0):
        out["object"] = {"data": enc.tobytes(), "kind": kind}
    else:
        from titan_zmq.errors import TitanError
        from titan_zmq.objects.codec import write_object

        folder = os.environ.get("TITAN_OBJECT_DIR")
        if not folder:
            return _fail(out, failed, "ResultTooLarge", "the result is too large to send inline, and this "
                         "worker has no object store (TITAN_OBJECT_DIR is not set)")  # fmt: skip
        try:
            oid, size, _ = write_object(enc, folder)
        except TitanError as exc:
            return _fail(out, failed, type(exc).__name__, f"the result of {size:,} bytes could not be stored: {exc}")
        out["object"] = {"id": oid, "size": size, "kind": kind}
    out["result"] = None
    return out


def _fail(out: dict[str, Any], failed: str, kind: str, message: str) -> dict[str, Any]:
    return {"id": out.get("id"), "outcome": failed, "error": message, "error_type": kind, "runtime": out.get("runtime")}


def is_big(value: Any, inline_max: int) -> bool:
    """Whether ``value`` is plainly too large to pack inline (a large buffer), without packing it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return memoryview(value).nbytes > inline_max
    nbytes = getattr(value, "nbytes", None)
    return isinstance(nbytes, int) and nbytes > inline_max
