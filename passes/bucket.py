"""Gradient bucketing: many small gradient all-reduces become a few flat ones (Horovod's tensor
fusion, DDP's buckets).

The data-parallel train step marks each gradient's ``AllReduce`` with ``bucket=True``. This
pass takes those nodes in the order their gradients become ready in the schedule (the
backward order), fills buckets of at most ``bucket_bytes`` (one gradient larger than that is a
bucket of its own), and replaces each bucket of two or more by
``Reshape(-1) ... -> Concat -> AllReduce -> Split -> Reshape``. Every element is reduced
exactly as before, so results do not change. A bucket can start as soon as its last gradient
is ready. Buckets only group nodes with the same reduction, dtype and communicator.

The pass counts, in its report row, the collectives and the bytes all-reduced per step before
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
    nodes = [n for n in graph.nodes if get_op(n.op).collective]
    return {"collectives": len(nodes),
            "bytes": sum(n.inputs[0].type.nbytes(bindings) for n in nodes)}


def bucket_gradients(graph: Graph, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                     stats: dict[str, Any] | None = None) -> Graph:
    """Pack the gradient all-reduces (``bucket=True``) into flat buckets of at most
    ``bucket_bytes``; returns ``graph`` itself when nothing is packed."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    before = collective_stats(graph)
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    members = [n for n in graph.nodes if get_op(n.op).collective and n.attrs.get("bucket")
               and n.inputs[0].type.is_static]
    # ready order: when the gradient feeding the all-reduce is computed
    members.sort(key=lambda n: position[id(n.inputs[0].node)])
    groups: dict[tuple, list[list[Node]]] = {}
    for node in members:
        key = (node.attrs.get("reduction", "sum"), node.inputs[0].dtype,
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
