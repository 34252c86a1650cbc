"""The original Titan's artifact store (files uploaded to the master), over titan_zmq's data plane.

The original keeps uploaded files in the master's ``uploads/`` folder by base name. Here an
upload is an artifact in a worker's object store (kept with the broker too when it has a data
directory), and the base name maps to its reference in the KV store, under
``titan.compat.artifact:<name>``, so any process (an orchestrator, a job) finds it by name:

* ``upload_file(path)``: ``"UPLOAD_SUCCESS"``, or ``"ERROR: File not found at: ..."``;
* ``fetch_artifact(name, save_path=None)``: writes it to ``save_path`` (default: ``name`` in the
  working directory); True, or False when no artifact has that name or the download fails;
* ``publish_artifact(key, path)``: uploads, then ``store_put(key, name)``; True or False;
* ``get_artifact(key, save_path=None)``: the name under ``key``, fetched to ``save_path`` (default
  ``/tmp/<name>``); False for a key with no artifact (``NULL``, ``CLEARED``);
* ``upload_project_folder(folder, name=None)``: the folder as ``<name>.zip``, which a
  ``TitanJob(filename="<name>/entry.py", is_archive=True)`` runs as a project job;
* ``deploy_script(path)``: the script as an artifact by name; ``"DEPLOY_SUCCESS"``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from titan_zmq.errors import TitanError
from titan_zmq.objects import ObjectRef, as_ref

log = logging.getLogger(__name__)

KEY = "titan.compat.artifact:"


class Artifacts:
    def __init__(self, native: Any) -> None:
        self.native = native
        self._tmp: list[tempfile.TemporaryDirectory[str]] = []

    def close(self) -> None:
        for t in self._tmp:
            t.cleanup()
        self._tmp.clear()

    def _register(self, name: str, ref: ObjectRef) -> None:
        self.native.kv.set(KEY + name, dict(ref))

    def lookup(self, name: str) -> ObjectRef | None:
        return as_ref(self.native.kv.get(KEY + os.path.basename(name)))

    def upload_file(self, filepath: str, name: str | None = None) -> str:
        path = Path(filepath)
        if not path.exists():
            return f"ERROR: File not found at: {filepath}"
        self._register(name or path.resolve().name, self.native.upload(path))
        return "UPLOAD_SUCCESS"

    def fetch(self, filename: str, save_path: str | None) -> bool:
        ref = self.lookup(filename)
        if ref is None:
            log.warning("fetch_artifact: no artifact named %s was uploaded", filename)
            return False
        try:
            self.native.download(ref, save_path or os.path.basename(filename))
        except TitanError as exc:
            log.warning("fetch_artifact %s: %s", filename, exc)
            return False
        return True

    def project(self, filename: str) -> tuple[Path, str]:
        """For ``TitanJob(filename="<name>/entry.py", is_archive=True)``: the uploaded project folder,
        written out here, and the entry point inside it."""
        name, _, entry = filename.partition("/")
        if not entry:
            raise TitanError(f"an archive job's file is '<project>/<entry point>', got {filename!r}")
        zip_name = name if name.endswith(".zip") else f"{name}.zip"
        ref = self.lookup(zip_name)
        if ref is None:
            raise TitanError(f"no project {zip_name} was uploaded; call upload_project_folder(folder) first")
        tmp = tempfile.TemporaryDirectory(prefix="titan-project-")
        self._tmp.append(tmp)  # kept until the client closes: the submission reads it
        folder = self.native.download(ref, Path(tmp.name) / "project")
        return folder, entry
