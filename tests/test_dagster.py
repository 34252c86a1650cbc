"""The Dagster integration: Dagster's own execute_job runs jobs whose ops are titan jobs on a real local cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dagster", reason="the Dagster integration needs: pip install -e '.[dagster]'")

import dagster as dg

from examples.dagster import pipeline, steps
from tests import data_jobs, jobs
from titan_zmq.client import TitanClient
from titan_zmq.integrations.dagster import REQUIRES_TAG, TitanResource, _follow, _Spec, titan_op
from titan_zmq.job import JobRecord, JobState
from titan_zmq.local import LocalCluster, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)

# ---- jobs the tests run (module level: execute_job takes them as reconstructable jobs) ---------------

_titan = {"titan": TitanResource()}

boom = titan_op(jobs.boom)
flaky = titan_op(jobs.fail_until, name="flaky", retry_policy=dg.RetryPolicy(max_retries=3, delay=0.05))
talk = titan_op(jobs.talk)
nap = titan_op(jobs.sleep, name="nap", requires="tpu", retry_policy=dg.RetryPolicy(max_retries=2))
blob = titan_op(data_jobs.blob, fetch=False)  # a large result: it stays on its worker, the output is its ref
length = titan_op(data_jobs.length, ins=["data"])
array = titan_op(data_jobs.array)  # numpy: not msgpack, so it comes back pickled, and goes on as an object
total = titan_op(data_jobs.total)


@dg.job(resource_defs=_titan, executor_def=dg.in_process_executor)
def failing_job() -> None:
    boom()


@dg.job(resource_defs=_titan, executor_def=dg.in_process_executor)
def flaky_job() -> None:
    flaky()


@dg.job(resource_defs=_titan, executor_def=dg.in_process_executor)
def talk_job() -> None:
    talk.tag({REQUIRES_TAG: "gpu"})()  # the tag on the invocation routes it


@dg.job(resource_defs=_titan, executor_def=dg.in_process_executor)
def nap_job() -> None:
    nap()


@dg.job(resource_defs=_titan, executor_def=dg.in_process_executor)
def data_job() -> None:
    length(blob())
    total(array())


# ---- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid() -> Iterator[LocalCluster]:
    """A broker, a plain worker and a gpu worker, for every test here (none breaks them)."""
    with LocalCluster(workers=0) as cluster:
        cluster.add_worker(name="cpu-1")
        cluster.add_worker(name="gpu-1", tags=["gpu"])
        cluster.wait_workers(2)
        yield cluster


@pytest.fixture(scope="module")
def client(grid: LocalCluster) -> TitanClient:
    return grid.client()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        yield inst


def config(broker: str, **ops: dict[str, Any]) -> dict[str, Any]:
    """Run config: the titan resource's broker, and ``ops`` as {op: {input: value}}."""
    return {
        "resources": {"titan": {"config": {"broker": broker}}},
        "ops": {op: {"inputs": inputs} for op, inputs in ops.items()},
    }


def execute(job: Any, instance: dg.DagsterInstance, run_config: dict[str, Any]) -> dg.ExecuteJobResult:
    return dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config)


def of_type(result: dg.ExecuteJobResult, kind: dg.DagsterEventType, step: str | None = None) -> list[Any]:
    return [e for e in result.all_events if e.event_type == kind and (step is None or e.step_key == step)]


def messages(instance: dg.DagsterInstance, run_id: str, step: str | None = None) -> list[str]:
    """The run's log messages (context.log), not its engine events."""
    return [e.user_message for e in instance.all_logs(run_id)
            if e.dagster_event is None and (step is None or e.step_key == step)]  # fmt: skip


def titan_jobs(client: TitanClient, run_id: str, step: str) -> list[JobRecord]:
    """The titan jobs of one step of a Dagster run, oldest first (found by the labels the op gives them)."""
    found = [r for r in client.jobs(limit=1000) if r.labels.get("dagster/run_id") == run_id
             and r.labels.get("dagster/step") == step]  # fmt: skip
    return sorted(found, key=lambda r: int(r.labels["dagster/attempt"]))


def failure_text(event: Any) -> str:
    """Everything a STEP_FAILURE event says: the error, its causes, and the user failure's description."""
    data = event.step_failure_data
    parts = [data.user_failure_data.description or ""] if data.user_failure_data else []
    err = data.error
    while err is not None:
        parts.append(err.message)
        err = err.cause
    return "\n".join(parts)


# ---- the example pipeline ---------------------------------------------------------------------------


def test_the_example_pipeline_runs_each_op_as_a_titan_job(
    grid: LocalCluster, client: TitanClient, instance: dg.DagsterInstance
) -> None:
    """extract -> train (on the gpu worker) -> evaluate, each op in its own step process, as Dagster runs it."""
    with pipeline.run(grid.address, instance, rows=100, epochs=120) as result:
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        data = result.output_for_node("extract")
        model = result.output_for_node("train")
        metrics = result.output_for_node("evaluate")
    assert len(data["x_train"]) == 80 and len(data["x_test"]) == 20
    assert model == {**steps.train(data, epochs=120), "trained_on": "gpu-1"}  # the same fit, made on gpu-1
    assert metrics == steps.evaluate(model, data)  # evaluate got train's model and extract's data
    assert metrics["r2"] > 0.9

    run_id = result.run_id
    ran = {step: titan_jobs(client, run_id, step) for step in ("extract", "train", "evaluate")}
    assert all(len(recs) == 1 and recs[0].state is JobState.SUCCEEDED for recs in ran.values()), ran
    train_job = ran["train"][0]
    assert train_job.target == "examples.dagster.steps:train" and train_job.requires == ["gpu"]
    assert train_job.worker == "gpu-1" and train_job.retries == 0
    assert train_job.labels["dagster/job"] == "training" and train_job.labels["dagster/attempt"] == "0"
    # Each op's output says which titan job made it.
    outputs = {e.step_key: e.event_specific_data.metadata for e in of_type(result, dg.DagsterEventType.STEP_OUTPUT)}
    assert {step: outputs[step]["titan_job_id"].value for step in ran} == {s: r[0].id for s, r in ran.items()}
    assert outputs["train"]["titan_worker"].value == "gpu-1"

    # The jobs' stdout and stderr are in the run's event log, under their steps.
    assert "[stdout] extracted 100 rows: 80 to train, 20 to test" in messages(instance, run_id, "extract")
    train_log = messages(instance, run_id, "train")
    assert "[stderr] training on worker gpu-1: 80 rows, 120 epochs, lr 0.1" in train_log
    assert [m for m in train_log if m.startswith("[stdout] epoch ")][-1].startswith("[stdout] epoch 120/120: loss")
    assert any(m.startswith("[stdout] test mse ") for m in messages(instance, run_id, "evaluate"))
    # And in what Dagster captured of each step process's stdout and stderr (the UI's stdout/stderr view).
    captured: dict[str, str] = {}
    manager = instance.compute_log_manager
    for event in of_type(result, dg.DagsterEventType.LOGS_CAPTURED):
        data = manager.get_log_data(manager.build_log_key_for_run(run_id, event.event_specific_data.file_key))
        for step in event.event_specific_data.step_keys:
            captured[step] = (data.stdout or b"").decode() + (data.stderr or b"").decode()
    assert "epoch 120/120: loss" in captured["train"] and "training on worker gpu-1" in captured["train"]


# ---- failures, retries, routing ----------------------------------------------------------------------


def test_a_failing_op_is_a_step_failure_with_titan_error(
    grid: LocalCluster, client: TitanClient, instance: dg.DagsterInstance
) -> None:
    result = execute(failing_job, instance, config(grid.address, boom={"msg": "the model diverged"}))
    assert not result.success
    (failure,) = of_type(result, dg.DagsterEventType.STEP_FAILURE, "boom")
    text = failure_text(failure)
    assert "failed on " in text and "ValueError: the model diverged" in text and "remote traceback" in text
    assert failure.step_failure_data.user_failure_data.metadata["titan_error_type"].value == "ValueError"
    assert not of_type(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)  # no retry policy: no retry
    (rec,) = titan_jobs(client, result.run_id, "boom")
    assert rec.state is JobState.FAILED and rec.error == "ValueError: the model diverged"


def test_a_flaky_op_is_retried_by_dagster_each_attempt_a_titan_job(
    grid: LocalCluster, client: TitanClient, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    with execute(flaky_job, instance, config(grid.address, flaky={"path": str(counter), "succeed_on": 3})) as result:
        assert result.success and result.output_for_node("flaky") == 3
    retries = of_type(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "flaky")
    assert len(retries) == 2 and len(of_type(result, dg.DagsterEventType.STEP_RESTARTED, "flaky")) == 2
    assert "attempt 1 fails on purpose" in str(retries[0].event_specific_data.error.to_string())
    recs = titan_jobs(client, result.run_id, "flaky")
    assert [r.labels["dagster/attempt"] for r in recs] == ["0", "1", "2"]
    assert [r.state for r in recs] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
    assert all(r.retries == 0 and r.attempts == 1 for r in recs)  # titan retried none: Dagster did


def test_when_the_retries_are_spent_the_step_fails_with_the_last_error(
    grid: LocalCluster, client: TitanClient, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    run_config = config(grid.address, flaky={"path": str(tmp_path / "calls"), "succeed_on": 10})
    result = execute(flaky_job, instance, run_config)
    assert not result.success
    assert len(of_type(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "flaky")) == 3
    (failure,) = of_type(result, dg.DagsterEventType.STEP_FAILURE, "flaky")
    text = failure_text(failure)
    assert "Exceeded max_retries of 3" in text and "attempt 4 fails on purpose" in text
    assert len(titan_jobs(client, result.run_id, "flaky")) == 4


def test_op_tags_route_the_job_and_both_streams_reach_the_run_log(
    grid: LocalCluster, client: TitanClient, instance: dg.DagsterInstance
) -> None:
    with execute(talk_job, instance, config(grid.address, talk={"n": 3})) as result:
        assert result.success and result.output_for_node("talk") == 3
    (rec,) = titan_jobs(client, result.run_id, "talk")
    assert rec.worker == "gpu-1" and rec.requires == ["gpu"]
    log = messages(instance, result.run_id, "talk")
    lines = [m for m in log if m.startswith(("[stdout]", "[stderr]"))]
    assert lines == ["[stdout] out line 0", "[stdout] out line 1", "[stdout] out line 2", "[stderr] to stderr"]
    assert any(f"titan job {rec.id} submitted to {grid.address}" in m for m in log)


def test_a_waiting_job_is_reported_and_a_titan_cancel_fails_the_step_without_retry(
    grid: LocalCluster, instance: dg.DagsterInstance
) -> None:
    """No worker has the tag tpu: the op says where its job waits. Cancelled in titan (someone meant
    it to stop), the step fails at once although it has a retry policy."""
    watcher = grid.client()  # the helper thread's own client
    seen: dict[str, Any] = {}

    def queued() -> JobRecord | None:
        recs = [r for r in watcher.jobs(state="queued", limit=200) if r.labels.get("dagster/job") == "nap_job"]
        return recs[0] if recs else None

    def cancel_once_reported() -> None:
        rec = None
        try:
            rec = wait_for(queued, 30, "the nap job to be queued")
            note = f"titan job {rec.id} is queued: waiting for a worker with tags {{tpu}}"
            wait_for(lambda: note in messages(instance, rec.labels["dagster/run_id"], "nap"), 30, "the notice")
        except BaseException as exc:  # reported by the test below
            seen["error"] = exc
        finally:  # cancelled whatever happened: the run must end
            if rec is not None:
                seen["job"] = watcher.cancel(rec.id)

    helper = threading.Thread(target=cancel_once_reported, daemon=True)
    helper.start()
    result = execute(nap_job, instance, config(grid.address, nap={"seconds": 60}))
    helper.join(30)
    assert "error" not in seen, seen
    assert not result.success
    assert not of_type(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    (failure,) = of_type(result, dg.DagsterEventType.STEP_FAILURE, "nap")
    assert f"job {seen['job'].id} cancelled" in failure_text(failure)


def test_large_and_non_msgpack_values_travel_as_titan_objects(grid: LocalCluster, instance: dg.DagsterInstance) -> None:
    n = 300_000  # over the 256 KiB a result may be inline
    with execute(data_job, instance, config(grid.address, blob={"n": n}, array={"n": 5})) as result:
        assert result.success
        ref = result.output_for_node("blob")
        assert ref.kind == "bytes" and ref.size >= n  # the bytes stayed on their worker: Dagster holds the ref
        assert result.output_for_node("length")["len"] == n
        assert list(result.output_for_node("array")) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert result.output_for_node("total") == 10.0  # the numpy array went to the job as an object


def test_ops_make_assets_that_materialize_on_the_grid(grid: LocalCluster, instance: dg.DagsterInstance) -> None:
    dataset = dg.AssetsDefinition.from_op(
        titan_op(steps.extract, kwargs={"rows": 50, "seed": 1}), keys_by_output_name={"result": dg.AssetKey("dataset")}
    )
    model = dg.AssetsDefinition.from_op(
        titan_op(steps.train, requires="gpu", kwargs={"epochs": 40, "lr": 0.1}),
        keys_by_input_name={"data": dg.AssetKey("dataset")},
        keys_by_output_name={"result": dg.AssetKey("model")},
    )
    resources = {"titan": TitanResource(broker=grid.address)}
    result = dg.materialize([dataset, model], resources=resources, instance=instance)
    assert result.success
    assert result.output_for_node("train")["trained_on"] == "gpu-1"
    assert {m.asset_key for m in result.asset_materializations_for_node("train")} == {dg.AssetKey("model")}


def test_an_interrupted_step_cancels_its_titan_job(client: TitanClient) -> None:
    """Dagster stops a step by raising an interrupt in it (the run was terminated): the job must not run on."""

    class Log:
        def __init__(self) -> None:
            self.said: list[str] = []

        def info(self, msg: str) -> None:
            self.said.append(msg)
            if "is running on worker" in msg:
                raise KeyboardInterrupt  # as Dagster's interrupt arrives while the op waits

        warning = info

    class Context:
        log = Log()

    handle = client.submit("tests.jobs:sleep", args=[60])
    spec = _Spec("tests.jobs:sleep", {}, "titan", fetch=True, echo=False, max_log_lines=10)
    with pytest.raises(KeyboardInterrupt):
        _follow(Context(), client, handle.id, spec)  # type: ignore[arg-type]
    assert handle.wait(timeout=30).state is JobState.CANCELLED
    assert any(f"titan job {handle.id} cancelled with its Dagster step" in m for m in Context.log.said)


def test_no_broker_is_a_step_failure_that_says_where_it_looked(instance: dg.DagsterInstance) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    run_config = config(address, talk={"n": 1})
    run_config["resources"]["titan"]["config"]["timeout"] = 1.0
    result = execute(talk_job, instance, run_config)
    assert not result.success
    (failure,) = of_type(result, dg.DagsterEventType.STEP_FAILURE, "talk")
    text = failure_text(failure)
    assert f"no answer from the broker at {address}" in text
    assert "'titan' resource's config" in text and "TITAN_BROKER" in text


def test_a_bad_broker_address_fails_the_step_without_retry(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    run_config = config("::bad::", flaky={"path": str(tmp_path / "calls"), "succeed_on": 1})
    result = execute(flaky_job, instance, run_config)
    assert not result.success and not of_type(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    (failure,) = of_type(result, dg.DagsterEventType.STEP_FAILURE, "flaky")
    assert "the 'titan' resource: broker address '::bad::' is malformed" in failure_text(failure)


# ---- definitions (no cluster) ------------------------------------------------------------------------


def test_ops_take_their_inputs_from_the_function() -> None:
    train = pipeline.train
    assert [i.name for i in train.input_defs] == ["data", "epochs", "lr"]
    assert train.positional_inputs == ["data", "epochs", "lr"]  # evaluate(model, data) maps in this order
    assert pipeline.evaluate.positional_inputs == ["model", "data"]
    epochs = train.input_def_named("epochs")
    assert epochs.dagster_type.key == "Int" and epochs.default_value == 200
    assert train.tags[REQUIRES_TAG] == "gpu" and train.retry_policy is not None
    fixed = titan_op(steps.train, name="train_short", kwargs={"epochs": 5})
    assert [i.name for i in fixed.input_defs] == ["data", "lr"]
    named = titan_op("somepkg.models:fit", ins=["rows"], requires=["gpu", "highmem"])
    assert named.name == "fit" and [i.name for i in named.input_defs] == ["rows"]
    assert named.tags[REQUIRES_TAG] == "gpu,highmem"
    after = titan_op("somepkg.models:fit", ins={"rows": dg.In(), "after": dg.In(dg.Nothing)})
    assert after.positional_inputs == ["rows"]  # a Nothing input orders the op, and passes no value


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: titan_op(lambda x: x), "cannot be found by name on a worker"),
        (lambda: titan_op("no_colon"), "'package.module:function'"),
        (lambda: titan_op(jobs.add, requires="bad tag!"), "invalid tag"),
        (lambda: titan_op(jobs.add, options={"retries": 3}), "Dagster retry_policy"),
        (lambda: titan_op(jobs.add, tags={"titan/priority": "high"}), "titan/priority='high' must be a whole number"),
        (lambda: titan_op("m:f", ins=["config"]), "cannot be inputs"),
        (lambda: titan_op(boom), "already a Dagster op"),
    ],
)
def test_bad_definitions_are_refused_with_the_fix(make: Any, says: str) -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError) as info:
        make()
    assert says in str(info.value)


def test_the_resource_takes_keys_like_the_cli() -> None:
    assert TitanResource(keys="/etc/titan/keys").key_dir == "/etc/titan/keys"
    assert TitanResource().broker is None  # the client then reads $TITAN_BROKER


@pytest.mark.timeout(60)
def test_without_dagster_the_import_says_what_to_install() -> None:
    code = "import sys; sys.modules['dagster'] = None; import titan_zmq.integrations.dagster"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "pip install 'titan_zmq[dagster]'" in out.stderr
