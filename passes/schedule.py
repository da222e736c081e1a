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

Then, as a tie-break that never raises the peak, each state update (with the nodes that feed
only it) moves up to right after the last other reader of its variable, or its own inputs,
as hand-written training code does: the weight is still in cache when its update reads it.

Both are O(E log V).
"""
from __future__ import annotations

import heapq
from typing import Mapping

from graphdl.ir import Graph, Node, toposort
from graphdl.ops.registry import get_op
from graphdl.passes.memory import node_facts, schedule_peak


class _Dag:
    """The graph's structure, computed once: the canonical order (a depth-first walk from
    the outputs, independent of any schedule), distinct producers and bytes per node."""

    def __init__(self, graph: Graph, bindings: Mapping[str, int]):
        self.graph = graph
        self.order = toposort(graph.all_outputs)
        self.pos = {id(n): i for i, n in enumerate(self.order)}
        self.producers: dict[int, list[Node]] = {}
        self.size: dict[int, int] = {}
        for node in self.order:
            seen: dict[int, Node] = {}
            for v in node.inputs:
                seen.setdefault(id(v.node), v.node)
            self.producers[id(node)] = list(seen.values())
            opdef = get_op(node.op)
            source = opdef.source or opdef.view
            self.size[id(node)] = 0 if source else sum(t.nbytes(bindings) for t in node.types)


def memory_dfs_order(dag: _Dag, reverse_roots: bool = False) -> list[Node]:
    """Depth-first post-order that visits the most demanding input branch first; roots (the
    outputs, then the updates) in their order, or reversed (a training step's updates then
    run from the last layer back, each right after its gradient)."""
    size, producers = dag.size, dag.producers
    need: dict[int, int] = {}
    for node in dag.order:  # inputs come first in a topological order
        kids = sorted(producers[id(node)], key=lambda k: size[id(k)] - need[id(k)])
        held, peak = 0, 0
        for k in kids:
            peak = max(peak, held + need[id(k)])
            held += size[id(k)]
        need[id(node)] = max(peak, held + size[id(node)])
    order: list[Node] = []
    done: set[int] = set()
    roots = [v.node for v in dag.graph.all_outputs]
    for root in (roots[::-1] if reverse_roots else roots):
        stack = [(root, None)]
        while stack:
            node, kids = stack.pop()
            if id(node) in done:
                continue
            if kids is None:
                kids = [k for k in producers[id(node)] if id(k) not in done]
                kids.sort(key=lambda k: size[id(k)] - need[id(k)])
                stack.append((node, kids))
                for k in reversed(kids):
                    stack.append((k, None))
            else:
                done.add(id(node))
                order.append(node)
    return order


def greedy_order(dag: _Dag) -> list[Node]:
    """List scheduling: repeatedly run the ready node with the best (new - freed) bytes;
    ties go to the canonical order."""
    nodes, pos, size, producers = dag.order, dag.pos, dag.size, dag.producers
    keep = {id(v.node) for v in dag.graph.all_outputs}
    consumers: dict[int, list[Node]] = {}
    waiting: dict[int, int] = {}
    for node in nodes:
        waiting[id(node)] = len(producers[id(node)])
        for p in producers[id(node)]:
            consumers.setdefault(id(p), []).append(node)
    remaining = {k: len(v) for k, v in consumers.items()}
    scheduled: set[int] = set()

    def score(node: Node) -> int:
        freed = sum(size[id(p)] for p in producers[id(node)]
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
        for prod in producers[id(node)]:
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


def updates_near_state(order: list[Node], graph: Graph) -> list[Node]:
    """``order`` with each update's block (the update and the nodes feeding only it) moved up
    to right after the later of its inputs and the last other reader of its variable; blocks
    landing at one place go most recently read variable first, then in their old order."""
    pos = {id(n): i for i, n in enumerate(order)}
    consumers: dict[int, set[int]] = {}
    for node in order:
        for v in node.inputs:
            consumers.setdefault(id(v.node), set()).add(id(node))
    kept = {id(v.node) for v in graph.outputs}
    state = {id(var) for var, _ in graph.updates}
    for node in order:  # a read of updated state stays where it is: it sets another's place
        if any(id(v.node.attrs.get("variable")) in state for v in node.inputs):
            kept.add(id(node))
    moved: set[int] = set()
    blocks = []
    for var, value in graph.updates:
        root = value.node
        if id(root) in moved or not root.inputs or any(id(v.node) == id(root)
                                                        for v in graph.outputs):
            continue
        block = {id(root)}
        for node in reversed(order[:pos[id(root)]]):
            if (id(node) not in kept and id(node) not in moved and node.inputs
                    and consumers.get(id(node)) and consumers[id(node)] <= block):
                block.add(id(node))
        members = [n for n in order if id(n) in block]
        after = max((pos[id(v.node)] for n in members for v in n.inputs
                     if id(v.node) not in block and v.node.inputs), default=-1)
        readers = [pos[id(n)] for n in order if id(n) not in block
                   and any(v.node.attrs.get("variable") is var for v in n.inputs)]
        last_read = max(readers, default=-1)
        blocks.append((max(after, last_read), -last_read, pos[id(root)], members))
        moved |= block
    at: dict[int, list] = {}
    for where, key, first, members in blocks:
        at.setdefault(where, []).append((key, first, members))
    out: list[Node] = []
    done: set[int] = set()

    def emit(node: Node) -> None:
        if id(node) not in done:
            done.add(id(node))
            out.append(node)

    for i, node in enumerate([None] + order):
        if node is not None and id(node) not in moved:
            emit(node)
        for _, _, members in sorted(at.get(i - 1, ()), key=lambda b: b[:2]):
            for n in members:
                for v in n.inputs:
                    if not v.node.inputs:  # a source (constant, input): run it first
                        emit(v.node)
                emit(n)
    return out


def _topological(order: list[Node]) -> bool:
    """Whether every node comes after its inputs' producers."""
    seen: set[int] = set()
    for node in order:
        if any(id(v.node) not in seen for v in node.inputs):
            return False
        seen.add(id(node))
    return True


def schedule_for_memory(graph: Graph, bindings: Mapping[str, int] | None = None) -> Graph:
    """The graph with the schedule of lowest peak memory among the candidates (unbound
    symbolic dims count as 1). Candidates depend only on the graph's structure, so running
    the pass again changes nothing; a current order better than all of them is kept."""
    bindings = dict(bindings or {})
    outputs = graph.all_outputs
    facts = node_facts(graph.nodes, bindings)
    dag = _Dag(graph, bindings)
    best, best_peak = None, None
    for make in (lambda: list(dag.order), lambda: memory_dfs_order(dag),
                 lambda: memory_dfs_order(dag, reverse_roots=True), lambda: greedy_order(dag)):
        order = make()
        if len(order) != len(graph.nodes):
            continue
        peak = schedule_peak(order, outputs, bindings, facts=facts)
        if best_peak is None or peak < best_peak:
            best, best_peak = order, peak
    if best is None:
        return graph
    near = updates_near_state(best, graph)
    if _topological(near) and schedule_peak(near, outputs, bindings, facts=facts) <= best_peak:
        best = near
    if all(a is b for a, b in zip(best, graph.nodes)):
        return graph
    if schedule_peak(graph.nodes, outputs, bindings, facts=facts) < best_peak:
        return graph
    return Graph(graph.inputs, graph.outputs, graph.updates, graph.name, order=best)
