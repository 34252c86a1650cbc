"""Project archives: the same folder zips to the same bytes; unpacking refuses escaping paths."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from titan_zmq.client.client import zip_folder
from titan_zmq.errors import TitanError
from titan_zmq.worker.cache import BlobCache


def test_zip_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "pkg" / "__pycache__").mkdir(parents=True)
    (proj / "main.py").write_text("print(1)\n")
    (proj / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (proj / ".git").mkdir()
    (proj / ".git" / "HEAD").write_text("ref")
    a = zip_folder(proj)
    (proj / "main.py").touch()  # a new mtime changes nothing
    assert zip_folder(proj) == a
    assert zipfile.ZipFile(io.BytesIO(a)).namelist() == ["main.py"]


def test_extract_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.py", "print('out')\n")
    data = buf.getvalue()
    cache = BlobCache(tmp_path / "cache")
    sha = hashlib.sha256(data).hexdigest()
    cache.put(sha, data)
    with pytest.raises(TitanError, match="outside its folder"):
        cache.extract(sha)
    assert not (tmp_path / "cache" / "escape.py").exists()
