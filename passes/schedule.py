"""Scheduling for memory: reorder independent branches so fewer bytes are alive at once.

Any topological order computes the same values; the order decides which values are alive
together. Candidate orders are built and the one with the lowest peak (the liveness lower
bound, so the arena planner can meet it) wins over the current order only when it is lower:

- a memory-aware depth-first order (Sethi-Ullman, generalized to DAGs): at each node, the
  input branch that needs the most memory beyond what it leaves behind runs first, so its
  working set is gone before the other branches' results pile up (Inception blocks); once
  with the outputs in order, once reversed (a training step's updates then run from the last
  layer back, each as soon as its gradient exists);
- a greedy list schedule: among ready nodes, run the one that frees the most bytes for the
  fewest new ones (ties keep the original order).

Both are O(E log V).
"""
from __future__ import annotations

import heapq
from typing import Mapping

from graphdl.ir import Graph, Node
from graphdl.ops.registry import get_op
from graphdl.passes.memory import VIEW_OPS, schedule_peak


def _bytes_of(node: Node, bindings: Mapping[str, int]) -> int:
    if get_op(node.op).source or node.op in VIEW_OPS:
        return 0
    return sum(t.nbytes(bindings) for t in node.types)


def memory_dfs_order(graph: Graph, bindings: Mapping[str, int], reverse_roots: bool = False
                     ) -> list[Node]:
    """Depth-first post-order that visits the most demanding input branch first; roots (the
    outputs, then the updates) in their order, or reversed (a training step's updates then
    run from the last layer back, each right after its gradient)."""
    size = {id(n): _bytes_of(n, bindings) for n in graph.nodes}
    need: dict[int, int] = {}
    for node in graph.nodes:  # inputs come first in any topological order
        kids = _distinct_producers(node)
        kids.sort(key=lambda k: size[id(k)] - need[id(k)])
        held, peak = 0, 0
        for k in kids:
            peak = max(peak, held + need[id(k)])
            held += size[id(k)]
        need[id(node)] = max(peak, held + size[id(node)])
    order: list[Node] = []
    done: set[int] = set()
    roots = [v.node for v in graph.all_outputs]
    for root in (roots[::-1] if reverse_roots else roots):
        stack = [(root, None)]
        while stack:
            node, kids = stack.pop()
            if id(node) in done:
                continue
            if kids is None:
                kids = [k for k in _distinct_producers(node) if id(k) not in done]
                kids.sort(key=lambda k: size[id(k)] - need[id(k)])
                stack.append((node, kids))
                for k in reversed(kids):
                    stack.append((k, None))
            else:
                done.add(id(node))
                order.append(node)
    return order


def greedy_order(graph: Graph, bindings: Mapping[str, int]) -> list[Node]:
    """List scheduling: repeatedly run the ready node with the best (new - freed) bytes."""
    nodes = graph.nodes
    pos = {id(n): i for i, n in enumerate(nodes)}
    size = {id(n): _bytes_of(n, bindings) for n in nodes}
    keep = {id(v.node) for v in graph.all_outputs}
    consumers: dict[int, list[Node]] = {}
    waiting: dict[int, int] = {}
    for node in nodes:
        producers = _distinct_producers(node)
        waiting[id(node)] = len(producers)
        for p in producers:
            consumers.setdefault(id(p), []).append(node)
    remaining = {k: len(v) for k, v in consumers.items()}
    scheduled: set[int] = set()

    def score(node: Node) -> int:
        freed = sum(size[id(p)] for p in _distinct_producers(node)
                    if remaining.get(id(p)) == 1 and id(p) not in keep)
        return size[id(node)] - freed

    order: list[Node] = []
    heap = [(score(n), pos[id(n)], n) for n in nodes if waiting[id(n)] == 0]
    heapq.heapify(heap)
    while heap:
        s, p, node = heapq.heappop(heap)
        if id(node) in scheduled:
            continue
        now = score(node)
        if now != s:
            heapq.heappush(heap, (now, p, node))
            continue
        scheduled.add(id(node))
        order.append(node)
        for prod in _distinct_producers(node):
            remaining[id(prod)] -= 1
            if remaining[id(prod)] == 1:  # its last consumer now frees it: rescore that one
                for c in consumers[id(prod)]:
                    if id(c) not in scheduled and waiting[id(c)] == 0:
                        heapq.heappush(heap, (score(c), pos[id(c)], c))
        for c in consumers.get(id(node), ()):
            waiting[id(c)] -= 1
            if waiting[id(c)] == 0:
                heapq.heappush(heap, (score(c), pos[id(c)], c))
    return order


def _distinct_producers(node: Node) -> list[Node]:
    seen: dict[int, Node] = {}
    for v in node.inputs:
        seen.setdefault(id(v.node), v.node)
    return list(seen.values())


def schedule_for_memory(graph: Graph, bindings: Mapping[str, int] | None = None) -> Graph:
    """The graph with the schedule of lowest peak memory among the current one and the
    candidates (unbound symbolic dims count as 1)."""
    bindings = dict(bindings or {})
    outputs = graph.all_outputs
    best, best_peak = None, schedule_peak(graph.nodes, outputs, bindings)
    candidates = (lambda: memory_dfs_order(graph, bindings),
                  lambda: memory_dfs_order(graph, bindings, reverse_roots=True),
                  lambda: greedy_order(graph, bindings))
    for make in candidates:
        order = make()
        if len(order) != len(graph.nodes):
            continue
        peak = schedule_peak(order, outputs, bindings)
        if peak < best_peak:
            best, best_peak = order, peak
    if best is None or all(a is b for a, b in zip(best, graph.nodes)):
        return graph
    return Graph(graph.inputs, graph.outputs, graph.updates, graph.name, order=best)
