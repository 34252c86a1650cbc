"""The original Titan SDK's surface (titan_zmq.compat): coercions, state names, and its scripts run
unchanged through ``python -m titan_zmq.compat`` against a real local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from titan_zmq.compat import convert as C
from titan_zmq.compat.paths import SHIM_DIR, with_sdk_shim
from titan_zmq.compat.sdk import TitanClient, TitanJob
from titan_zmq.errors import JobError, TitanError
from titan_zmq.job import JobRecord, JobState
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(300)

SCRIPTS = Path(__file__).resolve().parent / "compat_scripts"


# ---- without a cluster ------------------------------------------------------------------------


def test_args_given_as_one_string_are_split_like_a_command_line() -> None:
    assert C.split_args("--epochs 3 'a b'") == ["--epochs", "3", "a b"]
    assert C.split_args("unbalanced 'quote") == ["unbalanced", "'quote"]
    assert C.split_args(None) == [] and C.split_args("") == []
    assert C.split_args(["x", 3]) == ["x", "3"]


def test_requirement_general_means_any_worker_and_others_are_lower_case_tags() -> None:
    assert C.requirement_tags("GENERAL") is None
    assert C.requirement_tags(None) is None and C.requirement_tags("") is None
    assert C.requirement_tags("GPU") == ["gpu"]
    assert C.requirement_tags("HIGH_MEM") == ["high_mem"]


def test_delay_is_milliseconds_there_and_seconds_here() -> None:
    assert C.delay_seconds(0) is None
    assert C.delay_seconds(1500) == 1.5
    with pytest.raises(JobError, match="delay must be >= 0 milliseconds"):
        C.delay_seconds(-1)


def _rec(state: JobState, kind: str = "script") -> JobRecord:
    return JobRecord(id="x", kind=kind, target="t", state=state)


def test_state_names_are_the_originals() -> None:
    names = {s: C.state_name(_rec(s)) for s in JobState}
    assert names == {
        JobState.PENDING: "PENDING", JobState.QUEUED: "PENDING", JobState.RETRYING: "PENDING",
        JobState.RUNNING: "RUNNING", JobState.AWAITING: "RUNNING", JobState.SUCCEEDED: "COMPLETED",
        JobState.FAILED: "FAILED", JobState.CANCELLED: "CANCELLED", JobState.DEAD: "DEAD",
    }  # fmt: skip
    assert C.state_name(_rec(JobState.FAILED, kind="approval")) == "REJECTED"


def test_ids_take_the_dag_prefix_and_become_ours() -> None:
    assert C.strip_dag_prefix("DAG-train") == "train" and C.strip_dag_prefix("train") == "train"
    assert C.safe_id("Step 1/a") == "Step_1_a"
    assert C.safe_id("_x") == "j_x"
    assert len(C.safe_id("a" * 200)) == 60


def test_broker_address_reads_the_originals_variables_then_ours() -> None:
    assert C.broker_address("h:1", {"TITAN_HOST": "x"}) == "h:1"
    both = {"TITAN_HOST": "10.0.0.2", "TITAN_PORT": "6000", "TITAN_BROKER": "b:1"}
    assert C.broker_address(None, both) == "10.0.0.2:6000"
    assert C.broker_address(None, {"TITAN_HOST": "10.0.0.2"}) == "10.0.0.2:5555"
    assert C.broker_address(None, {"TITAN_PORT": "6000"}) == "127.0.0.1:6000"
    assert C.broker_address(None, {"TITAN_BROKER": "b:7"}) == "b:7"
    assert C.broker_address(None, {}) == "localhost:5555"


def test_titan_job_reads_its_file_now_and_keeps_the_originals_defaults(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TitanJob("j", str(tmp_path / "missing.py"))
    f = tmp_path / "a.py"
    f.write_text("print(1)\n")
    job = TitanJob("j", str(f))
    assert (job.args, job.parents, job.priority, job.delay, job.requirement) == ("", [], 1, 0, "GENERAL")
    assert job.max_wait_seconds == 172800 and not job.is_service


def test_the_shim_is_appended_once_so_another_titan_sdk_wins() -> None:
    env = with_sdk_shim({"PYTHONPATH": "/a:/b"})
    assert env["PYTHONPATH"] == f"/a:/b:{SHIM_DIR}"
    assert with_sdk_shim(env)["PYTHONPATH"] == env["PYTHONPATH"]
    assert with_sdk_shim({})["PYTHONPATH"] == SHIM_DIR


def test_the_runner_resolves_titan_sdk_to_the_layer(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, titan_sdk, titan_sdk.titan_sdk as inner\n"
        "from titan_zmq.compat import sdk\n"
        "assert titan_sdk.TitanClient is sdk.TitanClient is inner.TitanClient\n"
        "assert titan_sdk.TitanJob is sdk.TitanJob\n"
        "print('ok', sys.argv[1:])\n"
    )
    # A real-looking titan_sdk beside the script loses inside the runner.
    (tmp_path / "titan_sdk").mkdir()
    (tmp_path / "titan_sdk" / "__init__.py").write_text("raise ImportError('the real one')\n")
    out = subprocess.run([sys.executable, "-m", "titan_zmq.compat", str(script), "a", "b c"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok ['a', 'b c']"


# ---- against a cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[LocalCluster]:
    """A plain worker and one tagged gpu."""
    with LocalCluster(workers=0) as cluster:
        cluster.add_worker(name="plain")
        cluster.add_worker(name="gpu-box", tags=["gpu"])
        cluster.wait_workers(2)
        yield cluster


@pytest.fixture
def sdk(gpu_cluster: LocalCluster) -> Iterator[TitanClient]:
    client = TitanClient(gpu_cluster.address)
    yield client
    client.close()


def run_script(cluster: LocalCluster, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an SDK script unchanged, as its users would, with the broker named in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("TITAN_HOST", "TITAN_PORT")}
    env["TITAN_BROKER"] = cluster.address
    out = subprocess.run([sys.executable, "-m", "titan_zmq.compat", name, *args], cwd=SCRIPTS, env=env,
                         capture_output=True, text=True, timeout=150)  # fmt: skip
    assert out.returncode == 0, f"{name} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def fresh_tag() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_diamond_script(gpu_cluster: LocalCluster, sdk: TitanClient) -> None:
    tag = fresh_tag()
    out = run_script(gpu_cluster, "diamond.py", tag)
    assert "DAG_ACCEPTED" in out.stdout and "[merge] done" in out.stdout
    assert sorted(sdk.store_smembers(f"{tag}:done")) == ["clean", "enrich", "extract", "merge"]
    # The original ids still name the run's jobs, and the order held: merge after both branches.
    recs = {j: sdk.native.status(sdk.resolve(j)) for j in ("extract", "clean", "enrich", "merge")}
    assert all(r.state is JobState.SUCCEEDED for r in recs.values())
    for branch in ("clean", "enrich"):
        assert recs[branch].started_at >= recs["extract"].finished_at  # type: ignore[operator]
        assert recs["merge"].started_at >= recs[branch].finished_at  # type: ignore[operator]
    assert recs["extract"].priority == 5 and recs["extract"].retries == 3


def test_a_second_run_gets_fresh_ids(gpu_cluster: LocalCluster, sdk: TitanClient) -> None:
    first, second = fresh_tag(), fresh_tag()
    run_script(gpu_cluster, "diamond.py", first)
    before = sdk.resolve("DAG-merge")
    run_script(gpu_cluster, "diamond.py", second)
    assert sdk.resolve("merge") != before  # the same client sees the newer run
    assert sorted(sdk.store_smembers(f"{second}:done")) == ["clean", "enrich", "extract", "merge"]


def test_fan_out_script(gpu_cluster: LocalCluster, sdk: TitanClient) -> None:
    tag = fresh_tag()
    out = run_script(gpu_cluster, "fanout.py", tag, "8")
    assert out.stdout.startswith("9 ")
    collect = sdk.native.status(sdk.resolve("collect"))
    shards = [sdk.native.status(sdk.resolve(f"shard_{i}")) for i in range(8)]
    assert all(collect.started_at >= s.finished_at for s in shards)  # type: ignore[operator]


def test_gpu_routing_script(gpu_cluster: LocalCluster, sdk: TitanClient) -> None:
    tag = fresh_tag()
    run_script(gpu_cluster, "gpu.py", tag)
    assert sdk.store_get(f"{tag}:train") == "gpu-box"
    assert sdk.native.status(sdk.resolve("train")).requires == ["gpu"]
    assert sdk.native.status(sdk.resolve("report")).requires == []


def test_kv_producer_and_consumer_scripts(gpu_cluster: LocalCluster, sdk: TitanClient) -> None:
    tag = fresh_tag()
    run_script(gpu_cluster, "kv_pipeline.py", tag)
    assert sdk.store_get(f"{tag}:summary") == "98.5|batch_A.csv,batch_B.csv"
    assert sdk.store_get(f"{tag}:nothing") == "NULL"
    assert sdk.store_sadd(f"{tag}:files", "batch_A.csv") == 0
    assert sdk.store_sadd(f"{tag}:files", "batch_C.csv") == 1


def test_a_job_failing_twice_succeeds_under_the_default_retries(sdk: TitanClient) -> None:
    sdk.submit_job(TitanJob("flaky", str(SCRIPTS / "flaky.py")))
    assert sdk.wait(["DAG-flaky"], timeout=120) == {"DAG-flaky": "COMPLETED"}
    rec = sdk.native.status(sdk.resolve("flaky"))
    assert rec.attempts == 3 and rec.retries == 3
    assert "attempt 3" in sdk.fetch_logs("flaky")


def test_a_job_that_always_fails_ends_dead(sdk: TitanClient) -> None:
    sdk.submit_job(TitanJob("poison", str(SCRIPTS / "always_fails.py")))
    assert sdk.wait(["poison"], timeout=120) == {"poison": "DEAD"}
    assert sdk.get_job_status("DAG-poison") == "DEAD"
    assert sdk.native.status(sdk.resolve("poison")).attempts == 4  # 3 retries: 4 attempts, as the original


def test_retries_can_be_turned_off(gpu_cluster: LocalCluster) -> None:
    with TitanClient(gpu_cluster.address, retries=0) as client:
        client.submit_job(TitanJob("once", str(SCRIPTS / "always_fails.py")))
        assert client.wait(["once"], timeout=60) == {"once": "FAILED"}


def test_unknown_ids_answer_null(sdk: TitanClient) -> None:
    assert sdk.get_job_status("DAG-no-such-job") == "NULL"
    assert sdk.get_job_status("not an id!") == "NULL"
    assert sdk.fetch_logs("no-such-job") == ""
    assert sdk.get_service_address("no-such-service") is None
    assert sdk.stop_service("DAG-no-such-service").startswith("ERROR")


def test_a_hitl_gate_holds_the_children_until_approved_through_the_store(sdk: TitanClient) -> None:
    tag = fresh_tag()
    step = str(SCRIPTS / "step.py")
    sdk.submit_dag("gated", [
        TitanJob("prep", step, args=f"{tag} prep", hitl_message="Train on this data?"),
        TitanJob("train", step, args=f"{tag} train", parents=["prep"]),
    ])  # fmt: skip
    wait_for(lambda: sdk.get_job_status("hitl-gate-prep") == "RUNNING", 60, "the gate to ask")
    assert sdk.get_job_status("train") == "PENDING"
    sdk.store_put("titan:hitl:status:hitl-gate-prep", "APPROVED")  # the original's way to decide
    assert sdk.wait(["train"], timeout=60) == {"train": "COMPLETED"}


def test_a_job_script_importing_titan_sdk_runs_on_the_worker_natively(gpu_cluster: LocalCluster) -> None:
    client = gpu_cluster.client()
    rec = client.submit(script=SCRIPTS / "which_sdk.py").wait(60)
    assert rec.state is JobState.SUCCEEDED, rec.error
    assert f"titan_sdk from {SHIM_DIR}" in rec.stdout


def test_a_real_titan_sdk_wins_on_the_worker(cluster: LocalCluster, tmp_path: Path) -> None:
    real = tmp_path / "site"
    (real / "titan_sdk").mkdir(parents=True)
    (real / "titan_sdk" / "__init__.py").write_text("")
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(real)) if p)
    cluster.add_worker(env={"PYTHONPATH": path})
    cluster.wait_workers(1)
    rec = cluster.client().submit(script=SCRIPTS / "which_sdk.py").wait(60)
    assert rec.state is JobState.SUCCEEDED, rec.error
    assert f"titan_sdk from {real}" in rec.stdout


def test_a_service_deploys_resolves_and_stops(sdk: TitanClient) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sdk.submit_job(TitanJob("web", str(SCRIPTS / "server.py"), job_type="SERVICE", port=port, args=str(port)))
    assert sdk.wait(["DAG-web"], timeout=90) == {"DAG-web": "COMPLETED"}  # deployed and healthy
    addr = sdk.get_service_address("web")
    assert addr is not None and addr[1] == port
    assert sdk.get_service_url("DAG-web") == f"http://{addr[0]}:{port}"
    assert "web" in sdk.list_services()
    assert sdk.stop_service("web") == "STOPPED: DAG-web"
    wait_for(lambda: "web" not in sdk.list_services(), 60, "the service to stop")


def test_submit_yaml_waits_and_keeps_the_yaml_ids(sdk: TitanClient, tmp_path: Path) -> None:
    tag = fresh_tag()
    (tmp_path / "step.py").write_text((SCRIPTS / "step.py").read_text())
    (tmp_path / "pipe.yaml").write_text(
        "version: 1\nproject: false\njobs:\n"
        f"  - id: first\n    file: step.py\n    args: {tag} first\n"
        f"  - id: second\n    file: step.py\n    args: {tag} second\n    depends_on: [first]\n"
    )
    assert sdk.submit_yaml(str(tmp_path / "pipe.yaml"), wait=True, timeout=120) == "DAG_ACCEPTED"
    assert sdk.get_job_status("DAG-second") == "COMPLETED"
    assert sorted(sdk.store_smembers(f"{tag}:done")) == ["first", "second"]
    assert sdk.native.status(sdk.resolve("first")).retries == 3


def test_artifacts_between_jobs_a_project_and_files_through_the_data_plane(
    gpu_cluster: LocalCluster, sdk: TitanClient, tmp_path: Path
) -> None:
    tag = fresh_tag()
    out = run_script(gpu_cluster, "artifact_pipeline.py", tag, str(tmp_path))
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines() if " " in line}
    assert lines["pipeline"] == f"{{'produce': 'COMPLETED', 'consume': 'COMPLETED'}} True weights for {tag}"
    assert sdk.store_get(f"{tag}:seen") == f"weights for {tag}"  # the consumer job read what the producer published
    assert lines["project"] == "UPLOAD_SUCCESS"
    assert lines["archive"] == "{'runproj': 'COMPLETED'} ran"  # the uploaded project ran as an archive job
    assert lines["upload"] == f"UPLOAD_SUCCESS ERROR: File not found at: {tmp_path / 'missing.bin'}"
    assert lines["fetch"] == "True True False"
    assert lines["deploy"] == "DEPLOY_SUCCESS False"
    with pytest.raises(TitanError, match=r"no project nope\.zip was uploaded"):
        sdk.submit_job(TitanJob("x", "nope/main.py", is_archive=True))
