"""The code stays lint-clean and type-clean (ruff and mypy, as configured in the repo)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_ruff_finds_nothing_to_fix() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    paths = ["titan_zmq", "tui", "benchmarks", "examples", "tests"]
    out = subprocess.run(["ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_mypy_finds_no_type_error() -> None:
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "titan_zmq", "tui"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(60)
def test_the_journal_package_imports_nothing_of_the_broker() -> None:
    """The layers point one way: aof/ stores records; the broker gives them meaning."""
    code = (
        "import sys, pkgutil, importlib, titan_zmq.aof as aof\n"
        "for m in pkgutil.iter_modules(aof.__path__): importlib.import_module('titan_zmq.aof.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('titan_zmq.broker')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.timeout(60)
def test_no_module_is_over_about_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "titan_zmq").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 620}  # fmt: skip
    assert long == {}, f"modules of one responsibility stay under ~600 lines: split {long}"
