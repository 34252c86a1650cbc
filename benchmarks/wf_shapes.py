"""Workflow graphs for :mod:`benchmarks.workflows`, and their zero-overhead list schedules.

A :class:`Workflow` is a list of tasks in topological order (a task's parents come before it), each with a task
type and a runtime in seconds. Two sources of graphs, by shape name (:data:`SHAPES`):

- **wfcommons**: the recipes of `WfCommons <https://wfcommons.org>`_ (WfChef: synthetic instances grown from the
  microstructures of real execution traces, runtimes drawn from per-type distributions fitted to them), when the
  package is installed (``pip install wfcommons``; not a dependency of this project). Seeded: the same seed gives
  the same graph and runtimes.
- **builtin**: generators written here from the published structure of each workflow (the Pegasus workflow
  descriptions; Bharathi et al., "Characterization of scientific workflows", WORKS 2008; Juve et al.,
  "Characterizing and profiling scientific workflows", FGCS 2013; Ferreira da Silva et al. on 1000Genome,
  eScience 2019). Runtimes are lognormal per task type, around means of the order of those published profiles,
  not fitted to traces.

:func:`list_schedule` simulates a graph on ``slots`` identical slots with no overhead at all: whenever a slot is
free and a task is ready (all its parents finished), the task starts at once. Ready tasks go in order of upward
rank (HEFT's: the longest path of runtimes from the task to the end of the graph, the task included), or in the
order they became ready (``order="fifo"``, ties by position in the graph).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

log = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("montage", "epigenomics", "soykb", "cycles", "genome", "blast")
SOURCES = ("auto", "wfcommons", "builtin")
_EPS = 1e-9  # seconds: finishing times closer than this count as simultaneous in the simulation

Order = Literal["rank", "fifo"]


@dataclass(frozen=True)
class Task:
    """One task: its type, its runtime (seconds) and its parents (indices of earlier tasks)."""

    kind: str
    runtime: float
    parents: tuple[int, ...] = ()


@dataclass(frozen=True)
class Workflow:
    """A DAG of tasks in topological order: ``tasks[i].parents`` are all below ``i``."""

    name: str
    tasks: tuple[Task, ...]
    source: str = ""  # where the graph comes from, in words

    def __post_init__(self) -> None:
        for i, t in enumerate(self.tasks):
            if t.runtime < 0 or not math.isfinite(t.runtime):
                raise ValueError(f"{self.name}: task {i} has runtime {t.runtime!r}")
            if any(not 0 <= p < i for p in t.parents) or len(set(t.parents)) != len(t.parents):
                raise ValueError(f"{self.name}: task {i} has parents {t.parents}, not distinct earlier tasks")

    @property
    def edges(self) -> int:
        return sum(len(t.parents) for t in self.tasks)

    def children(self) -> list[list[int]]:
        """Each task's children, by index."""
        kids: list[list[int]] = [[] for _ in self.tasks]
        for i, t in enumerate(self.tasks):
            for p in t.parents:
                kids[p].append(i)
        return kids

    def sinks(self) -> list[int]:
        """The tasks without children."""
        return [i for i, k in enumerate(self.children()) if not k]

    def types(self) -> Counter[str]:
        return Counter(t.kind for t in self.tasks)

    def work(self) -> float:
        """The sum of all runtimes (seconds)."""
        return math.fsum(t.runtime for t in self.tasks)

    def scaled(self, factor: float, digits: int = 4) -> Workflow:
        """The same graph with every runtime times ``factor``, rounded to ``digits`` decimals."""
        tasks = tuple(replace(t, runtime=round(t.runtime * factor, digits)) for t in self.tasks)
        return replace(self, tasks=tasks)


def upward_ranks(wf: Workflow) -> list[float]:
    """Each task's upward rank: its runtime plus the largest rank among its children (the longest path of
    runtimes from it to the end of the graph)."""
    kids = wf.children()
    rank = [0.0] * len(wf.tasks)
    for i in range(len(wf.tasks) - 1, -1, -1):
        rank[i] = wf.tasks[i].runtime + max((rank[c] for c in kids[i]), default=0.0)
    return rank


def critical_path(wf: Workflow) -> float:
    """The longest path of runtimes through the graph (seconds): no schedule is shorter."""
    return max(upward_ranks(wf), default=0.0)


def lower_bound(wf: Workflow, slots: int) -> float:
    """No schedule on ``slots`` slots is shorter than the critical path, nor than the work spread evenly."""
    return max(critical_path(wf), wf.work() / slots)


@dataclass(frozen=True)
class Schedule:
    """A simulated run: its makespan and each task's start time (seconds from the start)."""

    makespan: float
    starts: list[float] = field(repr=False)


def list_schedule(wf: Workflow, slots: int, order: Order = "rank") -> Schedule:
    """Greedy list scheduling of ``wf`` on ``slots`` identical slots with zero overhead: a ready task starts on a
    free slot at the instant one is free, ready tasks by upward rank (``"rank"``, highest first) or in the order
    they became ready (``"fifo"``); ties by position in the graph."""
    if slots < 1:
        raise ValueError("slots must be at least 1")
    n = len(wf.tasks)
    kids = wf.children()
    rank = upward_ranks(wf) if order == "rank" else None
    missing = [len(t.parents) for t in wf.tasks]
    starts = [math.nan] * n
    ready: list[tuple[float, int]] = []  # (key, index): the smallest key goes first
    running: list[tuple[float, int]] = []  # (finish, index)

    def release(i: int, now: float) -> None:
        heapq.heappush(ready, (-rank[i] if rank is not None else now, i))

    for i in range(n):
        if not missing[i]:
            release(i, 0.0)
    now, free, end = 0.0, slots, 0.0
    while ready or running:
        while free and ready:
            _, i = heapq.heappop(ready)
            starts[i] = now
            heapq.heappush(running, (now + wf.tasks[i].runtime, i))
            free -= 1
        now = running[0][0]
        while running and running[0][0] <= now + _EPS:  # every task that finishes now, before any starts
            finish, i = heapq.heappop(running)
            end = max(end, finish)
            free += 1
            for c in kids[i]:
                missing[c] -= 1
                if not missing[c]:
                    release(c, now)
    return Schedule(end, starts)


def scale_to(wf: Workflow, makespan: float, slots: int) -> Workflow:
    """``wf`` with every runtime scaled by one factor, so that its rank-ordered list schedule on ``slots`` slots
    takes about ``makespan`` seconds (runtimes are rounded to 0.1 ms, so not exactly)."""
    raw = list_schedule(wf, slots).makespan
    if raw <= 0:
        raise ValueError(f"{wf.name}: every runtime is zero")
    return wf.scaled(makespan / raw)


# --- graphs from WfCommons' recipes ---

_RECIPES = {  # shape -> WfCommons recipe class, in wfcommons.wfchef.recipes
    "montage": "MontageRecipe", "epigenomics": "EpigenomicsRecipe", "soykb": "SoykbRecipe",
    "cycles": "CyclesRecipe", "genome": "GenomeRecipe", "blast": "BlastRecipe",
}  # fmt: skip


def wfcommons_version() -> str | None:
    """The installed wfcommons version, or None when it cannot be imported."""
    try:
        import wfcommons  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wfcommons")
    except PackageNotFoundError:
        return "unknown"


def from_wfcommons(shape: str, tasks: int, seed: int) -> Workflow:
    """An instance of WfCommons' recipe for ``shape`` with at most ``tasks`` tasks. Its generator draws from
    Python's ``random`` and numpy's global generator: both are seeded with ``seed`` for the call and put back
    as they were after it. ImportError when wfcommons is not installed."""
    import networkx as nx
    import numpy as np
    from wfcommons.wfchef import recipes

    recipe = getattr(recipes, _RECIPES[shape])
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        random.seed(seed)
        np.random.seed(seed)
        graph = recipe.from_num_tasks(tasks).build_workflow()
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    order = list(nx.topological_sort(graph))
    index = {name: i for i, name in enumerate(order)}
    out = []
    for name in order:
        task = graph.nodes[name]["task"]
        parents = tuple(sorted(index[p] for p in graph.predecessors(name)))
        out.append(Task(str(task.name), max(0.0, float(task.runtime or 0.0)), parents))
    source = f"wfcommons {wfcommons_version()} {_RECIPES[shape]}.from_num_tasks({tasks}), seed {seed}"
    return Workflow(shape, tuple(out), source)


# --- graphs from the workflows' published structure ---


class _Builder:
    """Tasks added in topological order, runtimes lognormal around a mean per task type."""

    def __init__(self, rng: random.Random, means: dict[str, tuple[float, float]]) -> None:
        self.rng = rng
        self.means = means  # type -> (mean seconds, sigma of the log)
        self.tasks: list[Task] = []

    def add(self, kind: str, parents: Sequence[int] = ()) -> int:
        mean, sigma = self.means[kind]
        runtime = self.rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)  # a mean of ``mean``
        self.tasks.append(Task(kind, runtime, tuple(sorted(set(parents)))))
        return len(self.tasks) - 1

    def many(self, kind: str, count: int, parents: Sequence[int] = ()) -> list[int]:
        return [self.add(kind, parents) for _ in range(count)]

    def workflow(self, name: str, how: str) -> Workflow:
        return Workflow(name, tuple(self.tasks), f"builtin generator ({how})")


def _montage(tasks: int, b: _Builder) -> str:
    """Montage: mProject per input image (a grid of r x c) -> mDiffFit per overlapping pair (the neighbours
    across, down and diagonally) -> mConcatFit -> mBgModel -> mBackground per image (after its mProject) ->
    mImgtbl -> mAdd -> mShrink -> mJPEG."""
    r = c = 1
    for rows, cols in ((a, a + d) for a in range(1, 40) for d in (0, 1)):
        n = rows * cols
        if 2 * n + rows * (cols - 1) + (rows - 1) * cols + (rows - 1) * (cols - 1) + 6 > tasks:
            break
        r, c = rows, cols
    proj = {(y, x): b.add("mProject") for y in range(r) for x in range(c)}
    pairs = [((y, x), (y + dy, x + dx)) for (y, x) in proj for dy, dx in ((0, 1), (1, 0), (1, 1))
             if (y + dy, x + dx) in proj]  # fmt: skip
    diffs = [b.add("mDiffFit", [proj[p], proj[q]]) for p, q in pairs]
    model = b.add("mBgModel", [b.add("mConcatFit", diffs)])
    backs = [b.add("mBackground", [proj[k], model]) for k in proj]
    b.add("mJPEG", [b.add("mShrink", [b.add("mAdd", [b.add("mImgtbl", backs)])])])
    return f"{r} x {c} images, {len(pairs)} overlaps"


def _epigenomics(tasks: int, b: _Builder) -> str:
    """Epigenomics: per lane, fastqSplit -> chunks, each filterContams -> sol2sanger -> fastq2bfq -> map; the
    lane's maps -> mapMerge; the lanes' merges -> mapMerge -> maqIndex -> pileup."""
    lanes = 4 if tasks >= 120 else 2
    chunks = max(1, ((tasks - 3) // lanes - 2) // 4)
    merges = []
    for _ in range(lanes):
        split = b.add("fastqSplit")
        maps = []
        for _ in range(chunks):
            t = split
            for kind in ("filterContams", "sol2sanger", "fastq2bfq", "map"):
                t = b.add(kind, [t])
            maps.append(t)
        merges.append(b.add("mapMerge", maps))
    b.add("pileup", [b.add("maqIndex", [b.add("mapMerge", merges)])])
    return f"{lanes} lanes x {chunks} chunks"


def _soykb(tasks: int, b: _Builder) -> str:
    """SoyKB: per sample, alignment_to_reference -> sort_sam -> dedup -> add_replace -> realign_target_creator
    -> indel_realign (after add_replace too) -> haplotype_caller per chromosome chunk; per chunk,
    genotype_gvcfs over every sample's call; merge_gcvf over all calls; combine_variants over the genotypes ->
    select_variants_snp -> filtering_snp, and select_variants_indel -> filtering_indel."""
    chunks = max(2, round(math.sqrt(tasks)))
    samples = max(1, (tasks - 6 - chunks) // (6 + chunks))
    calls: list[list[int]] = []
    for _ in range(samples):
        t = b.add("alignment_to_reference")
        for kind in ("sort_sam", "dedup", "add_replace"):
            t = b.add(kind, [t])
        realign = b.add("indel_realign", [t, b.add("realign_target_creator", [t])])
        calls.append(b.many("haplotype_caller", chunks, [realign]))
    genotypes = [b.add("genotype_gvcfs", [s[k] for s in calls]) for k in range(chunks)]
    b.add("merge_gcvf", [c for s in calls for c in s])
    combined = b.add("combine_variants", genotypes)
    b.add("filtering_snp", [b.add("select_variants_snp", [combined])])
    b.add("filtering_indel", [b.add("select_variants_indel", [combined])])
    return f"{samples} samples x {chunks} chunks"


def _cycles(tasks: int, b: _Builder) -> str:
    """Cycles (agroecosystem model, one crop): per parameter set, baseline_cycles -> cycles and
    fertilizer_increase_cycles -> cycles_fertilizer_increase_output_parser (after both); the cycles runs ->
    cycles_output_summary -> cycles_plots; the parsers -> cycles_fertilizer_increase_output_summary."""
    sets = max(1, (tasks - 3) // 4)
    runs, parsers = [], []
    for _ in range(sets):
        base = b.add("baseline_cycles")
        run, more = b.add("cycles", [base]), b.add("fertilizer_increase_cycles", [base])
        runs.append(run)
        parsers.append(b.add("cycles_fertilizer_increase_output_parser", [run, more]))
    b.add("cycles_plots", [b.add("cycles_output_summary", runs)])
    b.add("cycles_fertilizer_increase_output_summary", parsers)
    return f"{sets} parameter sets"


GENOME_POPULATIONS = 7  # 1000Genome's super-populations and the whole: ALL AFR AMR EAS EUR GBR SAS


def _genome(tasks: int, b: _Builder) -> str:
    """1000Genome: per chromosome, individuals per chunk of the input -> individuals_merge; sifting (no
    parents); per population, mutation_overlap and frequency, each after the merge and the sifting. The
    chromosomes do not meet: one connected component each."""
    chroms = 4 if tasks >= 150 else 2
    chunks = max(1, tasks // chroms - 2 - 2 * GENOME_POPULATIONS)
    for _ in range(chroms):
        merge = b.add("individuals_merge", b.many("individuals", chunks))
        sift = b.add("sifting")
        for _ in range(GENOME_POPULATIONS):
            b.add("mutation_overlap", [merge, sift])
            b.add("frequency", [merge, sift])
    return f"{chroms} chromosomes x {chunks} chunks, {GENOME_POPULATIONS} populations"


def _blast(tasks: int, b: _Builder) -> str:
    """BLAST: split_fasta -> blastall per chunk of the query -> cat_blast and cat, each over every blastall."""
    split = b.add("split_fasta")
    hits = b.many("blastall", max(1, tasks - 3), [split])
    b.add("cat_blast", hits)
    b.add("cat", hits)
    return f"{len(hits)} chunks"


# Per task type: (mean runtime in seconds, sigma of its logarithm).
_MEANS: dict[str, dict[str, tuple[float, float]]] = {
    "montage": {"mProject": (1.7, 0.3), "mDiffFit": (0.7, 0.3), "mConcatFit": (143.0, 0.1),
                "mBgModel": (384.0, 0.1), "mBackground": (1.7, 0.3), "mImgtbl": (2.8, 0.1), "mAdd": (282.0, 0.1),
                "mShrink": (66.0, 0.1), "mJPEG": (0.6, 0.1)},
    "epigenomics": {"fastqSplit": (34.0, 0.2), "filterContams": (2.5, 0.3), "sol2sanger": (0.7, 0.3),
                    "fastq2bfq": (1.4, 0.3), "map": (200.0, 0.3), "mapMerge": (11.0, 0.3), "maqIndex": (44.0, 0.1),
                    "pileup": (56.0, 0.1)},
    "soykb": {"alignment_to_reference": (100.0, 0.4), "sort_sam": (40.0, 0.4), "dedup": (105.0, 0.4),
              "add_replace": (95.0, 0.4), "realign_target_creator": (180.0, 0.4), "indel_realign": (160.0, 0.4),
              "haplotype_caller": (300.0, 0.5), "genotype_gvcfs": (530.0, 0.5), "merge_gcvf": (600.0, 0.2),
              "combine_variants": (16.0, 0.2), "select_variants_snp": (20.0, 0.2), "filtering_snp": (7.0, 0.2),
              "select_variants_indel": (21.0, 0.2), "filtering_indel": (34.0, 0.2)},
    "cycles": {"baseline_cycles": (45.0, 0.5), "cycles": (36.0, 0.5), "fertilizer_increase_cycles": (35.0, 0.5),
               "cycles_fertilizer_increase_output_parser": (0.8, 0.4), "cycles_output_summary": (0.1, 0.3),
               "cycles_fertilizer_increase_output_summary": (0.25, 0.3), "cycles_plots": (380.0, 0.2)},
    "genome": {"individuals": (73.0, 0.5), "individuals_merge": (133.0, 0.4), "sifting": (6.0, 0.4),
               "mutation_overlap": (42.0, 0.5), "frequency": (62.0, 0.5)},
    "blast": {"split_fasta": (0.3, 0.1), "blastall": (1200.0, 0.5), "cat_blast": (1.9, 0.1), "cat": (0.01, 0.1)},
}  # fmt: skip

_BUILTIN: dict[str, Callable[[int, _Builder], str]] = {
    "montage": _montage, "epigenomics": _epigenomics, "soykb": _soykb, "cycles": _cycles, "genome": _genome,
    "blast": _blast,
}  # fmt: skip


def builtin(shape: str, tasks: int, seed: int) -> Workflow:
    """The built-in generator's instance of ``shape`` with about ``tasks`` tasks (at most that many, give or take
    the few of its fixed stages), runtimes drawn with ``random.Random(seed)``."""
    b = _Builder(random.Random(f"{shape}-{seed}"), _MEANS[shape])
    how = _BUILTIN[shape](tasks, b)
    return b.workflow(shape, f"{how}; lognormal runtimes per type, seed {seed}")


def generate(shape: str, tasks: int, seed: int, source: str = "auto") -> Workflow:
    """The graph of ``shape`` (one of :data:`SHAPES`) with about ``tasks`` tasks: from WfCommons' recipe
    (``source="wfcommons"``, or ``"auto"`` when it is installed) or the built-in generator (``"builtin"``, or
    ``"auto"`` without wfcommons, or when its recipe fails: a warning says so, and the graph's ``source``)."""
    if shape not in _BUILTIN:
        raise ValueError(f"unknown shape {shape!r}: the shapes are {', '.join(SHAPES)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: {', '.join(SOURCES)}")
    if source == "wfcommons":
        return from_wfcommons(shape, tasks, seed)
    if source == "auto" and wfcommons_version() is not None:
        try:
            return from_wfcommons(shape, tasks, seed)
        except Exception as e:  # a size its recipe cannot grow, say: the graph's source says which it is
            log.warning("%s: WfCommons' recipe failed (%s: %s); the built-in generator instead", shape,
                        type(e).__name__, e)  # fmt: skip
    return builtin(shape, tasks, seed)


def describe(wf: Workflow, slots: int) -> dict[str, Any]:
    """The graph's size and the schedules' figures: tasks, edges, types, sinks, the critical path, the work, the
    lower bound, and the rank and FIFO list schedules' makespans on ``slots`` slots (seconds)."""
    return {
        "tasks": len(wf.tasks), "edges": wf.edges, "types": dict(wf.types()), "sinks": len(wf.sinks()),
        "source": wf.source, "critical_path_s": critical_path(wf), "work_s": wf.work(),
        "lower_bound_s": lower_bound(wf, slots), "list_rank_s": list_schedule(wf, slots, "rank").makespan,
        "list_fifo_s": list_schedule(wf, slots, "fifo").makespan,
    }  # fmt: skip
