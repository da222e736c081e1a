"""Source ops: graph inputs, parameters (state variables) and constants.

They have no inputs; the executor fills their values from the feeds, the variables and the
constants, and the ONNX exporter turns them into graph inputs and initializers.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import CONST, INPUT, PARAM, Variable
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OpDef, register


def _no_infer(op):
    def infer(types, attrs):
        raise TypeError(f"{op} nodes are made by gd.{op.lower()}(), not by apply()")
    return infer


def _no_kernel(xs, attrs, out):
    raise TypeError("source nodes are filled by the executor, not computed")


_SOURCE_ATTRS = {
    INPUT: {},
    PARAM: {"variable": Attr(Variable, REQUIRED, "the state variable it reads")},
    CONST: {"value": Attr(np.ndarray, REQUIRED, "the read-only value")},
}

for _name, _attrs in _SOURCE_ATTRS.items():
    register(OpDef(name=_name, infer=_no_infer(_name), kernel=_no_kernel,
                   vjp=lambda F, n, g: [], onnx=lambda a, ti, to, o: OnnxLowering(()),
                   source=True, differentiable=False, attrs=_attrs))
