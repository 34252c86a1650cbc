"""The original Titan YAML format as written: coercions, warnings, ids, projects, HITL after its
job, services as DAG nodes, and the example pipelines of yaml_pipelines/titan/ run unchanged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import titan
from tests.test_pipeline import refused_file as refused
from tests.test_routing import fake_gpu_path
from titan_zmq.client import JobState, TitanClient
from titan_zmq.client.pipeline import HITL_WAIT, Pipeline, load_pipeline
from titan_zmq.job import JobRecord
from titan_zmq.local import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "yaml_pipelines" / "titan"


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def titan_file(tmp_path: Path, jobs: str, top: str = "project: false\n", name: str = "pipeline.yaml") -> Path:
    """A Titan-format file beside a script t.py; ``jobs``: the job list, indented by 2."""
    (tmp_path / "t.py").write_text("print('t')\n")
    return write(tmp_path, top + "jobs:\n" + textwrap.indent(textwrap.dedent(jobs).lstrip("\n"), "  "), name)


def load(tmp_path: Path, jobs: str, top: str = "project: false\n") -> Pipeline:
    return load_pipeline(titan_file(tmp_path, jobs, top), quiet=True)


def node(p: Pipeline, jid: str) -> dict[str, Any]:
    return next(n for n in p.dag.nodes if n["id"] == jid)


# ---- coercions, as the original parser reads values ------------------------------------------------


def test_numbers_are_read_with_int(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: a, file: t.py, priority: "10", delay: "3"}
        - {id: b, file: t.py, priority: 2.7, delay: 1.5}
        - {id: c, file: t.py, priority: true}
        - {id: d, file: t.py}
        """)  # fmt: skip
    assert node(p, "a")["options"]["priority"] == 10 and node(p, "a")["options"]["delay"] == 3.0
    assert node(p, "b")["options"]["priority"] == 2 and node(p, "b")["options"]["delay"] == 1.0  # int() drops it
    assert node(p, "c")["options"]["priority"] == 1
    # The original's default priority, no delay, and its implicit retries (three, at once).
    assert node(p, "d")["options"] == {"priority": 1, "retries": 3, "backoff": 0.0}
    assert any(":4: job 'b': 'priority' 2.7 is read as 2" in w for w in p.warnings), p.warnings
    assert any(":4: job 'b': 'delay' 1.5 is read as 1" in w for w in p.warnings), p.warnings
    path = titan_file(tmp_path, "- {id: a, file: t.py, priority: high}\n", name="bad.yaml")
    refused(path, ":3: job 'a': 'priority' must be a whole number", "int()")
    path = titan_file(tmp_path, "- {id: a, file: t.py, delay: '1.5'}\n", name="bad2.yaml")
    refused(path, ":3:", "'delay' must be a whole number")  # int("1.5") fails in the original too


def test_flags_are_read_with_bool(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: a, file: t.py, affinity: "true"}
        - {id: b, file: t.py, affinity: "false"}
        - {id: c, file: t.py, affinity: 0}
        - {id: d, file: t.py, affinity: false}
        - {id: e, file: t.py, affinity: 1}
        """)  # fmt: skip
    assert [node(p, j)["options"].get("affinity") for j in "abcde"] == ["parent", "parent", None, None, "parent"]
    assert [w for w in p.warnings if "affinity" in w] == [
        f"{tmp_path / 'pipeline.yaml'}:4: job 'b': 'affinity' is the string 'false', which the Titan format reads "
        "as true (bool()); write false without quotes"
    ]


def test_args_are_read_with_str_then_split(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: a, file: t.py, args: 5}
        - {id: b, file: t.py, args: true}
        - {id: c, file: t.py, args: "--mode 'hard reset' -v"}
        - {id: d, file: t.py, args: null}
        - {id: e, file: t.py, args: ""}
        - {id: f, file: t.py, args: [x, 2]}
        - {id: g, file: t.py, args: 2.5}
        """)  # fmt: skip
    got = [node(p, j)["options"].get("args") for j in "abcdefg"]
    assert got == [["5"], ["True"], ["--mode", "hard reset", "-v"], None, None, ["x", "2"], ["2.5"]]
    refused(titan_file(tmp_path, "- {id: a, file: t.py, args: {k: v}}\n", name="b.yaml"), ":3:", "'args' must be")
    refused(titan_file(tmp_path, '- {id: a, file: t.py, args: "it\'s"}\n', name="c.yaml"), ":3:", "cannot be split")


def test_type_in_any_case_and_anything_else_is_a_task(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: a, file: t.py, type: RUN}
        - {id: b, file: t.py, type: Batch}
        - {id: s, file: t.py, type: SERVICE, port: "9000", requirement: gpu, depends_on: [a]}
        - {id: c, file: t.py, type: null}
        """)  # fmt: skip
    assert "deploy" not in node(p, "a") and "deploy" not in node(p, "b") and "deploy" not in node(p, "c")
    svc = node(p, "s")
    assert svc["deploy"]["port"] == 9000 and svc["deploy"]["requires"] == ["gpu"] and svc["after"] == ["a"]
    assert [w for w in p.warnings if "'type'" in w] == [
        f"{tmp_path / 'pipeline.yaml'}:4: job 'b': 'type' 'Batch' runs as a task (the Titan format treats "
        "everything but 'service' so)"
    ]


def test_requirement_port_and_hitl_values(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: a, file: t.py, requirement: GENERAL}
        - {id: b, file: t.py, requirement: null}
        - {id: c, file: t.py, requirement: HIGH_MEM}
        - {id: d, file: t.py, hitl_message: "ok?", max_wait_seconds: "60"}
        - {id: e, file: t.py, hitl_message: "ok?"}
        - {id: f, file: t.py, hitl_message: "", max_wait_seconds: 5}
        """)  # fmt: skip
    assert [node(p, j)["options"].get("requires") for j in "abc"] == [None, None, ["high_mem"]]
    assert node(p, "d.approval")["options"] == {"approval": "ok?", "timeout": 60.0}
    assert node(p, "e.approval")["options"] == {"approval": "ok?", "timeout": float(HITL_WAIT)} and HITL_WAIT == 172800
    assert "f.approval" not in {n["id"] for n in p.dag.nodes}  # an empty message asks nothing, as in the original
    assert any(":8: job 'f': 'max_wait_seconds' has no effect without 'hitl_message'" in w for w in p.warnings)
    path = titan_file(tmp_path, "- {id: t, file: t.py, port: 80}\n", name="port.yaml")
    assert "'port' is only read for 'type: service'" in load_pipeline(path, quiet=True).warnings[0]
    refused(titan_file(tmp_path, "- {id: s, type: service, file: t.py, port: 0}\n", name="p0.yaml"), ":3:", "port")


# ---- warnings, --strict ---------------------------------------------------------------------------------


def test_ignored_keys_warn_with_file_line_and_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = titan_file(
        tmp_path,
        """
        - id: a
          file: t.py
          retries: 3
        """,
        top="name: w\nowner: me\nproject: false\n",
    )
    with caplog.at_level(logging.WARNING, logger="titan_zmq.client.pipeline"):
        p = load_pipeline(path)
    assert len(p.warnings) == 2
    assert p.warnings[0].startswith(f"{path}:2: top-level key 'owner' is not read by the Titan format; ignored")
    assert p.warnings[1].startswith(f"{path}:7: job 'a': key 'retries' is not read by the Titan format; ignored")
    assert [r.getMessage() for r in caplog.records] == list(p.warnings)
    assert node(p, "a")["options"] == {"priority": 1, "retries": 3, "backoff": 0.0}  # its own retries: ignored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="titan_zmq.client.pipeline"):
        assert load_pipeline(path, quiet=True).warnings == p.warnings
    assert not caplog.records
    msg = refused(path, ":2: top-level key 'owner'", ":7: job 'a': key 'retries'", "--strict", strict=True)
    assert "version" not in msg.split("known:")[0]


def test_our_format_stays_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "name: p\njobs:\n  - id: a\n    shell: 'true'\n    retrys: 2\n")
    refused(path, ":5: job 'a': unknown key 'retrys'")


def test_run_prints_warnings_and_strict_refuses(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    path = titan_file(tmp_path, "- id: a\n  file: t.py\n  colour: blue\n")
    res = titan("run", str(path), "--strict", broker=shared_cluster.address)
    assert res.returncode == 2, res.stderr
    assert f"{path}:5: job 'a': key 'colour' is not read by the Titan format" in res.stderr
    res = titan("run", str(path), broker=shared_cluster.address)
    assert res.returncode == 0, res.stderr
    assert f"titan: warning: {path}:5: job 'a': key 'colour'" in res.stderr
    assert res.stderr.count("key 'colour'") == 1  # printed once, not logged as well


# ---- ids, names, projects ------------------------------------------------------------------------


def test_ids_with_spaces_map_to_valid_ids_and_keep_their_name(tmp_path: Path) -> None:
    jobs = """
        - {id: "Unit Tests", file: t.py}
        - {id: Unit_Tests, file: t.py}
        - {id: "Build / Wheel", file: t.py, depends_on: ["Unit Tests", Unit_Tests]}
        - {id: 7, file: t.py, depends_on: "Build / Wheel"}
        - {id: "  ", file: t.py}
        """  # fmt: skip
    p = load(tmp_path, jobs, top="name: my pipeline\nproject: false\n")
    ids = [n["id"] for n in p.dag.nodes]
    assert ids[1:4] == ["Unit_Tests", "Build_Wheel", "7"] and ids[0].startswith("Unit_Tests-") and ids[4] == "job"
    assert p.name == "my_pipeline" and p.dag.id == "my_pipeline"
    assert node(p, ids[0])["options"]["labels"] == {"titan.name": "Unit Tests"}
    assert "labels" not in node(p, "Unit_Tests")["options"]
    assert node(p, "Build_Wheel")["after"] == [ids[0], "Unit_Tests"] and node(p, "7")["after"] == ["Build_Wheel"]
    assert [n["id"] for n in load(tmp_path, jobs).dag.nodes] == ids  # the same file, the same ids
    path = titan_file(tmp_path, '- {id: "a b", file: t.py}\n- {id: "a b", file: t.py}\n', name="dup.yaml")
    refused(path, ":4:", "job id 'a b' is used twice (first on line 3)")
    refused(titan_file(tmp_path, "- {file: t.py}\n", name="noid.yaml"), ":3:", "'id' is missing")


def test_project_defaults_to_true_and_ships_the_folder(tmp_path: Path) -> None:
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "s.py").write_text("print(1)\n")
    jobs = "jobs:\n  - {id: a, file: steps/s.py}\n"
    cases = (("", True), ("project: true\n", True), ("project: false\n", False), ("project: null\n", False),
             ("project: 0\n", False), ("project: yes please\n", True))  # fmt: skip
    for top, shipped in cases:
        p = load_pipeline(write(tmp_path, top + jobs), quiet=True)
        options = p.dag.nodes[0]
        if shipped:
            assert options["script"] == "steps/s.py" and options["options"]["project"] == str(tmp_path), top
        else:
            assert options["script"] == str(tmp_path / "steps" / "s.py"), top
            assert "project" not in options["options"], top
        assert p.warnings == (), top
    p = load_pipeline(write(tmp_path, "project: 'false'\n" + jobs), quiet=True)  # a string: true, as bool() says
    assert p.dag.nodes[0]["options"]["project"] == str(tmp_path)
    assert p.warnings == (f"{tmp_path / 'pipeline.yaml'}:1: 'project' is the string 'false', which the Titan "
                          "format reads as true; write false",)  # fmt: skip
    client = TitanClient("127.0.0.1:1")  # builds specs only
    try:
        spec = load_pipeline(write(tmp_path, jobs), quiet=True).dag.specs(client)[0]
        assert spec["kind"] == "archive" and spec["target"] == "steps/s.py"
    finally:
        client.close()


def test_file_must_be_inside_the_project(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (tmp_path / "outside.py").write_text("print(1)\n")
    (proj / "in.py").write_text("print(1)\n")
    path = write(proj, "jobs:\n  - {id: a, file: in.py}\n  - {id: b, file: ../outside.py}\n")
    refused(path, ":3: job 'b': 'file' '../outside.py' is outside the project folder", "project: false")
    refused(write(proj, f"jobs:\n  - {{id: b, file: {tmp_path / 'outside.py'}}}\n", "abs.yaml"), ":2:", "outside")
    refused(write(proj, "jobs:\n  - {id: a, file: gone.py}\n", "gone.yaml"), ":2: job 'a': 'file': no such file")
    p = load_pipeline(write(proj, "project: false\njobs:\n  - {id: b, file: ../outside.py}\n", "loose.yaml"))
    assert p.dag.nodes[0]["script"] == str(proj / ".." / "outside.py")  # without a project: any file


# ---- HITL after its job (Titan) and both placements (ours) -------------------------------------------


def test_hitl_gate_comes_after_its_job_and_children_wait_for_both(tmp_path: Path) -> None:
    p = load(tmp_path, """
        - {id: prep, file: t.py, hitl_message: "looks right?", max_wait_seconds: 120}
        - {id: train, file: t.py, depends_on: [prep]}
        - {id: eval, file: t.py, depends_on: [prep, train]}
        - {id: svc, type: service, file: t.py, port: 9100, depends_on: [train], hitl_message: "live?"}
        - {id: use, file: t.py, depends_on: [svc]}
        """)  # fmt: skip
    assert [(n["id"], n["after"]) for n in p.dag.nodes] == [
        ("prep", []),
        ("prep.approval", ["prep"]),
        ("train", ["prep", "prep.approval"]),
        ("eval", ["prep", "prep.approval", "train"]),
        ("svc", ["train"]),
        ("svc.approval", ["svc"]),
        ("use", ["svc", "svc.approval"]),
    ]
    assert node(p, "prep.approval")["options"] == {"approval": "looks right?", "timeout": 120.0}
    assert node(p, "svc")["deploy"]["port"] == 9100
    clash = "- {id: a, file: t.py, hitl_message: x}\n- {id: a.approval, file: t.py}\n"
    path = titan_file(tmp_path, clash, name="c.yaml")
    refused(path, ":3: job 'a': its approval gate would be 'a.approval'")


def test_our_format_approval_before_and_after(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: gates
        jobs:
          - {id: a, shell: "true"}
          - {id: b, shell: "true", after: [a], approval: "run b?"}
          - id: c
            shell: "true"
            after: [b]
            approval: {message: "c's output ok?", placement: after, timeout: 30}
          - {id: d, shell: "true", after: [c]}
          - {id: e, shell: "true", after: [c, a], approval: {message: "e?", placement: before}}
          - {id: gate, type: approval, message: "old style", after: [d], timeout: 5}
        """)  # fmt: skip
    p = load_pipeline(path)
    assert p.warnings == ()
    assert [(n["id"], n["after"]) for n in p.dag.nodes] == [
        ("a", []),
        ("b.approval", ["a"]),
        ("b", ["a", "b.approval"]),  # before: after its parents and the gate (it still gets a's result)
        ("c", ["b"]),
        ("c.approval", ["c"]),  # after: the gate asks once c has run
        ("d", ["c", "c.approval"]),
        ("e.approval", ["c", "c.approval", "a"]),
        ("e", ["c", "c.approval", "a", "e.approval"]),
        ("gate", ["d"]),
    ]
    assert node(p, "b.approval")["options"] == {"approval": "run b?"}
    assert node(p, "c.approval")["options"] == {"approval": "c's output ok?", "timeout": 30.0}
    assert node(p, "gate")["options"] == {"approval": "old style", "timeout": 5.0}
    for bad, why in (('approval: {message: x, placement: during}', "'placement' must be 'before' or 'after'"),
                     ('approval: {message: x, when: now}', "unknown key 'when'"),
                     ('approval: {placement: after}', "needs a 'message'"),
                     ('approval: {message: x, timeout: -1}', "'timeout' must be a number"),
                     ('approval: 3', "'approval' must be a question or a map")):  # fmt: skip
        refused(write(tmp_path, f"jobs:\n  - id: a\n    shell: 'true'\n    {bad}\n", "bad.yaml"), ":4: job 'a':", why)
    svc = write(tmp_path, "jobs:\n  - {id: s, type: service, shell: 'x', approval: {message: 'up?', "
                "placement: after}}\n  - {id: u, shell: 'true', after: [s]}\n", "svc.yaml")  # fmt: skip
    assert [(n["id"], n["after"]) for n in load_pipeline(svc).dag.nodes] == [
        ("s", []), ("s.approval", ["s"]), ("u", ["s", "s.approval"])
    ]  # fmt: skip


# ---- the examples, unchanged, on a real cluster ------------------------------------------------------


def by_name(recs: dict[str, JobRecord] | list[JobRecord], run_id: str) -> dict[str, JobRecord]:
    values = recs.values() if isinstance(recs, dict) else recs
    return {r.id[len(run_id) + 1 :]: r for r in values}


def gate_waiting(client: TitanClient, gate_id: str) -> bool:
    return client.status(gate_id).state is JobState.AWAITING


def test_every_titan_example_loads_without_warnings() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["agent.yaml", "ci.yaml", "diamond.yaml", "fan_out.yaml", "gpu_routing.yaml", "hitl.yaml"]
    for name in names:
        assert load_pipeline(EXAMPLES / name, strict=True).warnings == (), name


def test_diamond_example(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    run = client.submit_dag(load_pipeline(EXAMPLES / "diamond.yaml").dag.instance())
    recs = by_name(run.wait(60), run.id)
    assert {n: r.state for n, r in recs.items()} == dict.fromkeys(["root", "left", "right", "sink"], JobState.SUCCEEDED)
    assert recs["root"].stdout.startswith("init - on ")
    assert recs["left"].stdout.startswith("LEFT after root on ")
    assert recs["sink"].stdout.startswith("SINK after left, right on ")


def test_fan_out_example_with_titan_run(shared_cluster: LocalCluster) -> None:
    res = titan("run", str(EXAMPLES / "fan_out.yaml"), "--json", broker=shared_cluster.address)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    recs = {j["id"][len(out["dag"]) + 1 :]: j for j in out["jobs"]}
    assert out["ok"] and len(recs) == 6
    for i in range(1, 5):
        assert recs[f"part-{i}"]["stdout"].startswith(f"CHUNK_{i} after trigger on ")
    assert recs["reducer"]["stdout"].startswith("MERGE after part-1, part-2, part-3, part-4 on ")


def test_gpu_routing_example_waits_for_a_gpu_worker(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.add_worker(name="cpu-only", slots=2)
    cluster.wait_workers(1)
    client = cluster.client()
    run = client.submit_dag(load_pipeline(EXAMPLES / "gpu_routing.yaml").dag.instance())
    train = f"{run.id}.Train_Model"
    wait_for(lambda: client.status(train).waiting == "waiting for a worker with tags {gpu}", 30, "the gpu wait")
    assert client.status(f"{run.id}.Data_Prep").stdout.strip() == "init PREPARE on cpu-only"
    assert client.status(train).priority == 10
    cluster.add_worker(name="gpu-box", slots=1, env={"TITAN_GPU_PROBE": "true", "PATH": fake_gpu_path(tmp_path)})
    recs = by_name(run.wait(60), run.id)
    assert recs["Train_Model"].state is JobState.SUCCEEDED, recs["Train_Model"].error
    assert recs["Train_Model"].stdout.strip() == "TRAIN after Data_Prep on gpu-box"


def test_agent_example_ends_with_its_service_running(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    try:
        res = titan("run", str(EXAMPLES / "agent.yaml"), broker=shared_cluster.address, timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "titan-agent: succeeded" in res.stdout
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith("service step-4-server: running at "))
        address = line.split(" running at ", 1)[1].split(" ")[0].split(",")[0]
        assert address.endswith(":19000"), line
        assert client.services("step-4-server")[0]["state"] == "running"  # it outlives the pipeline
        host, port = address.rsplit(":", 1)
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as resp:
            assert resp.read() == b"agent service up\n"
        [rec] = [r for r in client.jobs(limit=200) if r.id.endswith(".step-1-init")][:1]
        run_id = rec.dag
        assert run_id is not None
        recs = by_name(client.dag_status(run_id), run_id)
        assert recs["step-1-init"].priority == 10 and recs["step-1-init"].stdout.startswith("init --mode reset on ")
        assert recs["step-3-process"].worker == recs["step-2-fetch"].worker  # affinity: where its parent ran
        assert recs["step-4-server"].depends_on == [f"{run_id}.step-3-process"]
        assert isinstance(recs["step-4-server"].result, dict)
        assert recs["step-4-server"].result["addresses"] == [address]
    finally:
        try:
            client.stop_service("step-4-server")
        except Exception:  # it may never have been deployed
            pass


def start_run(path: Path, broker: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TITAN_BROKER": broker}
    return subprocess.Popen([sys.executable, "-m", "titan_zmq", "run", str(path), "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def find_gate(client: TitanClient, suffix: str) -> str:
    """The id of the approval gate of a run that `titan run` started (its DAG id is made there)."""
    found: list[str] = []

    def waiting() -> bool:
        found[:] = [r.id for r in client.jobs(state=JobState.AWAITING, limit=200) if r.id.endswith(suffix)]
        return bool(found)

    wait_for(waiting, 60, f"a gate {suffix} awaiting approval")
    return found[0]


def test_hitl_example_approved_while_titan_run_waits(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    proc = start_run(EXAMPLES / "hitl.yaml", shared_cluster.address)
    try:
        gate = find_gate(client, ".preprocess.approval")
        run_id = gate[: -len(".preprocess.approval")]
        job = client.status(f"{run_id}.preprocess")
        assert job.state is JobState.SUCCEEDED and job.stdout.startswith("CLEAN_DATA after nothing")  # ran first
        assert client.status(f"{run_id}.train").state is JobState.PENDING  # held by the gate
        assert client.status(gate).target.startswith("Preprocessing done.")
        client.approve(gate, note="numbers checked")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    recs = {j["id"][len(run_id) + 1 :]: j for j in json.loads(out)["jobs"]}
    assert recs["preprocess.approval"]["state"] == "succeeded"
    assert recs["train"]["stdout"].startswith("TRAIN after preprocess, preprocess.approval on ")  # gets its input
    assert recs["report"]["stdout"].startswith("init REPORT on ")


def test_hitl_example_rejected_halts_what_follows(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    run = client.submit_dag(load_pipeline(EXAMPLES / "hitl.yaml").dag.instance())
    gate = f"{run.id}.preprocess.approval"
    wait_for(lambda: gate_waiting(client, gate), 60, "the gate to wait for a person")
    client.reject(gate, note="row counts are off")
    recs = by_name(run.wait(60), run.id)
    assert recs["preprocess"].state is JobState.SUCCEEDED
    assert recs["preprocess.approval"].state is JobState.FAILED
    assert "row counts are off" in (recs["preprocess.approval"].error or "")
    for name in ("train", "report"):
        assert recs[name].state is JobState.CANCELLED, name
        assert recs[name].started_at is None
    assert "preprocess.approval" in (recs["train"].error or ""), recs["train"].error


def test_ci_example_with_its_release_gate(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    dag = load_pipeline(EXAMPLES / "ci.yaml").dag
    assert dag.id == "titan_ci"
    run = client.submit_dag(dag.instance())
    gate = f"{run.id}.Build_Wheel.approval"
    wait_for(lambda: gate_waiting(client, gate), 60, "the release gate")
    assert client.status(f"{run.id}.Publish").state is JobState.PENDING
    client.approve(gate)
    recs = by_name(run.wait(60), run.id)
    assert all(r.state is JobState.SUCCEEDED for r in recs.values()), {n: r.error for n, r in recs.items()}
    assert recs["Unit_Tests"].labels == {"titan.name": "Unit Tests"} and recs["Checkout"].priority == 5
    assert recs["Build_Wheel"].stdout.startswith("BUILD after Lint, Unit_Tests on ")
    assert recs["Publish"].stdout.startswith("PUBLISH after Build_Wheel, Build_Wheel.approval on ")


def test_a_file_in_an_unknown_users_home_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nproject: false\njobs:\n  - {id: a, file: '~no-such-user-here/a.py'}\n")
    refused(path, ":4:", "names the home folder of a user this machine does not know")
