"""The pool of workers with free credit: how dispatch finds the least loaded eligible worker
without looking at every worker for every job.

Workers are filed by their tag set, each set a heap ordered by :func:`load_key` (held/slots, then
jobs held, then jobs done). A worker is filed again whenever its load or credit changes
(:meth:`Pool.update`: a lease, a result, a join, a window that opens); its older filings go stale
and are dropped when they come to the top. A queue needing tags T looks at the top of each tag
set that covers T: a handful of heaps, whatever the number of workers. Among the best few of
equal load, one that already holds the job's content is preferred (at most ``CACHE_LOOK``
filings are looked at), as :func:`~titan_zmq.broker.scheduler.dispatch.least_loaded` prefers it.
"""

from __future__ import annotations

import heapq
import itertools

from titan_zmq.broker.scheduler.state import Part, State, WorkerInfo

Filing = tuple[float, int, int, int, bytes]  # (*load_key, filing number, ident)
CACHE_LOOK = 32  # filings of equal load looked at for one that holds a job's content
COMPACT_OVER = 64  # a heap this much longer than twice its workers is rebuilt from its live filings


def load_key(w: WorkerInfo) -> tuple[float, int, int]:
    """How busy ``w`` is: the share of its slots in use, the jobs it holds, the jobs it has done."""
    held = len(w.running)
    return held / w.slots, held, w.done


class Pool(Part):
    """Free workers by tag set, least loaded first."""

    def __init__(self, st: State) -> None:
        super().__init__(st)
        self.heaps: dict[frozenset[str], list[Filing]] = {}
        self.names: dict[str, bytes] = {}  # worker name -> ident (for pinned queues)
        self._numbers = itertools.count(1)
        self._cover: dict[frozenset[str], list[list[Filing]]] = {}  # tags -> heaps of the tag sets covering them

    def joined(self, w: WorkerInfo) -> None:
        """``w`` joined or announced itself again (its name may be new): file it."""
        self.names[w.name] = w.ident
        self.update(w)

    def update(self, w: WorkerInfo) -> None:
        """``w``'s load or credit changed: file it again (its older filings go stale). On every lease
        and every result: ``WorkerInfo.free`` is spelled out here."""
        w.filed = n = next(self._numbers)
        held = len(w.running)
        if w.draining or w.slots + w.window <= held:  # no credit: filed nowhere until it has some
            return
        h = self.heaps.get(w.tags)
        if h is None:
            h = self.heaps[w.tags] = []
            self._cover.clear()  # a new tag set: coverings are computed again
        heapq.heappush(h, (held / w.slots, held, w.done, n, w.ident))
        if not n & 63 and len(h) > 2 * len(self.st.workers) + COMPACT_OVER:
            self._compact(h)

    def _compact(self, h: list[Filing]) -> None:
        workers = self.st.workers
        live = [f for f in h if (w := workers.get(f[4])) is not None and w.filed == f[3] and w.free > 0]
        heapq.heapify(live)
        h[:] = live

    def covering(self, tags: frozenset[str]) -> list[list[Filing]]:
        """The heaps of the worker tag sets that include ``tags``."""
        got = self._cover.get(tags)
        if got is None:
            got = self._cover[tags] = [h for ws_tags, h in self.heaps.items() if tags <= ws_tags]
        return got

    def best(self, tags: frozenset[str], pin: str | None, blob: str | None = None) -> WorkerInfo | None:
        """The least loaded worker with credit that has ``tags`` (and is named ``pin``, when given);
        among equals, one that holds content ``blob``. None when no such worker is free."""
        if pin is not None:
            w = self.st.workers.get(self.names.get(pin, b""))
            return w if w is not None and w.name == pin and w.free > 0 and tags <= w.tags else None
        best: WorkerInfo | None = None
        best_f: Filing | None = None
        workers = self.st.workers
        for h in self.covering(tags):
            while h:  # the heap's top that still has credit (WorkerInfo.free spelled out: once per lease)
                f = h[0]
                w = workers.get(f[4])
                if w is not None and w.filed == f[3] and not w.draining and w.slots + w.window > len(w.running):
                    if best_f is None or f < best_f:
                        best, best_f = w, f
                    break
                heapq.heappop(h)
        if best is None or best_f is None or blob is None or blob in best.cached:
            return best
        return self._holding(tags, blob, best, best_f[0])

    def _holding(self, tags: frozenset[str], blob: str, best: WorkerInfo, share: float) -> WorkerInfo:
        """Among the next few free workers as loaded as ``best`` (``share`` of slots in use), one that
        holds ``blob``; else ``best``. Walks each heap's tree from its root through filings of that
        share only (they sit at its top), at most ``CACHE_LOOK`` filings per heap."""
        workers = self.st.workers
        for h in self.covering(tags):
            todo = [0] if h else []
            looked = 0
            while todo and looked < CACHE_LOOK:
                i = todo.pop(0)
                f = h[i]
                if f[0] > share:
                    continue
                looked += 1
                w = workers.get(f[4])
                if w is not None and w.filed == f[3] and w.free > 0 and blob in w.cached:
                    return w
                todo += [c for c in (2 * i + 1, 2 * i + 2) if c < len(h)]
        return best
