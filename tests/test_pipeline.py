"""YAML pipelines: both formats, errors with file, line and key, and every example run on a cluster."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_routing import fake_gpu_path
from titan_zmq.client import Dag, JobState, TitanClient
from titan_zmq.client.pipeline import Pipeline, PipelineError, load_pipeline
from titan_zmq.errors import JobError
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "yaml_pipelines"


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def refused(tmp_path: Path, text: str, *fragments: str) -> str:
    """Load ``text`` and check the error names the file and every fragment (line, key, ...)."""
    return refused_file(write(tmp_path, text), *fragments)


def refused_file(path: Path, *fragments: str, strict: bool = False) -> str:
    """Load ``path`` and check the error names the file and every fragment (line, key, ...)."""
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, strict=strict)
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ---- our format --------------------------------------------------------------------------------


def test_own_format_list_and_map_forms(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("print('hi')\n")
    p = load_pipeline(
        write(
            tmp_path,
            """
            name: demo
            jobs:
              - id: a
                call: tests.jobs:add
                args: [1, 2]
                kwargs: {}
                env: {THREADS: 4, MODE: fast}
                requires: "gpu, highmem"
                priority: 3
                delay: 0.5
                timeout: 10
                retries: 2
                labels: {team: ml}
              - id: b
                shell: "echo hi"
                args: [1, x]
                after: a
                on_failure: continue
              - id: c
                script: s.py
                depends_on: [a, b]
            """,
        )
    )
    assert isinstance(p, Pipeline) and p.name == "demo" and p.dag.id == "demo"
    a, b, c = p.dag.nodes
    assert a["call"] == "tests.jobs:add" and a["after"] == []
    assert a["options"] == {
        "args": [1, 2], "kwargs": {}, "env": {"THREADS": "4", "MODE": "fast"}, "labels": {"team": "ml"},
        "requires": ["gpu", "highmem"], "priority": 3, "delay": 0.5, "timeout": 10.0, "retries": 2,
    }  # fmt: skip
    assert b["shell"] == "echo hi" and b["options"]["args"] == ["1", "x"] and b["after"] == ["a"]
    assert b["on_failure"] == "continue"
    assert c["script"] == str(tmp_path / "s.py") and c["after"] == ["a", "b"]
    m = load_pipeline(write(tmp_path, "jobs:\n  x: {shell: 'true'}\n  y: {call: 'math:floor', after: [x]}\n", "m.yaml"))
    assert m.name == "m" and [n["id"] for n in m.dag.nodes] == ["x", "y"]


def test_both_formats_give_the_same_specs(tmp_path: Path) -> None:
    (tmp_path / "prep.py").write_text("print('prep')\n")
    (tmp_path / "train.py").write_text("print('train')\n")
    own = load_pipeline(
        write(
            tmp_path,
            """
            name: same
            jobs:
              - {id: prep, script: prep.py, args: ["1"], priority: 2, retries: 3, backoff: 0}
              - {id: train, script: train.py, depends_on: [prep], requires: [gpu], delay: 1, priority: 1,
                 retries: 3, backoff: 0}
            """,
            "own.yaml",
        )
    )
    titan = load_pipeline(
        write(
            tmp_path,
            """
            name: same
            version: "2"
            project: false
            jobs:
              - {id: prep, type: run, file: prep.py, args: "1", priority: 2, requirement: GENERAL}
              - {id: train, file: train.py, depends_on: [prep], requirement: GPU, delay: 1, affinity: false}
            """,
            "titan.yaml",
        )
    )
    assert own.dag.nodes == titan.dag.nodes
    client = TitanClient("127.0.0.1:1")  # builds specs only; nothing is sent
    try:
        assert own.dag.specs(client) == titan.dag.specs(client)
    finally:
        client.close()


def test_every_example_loads() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["diamond.yaml", "fanout.yaml", "gpu.yaml", "mapreduce.yaml", "service.yaml", "switch.yaml",
                     "titan_format.yaml"]
    svc = load_pipeline(EXAMPLES / "service.yaml")  # the service is a node; the job after it waits for it
    assert [(n["id"], n["after"]) for n in svc.dag.nodes] == [
        ("pipeline-echo", []), ("ask", ["pipeline-echo"]), ("ask-again", ["ask"])
    ]  # fmt: skip
    assert svc.dag.nodes[0]["deploy"]["name"] == "pipeline-echo" and svc.dag.nodes[0]["deploy"]["health"] == "tcp"
    fan = load_pipeline(EXAMPLES / "fanout.yaml").dag
    assert len(fan.nodes) == 102 and len(fan.nodes[-1]["after"]) == 100


# ---- errors: file, line, key ------------------------------------------------------------------


def test_unknown_job_key(tmp_path: Path) -> None:
    msg = refused(tmp_path, "name: p\njobs:\n  - id: train\n    shell: 'true'\n    retrys: 3\n",
                  ":5: job 'train': unknown key 'retrys' (known: id, call,")  # fmt: skip
    assert "retries" in msg


def test_wrong_types(tmp_path: Path) -> None:
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n  - id: b\n    shell: y\n    priority: high\n",
            ":6: job 'b': 'priority' must be an integer, got 'high'")  # fmt: skip
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    delay: soon\n", ":4: job 'a': 'delay' must be a number")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    retries: 1.5\n", ":4:", "'retries' must be an integer")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    args: 3\n", ":4:", "'args' must be a list")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    args: [{k: v}]\n", ":4:", "'args' of a shell")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    kwargs: {k: 1}\n", ":4:", "only call jobs take 'kwargs'")
    refused(tmp_path, "jobs:\n  - id: a\n    call: x\n", ":3:", "'call' 'x' must look like")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    env: {A: [1]}\n", ":4:", "'env'")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    requires: [bad tag]\n", ":4:", "'requires'")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    on_failure: maybe\n", ":4:", "'on_failure'")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    call: m:f\n", ":4:", "exactly one of call:")
    refused(tmp_path, "jobs:\n  - id: a\n    priority: 1\n", ":2: job 'a': give exactly one of call:")
    refused(tmp_path, "jobs:\n  - shell: x\n", ":2: job #1: 'id' is missing")
    refused(tmp_path, "jobs:\n  - id: 'a b'\n    shell: x\n", ":2:", "id 'a b' is invalid")
    refused(tmp_path, "jobs: 3\n", ":1:", "'jobs' must be a list")
    refused(tmp_path, "jobs:\n  - just a string\n", ":2:", "job #1 must be a map")


def test_top_level_and_name(tmp_path: Path) -> None:
    refused(tmp_path, "name: p\nowner: me\njobs:\n  - {id: a, shell: x}\n",
            ":2: unknown top-level key 'owner' (known: name, description, jobs, schedule, catchup)")  # fmt: skip
    refused(
        tmp_path, "name: 'my pipeline'\njobs:\n  - {id: a, shell: x}\n", ":1:", "'name' 'my pipeline' is not a valid"
    )
    refused(tmp_path, "name: p\n", ":1:", "no 'jobs'")
    refused(tmp_path, "", ":1:", "empty")
    refused(tmp_path, "name: p\njobs: [\n", "invalid YAML")
    refused(tmp_path, "name: p\nname: q\njobs:\n  - {id: a, shell: x}\n", ":2:", "key 'name' is given twice")


def test_duplicate_ids_unknown_parents_and_cycles(tmp_path: Path) -> None:
    refused(tmp_path, "jobs:\n  - {id: a, shell: x}\n  - {id: b, shell: x}\n  - {id: a, shell: y}\n",
            ":4: job #3: job id 'a' is used twice (first on line 2)")  # fmt: skip
    refused(tmp_path, "jobs:\n  a: {shell: x}\n  a: {shell: y}\n", ":3:", "key 'a' is given twice")
    refused(tmp_path, "jobs:\n  - id: a\n    shell: x\n    after: [ghost]\n",
            ":4: job 'a': 'after' names an unknown job 'ghost'")  # fmt: skip
    msg = refused(
        tmp_path,
        "jobs:\n  - {id: a, shell: x, after: [c]}\n  - {id: b, shell: x, after: [a]}\n"
        "  - {id: c, shell: x, depends_on: [b]}\n",
        "cycle",
    )
    assert any(f"{c[0]} -> {c[1]} -> {c[2]} -> {c[0]}" in msg for c in ("abc", "bca", "cab")), msg
    refused(tmp_path, "jobs:\n  - {id: a, shell: x}\n  - id: s\n    shell: x\n    after: [s]\n", ":5:", "cycle: s -> s")
    refused(tmp_path, "jobs:\n  - {id: a, shell: x, after: [b], depends_on: [b]}\n  - {id: b, shell: x}\n",
            ":2:", "not both")  # fmt: skip


def test_missing_script(tmp_path: Path) -> None:
    refused(tmp_path, "jobs:\n  - id: a\n    script: nope.py\n", ":3: job 'a': 'script': no such file 'nope.py'")
    refused(
        tmp_path, "version: 1\njobs:\n  - id: a\n    file: gone.py\n", ":4: job 'a': 'file': no such file 'gone.py'"
    )


def test_titan_format_errors(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("print(1)\n")
    svc = tmp_path / "svc.yaml"
    svc.write_text("jobs:\n  - {id: a, file: t.py}\n  - id: svc\n    type: service\n    file: t.py\n    port: 8080\n"
                   "    depends_on: [a]\n  - id: use\n    file: t.py\n    depends_on: [svc]\n")  # fmt: skip
    nodes = load_pipeline(svc).dag.nodes  # a service after a job: a node, no longer refused
    assert [(n["id"], n["after"]) for n in nodes] == [("a", []), ("svc", ["a"]), ("use", ["svc"])]
    assert nodes[1]["deploy"] == {"name": "svc", "shell": None, "script": "t.py", "project": str(tmp_path),
                                  "args": None, "port": 8080, "health": "tcp"}  # fmt: skip
    src = tmp_path / "aff.yaml"
    src.write_text(
        "jobs:\n  - {id: a, file: t.py}\n  - id: b\n    file: t.py\n    depends_on: [a]\n    affinity: true\n"
    )
    node = load_pipeline(src).dag.nodes[1]
    assert node["options"]["affinity"] == "parent" and node["after"] == ["a"]
    refused(tmp_path, "version: 1\njobs:\n  - id: a\n    type: run\n", ":3:", "'file' is missing")
    refused(tmp_path, "jobs:\n  - id: a\n    file: t.py\n    requirement: [gpu]\n", ":4:", "'requirement' must be")
    refused(tmp_path, "jobs:\n  - id: s\n    type: service\n    file: t.py\n", ":2:", "needs a 'port'")
    refused(tmp_path, "jobs:\n  - id: a\n    file: t.py\n    priority: high\n", ":4:", "'priority' must be a whole")
    refused(
        tmp_path, "jobs:\n  - {id: a, file: t.py, depends_on: [zz]}\n", ":2:", "'depends_on' names an unknown job 'zz'"
    )


def test_pipeline_error_is_a_job_error() -> None:
    assert issubclass(PipelineError, JobError)
    with pytest.raises(PipelineError, match="cannot read"):
        load_pipeline("/nonexistent/pipeline.yaml")


# ---- every example, run on a real cluster -------------------------------------------------------


def run_example(client: TitanClient, name: str) -> tuple[Dag, dict[str, Any]]:
    dag = load_pipeline(EXAMPLES / name).dag
    recs = client.submit_dag(dag).wait(30)
    assert {j: r.state for j, r in recs.items()} == {n["id"]: JobState.SUCCEEDED for n in dag.nodes}, {
        j: r.error for j, r in recs.items() if r.state is not JobState.SUCCEEDED
    }
    assert all(r.dag == dag.id for r in recs.values())
    return dag, recs


def test_diamond_example(shared_cluster: LocalCluster) -> None:
    _, recs = run_example(shared_cluster.client(), "diamond.yaml")
    assert recs["diamond-b"].result == 12
    assert recs["diamond-d"].started_at >= max(recs["diamond-b"].finished_at, recs["diamond-c"].finished_at)
    shown = json.loads(recs["diamond-d"].stdout)
    assert sorted(shown) == ["diamond-b", "diamond-c"] and shown["diamond-b"] == 12


def test_fanout_example(shared_cluster: LocalCluster) -> None:
    _, recs = run_example(shared_cluster.client(), "fanout.yaml")
    assert len(recs) == 102
    assert recs["fanout-sum"].stdout == f"100 parents, total {sum(2 * i for i in range(100))}\n"


def test_mapreduce_example(shared_cluster: LocalCluster) -> None:
    _, recs = run_example(shared_cluster.client(), "mapreduce.yaml")
    assert recs["mr-reduce"].result == {"a": 2, "and": 1, "cat": 2, "dog": 2, "down": 1, "sat": 2, "the": 2}


def test_titan_format_example(shared_cluster: LocalCluster) -> None:
    _, recs = run_example(shared_cluster.client(), "titan_format.yaml")
    assert recs["titan-extract"].stdout == "record-0,record-1,record-2\n"
    assert recs["titan-transform"].stdout == "transform got parents: titan-extract\n"
    assert recs["titan-load"].stdout == "loaded into words\n"


def test_gpu_example_waits_for_a_gpu_worker(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="cpu-only", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    dag = load_pipeline(EXAMPLES / "gpu.yaml").dag
    run = client.submit_dag(dag)
    assert run.result("gpu-prepare", timeout=20)["worker"] == "cpu-only"
    wait_for(lambda: client.status("gpu-train").waiting == "waiting for a worker with tags {gpu}", 10, "gpu wait")
    assert client.status("gpu-train").state is JobState.QUEUED
    cluster.add_worker(name="gpu-box", slots=1, env={"TITAN_GPU_PROBE": "true", "PATH": fake_gpu_path(tmp_path)})
    assert run.result("gpu-train", timeout=30)["worker"] == "gpu-box"
    assert all(r.state is JobState.SUCCEEDED for r in run.wait(10).values())


@pytest.mark.timeout(60)
def test_titan_project_folder_travels_as_an_archive(shared_cluster: LocalCluster) -> None:
    pipeline = load_pipeline(EXAMPLES / "titan_project" / "pipeline.yaml")
    client = shared_cluster.client()
    specs = pipeline.dag.specs(client)
    assert {s["kind"] for s in specs} == {"archive"} and len({s["blob"] for s in specs}) == 1
    assert [s["target"] for s in specs] == ["steps/prepare.py", "steps/report.py"]
    recs = client.submit_dag(pipeline.dag.instance()).wait(30)
    by_name = {r.id.rsplit(".", 1)[1]: r for r in recs.values()}
    prep, report = by_name["project-prepare"], by_name["project-report"]
    assert prep.state is JobState.SUCCEEDED, prep.stderr
    assert json.loads(prep.stdout) == {"red": 3, "green": 2, "blue": 1}
    assert report.stdout.strip() == f"report ['--title', 'totals'] after ['{prep.id}']"
