"""The ONNX Runtime backend: a compiled session for a graphdl graph (or an ONNX model).

``providers="auto"`` uses CUDA only when a CUDA device is actually usable: it preloads the CUDA
and cuDNN libraries (``onnxruntime.preload_dlls()``) and builds a tiny probe session with
ORT's logging silenced, so a CPU-only machine with onnxruntime-gpu prints nothing. On CUDA the
runner uses I/O binding: weights are initializers resident on the device, inputs are copied
once per call, state (a training step's parameters) stays in device buffers between calls.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from graphdl.backends.onnx_export import DEFAULT_OPSET, choose_ir_version, to_onnx
from graphdl.backends import onnx_save
from graphdl.feeds import FeedError, validate_feeds
from graphdl.ir import Graph, GraphError, as_graph

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_DEFAULT_SEVERITY = 2  # warnings: onnxruntime's own default


class ProviderError(GraphError, RuntimeError):
    """The requested execution provider cannot run on this machine."""


@contextlib.contextmanager
def _silenced():
    """Silence Python prints (preload_dlls reports missing libraries) and ORT's logger."""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _probe_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "cuda_probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             ir_version=choose_ir_version(13)).SerializeToString()


@functools.lru_cache(maxsize=None)
def cuda_available(device_id: int = 0) -> bool:
    """True when ORT can really run on CUDA device ``device_id`` (probed once, quietly)."""
    if CUDA not in ort.get_available_providers():
        return False  # a CPU-only onnxruntime build
    with _silenced():
        try:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
        except Exception:  # noqa: BLE001  (missing libraries show up in the probe below)
            pass
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            session = ort.InferenceSession(_probe_model(), options,
                                           providers=[(CUDA, {"device_id": device_id})])
            if CUDA not in session.get_providers():
                return False
            out = session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
            return bool(np.array_equal(out, [0.0, 2.0]))
        except Exception:  # noqa: BLE001  (any failure means: not usable)
            return False


def resolve_providers(providers: str | Sequence[Any] = "auto", device_id: int = 0) -> list:
    """Execution providers for ``"auto"``, ``"cpu"``, ``"cuda"`` or an explicit ORT list."""
    if not isinstance(providers, str):
        return list(providers)
    choice = providers.lower()
    if choice == "cpu":
        return [CPU]
    if choice in ("cuda", "gpu"):
        if not cuda_available(device_id):
            raise ProviderError(
                f"providers='cuda' was requested, but CUDA device {device_id} is not usable by "
                f"onnxruntime {ort.__version__} on this machine (available providers: "
                f"{', '.join(ort.get_available_providers())}; no CUDA device, driver, or CUDA/"
                "cuDNN libraries found). Install onnxruntime-gpu[cuda,cudnn] on a machine with "
                "an NVIDIA GPU, or use providers='auto' or 'cpu'")
        return [(CUDA, {"device_id": device_id}), CPU]
    if choice == "auto":
        return resolve_providers("cuda" if cuda_available(device_id) else "cpu", device_id)
    raise ValueError(f"providers={providers!r}: use 'auto', 'cpu', 'cuda' or a list of ORT "
                     "execution providers")


def session_options(threads: int | None = None, optimization_level: str = "all",
                    optimized_model_path: str | None = None,
                    log_level: int = 3,
                    settings: Mapping[str, Any] | None = None) -> ort.SessionOptions:
    """ORT session options from graphdl's knobs (threads, optimization level) and
    ``settings``: ``SessionOptions`` attributes by name (``"enable_mem_pattern"``), or session
    config entries by their dotted key (``"session.intra_op.allow_spinning"``)."""
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization_level={optimization_level!r}: use one of "
                         f"{', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization_level]
    options.log_severity_level = log_level
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads={threads}: give a positive thread count (or None)")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = os.fspath(optimized_model_path)
    for key, value in (settings or {}).items():
        if "." in key:  # a session config entry: ORT takes strings
            options.add_session_config_entry(key, str(value))
        elif hasattr(options, key):
            setattr(options, key, value)
        else:
            raise ValueError(f"session setting {key!r}: not a SessionOptions attribute nor a "
                             "dotted session config key")
    return options


class OrtRunner:
    """A graph (or an ONNX model) compiled into an ONNX Runtime session.

    Call it with arrays, by position or by input name; it returns NumPy arrays (one array for
    a single-output graph). ``run_ortvalues`` keeps the outputs on the device instead.
    """

    def __init__(self, model: Any, providers: str | Sequence[Any] = "auto",
                 threads: int | None = None, optimization_level: str = "all",
                 io_binding: bool | None = None, opset: int = DEFAULT_OPSET,
                 dtype: str | None = None, device_id: int = 0,
                 optimized_model_path: str | None = None, sync_state: bool = True):
        self.graph: Graph | None = None
        self._files = None  # a temporary folder holding a model over 2 GB
        if isinstance(model, (onnx.ModelProto, str, os.PathLike)):
            source = model.SerializeToString() if isinstance(model, onnx.ModelProto) \
                else os.fspath(model)
        else:
            self.graph = as_graph(model)
            proto = to_onnx(self.graph, opset=opset, dtype=dtype)
            source, self._files = _session_source(proto)
        self.providers_requested = resolve_providers(providers, device_id)
        self.options = session_options(threads, optimization_level, optimized_model_path)
        self.session = ort.InferenceSession(source, self.options,
                                            providers=self.providers_requested)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.device_id = device_id
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.sync_state = sync_state
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_dtypes = {i.name: _np_dtype(i.type) for i in self.session.get_inputs()}
        self._setup_state()

    # ---- state (training-step graphs) ----------------------------------------------------
    def _setup_state(self) -> None:
        graph = self.graph
        self.n_outputs = len(self.output_names) if graph is None else len(graph.outputs)
        self.state = []  # (variable, input name, output name)
        if graph is not None and graph.updates:
            n_in = len(graph.inputs)
            for k, (var, _) in enumerate(graph.updates):
                self.state.append((var, self.input_names[n_in + k],
                                   self.output_names[self.n_outputs + k]))
        self._state_values: list | None = None  # device buffers when state stays on device

    def _state_feed(self) -> list:
        if self._state_values is None or self.sync_state:
            return [self._device_value(var.value.astype(self.input_dtypes[name], copy=False))
                    for var, name, _ in self.state]
        return self._state_values

    def sync_state_to_variables(self) -> None:
        """Copy state kept on the device back into the Variables (``sync_state=False``)."""
        if self._state_values is not None:
            for (var, _, _), value in zip(self.state, self._state_values):
                var.value = value.numpy().astype(var.value.dtype, copy=False)

    # ---- calling -----------------------------------------------------------------------------
    def feeds(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[np.ndarray]:
        """The input arrays in order, checked against the graph and cast to the model's
        dtypes (a float16 export takes float32 arrays)."""
        if self.graph is not None:
            arrays, _ = validate_feeds(self.graph.inputs, args, kwargs)
        else:
            n_user = len(self.input_names) - len(self.state)
            names = self.input_names[:n_user]
            if len(args) + len(kwargs) != n_user or any(k not in names for k in kwargs):
                raise FeedError(f"this model takes inputs {names}")
            arrays = list(args) + [kwargs[n] for n in names[len(args):]]
            arrays = [np.asarray(a) for a in arrays]
        return [a.astype(self.input_dtypes[n], copy=False)
                for n, a in zip(self.input_names, arrays)]

    def __call__(self, *args, **kwargs):
        outs = self.run_ortvalues(*args, **kwargs) if self.io_binding else None
        if outs is not None:
            results = [o.numpy() for o in outs]
        else:
            results = self._run_plain(self.feeds(args, kwargs))
        if self.graph is not None:  # results in the graph's dtypes (float16 exports)
            results = [r.astype(v.dtype, copy=False) for r, v in zip(results, self.graph.outputs)]
        return results[0] if len(results) == 1 else results

    def _run_plain(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(self.input_names, arrays))
        for (var, name, _), value in zip(self.state, self._state_feed()):
            feed[name] = value.numpy() if isinstance(value, ort.OrtValue) else value
        results = self.session.run(self.output_names, feed)
        for (var, _, _), new in zip(self.state, results[self.n_outputs:]):
            var.value = new.astype(var.value.dtype, copy=False)
        return results[:self.n_outputs]

    def _device_value(self, array: np.ndarray):
        if self.device == "cuda":
            return ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)
        return array

    def run_ortvalues(self, *args, **kwargs) -> list:
        """Run with I/O binding and return the outputs as ``OrtValue``s left on the device
        (inputs are copied to the device once per call)."""
        arrays = self.feeds(args, kwargs)
        binding = self.session.io_binding()
        device = "cuda" if self.device == "cuda" else "cpu"
        for name, arr in zip(self.input_names, arrays):
            if device == "cuda":
                binding.bind_ortvalue_input(
                    name, ort.OrtValue.ortvalue_from_numpy(arr, device, self.device_id))
            else:
                binding.bind_cpu_input(name, np.asarray(arr, order="C"))
        for (var, name, _), value in zip(self.state, self._state_feed()):
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.asarray(value, order="C"))
        for name in self.output_names:
            binding.bind_output(name, device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if self.state:
            self._state_values = list(outputs[self.n_outputs:])
            if self.sync_state:
                self.sync_state_to_variables()
        return list(outputs[:self.n_outputs])

    def __repr__(self) -> str:
        return (f"<OrtRunner {self.device} providers={self.providers} "
                f"inputs={self.input_names} outputs={self.output_names[:self.n_outputs]}>")


def _session_source(proto: onnx.ModelProto):
    """Bytes for ORT, or for a model over 2 GB a file with external data in a temporary
    folder (returned too, so it lives as long as the runner)."""
    if onnx_save.payload_bytes(proto) < onnx_save.PROTOBUF_LIMIT // 2:
        return proto.SerializeToString(), None
    folder = tempfile.TemporaryDirectory(prefix="graphdl-ort-")
    path = onnx_save.save_model(proto, os.path.join(folder.name, "model.onnx"),
                                external_data=True)
    return str(path), folder


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _np_dtype(ort_type: str):
    return _ORT_TYPES.get(ort_type, np.float32)


def compile_ort(model_or_graph: Any, providers: str | Sequence[Any] = "auto",
                threads: int | None = None, optimization_level: str = "all",
                io_binding: bool | None = None, optimize: bool = True,
                **kwargs: Any) -> OrtRunner:
    """Optimize (graphdl passes, inference mode) and compile into an :class:`OrtRunner`."""
    if not isinstance(model_or_graph, (onnx.ModelProto, str, os.PathLike)):
        graph = as_graph(model_or_graph, what="gd.compile")
        if optimize:
            graph = onnx_save.optimize_for_onnx(graph)
        model_or_graph = graph
    return OrtRunner(model_or_graph, providers=providers, threads=threads,
                     optimization_level=optimization_level, io_binding=io_binding, **kwargs)
