"""Objects: the broker's directory of the data plane, and the rules of their lifetime.

The broker never holds an object's bytes (except published artifacts it keeps in its data
directory); it records what each object is (size, kind), who holds a copy (worker names, and
``@broker``), who refers to it (owners) and which job made it (lineage). Owners are tokens with
counts: ``dag:<id>`` (freed when the DAG ends), ``job:<id>`` (a result outside any DAG: freed
when the job is forgotten or its TTL passes), ``client`` (``client.put``, until released) and
``ttl`` (a DAG's final results, kept ``object_ttl`` seconds after the DAG ended so its client can
read them). An object with no owner left is freed on every holder.

Placement by locality is a soft pin: a job whose inputs held somewhere weigh at least
``locality_min`` bytes is pinned to the worker holding most of them, for at most
``locality_wait`` seconds (as affinity does). When the holder is busy and another eligible worker
has a free slot, the job waits for the holder only if that looks quicker than moving the bytes
(its backlog times its jobs' average runtime, or the age of its longest-running job, against the
bytes at ``MOVE_RATE``), so a free worker is not left idle behind a busy one.

An object whose every holder is lost is made again by running its producer again (lineage, as
Ray does): the job that needs it waits for its producer, which may itself need lost inputs made
again, at most ``MAX_REMAKES`` times per object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from titan_zmq.aof.records import ObjectAdded, ObjectReleased, encode
from titan_zmq.broker.scheduler.state import Entry, Part, WorkerInfo
from titan_zmq.errors import UnknownObject
from titan_zmq.job import FINAL_STATES, JobState
from titan_zmq.objects.codec import REF_KEY, refs_in

log = logging.getLogger(__name__)

BROKER = "@broker"  # the holder name of the broker's own store (artifacts kept with --data-dir)
MAX_REMAKES = 3
# Bytes/s at which moving inputs is weighed against waiting for their holder: a sixth of the 1.4 GB/s
# measured worker to worker, since moving costs both workers' CPU and the network (and the relay, when
# used, is slower); at 500 MB/s a MapReduce moved one partition of 8 it did not need to.
MOVE_RATE = 250e6


@dataclass
class ObjectInfo:
    id: str
    size: int
    kind: str = "value"
    name: str | None = None
    producer: str | None = None  # the job whose result (or put) it is: run again to remake it
    owners: dict[str, int] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)
    created: float = 0.0
    ttl_at: float | None = None  # wall time it is freed at, whoever owns it
    artifact: bool = False  # published (ctx.publish, client.upload): kept with the broker too
    remakes: int = 0

    def record(self, endpoints: dict[str, str]) -> dict[str, Any]:
        return {
            "id": self.id, "size": self.size, "kind": self.kind, "name": self.name, "producer": self.producer,
            "owners": dict(self.owners), "holders": sorted(self.holders), "created": self.created,
            "ttl_at": self.ttl_at, "artifact": self.artifact,
            "sources": [[h, endpoints.get(h, "")] for h in sorted(self.holders)],
        }  # fmt: skip


def top_refs(values: Any) -> list[dict[str, Any]]:
    """The references among ``values`` (a list or a mapping's values), at the top level only: those
    a job receives as values; nested ones stay references for the job to read itself."""
    items = values.values() if isinstance(values, dict) else values or ()
    return [v for v in items if type(v) is dict and REF_KEY in v]


def receives_objects(job: Any) -> bool:
    """Whether a job receives objects through its own spec: references at the top level of its
    arguments, or input files (its parents' results are looked at when they come)."""
    return bool(job.files) or bool((job.args or job.kwargs) and (top_refs(job.args) or top_refs(job.kwargs)))


class Objects(Part):
    """The object directory: holders, owners, lineage, placement by locality."""

    # ---- adding and freeing --------------------------------------------------------------------

    def add(
        self, oid: str, size: int, *, kind: str = "value", name: str | None = None, holder: str | None = None,
        producer: str | None = None, owner: str | None = None, ttl: float | None = None, artifact: bool = False,
        replay: bool = False,
    ) -> ObjectInfo:  # fmt: skip
        """Record an object (or another owner of one known), held by ``holder``."""
        st = self.st
        info = st.objects.get(oid)
        now = st.wall()
        ttl_at = (now + ttl) if ttl and not replay else (ttl if replay else None)
        if info is None:
            info = st.objects[oid] = ObjectInfo(oid, size, kind, name, producer, created=now, artifact=artifact)
        else:
            info.artifact = info.artifact or artifact
            info.name = info.name or name
            if producer is not None:
                info.producer = producer
        if owner is not None:
            info.owners[owner] = info.owners.get(owner, 0) + 1
            st.owned.setdefault(owner, set()).add(oid)
        if ttl_at is not None:
            info.ttl_at = ttl_at if info.ttl_at is None else max(info.ttl_at, ttl_at)
        if holder is not None:
            info.holders.add(holder)
        if not replay:
            st.journal(encode(ObjectAdded(oid, size, kind, name, producer, owner, info.ttl_at, artifact)))
            if artifact and st.keeps_artifacts and BROKER not in info.holders:
                st.fx.keep.append(oid)
        return info

    def release(self, oid: str, owner: str, replay: bool = False, journal: bool = True) -> bool:
        """``owner`` no longer refers to ``oid`` (``*``: nobody does); freed once no owner is left.
        ``journal`` False: a release that replaying its cause repeats (forgetting a job)."""
        st = self.st
        info = st.objects.get(oid)
        if info is None:
            return False
        if owner == "*":
            gone = list(info.owners)
            info.owners.clear()
        elif owner in info.owners:
            left = info.owners[owner] - 1
            if left > 0:
                info.owners[owner] = left
                gone = []
            else:
                del info.owners[owner]
                gone = [owner]
        else:
            return False
        for o in gone:  # owner tokens that refer to it no more
            owned = st.owned.get(o)
            if owned is not None:
                owned.discard(oid)
                if not owned:
                    del st.owned[o]
        if journal and not replay:
            st.journal(encode(ObjectReleased(oid, owner)))
        if not info.owners:
            self._free(info)
        return True

    def _free(self, info: ObjectInfo) -> None:
        st = self.st
        del st.objects[info.id]
        by_name = {w.name: w.ident for w in st.workers.values()}
        for h in info.holders:
            if h == BROKER:
                st.fx.unkeep.append(info.id)
            elif h in by_name:
                st.fx.free.setdefault(by_name[h], []).append(info.id)

    def release_owner(self, owner: str) -> None:
        """Every reference of ``owner`` goes (a job forgotten: replaying its Forgotten does the same)."""
        for oid in list(self.st.owned.get(owner, ())):
            info = self.st.objects.get(oid)
            for _ in range(info.owners.get(owner, 0) if info is not None else 0):
                self.release(oid, owner, journal=False)

    def capture(self) -> list[list[Any]]:
        """Records that rebuild the directory (a snapshot): one ObjectAdded per reference."""
        out = []
        for i in self.st.objects.values():
            refs: list[str | None] = [o for o, n in i.owners.items() for _ in range(n)] or [None]
            for o in refs:
                out.append(encode(ObjectAdded(i.id, i.size, i.kind, i.name, i.producer, o, i.ttl_at, i.artifact)))
        return out

    def expire(self) -> None:
        """Free the objects whose TTL has passed (the broker calls this once a second)."""
        st = self.st
        now = st.wall()
        for info in [i for i in st.objects.values() if i.ttl_at is not None and i.ttl_at <= now]:
            self.release(info.id, "*")

    # ---- jobs --------------------------------------------------------------------------------

    def produced(self, entry: Entry, w: WorkerInfo, result: Any) -> None:
        """A job succeeded with a result held on ``w``: record it, owned by its DAG (or the job)."""
        job = entry.job
        owner = f"dag:{job.dag}" if job.dag else f"job:{job.id}"
        ttl = None if job.dag else self.st.object_ttl
        for ref in refs_in(result, limit=1000):  # the result itself, or the files a job published
            self.add(ref.id, ref.size, kind=ref.kind, name=ref.name, holder=w.name, producer=job.id, owner=owner,
                     ttl=ttl)  # fmt: skip

    def job_ended(self, entry: Entry) -> None:
        """A job ended: if it was the last unfinished job of a DAG owning objects, the DAG ended."""
        dag = entry.job.dag
        if not dag or f"dag:{dag}" not in self.st.owned:
            return
        st = self.st
        left = st.dag_left.get(dag)
        if left is None:  # counted once, then counted down (admission and reruns drop the count)
            members = st.dags.get(dag) or {}
            left = sum(1 for j in members if j in st.jobs and st.jobs[j].state not in FINAL_STATES)
        else:
            left -= 1
        if left > 0:
            st.dag_left[dag] = left
            return
        st.dag_left.pop(dag, None)
        self.dag_ended(dag)

    def dag_ended(self, dag: str) -> None:
        """Free what a DAG made, except its final results (jobs with no children), which are kept
        ``object_ttl`` seconds for whoever reads them."""
        st = self.st
        owner = f"dag:{dag}"
        members = st.dags.get(dag) or {}
        parents = {p for j in members if j in st.jobs for p in st.jobs[j].job.depends_on}
        for oid in list(st.owned.get(owner, ())):
            info = st.objects.get(oid)
            if info is None:
                continue
            final = info.producer in members and info.producer not in parents  # no job of the DAG after it
            if final and st.object_ttl:
                self.add(oid, info.size, owner="ttl", ttl=st.object_ttl)
            for _ in range(info.owners.get(owner, 0)):  # (a ctx.put the job also returned counts twice)
                self.release(oid, owner)

    def refs_of(self, entry: Entry) -> list[dict[str, Any]]:
        """The references a job receives: its top-level arguments, its parents' results, and the
        output files of its parents it names as input files."""
        job = entry.job
        out = top_refs(job.args) + top_refs(job.kwargs) if entry.refs else []
        if entry.inputs:
            out += top_refs(entry.inputs)
            if job.files:
                out += [r for r in self.input_files(entry).values() if r is not None]
        return out

    @staticmethod
    def input_files(entry: Entry) -> dict[str, dict[str, Any] | None]:
        """Each input file of a job: the reference its parent published it under (None: it did not)."""
        out: dict[str, dict[str, Any] | None] = {}
        inputs = entry.inputs or {}
        for name, (parent, path) in entry.job.files.items():
            result = inputs.get(parent)
            outputs = result.get("outputs") if isinstance(result, dict) else None
            ref = outputs.get(path) if isinstance(outputs, dict) else None
            out[name] = ref if type(ref) is dict and REF_KEY in ref else None
        return out

    def check_known(self, refs: list[dict[str, Any]]) -> None:
        """UnknownObject naming the first reference the broker does not know."""
        for r in refs:
            oid = r[REF_KEY]
            if oid not in self.st.objects:
                raise UnknownObject(
                    f"unknown object {oid}: it was never stored in this grid, or it was freed "
                    "(its DAG ended, its TTL passed, or it was released)"
                )

    def locations(self, entry: Entry) -> dict[str, list[Any]] | None:
        """For an ASSIGN: every object the job receives, ``{id: [size, [[holder, endpoint], ...]]}``."""
        refs = self.refs_of(entry)
        if not refs:
            return None
        st = self.st
        endpoints = st.endpoints
        out: dict[str, list[Any]] = {}
        for r in refs:
            info = st.objects.get(r[REF_KEY])
            if info is not None:
                out[info.id] = [info.size, [[h, endpoints.get(h, "")] for h in sorted(info.holders)]]
        return out

    # ---- placement -----------------------------------------------------------------------------

    def place(self, entry: Entry) -> str | None:
        """The worker holding most of the job's input bytes (at least ``locality_min``), or None."""
        st = self.st
        refs = self.refs_of(entry)
        if not refs:
            return None
        weight: dict[str, int] = {}
        for r in refs:
            info = st.objects.get(r[REF_KEY])
            if info is not None:
                for h in info.holders:
                    weight[h] = weight.get(h, 0) + info.size
        workers = {w.name: w for w in st.workers.values() if not w.draining}
        best = max((h for h in weight if h in workers), key=lambda h: (weight[h], h), default=None)
        if best is None or weight[best] < st.locality_min:
            return None
        w = workers[best]
        backlog = len(w.running) - w.slots + 1  # jobs to end there before this one would start
        if backlog > 0:
            requires = entry.job.level(entry.level)[0]
            idle_elsewhere = any(len(x.running) < x.slots and requires <= x.tags for x in workers.values()
                                 if x is not w)  # fmt: skip
            # Another worker could start it now: wait for the holder only if that is quicker than moving the bytes.
            if idle_elsewhere and self._wait_estimate(w, backlog) > weight[best] / MOVE_RATE:
                return None
        return best

    def _wait_estimate(self, w: WorkerInfo, backlog: int) -> float:
        """Seconds until ``w`` could start a job behind ``backlog`` others: each as long as its jobs
        take on average, or as the one running longest has run already, whichever is more."""
        st = self.st
        now = st.wall()
        age = max((now - (st.jobs[j].started_at or now) for j in w.running if j in st.jobs), default=0.0)
        return backlog * max(w.ewma or 0.0, age) / w.slots

    def missing(self, entry: Entry) -> list[ObjectInfo]:
        """The job's inputs that no holder has any more (their holders were lost)."""
        st = self.st
        out = []
        for r in self.refs_of(entry):
            info = st.objects.get(r[REF_KEY])
            if info is not None and not info.holders:
                out.append(info)
        return out

    def remake(self, entry: Entry, lost: list[ObjectInfo]) -> bool:
        """Run again the producers of ``lost`` inputs, and make ``entry`` wait for them; False (and
        the job failed) when one cannot be made again."""
        st = self.st
        for info in lost:
            producer = st.jobs.get(info.producer or "")
            if producer is None or info.remakes >= MAX_REMAKES or producer.job.id == entry.job.id:
                why = ("no job to make it again" if producer is None else f"made again {info.remakes} times already")
                entry.error = f"input object {info.id} was lost with every holder, and there is {why}"
                entry.error_type = "ObjectLost"
                st.outcomes.finish(entry, JobState.FAILED)
                return False
        for info in lost:
            producer = st.jobs[info.producer or ""]
            info.remakes += 1
            entry.waiting_on += 1
            log.info("object %s lost with its holders: %s runs again to remake it", info.id[:12], producer.job.id)
            if producer.state in FINAL_STATES:
                st.rerun.again(producer, then=entry.job.id)
            else:  # already being made again (for another job)
                producer.children = (producer.children or []) + [entry.job.id]
        entry.state = JobState.PENDING
        st.touch(entry)
        return True

    # ---- workers -------------------------------------------------------------------------------

    def worker_joined(self, w: WorkerInfo, endpoint: str, held: list[Any]) -> None:
        """A worker (re)joined with these objects: it holds those the broker knows; the rest are freed there."""
        st = self.st
        st.endpoints[w.name] = endpoint
        unknown = []
        for item in held:
            oid = str(item[0]) if isinstance(item, (list, tuple)) and item else None
            info = st.objects.get(oid or "")
            if info is None:
                if oid:
                    unknown.append(oid)
                continue
            info.holders.add(w.name)
        if unknown:
            st.fx.free.setdefault(w.ident, []).extend(unknown)

    def worker_lost(self, w: WorkerInfo) -> None:
        """A worker is gone: it holds nothing any more (its objects may be made again on demand)."""
        st = self.st
        st.endpoints.pop(w.name, None)
        for info in st.objects.values():
            info.holders.discard(w.name)

    def copied(self, w: WorkerInfo, fetched: dict[str, Any]) -> None:
        """A job on ``w`` fetched these objects: ``w`` holds a copy of each now (evictable there; a
        fetch from a copy gone is tried at the next holder)."""
        for oid in fetched:
            info = self.st.objects.get(oid)
            if info is not None:
                info.holders.add(w.name)

    def not_held(self, oid: Any, names: Any) -> None:
        """The workers ``names`` hold ``oid`` no more (they evicted it, or could not serve it); a worker
        that has it after all says so when it next announces its store."""
        info = self.st.objects.get(oid) if isinstance(oid, str) else None
        if info is not None and isinstance(names, (list, tuple, set)):
            info.holders.difference_update(n for n in names if isinstance(n, str))

    def dropped(self, w: WorkerInfo, ids: list[str]) -> None:
        """``w`` evicted its copies of these objects."""
        for oid in ids:
            self.not_held(oid, (w.name,))

    def kept(self, oid: str) -> None:
        """The broker's keeper holds a copy of an artifact now."""
        info = self.st.objects.get(oid)
        if info is not None:
            info.holders.add(BROKER)

    def lookup(self, oid: str) -> ObjectInfo:
        info = self.st.objects.get(oid)
        if info is None:
            self.check_known([{REF_KEY: oid}])
        assert info is not None
        return info

    def listing(self, holder: str | None = None) -> list[dict[str, Any]]:
        eps = self.st.endpoints
        return [i.record(eps) for i in self.st.objects.values() if holder is None or holder in i.holders]
