"""The NumPy executor: a short interpreter over a toposorted schedule, running inside a
memory plan.

It calls each op's registry kernel; no op is special-cased here. With ``plan=True`` (the
default) every computed value lives in one arena laid out by :mod:`graphdl.passes.memory`:
kernels get their arena view as ``out`` and write into it (a kernel that returns a fresh array
instead has it copied into the view; the stats say how often), elementwise ops write over a
dying input where the plan says so, and reshape-like ops are views of their input's storage.
Outputs never alias the arena, so callers never see memory the next run overwrites: a
kernel computing an output writes it into a fresh array (the output lives to the end anyway,
so no other value would have reused its arena bytes), and other outputs (views, multi-output
kernels) are copied out.
Steps whose values depend only on shapes and constants (Numel of the batch, and what is
computed from it alone) are evaluated once per binding and skipped by each run.
Plans are computed per binding of the symbolic dims (the batch) and cached; a plan handed in
(``memory_plan=``, e.g. the one the pass report made) seeds that cache, and the points where
values are dropped come from the plan too.

With ``threads`` > 1, a kernel call over large enough tensors is split into that many parts
run on a small thread pool owned by the executor (NumPy and BLAS release the GIL): ops that
declare how their work divides (``OpDef.split``: pooling, convolutions and their gradients by
image, batch norm by channel) and elementwise ops (by rows of the broadcast output). Each part
is the same kernel on slices of the inputs writing into its slice of the output, so results
do not depend on the thread count; a reduction over the split axis (a convolution's weight
gradient) adds its parts' results, which changes only the rounding.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from graphdl.dims import DimExpr, evaluate
from graphdl.ir import FLOAT_DTYPES, Graph, GraphError, TensorType, Value
from graphdl.ops.registry import CONST, PARAM, get_op, split_rows
from graphdl.passes.memory import ARENA, DEFAULT_ALIGNMENT, VIEW, free_points, plan_memory

_ARENA, _VIEW, _MULTI, _FREE, _OUTPUT = 0, 1, 2, 3, 4  # how a step stores its result
# A kernel call is split only when each part still writes at least this many bytes: below
# that, handing parts to the pool costs more than it saves (a fixed constant, measured).
SPLIT_MIN_BYTES = 256 << 10
# A step of shapes and constants only is folded (evaluated once per binding) up to this size;
# a larger one (an Expand of a constant to the batch) stays a step rather than held memory.
FOLD_MAX_BYTES = 1 << 20


class ExecutionError(GraphError, RuntimeError):
    """A kernel failed, or produced a non-finite value while finiteness was checked."""


class NumpyExecutor:
    """Compile a graph into a schedule once; ``run`` it many times.

    ``plan=False`` runs without an arena (every kernel allocates, values are freed after
    their last use): the reference behaviour the planned run is checked against.
    ``memory_plan`` is a plan of this very graph already made (it is reused for its bindings).
    ``threads`` splits large kernel calls over that many threads (1: never). Pair it with
    BLAS limited to one thread (``threadpoolctl.threadpool_limits(1, "blas")``): kernels that
    call BLAS (convolutions) are split too, and OpenBLAS's own threads, spinning between
    calls, otherwise take the cores from the kernel threads (measured on the cnn train step:
    ``benchmarks/bench_cnn_train.py``).
    """

    def __init__(self, graph: Graph, check_finite: bool = False, plan: bool = True,
                 alignment: int | None = None, memory_plan=None, threads: int = 1):
        self.graph = graph
        self.check_finite = check_finite
        self.use_plan = plan
        self.alignment = alignment
        self.threads = int(threads)
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._pool: ThreadPoolExecutor | None = None  # created on the first split call
        slot: dict[Value, int] = {}
        for node in graph.nodes:
            for v in node.outputs:
                slot[v] = len(slot)
        for v in graph.inputs:  # an input no output depends on is still fed (and ignored)
            slot.setdefault(v, len(slot))
        self._slot = slot
        self.num_slots = len(slot)
        self.input_slots = [slot[v] for v in graph.inputs]
        self.output_slots = [slot[v] for v in graph.all_outputs]
        self.param_slots = [(slot[n.outputs[0]], n.attrs["variable"])
                            for n in graph.nodes if n.op == PARAM]
        self.const_slots = [(slot[n.outputs[0]], n.attrs["value"])
                            for n in graph.nodes if n.op == CONST]
        compute = [n for n in graph.nodes if not get_op(n.op).source]
        if memory_plan is not None and (memory_plan.num_steps, len(memory_plan.values)) != (
                len(compute), sum(len(n.outputs) for n in graph.nodes)):
            raise ValueError(f"memory_plan has {memory_plan.num_steps} steps and "
                             f"{len(memory_plan.values)} values, the graph {len(compute)} "
                             f"steps: it was made for another graph")
        # where each value is read for the last time comes from the planner's liveness
        points = memory_plan.free_after if memory_plan is not None \
            else free_points(graph.nodes, graph.all_outputs)
        nodes = graph.nodes
        self.steps = [
            (get_op(n.op).kernel, n.attrs, tuple(slot[v] for v in n.inputs),
             tuple(slot[v] for v in n.outputs),
             tuple(slot[nodes[pos].outputs[index]] for pos, index in points[i]), n)
            for i, n in enumerate(compute)
        ]
        self._splits = [get_op(n.op).split for n in compute]
        # communicators of nonblocking kernels (AllReduceStart): polled between kernels so
        # their work progresses, drained when a run fails so nothing stays in flight
        self._pollers = list({id(c): c for n in compute if get_op(n.op).nonblocking
                              and (c := n.attrs.get("comm")) is not None}.values())
        self._plans: dict[tuple, object] = {}  # bindings -> MemoryPlan (plain data)
        if memory_plan is not None and memory_plan.alignment == (alignment or
                                                                  memory_plan.alignment):
            self._plans[memory_plan.bindings] = memory_plan
        self._arena_key: tuple | None = None
        self._arena: np.ndarray | None = None
        self._views: list | None = None
        self._modes: list[int] | None = None
        self._parts: list = []
        self._feed_shapes: tuple | None = None  # of the feeds the arena was prepared for
        self._copy_out: list[bool] = []
        self._folded: list = []  # (slot, value) evaluated once per binding (_fold_for)
        self._schedule: list = []  # (step, mode, split parts) of the steps each run makes
        self.stats: dict = {}

    # ---- planning ------------------------------------------------------------------------

    def bindings_for(self, feeds: Sequence[np.ndarray]) -> dict[str, int]:
        """Sizes of the symbolic dims, read off the fed arrays."""
        bindings: dict[str, int] = {}
        for v, arr in zip(self.graph.inputs, feeds):
            for d, n in zip(v.type.shape, np.shape(arr)):
                if isinstance(d, str) and not isinstance(d, DimExpr):
                    bindings.setdefault(d, int(n))
        return bindings

    def memory_plan(self, bindings: dict[str, int]):
        """The (cached) memory plan for these symbolic sizes."""
        key = tuple(sorted(bindings.items()))
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_memory(self.graph, bindings,
                               alignment=self.alignment or DEFAULT_ALIGNMENT)
            self._plans[key] = plan
        return plan

    def _prepare(self, bindings: dict[str, int]) -> None:
        key = tuple(sorted(bindings.items()))
        if key == self._arena_key:
            return
        plan = self.memory_plan(bindings)
        raw = np.empty(max(plan.arena_bytes, 1) + plan.alignment, np.uint8)
        shift = (-raw.ctypes.data) % plan.alignment  # offsets are aligned, so is the base
        arena = raw[shift:shift + max(plan.arena_bytes, 1)]
        nodes = self.graph.nodes
        views: list = [None] * self.num_slots
        kinds: dict[int, str] = {}
        for vp in plan.values:
            s = self._slot[nodes[vp.node].outputs[vp.index]]
            kinds[s] = vp.kind
            if vp.kind == ARENA:
                t = nodes[vp.node].types[vp.index]
                shape = tuple(d if isinstance(d, int) else evaluate(d, bindings, default=1)
                              for d in t.shape)
                count = int(np.prod(shape, dtype=np.int64))
                dt = np.dtype(t.dtype)
                views[s] = np.frombuffer(arena, dt, count, vp.offset).reshape(shape) \
                    if count else np.empty(shape, dt)
        modes = []
        returned = set(self.output_slots)
        for _, _, _, outs, _, node in self.steps:
            if get_op(node.op).view or (len(outs) == 1 and kinds.get(outs[0]) == VIEW):
                modes.append(_VIEW)
            elif len(outs) > 1:
                modes.append(_MULTI)
            elif views[outs[0]] is not None:
                # an output lives to the end anyway, so nothing else ever reuses its bytes:
                # the kernel writes it into a fresh array handed to the caller, which saves
                # copying it out of the arena (its arena bytes stay untouched)
                modes.append(_OUTPUT if outs[0] in returned else _ARENA)
            else:
                modes.append(_FREE)
        # outputs still in (or viewing) the arena are copied out: the next run reuses those
        # bytes (the run checks: fresh outputs are handed over as they are)
        fresh = {step[3][0] for step, mode in zip(self.steps, modes) if mode == _OUTPUT}
        self._copy_out = [kinds.get(s) in (ARENA, VIEW) and s not in fresh
                          for s in self.output_slots]
        self._parts = [self._split_parts(i, bindings) if mode in (_ARENA, _OUTPUT, _MULTI)
                       and all(views[s] is not None for s in self.steps[i][3]) else None
                       for i, mode in enumerate(modes)]
        self._arena_key, self._arena, self._views, self._modes = key, arena, views, modes
        self._fold_for(bindings)

    def _fold_for(self, bindings: dict[str, int]) -> None:
        """Evaluate, once for these sizes, the steps whose results depend only on shapes
        (``OpDef.shape_only``, e.g. Numel of the batch) and constants; each run then starts
        from those values and skips the steps. A folded value is an array of its own (never
        arena bytes, which later steps reuse) and never an output of the graph (callers own
        those); a step whose kernel fails, or whose value is too large, stays a run-time step.
        """
        known: dict[int, object] = {s: a for s, a in self.const_slots}
        returned = set(self.output_slots)
        folded: list[int] = []
        for i, (kernel, attrs, ins, outs, _, node) in enumerate(self.steps):
            opdef = get_op(node.op)
            if opdef.collective or opdef.nonblocking or opdef.waits or opdef.state_outputs \
                    or any(s in returned for s in outs):
                continue
            if opdef.shape_only:
                args = [np.broadcast_to(np.zeros((), np.dtype(v.dtype)), _dims(v, bindings))
                        for v in node.inputs]
            elif ins and all(s in known for s in ins):
                args = [known[s] for s in ins]
            else:
                continue
            if sum(v.type.nbytes(bindings) for v in node.outputs) > FOLD_MAX_BYTES:
                continue
            try:
                with np.errstate(all="ignore"):
                    result = kernel(args, attrs, None)
            except Exception:  # noqa: BLE001  (the step runs, and reports, at run time)
                continue
            results = tuple(result) if len(outs) > 1 else (result,)
            arrays = [np.asarray(r) for r in results]
            if any(a.dtype != np.dtype(v.dtype) or a.shape != _dims(v, bindings) or
                   (a.dtype.name in FLOAT_DTYPES and not np.isfinite(a).all())
                   for a, v in zip(arrays, node.outputs)):
                continue  # (a non-finite value stays a step, so check_finite names it)
            for s, a in zip(outs, arrays):
                a.flags.writeable = False  # shared by every run: no one writes it
                known[s] = a
            folded.append(i)
        consts = {s for s, _ in self.const_slots}
        self._folded = [(s, a) for s, a in known.items() if s not in consts]
        skip = set(folded)
        schedule, frees = [], []
        for i, (step, mode, parts) in enumerate(zip(self.steps, self._modes, self._parts)):
            if i in skip:
                frees.extend(step[4])  # its inputs' last reads move to the next run step
                continue
            if frees:
                step = step[:4] + (step[4] + tuple(frees),) + step[5:]
                frees = []
            specialize = get_op(step[5].op).specialize
            if specialize is not None and parts is None and mode in (_ARENA, _OUTPUT):
                # the kernel made for these sizes (split steps run on slices: generic)
                node = step[5]
                step = (specialize(step[1], [_concrete(v, bindings) for v in node.inputs],
                                   [_concrete(v, bindings) for v in node.outputs]),) + step[1:]
            schedule.append((step, mode, parts))
        self._schedule = schedule

    def _split_parts(self, i: int, bindings: dict[str, int]) -> list | None:
        """How step ``i``'s kernel call divides over the threads for these sizes: per part,
        (per input an index or None for whole, per output an index or None when the parts'
        results are summed); None: one call."""
        node = self.steps[i][5]
        rule = self._splits[i] or (split_rows if get_op(node.op).elementwise else None)
        if rule is None or self.threads < 2:
            return None

        def dims(v):
            return tuple(d if isinstance(d, int) else evaluate(d, bindings, default=1)
                         for d in v.shape)

        out_shapes = [dims(v) for v in node.outputs]
        axes = rule(node.attrs, [dims(v) for v in node.inputs], out_shapes)
        if axes is None:
            return None
        in_axes, out_axes = axes
        if out_axes[0] is not None:
            length = out_shapes[0][out_axes[0]]
        else:  # a reduction over the split axis: its length is the inputs'
            length = next(dims(v)[a] for v, a in zip(node.inputs, in_axes) if a is not None)
        nbytes = sum(v.type.nbytes(bindings) for v, a in zip(node.inputs, in_axes)
                     if a is not None) + sum(v.type.nbytes(bindings) for v in node.outputs)
        count = min(self.threads, length, nbytes // SPLIT_MIN_BYTES)
        if count < 2:
            return None
        bounds = [length * k // count for k in range(count + 1)]

        def cut(axis, k):
            return None if axis is None else \
                (slice(None),) * axis + (slice(bounds[k], bounds[k + 1]),)
        return [(tuple(cut(a, k) for a in in_axes), tuple(cut(a, k) for a in out_axes))
                for k in range(count)]

    def _run_split(self, kernel, args, attrs, outs: tuple, parts, multi: bool):
        """One kernel call as independent calls on slices, all but one on the pool; each
        part writes its slice of ``outs`` (or, for a summed output, the first part writes it
        and the others' results are added to it, in part order)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="graphdl")

        def part(index, first: bool):
            in_index, out_index = index
            xs = [a if k is None else a[k] for a, k in zip(args, in_index)]
            bufs = tuple(o if k is None and first else None if k is None else o[k]
                         for o, k in zip(outs, out_index))
            got = kernel(xs, attrs, bufs if multi else bufs[0])
            got = got if multi else (got,)
            for buf, r in zip(bufs, got):
                if buf is not None and r is not buf:
                    np.copyto(buf, r)
            return [r for r, buf in zip(got, bufs) if buf is None]  # partial sums

        futures = [self._pool.submit(part, p, False) for p in parts[1:]]
        try:
            part(parts[0], True)  # the calling thread takes a part too
        finally:
            results = [f.result() for f in futures]  # raises a part's failure, after all end
        summed = [o for o, k in zip(outs, parts[0][1]) if k is None]
        for partials in results:
            for total, r in zip(summed, partials):
                np.add(total, r, out=total)

    # ---- running -------------------------------------------------------------------------

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute with arrays for the graph inputs (in order); returns all outputs."""
        vals: list = [None] * self.num_slots
        for s, arr in zip(self.input_slots, feeds):
            vals[s] = arr
        for s, var in self.param_slots:
            vals[s] = var.value
        for s, arr in self.const_slots:
            vals[s] = arr
        if not self.use_plan:
            return self._run_unplanned(vals)
        shapes = tuple(a.shape if isinstance(a, np.ndarray) else np.shape(a) for a in feeds)
        if shapes != self._feed_shapes:  # the same shapes as last time: the same arena
            self._prepare(self.bindings_for(feeds))
            self._feed_shapes = shapes
        return self._run_planned(vals)

    def _run_unplanned(self, vals: list) -> list[np.ndarray]:
        try:
            return self._walk_unplanned(vals)
        except BaseException:
            self._drain()
            raise

    def _walk_unplanned(self, vals: list) -> list[np.ndarray]:
        check, pollers = self.check_finite, self._pollers
        for kernel, attrs, ins, outs, frees, node in self.steps:
            result = _call(kernel, vals, ins, attrs, None, node)
            if len(outs) == 1:
                vals[outs[0]] = result
            else:
                for s, r in zip(outs, result):
                    vals[s] = r
            if check:
                _check_finite(node, [vals[s] for s in outs])
            for s in frees:
                vals[s] = None
            for c in pollers:
                c.poll()
        return [vals[s] for s in self.output_slots]

    def _drain(self) -> None:
        for c in self._pollers:
            c.drain()

    def _run_planned(self, vals: list) -> list[np.ndarray]:
        check, pollers = self.check_finite, self._pollers
        views, arena = self._views, self._arena
        written = copied = fresh = 0  # bytes written into arena views / copied in / outputs
        node, args = None, []
        try:  # one handler for the whole walk (it names the failing node): no per-step cost
            for s, value in self._folded:
                vals[s] = value
            for (kernel, attrs, ins, outs, frees, node), mode, parts in self._schedule:
                args = [vals[i] for i in ins]
                if parts is not None:  # split over the threads, straight into the buffers
                    bufs = tuple(views[s] if mode != _OUTPUT else np.empty_like(views[s])
                                 for s in outs)
                    self._run_split(kernel, args, attrs, bufs, parts, mode == _MULTI)
                    for s, buf in zip(outs, bufs):
                        vals[s] = buf
                    if mode == _OUTPUT:
                        fresh += bufs[0].nbytes
                    else:
                        written += sum(b.nbytes for b in bufs)
                elif mode == _ARENA:
                    out = views[outs[0]]
                    result = kernel(args, attrs, out)
                    if result is out:
                        written += out.nbytes
                    else:
                        np.copyto(out, result)  # a kernel that allocated: keep the plan's bytes
                        copied += out.nbytes
                    vals[outs[0]] = out
                elif mode == _OUTPUT:
                    out = np.empty_like(views[outs[0]])
                    result = kernel(args, attrs, out)
                    if result is not out:
                        if isinstance(result, np.ndarray) and result.shape == out.shape and \
                                result.dtype == out.dtype and \
                                not np.may_share_memory(result, arena):
                            out = result  # already a fresh array of the right type
                        else:
                            np.copyto(out, result)
                    fresh += out.nbytes
                    vals[outs[0]] = out
                elif mode == _MULTI:
                    # multi-output kernels get one buffer (or None) per output, as a tuple
                    results = kernel(args, attrs, tuple(views[s] for s in outs))
                    for s, r in zip(outs, results):
                        view = views[s]
                        if view is None:
                            vals[s] = r
                        elif r is view:
                            vals[s] = view
                            written += view.nbytes
                        else:
                            np.copyto(view, r)
                            vals[s] = view
                            copied += view.nbytes
                elif len(outs) == 1:  # a view of an input's storage, or no arena bytes
                    vals[outs[0]] = kernel(args, attrs, None)
                else:  # views of parts of an input's storage (Split)
                    for s, r in zip(outs, kernel(args, attrs, None)):
                        vals[s] = r
                if check:
                    _check_finite(node, [vals[s] for s in outs])
                for s in frees:
                    vals[s] = None
                for c in pollers:
                    c.poll()
        except ExecutionError:
            self._drain()
            raise
        except Exception as err:  # add the op and the user's call site to any failure
            self._drain()
            raise ExecutionError(_describe_failure(node, args, err)) from err
        except BaseException:  # KeyboardInterrupt: nothing may stay in flight either
            self._drain()
            raise
        self.stats = {"bytes_written_in_arena": written, "bytes_copied_into_arena": copied,
                      "output_bytes_written_fresh": fresh}
        # (an output viewing a folded value, read-only, is copied too: callers own outputs)
        return [vals[s].copy() if copy and (np.may_share_memory(vals[s], arena) or
                                            not vals[s].flags.writeable) else vals[s]
                for s, copy in zip(self.output_slots, self._copy_out)]

    def release(self) -> None:
        """Free the arena and stop the kernel threads (the next run starts them again;
        cached plans stay)."""
        self._arena_key = self._arena = self._views = self._modes = None
        self._feed_shapes = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def arena_report(self) -> dict:
        """How the last run used the arena: the plan's numbers, and how many bytes kernels
        wrote into their arena views directly versus allocated and had copied in (kernels
        that ignore ``out``: their results still live in the arena, at the cost of a copy)."""
        if self._arena_key is None:
            return {}
        plan = self._plans[self._arena_key]
        return dict(plan.as_dict(), arena_bytes_allocated=int(self._arena.base.nbytes),
                    **self.stats)


def _dims(v: Value, bindings: dict[str, int]) -> tuple:
    return tuple(d if isinstance(d, int) else evaluate(d, bindings, default=1) for d in v.shape)


def _concrete(v: Value, bindings: dict[str, int]) -> TensorType:
    return TensorType(_dims(v, bindings), v.dtype)


def _call(kernel, vals, ins, attrs, out, node):
    args = [vals[i] for i in ins]
    try:
        return kernel(args, attrs, out)
    except Exception as err:  # add the op and the user's call site to any failure
        raise ExecutionError(_describe_failure(node, args, err)) from err


def _describe_failure(node, inputs, err) -> str:
    shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in inputs if hasattr(a, "shape"))
    return f"{node.op} (made at {node.site}) failed on inputs {shapes}: {err}"


def _check_finite(node, arrays) -> None:
    for i, a in enumerate(arrays):
        if a.dtype.name in FLOAT_DTYPES and not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "Inf"
            raise ExecutionError(f"{bad} in output {i} of {node.op} (made at {node.site})")
