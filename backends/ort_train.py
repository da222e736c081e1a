"""Training on ONNX Runtime with the state kept in device buffers between steps.

A train step is one pure graph whose state (parameters, optimizer moments, BatchNorm running
statistics, the step counter, dropout seeds) is exported as graph inputs ``<var>`` and new
values ``<var>.new`` (:func:`graphdl.backends.onnx_export.to_onnx` with
``params_as_inputs=True``). Here:

- :class:`DeviceState` holds every Variable of a model (or of a low-level function) as
  ``OrtValue`` buffers on the session's device. Each updated Variable has two buffers: a step
  reads the *current* one and writes the *spare* one (outputs bound with I/O binding to
  preallocated buffers); :meth:`DeviceState.commit` swaps them. A step whose loss or update is
  NaN/Inf is simply not committed, so every weight and moment stays as before that step, with
  no copy of the state.
- ``inplace_update=True`` (opt-in) halves the state memory: each update output is bound to
  its input's own buffer, so a step writes the new parameters and moments over the old ones.
  The NaN guard then moves into the graph (passes/inplace_update.py: every update becomes
  ``Where(ok, new, old)``, ``ok`` checking the updates and the loss, and ordered after every
  reader of an old value), so a non-finite step still leaves the state as it was. In the
  ONNX graph the selects become one ``If`` (:mod:`graphdl.backends.ort_inplace`): a good
  step recomputes each update's elementwise tail straight into its buffer
  (``recompute=False``: copies the checked values in), a skipped one touches nothing.
  Variables whose new value is a view of another's old value keep double buffers.
- Lazy sync, explicitly: after a commit the Variables' host copies are marked stale
  (``Variable.stale``) and their ``device`` is this state. Reading ``var.value`` (through
  ``get_weights``, ``save``, a callback, the NumPy executor, ...) copies that one buffer back;
  assigning ``var.value`` (``set_weights``, ``load``) uploads it before the next step.
  :meth:`DeviceState.sync` copies everything back at once (``fit`` calls it when it ends).
- :class:`OrtFunction` runs any graph with its Variables bound from a :class:`DeviceState`:
  a train step, an eval or predict graph sharing the same buffers, or (for data-parallel
  training) separate gradient and apply graphs. Per step only the batch goes in and the
  graph's outputs (the loss, the model output, one float64 guard scalar) come out.
- Inputs are staged with :meth:`OrtFunction.stage`: on CUDA the next mini-batch is copied to
  the device from a helper thread while the current step runs (ORT releases the GIL); on CPU
  staging only makes the arrays contiguous in the model's dtypes, since the CPU provider
  reads host memory directly (no copy at all).
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from graphdl import tensor as F
from graphdl.backends.onnx_export import state_variables, to_onnx
from graphdl.backends.ort_inplace import select_by_if
from graphdl.backends.ort import CUDA, _np_dtype, resolve_providers, session_options
from graphdl.feeds import validate_feeds
from graphdl.ir import Graph, GraphError, Value, Variable
from graphdl.passes.inplace_update import checked_updates, guard_updates, shared_buffers

# Session settings of every train-step session, measured by benchmarks/bench_ort_session.py
# on cnn / resnet18 / resnet50 (benchmarks/results/ort_session*.json; ratios are step time to
# ORT's defaults, 1-thread CPU time, interleaved medians). No setting beat ORT's defaults by
# more than the spread between two identical sessions (wall, 2 threads: 4-13 %), so none is
# changed; the one that clearly matters is pinned. Measured and not taken: level "extended"
# 0.99/1.00/0.99 (the NCHWc transformer cannot fire: weights are graph inputs), "basic"
# 1.07/1.07/1.02; no memory pattern 1.01/1.00/0.98; denormals as zero 1.01/0.99/0.97 (and it
# would change results); PRIORITY_BASED order, dynamic_block_base=4, no spinning (resnet18
# wall 1.15 worse), force_spinning_stop: within the spread. Per-step overhead is no lever
# either: graphdl's Python outside run_with_iobinding is 0.3 / 0.9 / 2 ms per step.
TRAIN_SESSION_SETTINGS: dict[str, Any] = {
    "enable_cpu_mem_arena": True,  # ORT's default, pinned: off costs 1.47 / 1.14 / 1.11
}


class DeviceState:
    """Variables held as ORT buffers on one device, shared by the sessions that read them."""

    def __init__(self, device: str = "cpu", device_id: int = 0):
        self.device = device
        self.device_id = device_id
        self.vars: dict[int, Variable] = {}
        self.current: dict[int, ort.OrtValue] = {}
        self.spare: dict[int, ort.OrtValue] = {}
        self.parity: dict[int, int] = {}  # flips on each swap: keys cached I/O bindings
        self.generation = 0  # bumped when a buffer is replaced (re-upload): bindings rebuild
        self._pending: set[int] = set()
        self.bytes_to_device = 0
        self.bytes_to_host = 0

    @property
    def bytes_resident(self) -> int:
        """Bytes of every state buffer held on the device (current and spare buffers)."""
        return sum(b.tensor_size_in_bytes() for table in (self.current, self.spare)
                   for b in table.values())

    def attach(self, variables: Iterable[Variable]) -> None:
        """Take ``variables`` onto the device (a Variable held by another state moves here)."""
        for var in variables:
            if id(var) in self.vars:
                continue
            if var.device is not None and var.device is not self:
                var.device.release([var])  # pulls a stale host copy first
            self.vars[id(var)] = var
            self.parity[id(var)] = 0
            var.device = self
            self._upload(var)

    def _upload(self, var: Variable) -> None:
        array = np.asarray(var._value, order="C")  # (ascontiguousarray makes 0-d 1-d)
        buf = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype,
                                                        self.device, self.device_id)
        buf.update_inplace(array)
        self.current[id(var)] = buf
        self.bytes_to_device += array.nbytes
        self.generation += 1

    def spare_for(self, var: Variable) -> ort.OrtValue:
        """The second buffer of an updated Variable (allocated once)."""
        key = id(var)
        if key not in self.spare:
            cur = self.current[key]
            self.spare[key] = ort.OrtValue.ortvalue_from_shape_and_type(
                cur.shape(), var._value.dtype, self.device, self.device_id)
            self.generation += 1
        return self.spare[key]

    def refresh(self) -> None:
        """Upload Variables assigned on the host since the last step."""
        if self._pending:
            for key in self._pending:
                if key in self.vars:
                    self._upload(self.vars[key])
            self._pending.clear()

    def commit(self, variables: Sequence[Variable], in_place: Sequence[Variable] = ()) -> None:
        """Make the spare buffers (the step's new values) current: a swap, no copy.
        ``in_place`` Variables were written into their current buffers by the step."""
        for var in in_place:
            var.stale = True
        cur, spare, parity = self.current, self.spare, self.parity
        for var in variables:
            key = id(var)
            cur[key], spare[key] = spare[key], cur[key]
            parity[key] ^= 1
            var.stale = True

    def pull(self, var: Variable) -> None:
        """Copy one Variable's device buffer into its host value (``Variable.value`` calls it)."""
        array = np.array(self.current[id(var)].numpy(), copy=True)
        self.bytes_to_host += array.nbytes
        var._value = array
        var.stale = False

    def forget(self, var: Variable) -> None:
        """The host value was assigned: upload it before the next step."""
        self._pending.add(id(var))

    def sync(self) -> None:
        """Copy every stale Variable back to the host."""
        for var in self.vars.values():
            if var.stale:
                self.pull(var)

    def release(self, variables: Iterable[Variable] | None = None) -> None:
        """Hand Variables back to the host (synced) and drop their buffers."""
        chosen = list(self.vars.values()) if variables is None else list(variables)
        for var in chosen:
            key = id(var)
            if key not in self.vars:
                continue
            if var.stale:
                self.pull(var)
            var.device = None
            for table in (self.vars, self.current, self.spare, self.parity):
                table.pop(key, None)
            self._pending.discard(key)
        self.generation += 1


def finite_guard(graph: Graph) -> Graph:
    """``graph`` with one more output: the float64 sum of the float state updates.

    It is finite exactly when no update holds a NaN or Inf (barring an overflow of the sum),
    so the host checks one scalar instead of copying the state back. Updates whose NaN/Inf
    would reach a summed one are not summed (:func:`~graphdl.passes.inplace_update.
    checked_updates`: SGD's momentum shows in the parameter), saving their reductions.
    """
    def total_of(v):  # a scalar needs no reduction
        s = F.sum(v) if v.shape else v
        return F.cast(s, "float64") if v.dtype != "float64" else s

    sums = [total_of(graph.updates[i][1]) for i in checked_updates(graph)]
    if not sums:
        return graph
    total = sums[0]
    for s in sums[1:]:
        total = total + s
    return Graph(list(graph.inputs), list(graph.outputs) + [total], list(graph.updates),
                 name=graph.name)


class Pending:
    """The result of an uncommitted step: the guard scalar; commit it with the function."""

    __slots__ = ("guard", "committed")

    def __init__(self, guard: float | None):
        self.guard = guard
        self.committed = False


class OrtFunction:
    """A graph compiled into an ONNX Runtime session whose Variables live in a DeviceState.

    Call it like a NumPy :class:`graphdl.compiled_function.Function` (arrays by position or name): it
    runs and commits the state. ``run_uncommitted`` + ``commit`` let the caller check the step
    first (``non_finite``). ``profile=True`` turns on ORT's profiler (see :meth:`end_profiling`).
    ``inplace_update=True`` writes the state over its old buffers (module docstring);
    ``check_outputs`` are outputs (the loss) whose NaN/Inf also skips such a step.
    ``session_settings`` override :data:`TRAIN_SESSION_SETTINGS` (ORT session options by
    attribute name or dotted config key, :func:`graphdl.backends.ort.session_options`).
    """

    def __init__(self, graph: Graph, state: DeviceState | None = None,
                 providers: str | Sequence[Any] = "auto", threads: int | None = None,
                 optimization_level: str = "all", guard: bool = True,
                 single_output: bool = False, report: Any = None, profile: bool = False,
                 device_id: int = 0, inplace_update: bool = False,
                 check_outputs: Sequence[int] = (), recompute: bool = True,
                 session_settings: Mapping[str, Any] | None = None):
        self.user_graph = graph
        self.inplace_update = bool(inplace_update and graph.updates)
        if self.inplace_update:  # the guard selects inside the graph (passes/inplace_update)
            self.graph = guard_updates(graph, check_outputs)
            shared = shared_buffers(graph)
        else:
            self.graph = finite_guard(graph) if guard and graph.updates else graph
            shared = {id(var) for var, _ in graph.updates}
        # guarded when there is a float update to check (an int seed alone has no guard)
        self.guarded = len(self.graph.outputs) > len(graph.outputs)
        self.report = report
        self.single_output = single_output
        self.n_outputs = len(graph.outputs)
        self.providers_requested = resolve_providers(providers, device_id)
        device = "cuda" if self.providers_requested and _provider_name(
            self.providers_requested[0]) == CUDA else "cpu"
        if state is None:
            state = DeviceState(device, device_id)
        elif state.device != device:
            raise GraphError(f"this model's state lives on {state.device}, the session asks "
                             f"for {device}; compile again to move it")
        self.state = state
        self.variables = state_variables(self.graph)
        # double-buffered (written to a spare, committed by a swap) or written in place
        self.updated = [var for var, _ in self.graph.updates if id(var) in shared]
        self.in_place = [var for var, _ in self.graph.updates if id(var) not in shared]
        self._outputs_to = [(var, id(var) not in shared) for var, _ in self.graph.updates]
        proto = to_onnx(self.graph, params_as_inputs=True)
        updates_out = [o.name for o in proto.graph.output[len(self.graph.outputs):]]
        self.selects_by_if = self.inplace_update and select_by_if(
            proto, updates_out, [name for name, (_, in_place) in
                                 zip(updates_out, self._outputs_to) if in_place],
            recompute=recompute)
        # the measured defaults (TRAIN_SESSION_SETTINGS), then the caller's overrides
        self.session_settings = {**TRAIN_SESSION_SETTINGS, **(session_settings or {})}
        options = session_options(threads, optimization_level, settings=self.session_settings)
        if profile:
            options.enable_profiling = True
        self.onnx_model = proto
        self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                            providers=self.providers_requested)
        self.providers = self.session.get_providers()
        self.device = state.device
        inputs = self.session.get_inputs()
        n_user = len(self.graph.inputs)
        self.input_names = [i.name for i in inputs[:n_user]]
        self.input_dtypes = [_np_dtype(i.type) for i in inputs[:n_user]]
        self.state_input_names = [i.name for i in inputs[n_user:]]
        if len(self.state_input_names) != len(self.variables):
            raise GraphError(f"ONNX export gave {len(self.state_input_names)} state inputs for "
                             f"{len(self.variables)} variables of {self.graph.name!r}")
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = outputs[:len(self.graph.outputs)]
        self.update_output_names = outputs[len(self.graph.outputs):]
        state.attach(self.variables)
        for var in self.updated:
            state.spare_for(var)
        self._bindings: dict[tuple, ort.IOBinding] = {}
        self._keys = [id(v) for v in self.variables]
        self.bytes_in = 0   # batch bytes bound per run (host -> device on CUDA)
        self.bytes_out = 0  # output bytes fetched per run (device -> host)
        self.runs = 0

    # ---- binding ---------------------------------------------------------------------------
    def _binding(self) -> ort.IOBinding:
        state = self.state
        parity = state.parity
        key = (state.generation, tuple(parity[k] for k in self._keys))
        binding = self._bindings.get(key)
        if binding is None:
            if len(self._bindings) > 4 or any(k[0] != state.generation for k in self._bindings):
                self._bindings.clear()
            binding = self.session.io_binding()
            for name, k in zip(self.state_input_names, self._keys):
                binding.bind_ortvalue_input(name, state.current[k])
            for name in self.output_names:  # first: get_outputs() lists them in bind order
                binding.bind_output(name, "cpu")  # small: the loss, outputs, the guard
            for name, (var, in_place) in zip(self.update_output_names, self._outputs_to):
                table = state.current if in_place else state.spare
                binding.bind_ortvalue_output(name, table[id(var)])
            self._bindings[key] = binding
        return binding

    def stage(self, *args: Any, **kwargs: Any) -> list:
        """The call's inputs, checked and ready to bind: OrtValues on the device on CUDA,
        contiguous arrays in the model's dtypes on CPU (bound without a copy)."""
        arrays, _ = validate_feeds(self.user_graph.inputs, args, kwargs)
        arrays = [np.asarray(a, dtype=d, order="C") for a, d in zip(arrays, self.input_dtypes)]
        if self.device == "cuda":
            return [ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.state.device_id)
                    for a in arrays]
        return arrays

    # ---- running ---------------------------------------------------------------------------
    def _run(self, staged: list) -> list[np.ndarray]:
        self.state.refresh()
        binding = self._binding()
        for name, value in zip(self.input_names, staged):
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
                self.bytes_in += value.tensor_size_in_bytes()
            else:
                binding.bind_cpu_input(name, value)
                self.bytes_in += value.nbytes
        for name in self.output_names:  # fresh each run: the batch size may change
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        self.runs += 1
        outs = binding.get_outputs()
        results = [outs[i].numpy() for i in range(len(self.output_names))]
        self.bytes_out += sum(r.nbytes for r in results)
        return results

    def run_staged(self, staged: list) -> tuple[list[np.ndarray], Pending]:
        """Run on inputs from :meth:`stage` without committing the state."""
        results = self._run(staged)
        guard = float(results[-1]) if self.guarded else None
        return results[:self.n_outputs], Pending(guard)

    def run_uncommitted(self, *args: Any, **kwargs: Any) -> tuple[list[np.ndarray], Pending]:
        """Run without committing: (outputs, pending); then :meth:`commit` or drop it."""
        return self.run_staged(self.stage(*args, **kwargs))

    def non_finite(self, pending: Pending) -> str | None:
        """None when the step's updates are all finite, else which update is not (the
        uncommitted values are read back only in that case)."""
        if pending.guard is None or np.isfinite(pending.guard):
            return None
        if self.inplace_update:  # the graph kept the old values; nothing to inspect
            return "the loss or an update became non-finite (the step was skipped)"
        for var in self.updated:
            value = self.state.spare[id(var)].numpy()
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"the update of {var.name!r} became non-finite"
        return "an update became non-finite"

    def commit(self, pending: Pending | None = None) -> None:
        """Make the step's new state current (swap the buffers)."""
        if pending is not None:
            if pending.committed:
                raise GraphError("this step was committed already")
            pending.committed = True
        self.state.commit(self.updated, self.in_place)

    def __call__(self, *args: Any, **kwargs: Any):
        outs, pending = self.run_uncommitted(*args, **kwargs)
        self.commit(pending)
        return outs[0] if self.single_output else outs

    def sync(self) -> None:
        """Copy the device state back into the Variables now."""
        self.state.sync()

    def end_profiling(self) -> str:
        """Stop ORT's profiler; returns the JSON trace file it wrote."""
        return self.session.end_profiling()

    def __repr__(self) -> str:
        return (f"<OrtFunction {self.graph.name!r} on {self.device} providers={self.providers} "
                f"state={len(self.variables)} variables>")


def pipeline_for(providers: str | Sequence[Any] = "auto", device_id: int = 0,
                 training: bool = True) -> str:
    """The pass pipeline for a graph ONNX Runtime will run on ``providers``: on the CPU
    provider ``"onnxruntime_cpu"`` (its fastest kernel forms, passes/ort_forms.py), else the
    executor's ``"training"``/``"inference"`` pipeline."""
    chosen = resolve_providers(providers, device_id)
    if chosen and _provider_name(chosen[0]) == CUDA:
        return "training" if training else "inference"
    return "onnxruntime_cpu"


def _provider_name(p: Any) -> str:
    return p[0] if isinstance(p, tuple) else p


class Prefetcher:
    """Gathers and stages the next mini-batch in a helper thread while the current step runs.

    ``batches`` yields argument lists (advanced only from the helper thread, one at a time);
    iterating gives ``(args, staged)`` pairs in order.
    """

    def __init__(self, fn: OrtFunction, batches: Iterable[Sequence[Any]]):
        self.fn = fn
        self.batches = iter(batches)

    def __iter__(self):
        thread, slot = self._start()
        while True:
            thread.join()
            if "error" in slot:
                raise slot["error"]
            if "args" not in slot:
                return
            ready = slot
            thread, slot = self._start()
            yield ready["args"], ready["staged"]

    def _start(self):
        slot: dict[str, Any] = {}

        def work():
            try:
                args = next(self.batches, None)
                if args is not None:
                    slot["staged"] = self.fn.stage(*args)
                    slot["args"] = args
            except Exception as e:  # noqa: BLE001  (re-raised in the consumer)
                slot["error"] = e

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread, slot
