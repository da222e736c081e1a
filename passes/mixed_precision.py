"""Mixed precision: compute the heavy ops of a graph in float16 over float32 values.

``autocast(graph)`` rebuilds every node whose op is in ``AUTOCAST_OPS`` with its float32
inputs cast to the low-precision dtype and its outputs cast back to float32, so the graph's
types, its parameters (the float32 master weights) and everything between the heavy ops stay
float32. Applied to the forward graph before ``grad``, the gradients of those ops are built
in float16 as well (the VJP of Cast casts the gradient back). Loss scaling, which keeps small
float16 gradients from flushing to zero, lives with the train step (:mod:`graphdl.amp`).

ONNX only allows float16 (not bfloat16) for Conv and ConvTranspose at the opsets graphdl
exports, and ONNX Runtime has no bfloat16 kernels for them, so the low dtype is float16.
"""
from __future__ import annotations

from typing import Sequence

from graphdl.ir import Graph, rebuild
from graphdl.ops.elementwise import cast
from graphdl.ops.registry import apply

# ops computed in low precision (rules as data): the matrix products and convolutions, where
# tensor cores and half-width memory traffic pay; reductions, normalization and the loss
# stay in float32 as under torch.autocast
AUTOCAST_OPS = ("Conv", "Gemm", "MatMul")
LOW_DTYPES = ("float16",)


def autocast(graph: Graph, dtype: str = "float16", ops: Sequence[str] = AUTOCAST_OPS) -> Graph:
    """``graph`` with each ``ops`` node over float32 inputs computed in ``dtype``."""
    if dtype not in LOW_DTYPES:
        raise ValueError(f"autocast dtype={dtype!r}: use one of {LOW_DTYPES}")
    chosen = frozenset(ops)

    def lower(node, inputs):
        if node.op not in chosen or any(v.dtype != "float32" for v in inputs):
            return None
        outs = apply(node.op, *[cast(v, dtype) for v in inputs], name=node.name,
                     **node.attrs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [cast(o, "float32") if o.dtype == dtype else o for o in outs]

    return rebuild(graph, lower)
