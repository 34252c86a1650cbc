"""What an agent may do through titan: read-only, or an allow-list of job kinds and targets.

Used by the MCP server (``titan mcp --read-only --allow-kinds call --allow-targets 'mypkg.*:*'``) and
the LangChain toolkit. A policy checks the job specs a call would send (``TitanClient.build``'s,
a DAG's, a service's) before anything is sent, and raises :class:`~titan_zmq.errors.Refused`
naming what was refused and which setting allows it::

    policy = Policy(kinds={"call"}, targets=("mypkg.*:*",))
    policy.check_specs(specs)          # Refused: job 'x' is a shell job; allowed kinds: call

Targets are shell-style patterns (``fnmatch``) over a job's target: ``module:function`` for a call,
the command line for a shell job, the file name for a script, the service's command for a service.
Approval gates run nothing, so they pass whatever the kinds say.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from titan_zmq.errors import Refused

# Every kind a job spec can have, and "service" for a deployed service or a DAG's service node.
KINDS = ("call", "shell", "script", "archive", "service")
CLI_FLAGS = {"read_only": "--read-only", "kinds": "--allow-kinds", "targets": "--allow-targets"}
_ALWAYS = ("approval",)  # runs nothing: a person decides


@dataclass(frozen=True)
class Policy:
    """``read_only``: only calls that change nothing. ``kinds``: the job kinds allowed (None: all).
    ``targets``: patterns a job's target must match (empty: any), for the kinds in ``target_kinds``
    (None: every kind). ``flags``: how each setting is spelled where the policy was made, for the
    messages (``--read-only`` for the MCP server, ``read_only=True`` for the LangChain toolkit)."""

    read_only: bool = False
    kinds: frozenset[str] | None = None
    targets: tuple[str, ...] = ()
    target_kinds: frozenset[str] | None = None
    flags: Mapping[str, str] = field(default_factory=lambda: dict(CLI_FLAGS))

    def __post_init__(self) -> None:
        if self.kinds is not None:
            unknown = sorted(set(self.kinds) - set(KINDS))
            if unknown:
                raise ValueError(f"unknown job kind(s) {', '.join(unknown)}: the kinds are {', '.join(KINDS)}")

    @classmethod
    def parse(cls, read_only: bool = False, kinds: str | Iterable[str] | None = None,
              targets: str | Iterable[str] | None = None, **flags: str) -> Policy:  # fmt: skip
        """A policy from comma-separated settings (``"call,script"``, ``"mypkg.*:*,tools:*"``)."""
        def split(v: str | Iterable[str] | None) -> list[str] | None:
            if v is None:
                return None
            items = v.split(",") if isinstance(v, str) else list(v)
            return [s.strip() for s in items if s.strip()]

        k = split(kinds)
        spelled = {**CLI_FLAGS, **flags}
        return cls(read_only=read_only, kinds=None if k is None else frozenset(k), targets=tuple(split(targets) or ()),
                   flags=spelled)  # fmt: skip

    def describe(self) -> str:
        """One line: what this policy allows."""
        if self.read_only:
            return "read-only: status, logs and lists only"
        kinds = "all job kinds" if self.kinds is None else "kinds " + ",".join(sorted(self.kinds))
        targets = "any target" if not self.targets else "targets " + ",".join(self.targets)
        return f"{kinds}; {targets}"

    def check_write(self, what: str) -> None:
        """Refuse a call that changes the cluster (``what`` names it) when read-only."""
        if self.read_only:
            raise Refused(f"{what} is refused: this server is read-only ({self.flags['read_only']}); "
                          "it serves status, logs and lists only")  # fmt: skip

    def check(self, kind: str, target: str, name: str = "") -> None:
        """Refuse one job (or service) of ``kind`` running ``target``; ``name`` says which, for the message."""
        who = f"job {name!r}" if name else "this job"
        if kind in _ALWAYS:
            return
        if self.kinds is not None and kind not in self.kinds:
            allowed = ",".join(sorted(self.kinds)) or "none"
            raise Refused(f"{who} is a {kind} job, and {kind} jobs are not allowed here "
                          f"(allowed kinds: {allowed}; set by {self.flags['kinds']})")  # fmt: skip
        if self.target_kinds is not None and kind not in self.target_kinds:
            return
        if self.targets and not any(fnmatch.fnmatchcase(target, pat) for pat in self.targets):
            raise Refused(f"{who} runs {target!r}, which matches none of the allowed targets "
                          f"({', '.join(self.targets)}; set by {self.flags['targets']})")  # fmt: skip

    def check_specs(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Refuse a submission unless every job spec in it is allowed (all or nothing, as the broker takes it)."""
        self.check_write("submitting jobs")
        for spec in specs:
            kind = str(spec.get("kind", ""))
            if kind == "service":  # a DAG's service node: its command is the service's
                svc = spec.get("kwargs") or {}
                self.check("service", str(svc.get("target", "")), str(spec.get("id", "")))
            else:
                self.check(kind, str(spec.get("target", "")), str(spec.get("id", "")))

    def check_service(self, spec: Mapping[str, Any]) -> None:
        """Refuse deploying a service (its wire spec, ``TitanClient.service_spec``'s) unless allowed."""
        self.check_write("deploying a service")
        self.check("service", str(spec.get("target", "")), str(spec.get("name", "")))


OPEN = Policy()  # everything allowed
