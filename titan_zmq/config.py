"""Settings: small typed dataclasses, from defaults, a YAML file, ``TITAN_*`` variables and flags.

Precedence, lowest first: defaults, YAML file, environment, explicit keyword overrides
(the CLI passes its flags as overrides). Every value is validated with a message that
says which setting to change.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from titan_zmq.errors import ConfigError

DEFAULT_FRONT = 5555
DEFAULT_BROKER = f"localhost:{DEFAULT_FRONT}"
SERVICE_PORTS = (20000, 29999)  # ports given to services that do not ask for one ($TITAN_SERVICE_PORTS: LO-HI)


def service_ports() -> tuple[int, int]:
    """The range services are given ports from: ``TITAN_SERVICE_PORTS`` (``LO-HI``), else 20000-29999."""
    raw = os.environ.get("TITAN_SERVICE_PORTS", "").strip()
    if not raw:
        return SERVICE_PORTS
    lo_s, sep, hi_s = raw.partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        lo, hi = 0, -1
    if not sep or not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"TITAN_SERVICE_PORTS={raw!r}: give a range LO-HI of ports within 1024-65535, "
                          "e.g. 20000-29999")
    return lo, hi

T = TypeVar("T")


def parse_address(addr: str, default_port: int = DEFAULT_FRONT) -> tuple[str, int]:
    """Parse ``HOST[:PORT]``, ``tcp://HOST:PORT`` or ``[V6]:PORT`` into (host, port)."""
    raw = addr
    addr = addr.strip()
    if addr.startswith("tcp://"):
        addr = addr[6:]
    if not addr:
        raise ConfigError(f"broker address {raw!r} is empty; use HOST[:PORT], e.g. localhost:5555")
    host, port_s = addr, ""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ConfigError(f"broker address {raw!r} has an unclosed '['")
        host, rest = addr[1:end], addr[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"broker address {raw!r}: only ':PORT' may follow ']'")
        port_s = rest[1:]
    elif addr.count(":") == 1:
        host, port_s = addr.split(":")
    elif ":" in addr:
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ConfigError(
                f"broker address {raw!r} is malformed; use HOST[:PORT], tcp://HOST:PORT or [IPV6]:PORT"
            ) from None
    if not host:
        raise ConfigError(f"broker address {raw!r} has no host; use HOST[:PORT], e.g. localhost:5555")
    if not port_s:
        return host, default_port
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"broker address {raw!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"broker address {raw!r}: port {port} is out of range 1-65535")
    return host, port


def tcp_endpoint(host: str, port: int) -> str:
    """A ZeroMQ tcp endpoint, bracketing IPv6 literals."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def parse_members(addrs: str, default_port: int = DEFAULT_FRONT) -> list[tuple[str, int]]:
    """Parse a comma-separated list of ``HOST[:PORT]`` (the members of a broker group; one entry:
    one broker) into (host, port) pairs, in order, without repeats."""
    out: list[tuple[str, int]] = []
    parts = [a for a in addrs.split(",") if a.strip()]
    if not parts:
        raise ConfigError(f"broker address {addrs!r} is empty; use HOST[:PORT], or HOST:PORT,HOST:PORT,... for a group")
    for part in parts:
        hp = parse_address(part, default_port)
        if hp not in out:
            out.append(hp)
    return out


def resolve_broker(explicit: str | None = None) -> str:
    """The broker address: the explicit one, else ``TITAN_BROKER``, else localhost:5555."""
    return explicit or os.environ.get("TITAN_BROKER") or DEFAULT_BROKER


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"setting '{name}' must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{name}' must be a whole number, got {value!r}") from None


def _to_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{name}' must be a number, got {value!r}") from None


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"setting '{name}' must be true or false, got {value!r}")


def _to_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ConfigError(f"setting '{name}' must be a list or a comma-separated string, got {value!r}")


def _optional(coerce: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``coerce``, with nothing (None, "", "none") for None."""

    def optional(name: str, value: Any) -> Any:
        return None if value is None or value in ("", "none", "None") else coerce(name, value)

    return optional


# A field's type (a string, as annotations are here) -> its coercion; any other type takes str().
_COERCE: dict[Any, Callable[[str, Any], Any]] = {
    "int": _to_int, int: _to_int, "float": _to_float, float: _to_float, "bool": _to_bool, bool: _to_bool,
    "list[str]": _to_list, list: _to_list, "int | None": _optional(_to_int), "float | None": _optional(_to_float),
}  # fmt: skip


def _coerce(name: str, tp: Any, value: Any) -> Any:
    coerce = _COERCE.get(tp)
    if coerce is not None:
        return coerce(name, value)
    return None if value is None else str(value)


def load(cls: type[T], path: str | os.PathLike[str] | None = None, **overrides: Any) -> T:
    """Build config ``cls`` from defaults, a YAML file, ``TITAN_<FIELD>`` variables and overrides."""
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in fields:
                raise ConfigError(f"config file {path}: unknown setting '{k}'; known: {', '.join(fields)}")
            values[key] = v
    for name in fields:
        env = os.environ.get(f"TITAN_{name.upper()}")
        if env is not None and env != "":
            values[name] = env
    for k, v in overrides.items():
        if k not in fields:
            raise ConfigError(f"unknown setting '{k}' for {cls.__name__}")
        if v is not None:
            values[k] = v
    coerced = {k: _coerce(k, fields[k].type, v) for k, v in values.items()}
    cfg = cls(**coerced)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def _check_port(name: str, port: int) -> None:
    if not 0 <= port < 65536:
        raise ConfigError(f"setting '{name}' must be a port 1-65535 (or 0 for a random free port), got {port}")


@dataclass
class BrokerConfig:
    """Settings of the broker (``titan broker``)."""

    host: str = "127.0.0.1"
    front: int = DEFAULT_FRONT
    back: int = 5556
    events: int = 5557
    objects: int = -1  # the object relay's port; -1: front + 3 (5558), or a free one when front is 0
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 4
    # Heartbeats a second the broker takes from all its workers at most: past heartbeat_rate x
    # heartbeat_interval workers, the interval grows with their number (told to each worker), so
    # heartbeats cost the same with 1,000 workers as with 200; a lost worker is then found later
    # (interval x liveness). 0: the interval never grows.
    heartbeat_rate: float = 400.0
    metrics_port: int = -1  # Prometheus metrics over HTTP on this port (0: a free one; -1: none)
    max_message_size: int = 64 * 1024 * 1024
    max_finished_jobs: int = 100_000
    max_lost: int = 3
    stats_interval: float = 1.0
    batch: int = 512
    prefetch_below: float = 0.05  # lease beyond free slots only to workers whose jobs average less (s)
    data_dir: str = ""  # journal directory; empty: state lives in memory only
    fsync: str = "everysec"  # always | everysec | no
    compact_ratio: float = 4.0  # compact when the journal is this many times the last snapshot...
    compact_min_mb: float = 64.0  # ...and larger than this
    log_tail_lines: int = 1000  # output lines kept in memory per job
    log_memory_lines: int = 1_000_000  # output lines kept in memory in all (oldest jobs' go first)
    orphan_wait: float = 0.0  # after a restart, how long running jobs wait for their worker (0: 2 heartbeat windows)
    keys: str = ""  # CURVE key folder (titan keys generate): encrypt and admit only allowed keys
    # Limits: each refuses what goes past it with a LimitExceeded error that names it.
    max_dag_jobs: int = 100_000  # jobs in one DAG
    max_pending_per_client: int = 1_000_000  # unfinished jobs one client connection has submitted
    max_kv_value: int = 1024 * 1024  # bytes of one KV write's value (msgpack)
    max_log_line: int = 8192  # characters of one log line kept; a longer line is cut and marked
    # The data plane: placement by locality, and how long objects nobody releases are kept.
    locality_wait: float = 1.0  # s a job waits for the worker holding most of its input bytes (0: off)
    locality_min_mb: float = 1.0  # inputs smaller than this do not pin a job anywhere
    object_ttl: float = 3600.0  # s a DAG's final results (and results outside DAGs) are kept
    # A group (high availability): every member's front address; empty: one broker on its own.
    peers: str = ""  # HOST:PORT,HOST:PORT,HOST:PORT; this broker is the one whose port is `front`
    election_timeout: float = 0.8  # s without the leader before a follower stands (Raft's; 0.8-1.6 s random)

    @property
    def repl_port(self) -> int:
        """The journal stream's port in a group: front + 4."""
        return self.front + 4

    @property
    def raft_port(self) -> int:
        """The election's (pysyncobj) port in a group: front + 5."""
        return self.front + 5

    @property
    def relay_port(self) -> int:
        """The object relay's port: ``objects``, or front + 3 (0, a free one, when front is)."""
        if self.objects != -1:
            return self.objects
        return self.front + 3 if self.front else 0

    @property
    def orphan_window(self) -> float:
        """After a restart, how long a job that was running waits for its worker to come back."""
        return self.orphan_wait or 2 * self.heartbeat_interval * self.heartbeat_liveness

    def validate(self) -> None:
        if self.fsync not in ("always", "everysec", "no"):
            raise ConfigError(f"fsync must be always, everysec or no, got {self.fsync!r}")
        if self.compact_ratio < 1 or self.compact_min_mb < 0:
            raise ConfigError("compact_ratio must be at least 1 and compact_min_mb at least 0")
        if self.orphan_wait < 0:
            raise ConfigError(f"orphan_wait must be 0 (automatic) or more seconds, got {self.orphan_wait}")
        for name in ("front", "back", "events"):
            _check_port(name, getattr(self, name))
        if self.objects != -1:
            _check_port("objects", self.objects)
        ports = [p for p in (self.front, self.back, self.events) if p]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"front, back and events ports must differ, got {self.front}, {self.back}, {self.events}")
        if self.relay_port and self.relay_port in ports:
            raise ConfigError(f"the objects port {self.relay_port} is taken by another of the broker's sockets; "
                              "choose another with --objects")  # fmt: skip
        service_ports()  # a malformed TITAN_SERVICE_PORTS stops the start, with what to write
        if self.peers:
            self._check_group()
        if self.locality_wait < 0 or self.locality_min_mb < 0 or self.object_ttl < 0:
            raise ConfigError("locality_wait, locality_min_mb and object_ttl must be 0 or more")
        _check_heartbeat(self.heartbeat_interval, self.heartbeat_liveness)
        if self.heartbeat_rate < 0:
            raise ConfigError(f"heartbeat_rate must be 0 (the interval never grows) or more, got {self.heartbeat_rate}")
        if self.max_message_size < 1024:
            raise ConfigError(f"max_message_size must be at least 1024 bytes, got {self.max_message_size}")
        for name in ("max_dag_jobs", "max_pending_per_client", "max_kv_value", "max_log_line"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_finished_jobs < 0 or self.max_lost < 0 or self.batch < 1:
            raise ConfigError("max_finished_jobs and max_lost must be >= 0 and batch >= 1")

    def members(self) -> list[tuple[str, int]]:
        """The group's members (host, front port); empty without ``peers``."""
        return parse_members(self.peers) if self.peers else []

    def _check_group(self) -> None:
        members = self.members()
        if len(members) < 3 or len(members) % 2 == 0:
            raise ConfigError(f"--peers lists {len(members)} member(s); a group needs an odd number, 3 or more, "
                              "so that a majority survives the loss of one")  # fmt: skip
        if not self.data_dir:
            raise ConfigError("a group member (--peers) needs --data-dir: it keeps a full copy of the journal")
        if not self.front:
            raise ConfigError("a group member (--peers) needs a fixed --front port: the others reach it there")
        if not [m for m in members if m[1] == self.front]:
            raise ConfigError(f"--peers {self.peers} has no member with this broker's front port {self.front}; "
                              "list this broker too (HOST:PORT of its front socket)")  # fmt: skip
        if not 0.1 <= self.election_timeout <= 60:
            raise ConfigError(f"election_timeout must be between 0.1 and 60 seconds, got {self.election_timeout}")


def _check_heartbeat(interval: float, liveness: int) -> None:
    if not 0.01 <= interval <= 600:
        raise ConfigError(f"heartbeat_interval must be between 0.01 and 600 seconds, got {interval}")
    if liveness < 2:
        raise ConfigError(f"heartbeat_liveness must be at least 2 missed heartbeats, got {liveness}")


@dataclass
class WorkerConfig:
    """Settings of a worker (``titan worker``)."""

    broker: str = field(default_factory=resolve_broker)
    name: str = ""
    tags: list[str] = field(default_factory=list)
    slots: int = 0  # 0: one per CPU
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 4
    cache_dir: str = ""
    gpu_probe: bool = True
    job_memory_mb: int | None = None
    output_tail: int = 64 * 1024
    max_message_size: int = 64 * 1024 * 1024
    prefetch: int = 64  # at most this many extra jobs per slot while its jobs are short; 0: strict credit
    prefetch_wait: float = 1.0  # a held job not started after this many seconds goes back
    advertise: str = ""  # address its services are reached at (default: its IP facing the broker)
    fork_server: bool = True  # script jobs fork from a warm interpreter instead of starting a new one
    keys: str = ""  # CURVE key folder: the worker key pair and the broker's public key
    # Its object store: results above inline_max_kb stay here (the broker records a reference).
    object_store_mb: int = 10240  # in all, memory and spill folder; an object that would pass it is refused
    object_memory_mb: int = 256  # objects of at most 1 MiB are kept in memory, up to this much
    inline_max_kb: int = 256  # a result larger than this (packed) is stored here, not sent to the broker
    object_direct: bool = True  # serve objects on a port of its own (False: only through the broker's relay)

    def validate(self) -> None:
        parse_members(self.broker)
        if self.object_store_mb < 1 or self.object_memory_mb < 0 or self.inline_max_kb < 1:
            raise ConfigError("object_store_mb and inline_max_kb must be at least 1, object_memory_mb at least 0")
        if self.inline_max_kb * 1024 > self.max_message_size // 4:
            raise ConfigError(f"inline_max_kb ({self.inline_max_kb}) must be at most a quarter of max_message_size "
                              f"({self.max_message_size} bytes): larger results are kept as objects")  # fmt: skip
        if not 0 <= self.prefetch <= 1000 or self.prefetch_wait <= 0:
            raise ConfigError("prefetch must be 0-1000 jobs per slot and prefetch_wait above 0 seconds")
        if self.slots < 0 or self.slots > 4096:
            raise ConfigError(f"slots must be between 1 and 4096 (0 means one per CPU), got {self.slots}")
        if self.slots == 0:
            self.slots = os.cpu_count() or 1
        if not self.name:
            self.name = f"{socket.gethostname()}-{os.getpid()}"
        if not self.cache_dir:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            self.cache_dir = str(Path(base) / "titan_zmq")
        _check_heartbeat(self.heartbeat_interval, self.heartbeat_liveness)
        if self.job_memory_mb is not None and self.job_memory_mb < 16:
            raise ConfigError(f"job_memory_mb must be at least 16, got {self.job_memory_mb}")
        from titan_zmq.job import check_tags

        try:
            self.tags = sorted(check_tags(self.tags, "tags"))
        except Exception as exc:
            raise ConfigError(str(exc)) from None
