"""The YAML of a pipeline as nodes with their lines: the document (:class:`YamlDoc`) and one job's
raw fields (:class:`YamlJob`), whose typed getters fail naming the file, the line and the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from titan_zmq.errors import PipelineError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
CALL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,63}$")


class YamlDoc:
    """The composed YAML document: nodes (with lines) and their values (built by yaml's SafeLoader)."""

    def __init__(self, path: Path, text: str, where: str | None = None) -> None:
        self.path = path
        self.where = where or os.fspath(path)  # how messages name it: the file, or what the text came from
        self.warnings: list[str] = []  # "file:line: message", for what is read but ignored (Titan format)
        self._loader = yaml.SafeLoader(text)
        try:
            self.root = self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "invalid YAML"
            raise PipelineError(f"{self.where}:{line}: invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise PipelineError(f"{self.where}: invalid YAML: {exc}") from None

    def fail(self, node: yaml.Node | None, message: str) -> PipelineError:
        line = node.start_mark.line + 1 if node is not None else 1
        return PipelineError(f"{self.where}:{line}: {message}")

    def warn(self, node: yaml.Node | None, message: str) -> None:
        """Record a warning naming the file and the line (``load_pipeline`` logs them, or refuses
        them with ``strict``)."""
        line = node.start_mark.line + 1 if node is not None else 1
        self.warnings.append(f"{self.where}:{line}: {message}")

    def value(self, node: yaml.Node) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(node, f"invalid value: {exc}") from None

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """``{key: (key_node, value_node)}`` of a mapping node; duplicate or non-string keys refused."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a map, got {kind_of(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode)
            if not isinstance(key, str):
                raise self.fail(knode, f"{what}: keys must be strings, got {key!r}")
            if key in out:
                first = out[key][0].start_mark.line + 1
                raise self.fail(knode, f"{what}: key '{key}' is given twice (first on line {first})")
            out[key] = (knode, vnode)
        return out


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a map"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value) if node.value != "" else "nothing"


class YamlJob:
    """One job's raw fields, with the nodes for error lines."""

    def __init__(self, doc: YamlDoc, label: str, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]]):
        self.doc = doc
        self.label = label  # "job 'x'" or "job #3"
        self.node = node
        self.fields = fields

    def has(self, key: str) -> bool:
        return key in self.fields and self.doc.value(self.fields[key][1]) is not None

    def vnode(self, key: str) -> yaml.Node:
        return self.fields[key][1]

    def knode(self, key: str) -> yaml.Node:
        return self.fields[key][0]

    def get(self, key: str) -> Any:
        return self.doc.value(self.fields[key][1]) if key in self.fields else None

    def fail(self, key: str | None, message: str, at_key: bool = False) -> PipelineError:
        node = self.node
        if key is not None and key in self.fields:
            node = self.knode(key) if at_key else self.vnode(key)
        return self.doc.fail(node, f"{self.label}: {message}")

    def warn(self, key: str | None, message: str, at_key: bool = False) -> None:
        node = self.node
        if key is not None and key in self.fields:
            node = self.knode(key) if at_key else self.vnode(key)
        self.doc.warn(node, f"{self.label}: {message}")

    def check_keys(self, known: tuple[str, ...], fmt: str) -> None:
        for key in self.fields:
            if key not in known:
                hint = f" in the {fmt} format" if fmt == "Titan" else ""
                raise self.fail(key, f"unknown key '{key}'{hint} (known: {', '.join(known)})", at_key=True)

    # ---- typed getters (None when absent or null) ----

    def string(self, key: str) -> str | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"'{key}' must be a non-empty string, got {v!r}")
        return v

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"'{key}' must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"'{key}' must be between {lo} and {hi}, got {v}")
        return v

    def number(self, key: str, lo: float, hi: float, unit: str = "seconds") -> float | None:
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"'{key}' must be a number of {unit}, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"'{key}' must be between {lo:g} and {hi:g} {unit}, got {v}")
        return float(v)

    def choice(self, key: str, allowed: tuple[str, ...], said: str) -> str | None:
        """One of ``allowed`` (``said``: how the message names them)."""
        v = self.get(key)
        if v is not None and v not in allowed:
            raise self.fail(key, f"'{key}' must be {said}, got {v!r}")
        return v

    def boolean(self, key: str) -> bool | None:
        v = self.get(key)
        if v is not None and not isinstance(v, bool):
            raise self.fail(key, f"'{key}' must be true or false, got {v!r}")
        return v

    def str_map(self, key: str) -> dict[str, str] | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, f"'{key}' must be a map of names to strings, got {v!r}")
        out = {}
        for k, val in v.items():
            if not isinstance(k, str):
                raise self.fail(key, f"'{key}': names must be strings, got {k!r}")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.fail(key, f"'{key}': value of '{k}' must be a string or a number, got {val!r}")
            out[k] = str(val)
        return out

    def id_list(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is None:
            return None
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise self.fail(key, f"'{key}' must be a list of job ids, got {v!r}")
        for p in items:
            if not ID_RE.fullmatch(p):
                raise self.fail(key, f"'{key}' names an invalid job id {p!r}")
        if len(set(items)) != len(items):
            raise self.fail(key, f"'{key}' names a parent twice")
        return list(items)

    def tags(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is None:
            return None
        items = [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise self.fail(key, f"'{key}' must be a list of tags or a comma-separated string, got {v!r}")
        for t in items:
            if not TAG_RE.fullmatch(t.strip()):
                raise self.fail(key, f"'{key}' has an invalid tag {t!r}: use letters, digits and _.:=+-")
        return sorted({t.strip() for t in items})

    def expand(self, key: str, rel: str) -> Path:
        """``rel`` as a path, ``~`` expanded (a home that does not exist is this key's error)."""
        try:
            return Path(rel).expanduser()
        except RuntimeError:
            why = f"'{key}': {rel!r} names the home folder of a user this machine does not know"
            raise self.fail(key, why) from None

    def script_path(self, key: str) -> str | None:
        rel = self.string(key)
        if rel is None:
            return None
        path = self.expand(key, rel)
        if not path.is_absolute():
            path = self.doc.path.resolve().parent / path
        if not path.is_file():
            raise self.fail(key, f"'{key}': no such file {rel!r} (looked for {path})")
        return str(path)
