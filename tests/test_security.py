"""CURVE: encrypted, authenticated connections; unknown keys and plain peers get nothing; roles hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from titan_zmq.client import BrokerUnavailable, Forbidden, TitanClient
from titan_zmq.config import ConfigError
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.security import Keys, generate

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    generate(folder)
    return folder


def _only(src: Path, dst: Path, *pairs: str) -> Path:
    """A folder holding the broker's public key and the named pairs, as a host would get it."""
    dst.mkdir(parents=True)
    shutil.copy(src / "broker.key", dst / "broker.key")
    for name in pairs:
        for suffix in (".key", ".key_secret"):
            shutil.copy(src / f"{name}{suffix}", dst / f"{name}{suffix}")
    return dst


def test_generate_writes_pairs_and_allow_lists_and_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    files = {p.relative_to(folder).as_posix() for p in generate(folder)}
    assert {"broker.key_secret", "client.key_secret", "worker.key_secret", "allowed/clients/client.key",
            "allowed/workers/worker.key"} <= files  # fmt: skip
    assert (folder / "client.key_secret").stat().st_mode & 0o077 == 0  # secrets are private
    with pytest.raises(ConfigError, match="already exists; keys are not overwritten"):
        generate(folder)
    old = (folder / "client.key").read_bytes()
    generate(folder, force=True)
    assert (folder / "client.key").read_bytes() != old
    proc = subprocess.run([sys.executable, "-m", "titan_zmq", "keys", "generate", str(folder)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "--force" in proc.stderr


def test_a_missing_key_is_a_clear_error(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker\.key not found"):
        Keys(tmp_path / "nowhere")
    only_worker = _only(keys, tmp_path / "w", "worker")
    with pytest.raises(ConfigError, match=r"client\.key_secret not found: this process needs the client key pair"):
        TitanClient("127.0.0.1:1", keys=only_worker)


def test_curve_cluster_admits_known_keys_and_refuses_others(tmp_path: Path, keys: Path) -> None:
    env = {"TITAN_KEYS": str(keys), "PYTHONPATH": str(ROOT)}
    with LocalCluster(workers=1, slots=1, env=env, log_dir=str(tmp_path / "logs")) as cluster:
        client = cluster.client()
        assert client.submit("tests.jobs:add", args=[2, 3]).result(timeout=30) == 5
        # a job's own client (spawn, KV) uses the client pair the worker's host holds
        assert client.submit("tests.jobs:kv_from_inside", args=["k"]).result(timeout=30) == 1

        plain = TitanClient(cluster.address, timeout=1.5)  # no encryption: nothing comes back
        with pytest.raises(BrokerUnavailable):
            plain.hello()
        plain.close()

        rogue_dir = tmp_path / "rogue"
        generate(rogue_dir)  # a whole other set of keys: its client key is on no allow-list
        shutil.copy(keys / "broker.key", rogue_dir / "broker.key")
        rogue = TitanClient(cluster.address, timeout=1.5, keys=rogue_dir)
        with pytest.raises(BrokerUnavailable):
            rogue.submit("tests.jobs:add", args=[1, 1])
        rogue.close()

        # a worker's key may ask for the ports, never submit
        as_worker = _only(keys, tmp_path / "as-worker", "worker")
        os.rename(as_worker / "worker.key_secret", as_worker / "client.key_secret")
        os.rename(as_worker / "worker.key", as_worker / "client.key")
        sneaky = TitanClient(cluster.address, timeout=5, keys=as_worker)
        assert sneaky.hello()["back"] == cluster.ports["back"]
        with pytest.raises(Forbidden, match="worker key"):
            sneaky.submit("tests.jobs:add", args=[1, 1])
        sneaky.close()

        # a client's key cannot register as a worker: it never joins
        as_client = _only(keys, tmp_path / "as-client", "client")
        os.rename(as_client / "client.key_secret", as_client / "worker.key_secret")
        os.rename(as_client / "client.key", as_client / "worker.key")
        intruder = cluster.add_worker(name="intruder", env={"TITAN_KEYS": str(as_client)})
        try:
            wait_for(lambda: "refused on the back socket" in (tmp_path / "logs" / "broker.log").read_text(
                errors="replace"), 20, "the broker to log the refused worker")  # fmt: skip
            assert "intruder" not in {w["name"] for w in client.workers()}
        finally:
            intruder.terminate()
            intruder.wait(10)
        log = (tmp_path / "logs" / "broker.log").read_text(errors="replace")
        assert "no --keys?" in log  # the plain client
        assert "DENIED (CURVE)" in log  # the rogue key, with the key it used
        assert client.submit("tests.jobs:add", args=[4, 4]).result(timeout=30) == 8  # still serving


def test_events_feed_is_encrypted_too(keys: Path) -> None:
    with LocalCluster(workers=0, env={"TITAN_KEYS": str(keys)}) as cluster:
        client = cluster.client()
        with client.subscribe("stats") as feed:
            assert feed.next(10) is not None
        ctx = zmq.Context.instance()
        plain = ctx.socket(zmq.SUB)
        plain.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.SUBSCRIBE, b"")
        plain.connect(f"tcp://127.0.0.1:{cluster.ports['events']}")
        try:
            assert not plain.poll(2500)  # stats go out every second: a plain subscriber gets none
        finally:
            plain.close()


def test_under_curve_objects_move_through_the_encrypted_relay(tmp_path: Path, keys: Path) -> None:
    env = {"TITAN_KEYS": str(keys), "PYTHONPATH": str(ROOT)}
    with LocalCluster(workers=0, env=env) as cluster:
        cluster.add_worker(name="a", slots=1)
        cluster.add_worker(name="b", slots=1)
        cluster.wait_workers(2)
        client = cluster.client()
        ref = client.submit("tests.data_jobs:blob", args=[3 << 20, 4], node="a").result(timeout=60, fetch=False)
        assert client.locate(ref)["sources"] == [["a", ""]]  # no port of its own: it could not be encrypted
        h = client.submit("tests.data_jobs:length", args=[ref], node="b")
        assert h.result(timeout=60) == {"len": 3 << 20, "worker": "b"}
        assert client.status(h.id).fetched[ref.id]["route"] == "relay"
        from tests.data_jobs import blob

        assert client.get(ref) == blob(3 << 20, 4)
        put = client.put(b"secret" * 100_000)
        assert client.get(put) == b"secret" * 100_000
