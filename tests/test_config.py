"""Settings (config.py): broker addresses, defaults < YAML < TITAN_* environment < overrides, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from titan_zmq.config import (
    DEFAULT_FRONT,
    BrokerConfig,
    WorkerConfig,
    load,
    parse_address,
    resolve_broker,
    tcp_endpoint,
)
from titan_zmq.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TITAN_* variable of the caller's environment leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("TITAN_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "titan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---- parse_address -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("broker-host", ("broker-host", DEFAULT_FRONT)),
        ("broker-host:6000", ("broker-host", 6000)),
        ("  broker-host:6000  ", ("broker-host", 6000)),
        ("10.0.0.7:1", ("10.0.0.7", 1)),
        ("tcp://broker-host:6001", ("broker-host", 6001)),
        ("tcp://broker-host", ("broker-host", DEFAULT_FRONT)),
        ("[::1]:6002", ("::1", 6002)),
        ("tcp://[fe80::1]:65535", ("fe80::1", 65535)),
        ("[::1]", ("::1", DEFAULT_FRONT)),
        ("::1", ("::1", DEFAULT_FRONT)),  # a bare IPv6 literal takes the default port
    ],
)
def test_parse_address(addr: str, expected: tuple[str, int]) -> None:
    assert parse_address(addr) == expected


def test_parse_address_default_port() -> None:
    assert parse_address("h", default_port=7000) == ("h", 7000)
    assert parse_address("h:7001", default_port=7000) == ("h", 7001)


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        ("host:abc", "port 'abc' is not a number"),
        ("host:0", "port 0 is out of range 1-65535"),
        ("host:65536", "port 65536 is out of range 1-65535"),
        ("host:-1", "out of range"),
        ("[::1]:x", "port 'x' is not a number"),
        ("[::1:5555", "has an unclosed '['"),
        ("", "is empty; use HOST[:PORT]"),
        ("   ", "is empty"),
        ("tcp://", "is empty"),
    ],
)
def test_parse_address_errors(addr: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(addr)
    assert text in str(info.value)
    assert repr(addr) in str(info.value)  # the message quotes what was given


@pytest.mark.parametrize("addr", [":6000", "[::1]junk", "http://broker:5555"])
def test_parse_address_refuses_malformed(addr: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(addr)


def test_tcp_endpoint_brackets_ipv6() -> None:
    assert tcp_endpoint("127.0.0.1", 5) == "tcp://127.0.0.1:5"
    assert tcp_endpoint("::1", 5) == "tcp://[::1]:5"
    assert tcp_endpoint("[::1]", 5) == "tcp://[::1]:5"
    host, port = parse_address("[::1]:6002")
    assert tcp_endpoint(host, port) == "tcp://[::1]:6002"


def test_resolve_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_broker() == "localhost:5555"
    monkeypatch.setenv("TITAN_BROKER", "env-host:1234")
    assert resolve_broker() == "env-host:1234"
    assert resolve_broker("flag-host") == "flag-host"


# ---- load: precedence ------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load(BrokerConfig)
    assert cfg == BrokerConfig()
    assert (cfg.host, cfg.front, cfg.back, cfg.events) == ("127.0.0.1", 5555, 5556, 5557)


def test_precedence_defaults_yaml_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        "front: 6000\nback: 6001\nevents: 6002\nmax-lost: 7\nheartbeat_interval: 0.25\nhost: 0.0.0.0\n",
    )
    cfg = load(BrokerConfig, path)
    assert (cfg.front, cfg.back, cfg.events, cfg.max_lost, cfg.heartbeat_interval, cfg.host) == (
        6000,
        6001,
        6002,
        7,
        0.25,
        "0.0.0.0",
    )
    assert cfg.max_finished_jobs == BrokerConfig().max_finished_jobs  # untouched: the default

    monkeypatch.setenv("TITAN_BACK", "7001")
    monkeypatch.setenv("TITAN_EVENTS", "7002")
    monkeypatch.setenv("TITAN_MAX_FINISHED_JOBS", "10")
    monkeypatch.setenv("TITAN_MAX_LOST", "")  # empty: not set
    cfg = load(BrokerConfig, path)
    assert (cfg.front, cfg.back, cfg.events, cfg.max_finished_jobs, cfg.max_lost) == (6000, 7001, 7002, 10, 7)

    cfg = load(BrokerConfig, path, events=8002, max_lost=None, front=None)  # None: not given
    assert (cfg.front, cfg.back, cfg.events, cfg.max_lost) == (6000, 7001, 8002, 7)


def test_env_alone_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TITAN_HEARTBEAT_INTERVAL", "0.1")
    monkeypatch.setenv("TITAN_HEARTBEAT_LIVENESS", "9")
    monkeypatch.setenv("TITAN_MAX_MESSAGE_SIZE", "2048")
    cfg = load(BrokerConfig)
    assert (cfg.heartbeat_interval, cfg.heartbeat_liveness, cfg.max_message_size) == (0.1, 9, 2048)


def test_worker_settings_from_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "tags: [highmem, gpu]\nslots: 3\ngpu_probe: no\ncache_dir: /tmp/c\n")
    monkeypatch.setenv("TITAN_BROKER", "[::1]:7000")
    monkeypatch.setenv("TITAN_JOB_MEMORY_MB", "64")
    cfg = load(WorkerConfig, path, name="w1")
    assert (cfg.broker, cfg.name, cfg.slots, cfg.gpu_probe, cfg.job_memory_mb, cfg.cache_dir) == (
        "[::1]:7000",
        "w1",
        3,
        False,
        64,
        "/tmp/c",
    )
    assert cfg.tags == ["gpu", "highmem"]  # validated and sorted
    monkeypatch.setenv("TITAN_TAGS", "a, b,,c")
    monkeypatch.setenv("TITAN_GPU_PROBE", "TRUE")
    monkeypatch.setenv("TITAN_JOB_MEMORY_MB", "none")
    cfg = load(WorkerConfig, path)
    assert (cfg.tags, cfg.gpu_probe, cfg.job_memory_mb) == (["a", "b", "c"], True, None)


def test_worker_defaults_are_filled_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = load(WorkerConfig)
    assert cfg.broker == "localhost:5555"
    assert cfg.slots == (os.cpu_count() or 1)
    assert cfg.name.endswith(f"-{os.getpid()}")
    assert cfg.cache_dir == str(tmp_path / "titan_zmq")


# ---- load: errors --------------------------------------------------------------------------------


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "front: 6000\nfrnt: 6001\n")
    with pytest.raises(ConfigError) as info:
        load(BrokerConfig, path)
    msg = str(info.value)
    assert "unknown setting 'frnt'" in msg and str(path) in msg and "known: host, front" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "front: [6000\nback: 1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(BrokerConfig, path)


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        load(BrokerConfig, write(tmp_path, "- front\n- back\n"))


def test_empty_yaml_is_all_defaults(tmp_path: Path) -> None:
    assert load(BrokerConfig, write(tmp_path, "# nothing yet\n")) == BrokerConfig()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"cannot read config file {missing}"):
        load(BrokerConfig, missing)


def test_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour' for BrokerConfig"):
        load(BrokerConfig, colour="red")


@pytest.mark.parametrize(
    ("var", "value", "text"),
    [
        ("TITAN_FRONT", "five", "setting 'front' must be a whole number, got 'five'"),
        ("TITAN_HEARTBEAT_INTERVAL", "fast", "setting 'heartbeat_interval' must be a number, got 'fast'"),
    ],
)
def test_bad_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch, var: str, value: str, text: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load(BrokerConfig)
    assert text in str(info.value)


def test_bad_bool_and_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TITAN_GPU_PROBE", "maybe")
    with pytest.raises(ConfigError, match="setting 'gpu_probe' must be true or false, got 'maybe'"):
        load(WorkerConfig)
    monkeypatch.delenv("TITAN_GPU_PROBE")
    with pytest.raises(ConfigError, match="setting 'tags' must be a list"):
        load(WorkerConfig, tags=5)


def test_fractional_value_for_a_whole_number_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heartbeat_liveness"):
        load(BrokerConfig, write(tmp_path, "heartbeat_liveness: 2.9\n"))


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"front": 6000, "back": 6000}, "front, back and events ports must differ, got 6000, 6000, 5557"),
        ({"events": 5555}, "ports must differ"),
        ({"front": 70000}, "setting 'front' must be a port 1-65535"),
        ({"back": -1}, "setting 'back' must be a port"),
        ({"heartbeat_interval": 0.001}, "heartbeat_interval must be between 0.01 and 600 seconds, got 0.001"),
        ({"heartbeat_interval": 601}, "heartbeat_interval must be between"),
        ({"heartbeat_liveness": 1}, "heartbeat_liveness must be at least 2 missed heartbeats, got 1"),
        ({"max_message_size": 1000}, "max_message_size must be at least 1024 bytes, got 1000"),
        ({"max_lost": -1}, "max_lost must be >= 0"),
        ({"batch": 0}, "batch >= 1"),
    ],
)
def test_broker_config_validation(overrides: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(BrokerConfig, **overrides)
    assert text in str(info.value)


def test_random_ports_may_repeat_zero() -> None:
    cfg = load(BrokerConfig, front=0, back=0, events=0)
    assert (cfg.front, cfg.back, cfg.events) == (0, 0, 0)


def test_validation_applies_to_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="ports must differ"):
        load(BrokerConfig, write(tmp_path, "back: 5555\n"))
    monkeypatch.setenv("TITAN_HEARTBEAT_LIVENESS", "1")
    with pytest.raises(ConfigError, match="heartbeat_liveness must be at least 2"):
        load(BrokerConfig)


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"slots": -1}, "slots must be between 1 and 4096"),
        ({"slots": 5000}, "slots must be between 1 and 4096"),
        ({"broker": "host:99999"}, "out of range"),
        ({"job_memory_mb": 8}, "job_memory_mb must be at least 16, got 8"),
        ({"tags": "gpu,bad tag"}, "invalid tag 'bad tag'"),
        ({"heartbeat_liveness": 0}, "heartbeat_liveness must be at least 2"),
    ],
)
def test_worker_config_validation(overrides: dict[str, object], text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(WorkerConfig, cache_dir=str(tmp_path), **overrides)
    assert text in str(info.value)
