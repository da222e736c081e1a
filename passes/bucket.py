"""Gradient bucketing: many small gradient all-reduces become a few flat ones (Horovod's tensor
fusion, DDP's buckets).

The data-parallel train step marks each gradient's ``AllReduce`` with ``bucket=True``. This
pass takes those nodes in the order their gradients become ready in the schedule (the
backward order), fills buckets of at most ``bucket_bytes`` (one gradient larger than that is a
bucket of its own), and replaces each bucket of two or more by
``Reshape(-1) ... -> Concat -> AllReduce -> Split -> Reshape``. Every element is reduced
exactly as before, so results do not change. A bucket can start as soon as its last gradient
is ready. Buckets only group nodes with the same reduction, dtype and communicator.

:func:`overlap_collectives` (run after the schedule) then turns every ``AllReduce`` into an
``AllReduceStart`` placed as early as its input allows (a bucket's packing moves up to right
after its last gradient) and an ``AllReduceDone`` placed right before the first node that
reads the result (the optimizer), so the rest of the backward pass runs while the bucket is
reduced (XLA's all-reduce-start/-done). Values are unchanged.

The bucketing pass counts, in its report row, the collectives and the bytes all-reduced per step before
and after (``collectives_before``/``collectives_after``/``bytes_per_step``).
"""
from __future__ import annotations

from typing import Any

from graphdl.ir import Graph, Node, rebuild
from graphdl.ops.indexing import concat, split
from graphdl.ops.registry import apply, get_op
from graphdl.ops.shape import reshape

DEFAULT_BUCKET_BYTES = 25 * 2 ** 20  # DDP's default bucket_cap_mb


def collective_stats(graph: Graph, bindings: dict[str, int] | None = None) -> dict[str, int]:
    """How many collective nodes a run of ``graph`` executes and how many bytes they move."""
    # AllReduceDone (a view) only waits: the bytes move in its AllReduceStart
    nodes = [n for n in graph.nodes if get_op(n.op).collective and not get_op(n.op).view]
    return {"collectives": len(nodes),
            "bytes": sum(n.inputs[0].type.nbytes(bindings) for n in nodes)}


def bucket_gradients(graph: Graph, bucket_bytes: int | None = DEFAULT_BUCKET_BYTES,
                     stats: dict[str, Any] | None = None) -> Graph:
    """Pack the gradient all-reduces (``bucket=True``) into flat buckets of at most
    ``bucket_bytes``; returns ``graph`` itself when nothing is packed (``bucket_bytes=None``:
    bucketing is off, and only the collectives are counted into ``stats``)."""
    if bucket_bytes is not None and bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    before = collective_stats(graph)
    if bucket_bytes is None:
        _record(stats, before, before)
        return graph
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    members = [n for n in graph.nodes if get_op(n.op).collective and n.attrs.get("bucket")
               and n.inputs[0].type.is_static]
    # ready order: when the gradient feeding the all-reduce is computed
    members.sort(key=lambda n: position[id(n.inputs[0].node)])
    groups: dict[tuple, list[list[Node]]] = {}
    for node in members:
        key = (node.attrs["reduction"], node.inputs[0].dtype,
               id(node.attrs.get("comm")))
        buckets = groups.setdefault(key, [[]])
        size = sum(m.inputs[0].type.nbytes() for m in buckets[-1])
        if buckets[-1] and size + node.inputs[0].type.nbytes() > bucket_bytes:
            buckets.append([])
        buckets[-1].append(node)
    replacement: dict[int, Any] = {}
    for buckets in groups.values():
        for bucket in buckets:
            if len(bucket) > 1:
                replacement.update(_fuse(bucket))
    if not replacement:
        _record(stats, before, before)
        return graph
    out = rebuild(graph, lambda node, inputs: replacement.get(id(node)))
    _record(stats, before, collective_stats(out))
    return out


def _fuse(bucket: list[Node]) -> dict[int, list]:
    """One flat all-reduce for the bucket's gradients: {id(old node): [new value]}."""
    first = bucket[0]
    attrs = {k: v for k, v in first.attrs.items() if k != "bucket"}
    flats = [reshape(n.inputs[0], (-1,)) for n in bucket]
    sizes = [n.inputs[0].type.numel() for n in bucket]
    reduced = apply("AllReduce", concat(flats, axis=0), bucket=False, **attrs)
    parts = split(reduced, sizes, axis=0)
    return {id(n): [reshape(p, n.inputs[0].type.shape)] for n, p in zip(bucket, parts)}


def _record(stats, before, after) -> None:
    if stats is not None:
        stats["collectives_before"] = before["collectives"]
        stats["collectives_after"] = after["collectives"]
        stats["bytes_per_step"] = after["bytes"]


def overlap_collectives(graph: Graph) -> Graph:
    """Every collective that declares a start/done pair (``OpDef.overlap``: AllReduce) split
    into its start (moved, with what only feeds it: the packing and the gradients, each to
    right after the last value it needs) and its done (moved to right before the first node
    that reads it); the rest of the schedule is kept."""
    if not any(get_op(n.op).overlap for n in graph.nodes):
        return graph
    mapping: dict[int, Any] = {}

    def split_node(node: Node, inputs):
        pair = get_op(node.op).overlap
        if not pair:
            return None
        attrs = {k: v for k, v in node.attrs.items() if k != "bucket"}
        return [apply(pair[1], apply(pair[0], *inputs, **attrs), **attrs)]

    out = rebuild(graph, split_node, mapping)
    order = []
    for node in graph.nodes:  # the old schedule, in new nodes
        new = mapping.get(id(node.outputs[0]), node.outputs[0]).node if node.outputs else node
        if _is_done(new) and new is not node:
            order.append(new.inputs[0].node)
        order.append(new)
    return Graph(out.inputs, out.outputs, out.updates, out.name,
                 order=_start_early_done_late(order))


def _is_start(node: Node) -> bool:
    return get_op(node.op).nonblocking


def _is_done(node: Node) -> bool:
    return get_op(node.op).waits


def _start_early_done_late(order: list[Node]) -> list[Node]:
    """``order`` with each start, and what only feeds it (its bucket's packing and the
    gradients nothing else reads), each right after its last producer, and each done right
    before its first consumer. Moving a node earlier to just after its inputs, or
    later to just before its readers, keeps the order topological."""
    readers: dict[int, int] = {}
    for node in order:
        for v in node.inputs:
            readers[id(v.node)] = readers.get(id(v.node), 0) + 1
    early: set[int] = set()
    for node in order:
        if not _is_start(node):
            continue
        early.add(id(node))
        stack = [node.inputs[0].node]
        while stack:  # what only feeds the start: the bucket's Concat, its Reshapes, and the
            p = stack.pop()  # gradients themselves (a weight gradient only the bucket reads)
            if readers.get(id(p)) == 1 and not get_op(p.op).source and id(p) not in early \
                    and not _is_done(p) and not any(_is_done(v.node) for v in p.inputs):
                # (a done, and what reads one, stay where the dones are placed below)
                early.add(id(p))
                stack.extend(v.node for v in p.inputs)
    late = {id(n) for n in order if _is_done(n)}
    rest = [n for n in order if id(n) not in early and id(n) not in late]
    moved = [n for n in order if id(n) in early]  # already in dependency order
    # early nodes: each goes right after the last of its producers in the growing order
    slots: dict[int, list[Node]] = {}
    head: list[Node] = []
    placed = {id(n) for n in rest}
    index = {id(n): i for i, n in enumerate(rest)}
    anchor: dict[int, int] = {}
    for n in moved:
        deps = [anchor.get(id(v.node), index.get(id(v.node), -1)) for v in n.inputs
                if id(v.node) in placed or id(v.node) in anchor]
        at = max(deps, default=-1)
        anchor[id(n)] = at
        (slots.setdefault(at, []) if at >= 0 else head).append(n)
    merged = list(head)
    for i, n in enumerate(rest):
        merged.append(n)
        merged.extend(slots.get(i, ()))
    # done: right before its first reader
    final: list[Node] = []
    pending_done = {id(n): n for n in order if id(n) in late}
    for n in merged:
        for v in n.inputs:
            d = pending_done.pop(id(v.node), None)
            if d is not None:
                final.append(d)
        final.append(n)
    final.extend(pending_done.values())  # a done nobody reads (a graph output): at the end
    return _defer_reduced(final)


def _defer_reduced(order: list[Node]) -> list[Node]:
    """Each done before the last start moved, with everything computed from it (a bucket's
    optimizer updates), to right after that start: an earlier bucket then reduces during
    the rest of the backward pass, and its update runs while the last bucket reduces. A done
    that something started later depends on (synchronized BatchNorm's moments) stays. Nodes
    keep their relative order, so the order stays topological."""
    starts = [i for i, n in enumerate(order) if _is_start(n)]
    if not starts:
        return order
    last = starts[-1]
    deferred: set[int] = set()
    for i, node in enumerate(order[:last]):
        if not _is_done(node) or id(node) in deferred:
            continue
        closure = {id(node)}
        for n in order[i + 1:last + 1]:
            if any(id(v.node) in closure for v in n.inputs):
                closure.add(id(n))
        if not any(id(order[j]) in closure for j in starts):
            deferred |= closure
    if not deferred:
        return order
    head = [n for n in order[:last + 1] if id(n) not in deferred]
    return head + [n for n in order[:last] if id(n) in deferred] + order[last + 1:]
