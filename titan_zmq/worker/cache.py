"""The worker's content-addressed cache of shipped files (scripts, __main__ modules)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from titan_zmq.errors import TitanError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobCache:
    """Files named by the sha256 of their content, written atomically, verified on write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root) / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not _SHA_RE.fullmatch(sha):
            raise TitanError(f"not a sha256 digest: {sha!r}")
        return self.root / sha[:2] / f"{sha}.py"

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, sha: str, content: bytes) -> Path:
        """Store ``content`` under ``sha`` unless it is there already. Refuses content that does not match."""
        path = self.path(sha)
        if path.is_file():
            return path
        if hashlib.sha256(content).hexdigest() != sha:
            raise TitanError(f"blob {sha[:12]}... does not match its content; refusing to cache it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        return path

    def extract(self, sha: str) -> Path:
        """Unpack the zip archive ``sha`` once into its own folder; refuse members that escape it."""
        import shutil
        import zipfile

        dest = self.root.parent / "archives" / sha
        if dest.is_dir():
            return dest
        tmp = dest.with_name(f".{sha}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(self.path(sha)) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts:
                    raise TitanError(f"archive {sha[:12]}... holds {name!r}, a path outside its folder; refusing it")
            zf.extractall(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def shas(self) -> list[str]:
        """Digests of every file in the cache."""
        return [p.stem for p in self.root.glob("??/*.py") if _SHA_RE.fullmatch(p.stem)]
