"""The data plane through a real broker and workers: results kept where they were made, objects
moved worker to worker (or through the relay), placement by locality, lifetime and lineage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import HEARTBEAT_WINDOW
from titan_zmq.errors import JobFailed, UnknownObject
from titan_zmq.local import LocalCluster, wait_for
from titan_zmq.objects import ObjectRef, is_ref

pytestmark = pytest.mark.timeout(120)
MB = 1 << 20


def _objects(client: Any) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in client.objects()}


def test_a_large_result_stays_on_its_worker_and_is_fetched_from_there(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    h = c.submit("tests.data_jobs:blob", args=[5 * MB, 7])
    ref = h.result(timeout=60, fetch=False)
    assert isinstance(ref, ObjectRef) and ref.size > 5 * MB and ref.kind == "bytes"
    rec = c.status(h.id)
    assert is_ref(rec.result)  # the broker holds the reference, not the bytes
    assert c.locate(ref)["holders"] == ["a"]
    from tests.data_jobs import blob

    assert h.result(timeout=60) == blob(5 * MB, 7)  # fetched straight from worker a
    small = c.submit("tests.data_jobs:blob", args=[1000]).result(timeout=60, fetch=False)
    assert isinstance(small, bytes)  # under inline_max: it travels inline, as before


def test_a_result_msgpack_cannot_carry_comes_back_pickled(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    arr = c.submit("tests.data_jobs:array", args=[10]).result(timeout=60)
    assert isinstance(arr, np.ndarray) and arr.tolist() == list(range(10))


def test_objects_move_worker_to_worker_and_status_says_from_where(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.add_worker(name="b", slots=1)
    cluster.wait_workers(2)
    c = cluster.client()
    ref = c.submit("tests.data_jobs:array", args=[2_000_000], node="a").result(timeout=60, fetch=False)
    h = c.submit("tests.data_jobs:total", args=[ref], node="b")
    assert h.result(timeout=60) == float(sum(range(2_000_000)))
    rec = c.status(h.id)
    assert rec.fetched == {ref.id: {"from": "a", "route": "direct", "bytes": ref.size}}
    out = subprocess.run(
        [sys.executable, "-m", "titan_zmq", "status", h.id, "--broker", cluster.address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"input: {ref.id[:16]}… from a (direct), {ref.size:,} bytes" in out.stdout
    assert sorted(c.locate(ref)["holders"]) == ["a", "b"]  # b keeps its copy while the object lives


def test_a_worker_that_serves_through_the_relay_only(cluster: LocalCluster) -> None:
    cluster.add_worker(name="hidden", slots=1, extra=["--no-direct-objects"])
    cluster.add_worker(name="b", slots=1)
    cluster.wait_workers(2)
    c = cluster.client()
    ref = c.submit("tests.data_jobs:blob", args=[3 * MB], node="hidden").result(timeout=60, fetch=False)
    assert c.locate(ref)["sources"] == [["hidden", ""]]  # no port of its own: others go through the broker
    h = c.submit("tests.data_jobs:length", args=[ref], node="b")
    assert h.result(timeout=60)["len"] == 3 * MB
    assert c.status(h.id).fetched[ref.id]["route"] == "relay"
    assert len(c.get(ref)) == 3 * MB  # a client, too


def _two_workers_and_an_object_on_a(cluster: LocalCluster) -> tuple[Any, ObjectRef]:
    """Workers a and b of one slot each, and a 4 MB result held on a: a client and its reference."""
    cluster.add_worker(name="a", slots=1)
    cluster.add_worker(name="b", slots=1)
    cluster.wait_workers(2)
    c = cluster.client()
    return c, c.submit("tests.data_jobs:blob", args=[4 * MB], node="a").result(timeout=60, fetch=False)


def test_a_job_runs_where_its_input_bytes_are(cluster: LocalCluster) -> None:
    c, ref = _two_workers_and_an_object_on_a(cluster)
    # Without locality, b would take it: both are idle and b has done fewer jobs (see test below).
    h = c.submit("tests.data_jobs:length", args=[ref])
    assert h.result(timeout=60) == {"len": 4 * MB, "worker": "a"}
    assert c.status(h.id).fetched == {ref.id: {"from": "local"}}


def test_without_locality_the_least_loaded_worker_fetches_the_input() -> None:
    with LocalCluster(workers=0, broker_args=["--locality-wait", "0"]) as cluster:
        c, ref = _two_workers_and_an_object_on_a(cluster)
        h = c.submit("tests.data_jobs:length", args=[ref])
        assert h.result(timeout=60) == {"len": 4 * MB, "worker": "b"}
        assert c.status(h.id).fetched[ref.id]["from"] == "a"


def test_a_busy_holder_does_not_keep_a_free_worker_idle() -> None:
    with LocalCluster(workers=0, broker_args=["--locality-wait", "0.5"]) as cluster:
        c, ref = _two_workers_and_an_object_on_a(cluster)
        busy = c.submit("tests.jobs:sleep", args=[30], node="a")
        wait_for(lambda: c.status(busy.id).state.value == "running", 30, "a to be busy")
        # Once its job has run longer than 4 MB take to move, waiting for a is the slower choice.
        started = c.status(busy.id).started_at or time.time()
        wait_for(lambda: time.time() - started > 0.1, 10, "a's job to have run a while")
        h = c.submit("tests.data_jobs:length", args=[ref])
        assert h.result(timeout=60)["worker"] == "b"  # a is busy for 30 s: b fetched the input instead
        assert c.status(h.id).fetched[ref.id]["from"] == "a"
        c.cancel(busy.id)


def test_put_get_upload_download_release_and_titan_objects(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    arr = np.arange(1_000_000, dtype=np.int64)
    ref = c.put(arr)
    assert np.array_equal(c.get(ref), arr)
    assert c.submit("tests.data_jobs:total", args=[ref]).result(timeout=60) == float(arr.sum())
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.txt").write_text("hi")
    art = c.upload(folder)
    assert art.kind == "dir" and art.name == "data"
    seen: list[tuple[int, int]] = []
    out = c.download(art, tmp_path / "copy", progress=lambda done, total: seen.append((done, total)))
    assert (out / "sub" / "x.txt").read_text() == "hi"
    assert seen and seen[-1] == (art.size, art.size)  # progress reported, ending at the whole object
    assert c.submit("tests.data_jobs:read_path", args=[art]).result(timeout=60) == "sub"  # a folder arrives as a path
    listed = subprocess.run(
        [sys.executable, "-m", "titan_zmq", "objects", "--json", "--broker", cluster.address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    ids = {o["id"]: o for o in json.loads(listed.stdout)}
    assert ids[ref.id]["holders"] == ["a"] and ids[art.id]["artifact"] is True
    assert c.release(ref) is True
    assert "client" not in _objects(c)[ref.id]["owners"]  # the job that received it holds it until forgotten
    assert c.release(ref) is False  # released already
    with pytest.raises(UnknownObject, match="unknown object"):
        c.get("ab" * 32)


def test_an_unknown_reference_is_refused_at_submission(cluster: LocalCluster) -> None:
    c = cluster.client()
    with pytest.raises(UnknownObject, match="ab" * 32):
        c.submit("tests.data_jobs:total", args=[ObjectRef("ab" * 32, 10)])


def test_a_result_larger_than_the_store_fails_at_once_naming_the_limit(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1, extra=["--object-store", "2"])
    cluster.wait_workers(1)
    c = cluster.client()
    with pytest.raises(JobFailed, match=r"object store limit of 2,097,152 bytes \(object_store_mb\)"):
        c.submit("tests.data_jobs:blob", args=[3 * MB]).result(timeout=60)
    assert c.submit("tests.jobs:add", args=[1, 2]).result(timeout=60) == 3  # the worker goes on


def test_ctx_put_inside_a_job_and_a_nested_reference(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    out = c.submit("tests.data_jobs:put_nested", args=[2 * MB]).result(timeout=60)
    ref = ObjectRef.from_wire(out["ref"])  # nested: it stays a reference
    assert c.get(ref) == b"p" * (2 * MB)
    assert c.locate(ref)["holders"] == ["a"]


def test_a_dag_frees_what_it_made_and_keeps_its_final_results(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=2)
    cluster.wait_workers(1)
    c = cluster.client()
    from titan_zmq.client.dag import Dag

    dag = Dag("objs")
    make = dag.add("tests.data_jobs:blob", args=[2 * MB, 1], id="objs.make")
    dag.add("tests.data_jobs:length_of_inputs", after=[make], id="objs.use")
    dag.add("tests.data_jobs:blob", args=[2 * MB, 2], id="objs.final")
    twice = dag.add("tests.data_jobs:put_and_return", args=[2 * MB], id="objs.twice")  # put, and returned
    dag.add("tests.data_jobs:length_of_inputs", after=[twice], id="objs.use2")
    c.submit_dag(dag).wait(timeout=60)
    put_ref = c.status("objs.twice").result
    made = c.status("objs.make").result
    final = c.status("objs.final").result
    assert c.status("objs.use").result["lens"] == {"objs.make": 2 * MB}
    def freed() -> dict[str, Any] | None:
        objs = _objects(c)
        gone = made["__titan_object__"] not in objs and put_ref["__titan_object__"] not in objs
        return objs if gone else None

    objs = wait_for(freed, 30, "the DAG's intermediate object to be freed")
    assert objs[final["__titan_object__"]]["owners"] == {"ttl": 1}  # a final result: kept for its reader


def test_a_lost_object_is_made_again_by_its_producer(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    from titan_zmq.client.dag import Dag

    dag = Dag("lin")
    make = dag.add("tests.data_jobs:blob", args=[2 * MB, 5], id="lin.make")
    gate = dag.add(approval="go on?", after=[make], id="lin.gate")  # holds the consumer until a is gone
    dag.add("tests.data_jobs:length_of_inputs", after=[make, gate], id="lin.use")
    c.submit_dag(dag)
    wait_for(lambda: c.status("lin.gate").state.value == "awaiting_approval", 60, "the producer to succeed")
    cluster.workers[0].kill()  # the only holder of its result dies before the consumer runs
    cluster.workers[0].wait(10)
    wait_for(lambda: not c.workers(), 3 * HEARTBEAT_WINDOW + 30, "worker a to be lost")
    cluster.add_worker(name="b", slots=1)
    c.approve("lin.gate")
    rec = c.wait(["lin.use"], timeout=90)["lin.use"]
    assert rec.state.value == "succeeded", rec.error
    assert rec.result["worker"] == "b" and rec.result["lens"]["lin.make"] == 2 * MB
    make_rec = c.status("lin.make")
    assert make_rec.worker == "b" and make_rec.attempts == 2  # run again, where the data is needed


def test_lineage_remakes_lost_inputs_of_lost_inputs(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    from titan_zmq.client.dag import Dag

    dag = Dag("deep")
    make = dag.add("tests.data_jobs:blob", args=[1 * MB, 8], id="deep.make")
    mid = dag.add("tests.data_jobs:double", after=[make], id="deep.mid")
    gate = dag.add(approval="go on?", after=[mid], id="deep.gate")
    dag.add("tests.data_jobs:length_of_inputs", after=[mid, gate], id="deep.use")
    c.submit_dag(dag)
    wait_for(lambda: c.status("deep.gate").state.value == "awaiting_approval", 60, "make and mid to succeed")
    cluster.workers[0].kill()  # both objects had one holder: both are lost
    cluster.workers[0].wait(10)
    wait_for(lambda: not c.workers(), 3 * HEARTBEAT_WINDOW + 30, "worker a to be lost")
    cluster.add_worker(name="b", slots=1)
    c.approve("deep.gate")
    rec = c.wait(["deep.use"], timeout=90)["deep.use"]
    assert rec.state.value == "succeeded", rec.error
    assert rec.result["lens"]["deep.mid"] == 2 * MB
    assert [c.status(j).attempts for j in ("deep.make", "deep.mid")] == [2, 2]  # mid's remake needed make's


def test_a_published_artifact_outlives_its_worker_with_a_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with LocalCluster(workers=0, broker_args=["--data-dir", str(data_dir)]) as cluster:
        cluster.add_worker(name="a", slots=1)
        cluster.wait_workers(1)
        c = cluster.client()
        src = tmp_path / "model.bin"
        src.write_bytes(b"m" * (3 * MB))
        art = ObjectRef.from_wire(c.submit("tests.data_jobs:publish", args=[str(src)]).result(timeout=60))
        wait_for(lambda: "@broker" in c.locate(art)["holders"], 60, "the broker to keep a copy")
        assert (data_dir / "objects" / art.id).exists()
        cluster.workers[0].kill()
        cluster.workers[0].wait(10)
        wait_for(lambda: c.locate(art)["holders"] == ["@broker"], 3 * HEARTBEAT_WINDOW + 30, "worker a to be lost")
        out = c.download(art, tmp_path / "out.bin")
        assert out.read_bytes() == b"m" * (3 * MB)
        cluster.kill_broker()
        cluster.start_broker()  # the directory is journaled; the broker's own copy is found again
        c2 = cluster.client()
        assert wait_for(lambda: c2.locate(art)["holders"], 30, "the restarted broker") == ["@broker"]
        assert c2.download(art, tmp_path / "again.bin").read_bytes() == b"m" * (3 * MB)


def test_a_yaml_pipeline_passes_files_from_job_to_job(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.add_worker(name="b", slots=1)
    cluster.wait_workers(2)
    c = cluster.client()
    spec = tmp_path / "files.yaml"
    spec.write_text(
        "name: files\n"
        "jobs:\n"
        "  - id: prepare\n"
        "    shell: 'mkdir -p out && seq 1 1000 > out/rows.csv && echo prepared'\n"
        "    node: a\n"
        "    outputs: [out/rows.csv]\n"
        "  - id: train\n"
        "    shell: 'wc -l < \"$TITAN_INPUT_DATA\" > model.txt'\n"
        "    node: b\n"
        "    inputs: {data: prepare/out/rows.csv}\n"
        "    outputs: [model.txt]\n"
        "  - id: wrong\n"
        "    shell: 'cat \"$TITAN_INPUT_X\"'\n"
        "    inputs: {x: prepare/never.csv}\n"
    )
    from titan_zmq.client.pipeline import load_pipeline

    dag = load_pipeline(spec).dag.instance("files-1")
    recs = c.submit_dag(dag).wait(timeout=90)
    train = recs["files-1.train"]
    assert train.state.value == "succeeded", train.error
    assert train.fetched and next(iter(train.fetched.values()))["from"] == "a"  # moved worker to worker
    model = train.result["outputs"]["model.txt"]
    out = c.download(model, tmp_path / "model.txt")
    assert out.read_text().strip() == "1000"
    wrong = recs["files-1.wrong"]
    assert wrong.state.value == "failed" and "published no output 'never.csv'" in (wrong.error or "")


def test_a_declared_output_that_is_not_written_fails_the_job(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    h = c.submit(shell="echo hi", outputs=["result.bin"])
    with pytest.raises(JobFailed, match=r"did not write its declared output 'result\.bin'"):
        h.result(timeout=60)


def test_an_object_with_a_ttl_is_freed_on_its_holder_when_it_passes(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    c = cluster.client()
    ref = c.put(b"t" * (2 * MB), ttl=1.0)
    path = Path(cluster.env["TITAN_CACHE_DIR"]) / "objects" / "a" / ref.id
    assert path.exists()
    wait_for(lambda: ref.id not in _objects(c), 30, "the TTL to pass")
    wait_for(lambda: not path.exists(), 30, "the holder to delete its copy")
    with pytest.raises(UnknownObject, match="freed"):
        c.get(ref)


def test_titan_put_and_get_from_the_command_line(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.wait_workers(1)
    src = tmp_path / "notes.txt"
    src.write_text("hello objects")

    def titan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "titan_zmq", *args, "--broker", cluster.address],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    put = titan("put", str(src))
    assert put.returncode == 0, put.stderr
    oid = put.stdout.strip()
    assert len(oid) == 64
    got = titan("get", oid, str(tmp_path / "back.txt"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back.txt").read_text() == "hello objects"
    table = titan("objects")
    assert oid[:16] in table.stdout and "notes.txt" in table.stdout and "1 object(s)" in table.stdout
    assert titan("release", oid).returncode == 0
    missing = titan("get", "ab" * 32, str(tmp_path / "x"))
    assert missing.returncode == 1 and "unknown object" in missing.stderr


def test_after_a_broker_restart_objects_are_found_again_on_their_workers(tmp_path: Path) -> None:
    broker_args = ["--data-dir", str(tmp_path / "state")]
    with LocalCluster(workers=0, broker_args=broker_args, env={"TITAN_ORPHAN_WAIT": "3"}) as cluster:
        cluster.add_worker(name="a", slots=1)
        cluster.wait_workers(1)
        c = cluster.client()
        h = c.submit("tests.data_jobs:blob", args=[2 * MB, 9])
        ref = h.result(timeout=60, fetch=False)
        cluster.kill_broker()
        cluster.start_broker()
        c2 = cluster.client()
        use = c2.submit("tests.data_jobs:length", args=[ref])  # before worker a has announced its store again
        assert use.result(timeout=60) == {"len": 2 * MB, "worker": "a"}
        assert c2.status(h.id).attempts == 1  # not made again: its holder came back with it
        assert c2.locate(ref)["holders"] == ["a"]


def test_results_are_sent_in_messages_under_the_brokers_limit() -> None:
    with LocalCluster(workers=0, broker_args=["--max-message-size", str(600 * 1024)]) as cluster:
        cluster.add_worker(name="a", slots=4)
        cluster.wait_workers(1)
        c = cluster.client()
        # 200 KB each (inline: under 256 KiB), finishing together: one RESULT of them would pass 600 KiB.
        handles = [c.submit("tests.data_jobs:text", args=[200_000, i]) for i in range(12)]
        assert [h.result(timeout=60) for h in handles] == [chr(97 + i) * 200_000 for i in range(12)]
    with LocalCluster(workers=0, broker_args=["--max-message-size", str(128 * 1024)]) as cluster:
        cluster.add_worker(name="a", slots=1)
        cluster.wait_workers(1)
        c = cluster.client()
        with pytest.raises(JobFailed, match=r"over the broker's limit of 131,072 \(max_message_size\)"):
            c.submit("tests.data_jobs:text", args=[200_000]).result(timeout=60)  # one alone is too large
        assert c.submit("tests.jobs:add", args=[2, 2]).result(timeout=60) == 4  # and the worker goes on


def test_a_copy_evicted_for_room_is_no_longer_counted_as_held(cluster: LocalCluster) -> None:
    cluster.add_worker(name="a", slots=1)
    cluster.add_worker(name="b", slots=1, extra=["--object-store", "10"])
    cluster.wait_workers(2)
    c = cluster.client()
    ref = c.submit("tests.data_jobs:blob", args=[4 * MB, 1], node="a").result(timeout=60, fetch=False)
    assert c.submit("tests.data_jobs:length", args=[ref], node="b").result(timeout=60)["len"] == 4 * MB
    assert sorted(c.locate(ref)["holders"]) == ["a", "b"]  # b keeps the copy it fetched
    for seed in (2, 3):  # b's own results need the room: the copy nobody holds there goes
        c.submit("tests.data_jobs:blob", args=[4 * MB, seed], node="b").result(timeout=60, fetch=False)
    wait_for(lambda: c.locate(ref)["holders"] == ["a"], 30, "b to report the eviction")
