"""Memory planning: liveness over the schedule, in-place reuse, and arena offsets.

Every value a kernel computes gets a byte range in one arena. Values whose lifetimes (first
step, last step, inclusive) overlap never share bytes; the rest may. Offsets come from the
greedy-by-size planner of TensorFlow Lite (largest buffer first, placed in the smallest gap
that fits among the buffers alive at the same time). Two kinds of values share storage on
purpose:

- views: reshape-like ops return a view of their input, so their storage is the input's,
  kept alive until the view's last use;
- in-place results: an elementwise op whose input of the same type dies at that op writes
  its result over that input.

The lower bound is the largest total size of storage alive at any one step; no planner can
beat it for this schedule. A plan is plain data, computed for concrete sizes of the symbolic
dims (the batch) and cached per binding by whoever runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from graphdl.dims import DimExpr, evaluate
from graphdl.ir import Graph
from graphdl.ops.registry import get_op

DEFAULT_ALIGNMENT = 64

EXTERNAL, ARENA, VIEW = "external", "arena", "view"


@dataclass(frozen=True)
class ValuePlan:
    """Where one value lives: ``kind`` is "arena" (bytes ``offset``..``offset+nbytes`` of the
    arena), "view" (a view of another value's storage) or "external" (inputs, parameters and
    constants). ``storage`` numbers the arena buffer; ``inplace`` marks a result written over
    its dying input."""

    node: int
    index: int
    kind: str
    nbytes: int = 0
    offset: int = -1
    storage: int = -1
    first: int = -1
    last: int = -1
    inplace: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    """An arena plan for one graph and one binding of its symbolic dims (plain data)."""

    bindings: tuple[tuple[str, int], ...]
    arena_bytes: int
    lower_bound: int
    no_reuse_bytes: int
    num_steps: int
    values: tuple[ValuePlan, ...]
    storage_intervals: tuple[tuple[int, int, int], ...]  # (first, last, bytes) per storage
    alignment: int
    # per step, the (node position, output index) of the values read there for the last
    # time (graph outputs never): where a runner drops its references (binding-independent)
    free_after: tuple[tuple[tuple[int, int], ...], ...] = ()

    def as_dict(self) -> dict:
        """Summary numbers (for reports)."""
        return {"bindings": dict(self.bindings), "planned_bytes": self.arena_bytes,
                "lower_bound_bytes": self.lower_bound, "no_reuse_bytes": self.no_reuse_bytes,
                "buffers": len(self.storage_intervals),
                "inplace_values": sum(v.inplace for v in self.values),
                "view_values": sum(v.kind == VIEW for v in self.values)}


def lower_bound(intervals: Sequence[tuple[int, int, int]]) -> int:
    """Largest total bytes alive at one step; intervals are (first, last, bytes), inclusive."""
    if not intervals:
        return 0
    arr = np.asarray(intervals, dtype=np.int64).reshape(-1, 3)
    horizon = int(arr[:, 1].max()) + 2
    delta = np.zeros(horizon, np.int64)
    np.add.at(delta, arr[:, 0], arr[:, 2])
    np.add.at(delta, arr[:, 1] + 1, -arr[:, 2])
    return int(np.cumsum(delta).max())


def greedy_by_size(intervals: Sequence[tuple[int, int, int]], order: Sequence[int] | None = None,
                   best_fit: bool = True) -> tuple[list[int], int]:
    """Offsets for each (first, last, bytes) interval and the arena size: largest first
    (or in ``order``), each into the smallest gap that fits among time-overlapping buffers
    (TFLite's greedy by size); ``best_fit=False`` takes the lowest gap that fits."""
    n = len(intervals)
    if n == 0:
        return [], 0
    arr = np.asarray(intervals, dtype=np.int64).reshape(-1, 3)
    if order is None:
        order = sorted(range(n), key=lambda i: (-arr[i, 2], arr[i, 0], i))
    firsts, lasts = np.empty(n, np.int64), np.empty(n, np.int64)
    starts, ends = np.empty(n, np.int64), np.empty(n, np.int64)
    offsets = [0] * n
    placed = 0
    arena = 0
    for i in order:
        f, l, size = int(arr[i, 0]), int(arr[i, 1]), int(arr[i, 2])
        best = 0
        if placed and size:
            hit = np.nonzero((firsts[:placed] <= l) & (lasts[:placed] >= f))[0]
            if hit.size:
                by_offset = hit[np.argsort(starts[hit], kind="stable")]
                s, e = starts[by_offset], ends[by_offset]
                reach = np.maximum.accumulate(e)
                prev = np.concatenate(([0], reach[:-1]))
                gaps = s - prev
                fits = np.nonzero(gaps >= size)[0]
                if fits.size:
                    # the smallest gap that fits (lowest offset on ties), or the lowest gap
                    j = fits[np.argmin(gaps[fits])] if best_fit else fits[0]
                    best = int(prev[j])
                else:
                    best = int(reach[-1])
        offsets[i] = best
        firsts[placed], lasts[placed] = f, l
        starts[placed], ends[placed] = best, best + size
        placed += 1
        arena = max(arena, best + size)
    return offsets, arena


def plan_offsets(intervals: Sequence[tuple[int, int, int]], effort: str = "best",
                 slack: float = 0.01) -> tuple[list[int], int]:
    """Arena offsets: TFLite's greedy by size, then (``effort="best"``, when that misses the
    lower bound by more than ``slack``) the same greedy over other orders (equal sizes by
    latest end, by lifetime; size x lifetime), best- and first-fit; the smallest arena wins."""
    offsets, arena = greedy_by_size(intervals)
    if effort != "best" or not intervals:
        return offsets, arena
    bound = lower_bound(intervals) * (1 + slack)
    if arena <= bound:
        return offsets, arena
    arr = np.asarray(intervals, dtype=np.int64).reshape(-1, 3)
    life = arr[:, 1] - arr[:, 0] + 1
    idx = range(len(arr))
    orders = [sorted(idx, key=lambda i: (-arr[i, 2], -arr[i, 1], i)),
              sorted(idx, key=lambda i: (-arr[i, 2], -life[i], i)),
              sorted(idx, key=lambda i: (-arr[i, 2] * life[i], i)),
              None]
    for order in orders:
        for fit in (True, False):
            if order is None and fit:
                continue  # TFLite's own try, above
            cand, size = greedy_by_size(intervals, order, fit)
            if size < arena:
                offsets, arena = cand, size
                if arena <= bound:
                    return offsets, arena
    return offsets, arena


def _aligned(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment if alignment > 1 else nbytes


def plan_memory(graph: Graph, bindings: Mapping[str, int] | None = None,
                alignment: int = DEFAULT_ALIGNMENT, inplace: bool = True,
                effort: str = "best", internal: bool = False,
                facts_cache: dict | None = None) -> MemoryPlan:
    """Plan every computed value of ``graph`` into one arena for these symbolic sizes
    (unbound symbolic dims count as 1). ``effort="fast"`` runs the greedy planner once.
    ``internal=True`` leaves the new values of state (the updates: parameters, optimizer
    moments) out of the arena, as frameworks that update weights in place do: MXNet's
    "internal memory" measure. ``facts_cache`` (a dict the caller keeps for one set of
    bindings and alignment) reuses the per-node facts of nodes planned before: a pass
    pipeline plans many graphs that share most of their (immutable) nodes."""
    bindings = dict(bindings or {})
    exclude = {(id(v.node), v.index) for _, v in graph.updates} if internal else None
    facts = node_facts(graph.nodes, bindings, alignment, facts_cache)
    plans, storages, no_reuse, end = liveness(graph.nodes, graph.all_outputs, bindings,
                                              alignment, inplace, facts=facts, exclude=exclude)
    intervals = [tuple(st) for st in storages]
    offsets, arena = plan_offsets(intervals, effort)
    values = tuple(ValuePlan(pos, i, kind, nbytes, offsets[sid] if sid >= 0 else -1, sid,
                             first, last, inp)
                   for pos, i, kind, nbytes, sid, first, last, inp in plans.values())
    return MemoryPlan(tuple(sorted(bindings.items())), arena, lower_bound(intervals), no_reuse,
                      end, values, tuple(intervals), alignment,
                      free_points(graph.nodes, graph.all_outputs, facts))


def free_points(nodes: Sequence, outputs: Sequence, facts: dict[int, tuple] | None = None
                ) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per step of the schedule ``nodes`` (source nodes take no step), the (node position,
    output index) of every value read there for the last time; ``outputs`` are never freed."""
    is_source = (lambda n: facts[id(n)][0] == 0) if facts is not None \
        else (lambda n: get_op(n.op).source)
    position = {id(n): pos for pos, n in enumerate(nodes)}
    last_use, _, end = _last_uses(nodes, outputs, is_source)
    frees: list[list[tuple[int, int]]] = [[] for _ in range(end)]
    for (nid, index), step in last_use.items():
        if step < end and nid in position:
            frees[step].append((position[nid], index))
    return tuple(tuple(sorted(f)) for f in frees)


def _last_uses(nodes: Sequence, outputs: Sequence, is_source):
    """(last step reading each value keyed by (id(node), index), the step of each computing
    node by id, the number of steps); outputs count as read at the end."""
    last_use: dict[tuple[int, int], int] = {}
    step_of: dict[int, int] = {}
    step = 0
    for node in nodes:
        if is_source(node):
            continue
        step_of[id(node)] = step
        for v in node.inputs:
            last_use[(id(v.node), v.index)] = step  # steps run in order: the final write wins
        step += 1
    for v in outputs:
        last_use[(id(v.node), v.index)] = step
    return last_use, step_of, step


def node_facts(nodes: Sequence, bindings: Mapping[str, int],
               alignment: int = DEFAULT_ALIGNMENT, cache: dict | None = None
               ) -> dict[int, tuple]:
    """Per node id: (0 source / 1 view / 2 computed, may write in place, per output
    (bytes, (dtype, concrete shape))). ``cache`` maps id(node) -> (node, facts) for these
    bindings; it holds the node, so the id is not reused while the entry lives."""
    facts = {}
    for n in nodes:
        hit = cache.get(id(n)) if cache is not None else None
        if hit is not None and hit[0] is n:
            facts[id(n)] = hit[1]
            continue
        opdef = get_op(n.op)
        # what the op declares: views own no buffer; in-place ops may overwrite a dying input
        kind = 0 if opdef.source else 1 if opdef.view else 2  # a view op's outputs: all views
        inplace = bool(opdef.inplace) and len(n.types) == 1
        # a value whose size the bindings do not determine (a dim unknown until run time)
        # gets -1 bytes: it stays out of the arena and its kernel allocates it
        outs = tuple((_aligned(t.nbytes(bindings), alignment) if _planned(t, bindings) else -1,
                      (t.dtype, _dims(t, bindings))) for t in n.types)
        facts[id(n)] = (kind, inplace, outs)
        if cache is not None:
            cache[id(n)] = (n, facts[id(n)])
    return facts


def liveness(nodes: Sequence, outputs: Sequence, bindings: Mapping[str, int],
             alignment: int = DEFAULT_ALIGNMENT, inplace: bool = True,
             facts: dict[int, tuple] | None = None, exclude: set | None = None):
    """Storage of every value under the schedule ``nodes``. Returns per-value records keyed
    by (id(node), index) as (node position, index, kind, bytes, storage, first step, last
    step, in place), storages as [first, last, bytes], the no-reuse bytes, and the number of
    steps. Intervals are inclusive; outputs live to the end (they are copied out then).
    Values keyed in ``exclude`` are left out (treated as external)."""
    facts = facts if facts is not None else node_facts(nodes, bindings, alignment)
    last_use, step_of, end = _last_uses(nodes, outputs, lambda n: facts[id(n)][0] == 0)

    plans: dict[tuple[int, int], tuple] = {}
    storage_of: dict[tuple[int, int], int] = {}
    storages: list[list[int]] = []  # [first, last, bytes]
    no_reuse = 0
    for pos, node in enumerate(nodes):
        nid = id(node)
        kind, can_inplace, outs = facts[nid]
        if kind == 0:
            for i in range(len(outs)):
                plans[(nid, i)] = (pos, i, EXTERNAL, 0, -1, -1, -1, False)
            continue
        s = step_of[nid]
        if kind == 1:  # every output views input 0's storage (Split: one part each)
            src = node.inputs[0]
            sid = storage_of.get((id(src.node), src.index))
            for i in range(len(outs)):
                key = (nid, i)
                last = last_use.get(key, s)
                if sid is None:  # a view of an input, parameter or constant
                    plans[key] = (pos, i, EXTERNAL, 0, -1, -1, -1, False)
                    continue
                st = storages[sid]
                if last > st[1]:
                    st[1] = last
                storage_of[key] = sid
                plans[key] = (pos, i, VIEW, 0, sid, s, last, False)
            continue
        for i, (nbytes, type_key) in enumerate(outs):
            key = (nid, i)
            if (exclude and key in exclude) or nbytes < 0:
                plans[key] = (pos, i, EXTERNAL, 0, -1, -1, -1, False)
                continue
            no_reuse += nbytes
            last = last_use.get(key, s)
            sid = _dying_input(node, s, plans, storages, facts, type_key) \
                if inplace and can_inplace else None
            if sid is not None:  # write over an input that dies here
                st = storages[sid]
                if last > st[1]:
                    st[1] = last
                storage_of[key] = sid
                plans[key] = (pos, i, ARENA, nbytes, sid, s, last, True)
                continue
            storage_of[key] = len(storages)
            storages.append([s, last, nbytes])
            plans[key] = (pos, i, ARENA, nbytes, len(storages) - 1, s, last, False)
    return plans, storages, no_reuse, end


def schedule_peak(nodes: Sequence, outputs: Sequence, bindings: Mapping[str, int],
                  alignment: int = DEFAULT_ALIGNMENT, facts: dict | None = None) -> int:
    """The lower bound of peak memory for the schedule ``nodes`` (cheap: no offsets)."""
    _, storages, _, _ = liveness(nodes, outputs, bindings, alignment, facts=facts)
    return lower_bound(storages)


def _dying_input(node, step, plans, storages, facts, type_key):
    """The storage of an input that dies at ``step`` and has the output's exact type (views
    are skipped: a transposed view read while its bytes are overwritten would need a copy)."""
    for v in node.inputs:
        p = plans.get((id(v.node), v.index))
        if p is None or p[2] != ARENA or storages[p[4]][1] != step:
            continue
        if facts[id(v.node)][2][v.index][1] == type_key:
            return p[4]
    return None


def _planned(t, bindings) -> bool:
    """Whether the type's size is known from the bindings: no dim is unknown until run time
    (a ``?`` symbol, graphdl.ops.dynamic) unless a binding gives it."""
    for d in t.shape:
        if isinstance(d, str):
            names = d.symbols if isinstance(d, DimExpr) else {d}
            if any(s.startswith("?") and s not in bindings for s in names):
                return False
    return True


def _dims(t, bindings) -> tuple[int, ...]:
    shape = t.shape
    if all(type(d) is int for d in shape):  # noqa: E721  (the common, static case)
        return shape
    return tuple(d if isinstance(d, int) else evaluate(d, bindings, default=1) for d in shape)


def peak_summary(graph: Graph, bindings: Mapping[str, int] | None = None) -> dict:
    """No-reuse, planned and lower-bound bytes of ``graph`` (a plan's summary numbers)."""
    return plan_memory(graph, bindings).as_dict()
