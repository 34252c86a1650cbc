"""Job specs from Python arguments: what ``TitanClient.submit``, ``map`` and ``deploy`` send.

A function is sent by name (``module:qualname``); a function of a script run as ``__main__``, a
script, and a project folder (zipped, the same bytes for the same files) travel as content, by
sha256, in the client's ``_blobs``, which go along with each request that names them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from titan_zmq.errors import JobError
from titan_zmq.job import new_job_id


class SpecBuilder:
    """Builds job specs for :class:`~titan_zmq.client.client.TitanClient`, a base of it."""

    _blobs: dict[str, bytes]  # contents sent with jobs, by sha256 (set by TitanClient.__init__)

    def _blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        self._blobs[sha] = content
        return sha

    def _call_target(self, fn: str | Callable[..., Any], spec: dict[str, Any]) -> None:
        if isinstance(fn, str):
            spec["target"] = fn
            return
        module = getattr(fn, "__module__", None)
        qual = getattr(fn, "__qualname__", None)
        if not module or not qual or "<" in qual:
            raise JobError(
                f"{fn!r} cannot be found by name on a worker (lambdas and nested functions cannot); "
                "define it at the top level of a module"
            )
        spec["target"] = f"{module}:{qual}"
        if module == "__main__":
            if os.environ.get("TITAN_JOB_ID"):
                raise JobError(
                    f"{qual} comes from a script shipped to this job; inside a job, name functions by "
                    "'package.module:function' (importable on the workers)"
                )
            main_file = getattr(sys.modules["__main__"], "__file__", None)
            if not main_file:
                raise JobError(
                    f"{qual} is defined in an interactive session; workers can only import functions "
                    "from files: put it in a module"
                )
            spec["blob"] = self._blob(Path(main_file).read_bytes())

    def build(
        self,
        call: str | Callable[..., Any] | None = None,
        *,
        shell: str | None = None,
        script: str | Path | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        project: str | Path | None = None,
        approval: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """A job spec as the broker takes it (used by ``submit`` and ``map``). ``approval="question?"``
        makes an approval gate: it runs nowhere, and holds the jobs after it until a person decides."""
        if project is not None and script is None:
            raise JobError("project= ships a folder: name its entry point with script= (a path inside the folder)")
        given = [n for n, v in (("call", call), ("shell", shell), ("script", script), ("approval", approval))
                 if v is not None]  # fmt: skip
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise JobError(f"give exactly one of call=, shell=, script= or approval= (got {got})")
        spec: dict[str, Any] = {"id": id or new_job_id()}
        if approval is not None:
            spec["kind"] = "approval"
            spec["target"] = approval
        elif call is not None:
            spec["kind"] = "call"
            self._call_target(call, spec)
        elif shell is not None:
            spec["kind"] = "shell"
            spec["target"] = shell
        elif project is not None:
            folder = Path(str(project))
            entry = Path(str(script))
            if entry.is_absolute() or ".." in entry.parts or not (folder / entry).is_file():
                raise JobError(f"the entry point {str(entry)!r} must be a file inside the project folder {folder}")
            spec["kind"] = "archive"
            spec["target"] = entry.as_posix()
            spec["blob"] = self._blob(zip_folder(folder))
        else:
            path = Path(str(script))
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise JobError(f"cannot read script {path}: {exc.strerror}") from None
            spec["kind"] = "script"
            spec["target"] = path.name
            spec["blob"] = self._blob(content)
        if args is not None:
            spec["args"] = list(args)
        if kwargs:
            spec["kwargs"] = dict(kwargs)
        for key, value in options.items():
            if value is None:
                continue
            if key == "requires":
                value = [t.strip() for t in value.split(",")] if isinstance(value, str) else sorted(value)
            spec[key] = value
        return spec


def zip_folder(folder: Path) -> bytes:
    """A folder as zip bytes, the same bytes for the same files (sorted, fixed times), so its
    content address is stable and workers reuse what they unpacked. Skips caches and hidden files."""
    import io
    import zipfile

    if not folder.is_dir():
        raise JobError(f"project folder {folder} does not exist")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
                continue
            info = zipfile.ZipInfo(rel.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()
