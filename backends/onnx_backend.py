"""graphdl as an ONNX backend (``onnx.backend.base.Backend``): import, then the NumPy executor.

``GraphdlBackend.prepare(model)`` imports the model with :func:`from_onnx` and compiles it
for the NumPy executor; ``run_model``/``run_node`` are the base class's, built on ``prepare``.
So ``onnx.backend.test.BackendTest(GraphdlBackend, __name__)`` runs ONNX's backend suite
against graphdl, and :mod:`graphdl.backends.onnx_node_suite` counts it case by case.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_import import from_onnx
from graphdl.ir import Graph, numpy_dtype


class GraphdlRep(BackendRep):
    """A prepared model: the imported graph and its NumPy executor."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.executor = NumpyExecutor(graph)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run on ``inputs`` (a list in graph-input order, a dict by name, or one array)."""
        if isinstance(inputs, dict):
            feeds = [inputs[v.name] for v in self.graph.inputs]
        elif isinstance(inputs, np.ndarray):
            feeds = [inputs]
        else:
            feeds = list(inputs)
        if len(feeds) != len(self.graph.inputs):
            raise ValueError(f"the model takes {len(self.graph.inputs)} inputs "
                             f"({', '.join(v.name for v in self.graph.inputs)}); "
                             f"got {len(feeds)}")
        feeds = [np.asarray(a, dtype=_np_dtype(v.dtype)) for a, v in
                 zip(feeds, self.graph.inputs)]
        return tuple(self.executor.run(feeds)[:len(self.graph.outputs)])


def _np_dtype(name: str):
    return numpy_dtype(name)


class GraphdlBackend(Backend):
    """The ONNX backend interface over graphdl's importer and NumPy executor (CPU only)."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        """Every model is attempted; refusals raise ``OnnxImportError`` from ``prepare``."""
        return True

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU",
                **kwargs: Any) -> GraphdlRep:
        """Import ``model`` and compile it for the NumPy executor."""
        super().prepare(model, device, **kwargs)
        return GraphdlRep(from_onnx(model))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Prepare ``model`` and run it once on ``inputs``."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Sequence[tuple] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node: wrap it in a model typed by ``inputs`` and run that."""
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        names = [n for n in node.input if n]
        ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            np.asarray(a).dtype), list(np.shape(a))) for n, a in zip(names, inputs)]
        outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        model = helper.make_model(helper.make_graph([node], "run_node", ins, outs),
                                  opset_imports=[helper.make_opsetid("", opset)])
        # the outputs carry no types, which onnx.checker (in prepare) would refuse
        return GraphdlRep(from_onnx(model)).run(list(inputs))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """graphdl's NumPy executor runs on the CPU only."""
        return Device(device).type == DeviceType.CPU


prepare = GraphdlBackend.prepare
run_model = GraphdlBackend.run_model
run_node = GraphdlBackend.run_node
supports_device = GraphdlBackend.supports_device
