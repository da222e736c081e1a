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

from graphdl.ir import Graph
from graphdl.ops.registry import get_op

# Ops whose kernels return a view of input 0 (numpy reshape/transpose): no buffer of their own.
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "ReshapeLike",
                      "Transpose"})
# Ops that may write their result over a dying input of the same type, besides those the
# registry marks elementwise.
INPLACE_OPS = frozenset({"FusedElementwise"})
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


def greedy_by_size(intervals: Sequence[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offsets for each (first, last, bytes) interval and the arena size: largest first,
    each into the smallest gap that fits among time-overlapping buffers (TFLite)."""
    n = len(intervals)
    if n == 0:
        return [], 0
    arr = np.asarray(intervals, dtype=np.int64).reshape(-1, 3)
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
                    j = fits[np.argmin(gaps[fits])]  # the smallest gap that fits, lowest first
                    best = int(prev[j])
                else:
                    best = int(reach[-1])
        offsets[i] = best
        firsts[placed], lasts[placed] = f, l
        starts[placed], ends[placed] = best, best + size
        placed += 1
        arena = max(arena, best + size)
    return offsets, arena


def _aligned(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment if alignment > 1 else nbytes


def plan_memory(graph: Graph, bindings: Mapping[str, int] | None = None,
                alignment: int = DEFAULT_ALIGNMENT, inplace: bool = True) -> MemoryPlan:
    """Plan every computed value of ``graph`` into one arena for these symbolic sizes
    (unbound symbolic dims count as 1)."""
    bindings = dict(bindings or {})
    plans, storages, no_reuse, end = liveness(graph.nodes, graph.all_outputs, bindings,
                                              alignment, inplace)
    intervals = [tuple(st) for st in storages]
    offsets, arena = greedy_by_size(intervals)
    values = []
    for p in plans.values():
        if p.get("storage", -1) >= 0:
            p["offset"] = offsets[p["storage"]]
        values.append(ValuePlan(**p))
    return MemoryPlan(tuple(sorted(bindings.items())), arena, lower_bound(intervals), no_reuse,
                      end, tuple(values), tuple(intervals), alignment)


def liveness(nodes: Sequence, outputs: Sequence, bindings: Mapping[str, int],
             alignment: int = DEFAULT_ALIGNMENT, inplace: bool = True):
    """Storage of every value under the schedule ``nodes``: returns (per-value plans keyed by
    (id(node), index), storages as [first, last, bytes], no-reuse bytes, number of steps)."""
    node_pos = {id(n): i for i, n in enumerate(nodes)}
    steps = [n for n in nodes if not get_op(n.op).source]
    step_of = {id(n): s for s, n in enumerate(steps)}
    end = len(steps)
    last_use: dict[tuple[int, int], int] = {}
    for s, node in enumerate(steps):
        for v in node.inputs:
            last_use[(id(v.node), v.index)] = s  # steps run in order: the final write wins
    for v in outputs:
        last_use[(id(v.node), v.index)] = end  # outputs stay until they are copied out

    plans: dict[tuple[int, int], dict] = {}
    storage_of: dict[tuple[int, int], int] = {}
    storages: list[list[int]] = []  # [first, last, bytes]
    no_reuse = 0
    for node in nodes:
        pos = node_pos[id(node)]
        opdef = get_op(node.op)
        if opdef.source:
            for v in node.outputs:
                plans[(id(node), v.index)] = {"node": pos, "index": v.index, "kind": EXTERNAL}
            continue
        s = step_of[id(node)]
        if node.op in VIEW_OPS and len(node.outputs) == 1:
            src = node.inputs[0]
            key = (id(node), 0)
            src_storage = storage_of.get((id(src.node), src.index))
            last = last_use.get(key, s)
            if src_storage is None:  # a view of an input, parameter or constant
                plans[key] = {"node": pos, "index": 0, "kind": EXTERNAL}
            else:
                st = storages[src_storage]
                st[1] = max(st[1], last)
                storage_of[key] = src_storage
                plans[key] = {"node": pos, "index": 0, "kind": VIEW, "storage": src_storage,
                              "first": s, "last": last}
            continue
        elementwise = opdef.elementwise or node.op in INPLACE_OPS
        for v in node.outputs:
            key = (id(node), v.index)
            nbytes = _aligned(v.type.nbytes(bindings), alignment)
            no_reuse += nbytes
            last = last_use.get(key, s)
            target = None
            if inplace and elementwise and len(node.outputs) == 1:
                target = _dying_input(node, s, plans, storages, bindings, v.type)
            if target is not None:
                st = storages[target]
                st[1] = max(st[1], last)
                storage_of[key] = target
                plans[key] = {"node": pos, "index": v.index, "kind": ARENA, "nbytes": nbytes,
                              "storage": target, "first": s, "last": last, "inplace": True}
                continue
            storage_of[key] = len(storages)
            storages.append([s, last, nbytes])
            plans[key] = {"node": pos, "index": v.index, "kind": ARENA, "nbytes": nbytes,
                          "storage": len(storages) - 1, "first": s, "last": last}
    return plans, storages, no_reuse, end


def schedule_peak(nodes: Sequence, outputs: Sequence, bindings: Mapping[str, int],
                  alignment: int = DEFAULT_ALIGNMENT) -> int:
    """The lower bound of peak memory for the schedule ``nodes`` (cheap: no offsets)."""
    _, storages, _, _ = liveness(nodes, outputs, bindings, alignment)
    return lower_bound(storages)


def _dying_input(node, step, plans, storages, bindings, out_type):
    """The storage of an input that dies at ``step`` and has the output's exact type (views
    are skipped: a transposed view read while its bytes are overwritten would need a copy)."""
    for v in node.inputs:
        p = plans.get((id(v.node), v.index))
        if p is None or p["kind"] != ARENA or v.type.dtype != out_type.dtype:
            continue
        if _dims(v.type, bindings) != _dims(out_type, bindings):
            continue
        if storages[p["storage"]][1] == step:
            return p["storage"]
    return None


def _dims(t, bindings) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else bindings.get(d, 1) for d in t.shape)


def peak_summary(graph: Graph, bindings: Mapping[str, int] | None = None) -> dict:
    """No-reuse, planned and lower-bound bytes of ``graph`` (a plan's summary numbers)."""
    return plan_memory(graph, bindings).as_dict()
