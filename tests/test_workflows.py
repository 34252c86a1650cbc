"""The workflow benchmark's graphs and its zero-overhead list schedule (benchmarks/wf_shapes.py), no cluster."""

from __future__ import annotations

import math
from collections import deque

import pytest

from benchmarks import wf_jobs, wf_shapes, workflows
from benchmarks.wf_shapes import SHAPES, Task, Workflow, list_schedule
from titan_zmq.worker.child import resolve

TYPES = {  # each built-in shape's task types
    "montage": {"mProject", "mDiffFit", "mConcatFit", "mBgModel", "mBackground", "mImgtbl", "mAdd", "mShrink", "mJPEG"},
    "epigenomics": {"fastqSplit", "filterContams", "sol2sanger", "fastq2bfq", "map", "mapMerge", "maqIndex", "pileup"},
    "soykb": {"alignment_to_reference", "sort_sam", "dedup", "add_replace", "realign_target_creator", "indel_realign",
              "haplotype_caller", "genotype_gvcfs", "merge_gcvf", "combine_variants", "select_variants_snp",
              "filtering_snp", "select_variants_indel", "filtering_indel"},
    "cycles": {"baseline_cycles", "cycles", "fertilizer_increase_cycles", "cycles_fertilizer_increase_output_parser",
               "cycles_output_summary", "cycles_fertilizer_increase_output_summary", "cycles_plots"},
    "genome": {"individuals", "individuals_merge", "sifting", "mutation_overlap", "frequency"},
    "blast": {"split_fasta", "blastall", "cat_blast", "cat"},
}  # fmt: skip


def _acyclic(wf: Workflow) -> bool:
    """Kahn's algorithm over the edges alone (not the tasks' order): every task is removed."""
    kids = wf.children()
    missing = [len(t.parents) for t in wf.tasks]
    todo = deque(i for i, m in enumerate(missing) if not m)
    seen = 0
    while todo:
        i = todo.popleft()
        seen += 1
        for c in kids[i]:
            missing[c] -= 1
            if not missing[c]:
                todo.append(c)
    return seen == len(wf.tasks)


def _components(wf: Workflow) -> int:
    """Weakly connected components, by union-find over the edges."""
    root = list(range(len(wf.tasks)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i, t in enumerate(wf.tasks):
        for p in t.parents:
            root[find(i)] = find(p)
    return len({find(i) for i in range(len(wf.tasks))})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tasks", [100, 200])
def test_builtin_shapes_are_acyclic_connected_and_typed(shape: str, tasks: int) -> None:
    wf = wf_shapes.builtin(shape, tasks, seed=1)
    assert 0.85 * tasks <= len(wf.tasks) <= tasks + 10
    assert _acyclic(wf)
    assert set(wf.types()) == TYPES[shape]
    merges = wf.types()["individuals_merge"]
    assert _components(wf) == (merges if shape == "genome" else 1)  # 1000Genome's chromosomes never meet
    assert all(t.runtime > 0 for t in wf.tasks) and wf.sinks()
    assert wf == wf_shapes.builtin(shape, tasks, seed=1)  # seeded: the same graph and runtimes
    assert [t.runtime for t in wf.tasks] != [t.runtime for t in wf_shapes.builtin(shape, tasks, seed=2).tasks]


def test_builtin_structure_details() -> None:
    m = wf_shapes.builtin("montage", 200, seed=1)
    kinds = [t.kind for t in m.tasks]
    assert all(len(t.parents) == 2 for t in m.tasks if t.kind in ("mDiffFit", "mBackground"))
    assert kinds.count("mProject") == kinds.count("mBackground") and kinds[-1] == "mJPEG"
    e = wf_shapes.builtin("epigenomics", 200, seed=1)
    chain = ("fastqSplit", "filterContams", "sol2sanger", "fastq2bfq", "map")
    for i, t in enumerate(e.tasks):
        if t.kind in chain[1:]:
            (p,) = t.parents
            assert e.tasks[p].kind == chain[chain.index(t.kind) - 1], i
    s = wf_shapes.builtin("soykb", 200, seed=1)
    callers = [i for i, t in enumerate(s.tasks) if t.kind == "haplotype_caller"]
    (merge,) = [t for t in s.tasks if t.kind == "merge_gcvf"]
    assert sorted(merge.parents) == callers


def test_workflow_rejects_later_or_repeated_parents_and_bad_runtimes() -> None:
    with pytest.raises(ValueError):
        Workflow("x", (Task("a", 1.0, (1,)), Task("b", 1.0)))
    with pytest.raises(ValueError):
        Workflow("x", (Task("a", 1.0), Task("b", 1.0, (0, 0))))
    with pytest.raises(ValueError):
        Workflow("x", (Task("a", -1.0),))
    with pytest.raises(ValueError):
        wf_shapes.generate("nope", 100, 1)


def _chain_and_singles() -> Workflow:
    """Four 1 s tasks listed first, then a chain of two 2 s tasks: on 2 slots the optimum is 4 s (the chain on
    one slot, the four singles on the other); first come, first served runs the singles first: 6 s."""
    singles = tuple(Task("single", 1.0) for _ in range(4))
    return Workflow("hand", (*singles, Task("a", 2.0), Task("b", 2.0, (4,))))


def test_list_schedule_by_rank_finds_the_optimum_fifo_does_not() -> None:
    wf = _chain_and_singles()
    assert wf_shapes.upward_ranks(wf) == [1.0, 1.0, 1.0, 1.0, 4.0, 2.0]
    assert wf_shapes.lower_bound(wf, 2) == 4.0
    rank = list_schedule(wf, 2, "rank")
    assert rank.makespan == 4.0 and rank.starts[4] == 0.0 and rank.starts[5] == 2.0
    assert list_schedule(wf, 2, "fifo").makespan == 6.0
    assert list_schedule(wf, 6).makespan == 4.0 == wf_shapes.critical_path(wf)  # enough slots: the critical path
    assert list_schedule(wf, 1).makespan == wf.work() == 8.0  # one slot: all the work, back to back


def test_list_schedule_of_a_fork_join_and_its_edges() -> None:
    # a -> (b, c, d) -> e, with slots for all: a + the longest middle + e; with one fewer, the two short share one
    wf = Workflow("fj", (Task("a", 1.0), Task("b", 3.0, (0,)), Task("c", 1.0, (0,)), Task("d", 1.5, (0,)),
                         Task("e", 0.5, (1, 2, 3))))  # fmt: skip
    assert list_schedule(wf, 3).makespan == 4.5
    assert list_schedule(wf, 2).makespan == 4.5  # b on one slot; d then c (2.5 s) on the other
    assert list_schedule(wf, 1).makespan == 7.0
    assert list_schedule(Workflow("empty", ()), 4).makespan == 0.0
    with pytest.raises(ValueError):
        list_schedule(wf, 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_scaled_graphs_take_the_asked_makespan(shape: str) -> None:
    wf = wf_shapes.scale_to(wf_shapes.builtin(shape, 200, seed=1), 4.0, 16)
    d = wf_shapes.describe(wf, 16)
    assert d["list_rank_s"] == pytest.approx(4.0, abs=0.01)
    assert d["lower_bound_s"] <= d["list_rank_s"] + 1e-9 and d["lower_bound_s"] <= d["list_fifo_s"] + 1e-9
    assert d["tasks"] == len(wf.tasks) and d["edges"] == wf.edges and sum(d["types"].values()) == d["tasks"]
    assert math.isclose(d["work_s"], wf.work())


def test_idle_while_ready_counts_slot_seconds_lost() -> None:
    # 2 slots: A runs 0-1; B, ready at 0, starts at 0.5 (a free slot for 0.5 s); C, ready at 0, waits for a slot
    ready, starts, ends = [0.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 2.0]
    assert workflows.idle_while_ready(ready, starts, ends, 2) == pytest.approx(0.5)
    assert workflows.idle_while_ready([0.0, 0.0], [0.0, 1.0], [1.0, 2.0], 1) == 0.0  # no free slot: no loss


def test_job_targets_resolve_to_the_sleep() -> None:
    assert wf_jobs.target("bowtie2-build") == "benchmarks.wf_jobs:task_bowtie2_build"
    assert resolve(wf_jobs.target("mProject"), None, None) is wf_jobs.run  # as a worker finds it
    assert wf_jobs.run(0.0, 1.0, 2.0) == 0.0
    with pytest.raises(AttributeError):
        _ = wf_jobs.nothing_here


def _fake_run(graphs: dict[str, Workflow], factor: float) -> dict[str, object]:
    return {"setup": "x", "versions": "y", "shapes": {n: {"wall_s": wf_shapes.list_schedule(wf, 16).makespan * factor,
            "span_s": 1.0, "release_p50_ms": 1.0, "release_max_ms": 2.0, "idle_slot_s": 0.1}
            for n, wf in graphs.items()}}  # fmt: skip


def test_report_rows_and_targets() -> None:
    graphs = workflows.graphs_for(workflows.QUICK, ("blast", "cycles"), source="builtin")
    fig = {
        "sizes": {"tasks": 100, "makespan": 2.0}, "cluster": "4 workers x 4 slots", "slots": 16, "seed": 1,
        "source": "builtin", "wfcommons": None, "makespan": "wall",
        "shapes": {n: wf_shapes.describe(wf, 16) for n, wf in graphs.items()},
        "titan": {**_fake_run(graphs, 1.01), "estimate": {"used": True}}, "dask": _fake_run(graphs, 1.25),
        "ray": {"skipped": "ray is not installed (pip install .[peers])"},
    }  # fmt: skip
    rows, targets, notes = workflows.report(fig)
    assert len(rows) == 2 * 3  # titan, dask, and the FIFO schedule, per shape
    assert [t[0] for t in targets] == [f"workflow {n}: list schedule / titan makespan" for n in graphs]
    assert all(t[1] == pytest.approx(1 / 1.01) and t[2:4] == (0.98, True) for t in targets)
    dask = [r for r in rows if "dask" in r.figure]
    assert dask and all(r.ratio == pytest.approx(1 / 1.25) for r in dask)
    assert any("ray not run" in n and "pip install" in n for n in notes)


def test_wfcommons_recipes_when_installed() -> None:
    pytest.importorskip("wfcommons")
    wf = wf_shapes.from_wfcommons("epigenomics", 100, seed=3)
    assert _acyclic(wf) and 50 <= len(wf.tasks) <= 100 and "map" in wf.types()
    assert wf == wf_shapes.from_wfcommons("epigenomics", 100, seed=3)
