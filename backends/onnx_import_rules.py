"""The import table: ONNX op type -> a function that rebuilds the node with graphdl builders.

Each rule gets the importer (for inputs: ``imp.value(name)`` for tensors, ``imp.const`` /
``imp.ints`` for inputs that must be known, such as shapes and axes), the node and its
attributes, and returns one graphdl value (or known constant) per ONNX output.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from graphdl import dims as D
from graphdl import tensor as F
from graphdl.backends.onnx_import import (BINARY_IMPORTS, UNARY_IMPORTS, VARIADIC_IMPORTS,
                                          Importer, OnnxImportError, SymDim, is_symbolic)
from graphdl.ir import Value
from graphdl.ops.dynamic import (dyn_expand, dyn_fill, dyn_reshape, is_unknown, nonzero,
                                  unknown_dim)

Rule = Callable[[Importer, onnx.NodeProto, dict], list]


def _builder(imp: Importer, name: str):
    fn = getattr(F, name, None)
    if fn is None:
        raise OnnxImportError(f"{imp.where()}: graphdl has no builder gd.{name} for this op")
    return fn


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _unary(builder: str) -> Rule:
    return lambda imp, node, a: [_builder(imp, builder)(imp.value(node.input[0]))]


def _binary(builder: str) -> Rule:
    def rule(imp, node, a):
        x, y = imp.value(node.input[0]), imp.value(node.input[1])
        if builder == "pow" and y.dtype != x.dtype:  # ONNX Pow allows another exponent type
            y = F.cast(y, x.dtype)
        return [_builder(imp, builder)(x, y)]
    return rule


def _variadic(builder: str) -> Rule:
    def rule(imp, node, a):
        vals = [imp.value(n) for n in node.input if n]
        out = vals[0] if len(vals) > 1 else F.identity(vals[0])
        for v in vals[1:]:
            out = _builder(imp, builder)(out, v)
        return [out]
    return rule


def _identity(imp, node, a):
    return [imp.env[node.input[0]]]


def _constant(imp, node, a):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in a:
            value = np.asarray(a[key])
            if key in ("value_float", "value_floats"):
                value = value.astype(np.float32)
            elif key in ("value_int", "value_ints"):
                value = value.astype(np.int64)
            return [value]
    raise OnnxImportError(f"{imp.where()}: Constant with attributes {sorted(a)} is not "
                          "supported")


def _dropout(imp, node, a):
    """graphdl's Dropout with its own seed variable (state): an identity in inference, and
    a fresh mask each step when the model trains (``Model.graph(training=True)``)."""
    training = _input(node, 2)
    if training and not imp.is_const(training):
        raise OnnxImportError(f"{imp.where()}: a run-time training_mode input is not "
                              "supported; graphdl switches the mode per compiled graph")
    training = bool(training and imp.const(training))
    rate = a.get("ratio", 0.5)
    if _input(node, 1) and (training or imp.is_const(node.input[1])):
        rate = imp.const(node.input[1])  # in inference the ratio does not matter
    seed = F.param(f"{node.output[0]}_dropout_seed", np.array(0, np.int64), trainable=False)
    y, mask, _ = F.apply("Dropout", imp.value(node.input[0]), seed, rate=float(rate),
                         training=training)
    return [y, mask]


def _cast(imp, node, a):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(a["to"])).name
    return [F.cast(imp.value(node.input[0]), dtype, saturate=bool(a.get("saturate", 1)),
                   round_mode=_text(a.get("round_mode", "up")))]


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _clip(imp, node, a):
    x = imp.value(node.input[0])
    if imp.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        bounds = [_input(node, 1), _input(node, 2)]
        if any(b and not imp.is_const(b) for b in bounds):
            # run-time bounds: max(x, min) then min(., max), as ONNX defines Clip
            for b, fn in zip(bounds, (F.maximum, F.minimum)):
                if b:
                    x = fn(x, imp.value(b))
            return [x]
        lo = float(imp.const(bounds[0])) if bounds[0] else None
        hi = float(imp.const(bounds[1])) if bounds[1] else None
    return [F.clip(x, lo, hi)]


def _leaky_relu(imp, node, a):
    return [F.leaky_relu(imp.value(node.input[0]), a.get("alpha", 0.01))]


def _softmax(builder: str) -> Rule:
    def rule(imp, node, a):
        x = imp.value(node.input[0])
        axis = a.get("axis", -1 if imp.opset >= 13 else 1) % max(x.ndim, 1)
        fn = _builder(imp, builder)
        if imp.opset >= 13 or axis == x.ndim - 1:
            return [fn(x, axis)]
        # before opset 13, softmax runs over all axes from `axis` on, flattened together
        flat = F.reshape(x, (0,) * axis + (-1,))
        return [F.reshape_like(fn(flat, -1), x)]
    return rule


def _where(imp, node, a):
    return [F.where(*(imp.value(n) for n in node.input))]


def _matmul(imp, node, a):
    x, w = imp.value(node.input[0]), imp.value(node.input[1])
    if x.ndim < 2 or w.ndim < 2:
        raise OnnxImportError(f"{imp.where()}: MatMul with a 1-D operand is not supported "
                              f"(shapes {x.shape} and {w.shape})")
    return [F.matmul(x, w)]


def _gemm(imp, node, a):
    c = imp.value(node.input[2]) if _input(node, 2) else None
    return [F.gemm(imp.value(node.input[0]), imp.value(node.input[1]), c,
                   trans_a=bool(a.get("transA", 0)), trans_b=bool(a.get("transB", 0)),
                   alpha=a.get("alpha", 1.0), beta=a.get("beta", 1.0))]


def _flatten(imp, node, a):
    x = imp.value(node.input[0])
    axis = int(a.get("axis", 1))
    if not -x.ndim <= axis <= x.ndim:
        raise OnnxImportError(f"{imp.where()}: axis {axis} is out of range for rank {x.ndim}")
    return [F.flatten(x, axis + x.ndim if axis < 0 else axis)]  # ONNX: axis in [-r, r]


def _reshape(imp, node, a):
    x = imp.value(node.input[0])
    allowzero = bool(a.get("allowzero", 0))
    if imp.is_const(node.input[1]):
        shape = imp.const(node.input[1])
        if allowzero and any(not isinstance(d, str) and int(d) == 0 for d in shape.reshape(-1)):
            raise OnnxImportError(f"{imp.where()}: Reshape with allowzero=1 and a 0 in the "
                                  "shape is not supported")
        static = _static_shape(x, shape)
        out = _reshape_dims(x, list(shape.reshape(-1)))
        if static is None and not any(is_unknown(d) for d in out):
            static = _static_shape(x, np.array(out, dtype=object))  # the -1 resolved
        if static is not None:
            return [F.reshape(x, static)]
    else:
        out = _unknown_dims(imp, node, 1)
    return [dyn_reshape(x, imp.shape_value(node.input[1]), out, allowzero)]


def _static_shape(x: Value, shape: np.ndarray) -> tuple | None:
    """A target shape with symbolic entries turned into 0 (copy the input dim) or -1, or
    None when more than one entry would need -1 (then the shape is computed at run time)."""
    dims = []
    for i, d in enumerate(shape.reshape(-1)):
        if isinstance(d, str):
            dims.append(0 if i < x.ndim and x.shape[i] == d else -1)
        else:
            dims.append(int(d))
    return tuple(dims) if dims.count(-1) <= 1 else None


def _reshape_dims(x: Value, target: list) -> tuple:
    """The output dims of a Reshape to ``target`` (ints and symbolic dims, ONNX 0 and -1)."""
    out = [x.shape[i] if not isinstance(d, str) and int(d) == 0 else d
           for i, d in enumerate(target)]
    out = [d if isinstance(d, str) else int(d) for d in out]
    if -1 in out:
        known = D.product(d for d in out if d != -1)
        fill = D.floordiv(D.product(x.shape), known)
        out = [(fill if fill is not None else unknown_dim("reshape")) if d == -1 else d
               for d in out]
    return tuple(out)


def _unknown_dims(imp, node, slot: int) -> tuple:
    """One unknown-until-run-time dim per entry of the run-time shape input ``slot``."""
    t = imp.value(node.input[slot]).type
    if t.rank != 1 or not isinstance(t.shape[0], int):
        raise OnnxImportError(f"{imp.where()}: the shape input has type {t}; graphdl needs "
                              "its length (the output rank) known")
    return tuple(unknown_dim(f"{node.output[0]}:{i}") for i in range(t.shape[0]))


def _broadcast_dim(d, target):
    """One dim of Expand's result: the target's where the input has 1, or where the input's
    dim is unknown until run time (it is 1 or equal to the target then), unless the target
    is 1."""
    target = target if isinstance(target, str) else int(target)
    if (not isinstance(d, str) and d == 1) or (is_unknown(d) and target != 1):
        return target
    return d


def _expand(imp, node, a):
    x = imp.value(node.input[0])
    if imp.is_const(node.input[1]):
        shape = tuple(imp.const(node.input[1]).reshape(-1))
    else:
        shape = _unknown_dims(imp, node, 1)
    rank = max(x.ndim, len(shape))
    xs = (1,) * (rank - x.ndim) + tuple(x.shape)
    ts = (1,) * (rank - len(shape)) + tuple(shape)
    out = tuple(_broadcast_dim(a_, b) for a_, b in zip(xs, ts))
    if out == tuple(x.shape):
        return [x]
    if all(isinstance(d, int) for d in out):
        return [F.broadcast_to(x, out)]
    return [dyn_expand(x, imp.shape_value(node.input[1]), out)]


def _transpose(imp, node, a):
    x = imp.value(node.input[0])
    return [F.transpose(x, a.get("perm"))]


def _axes(imp, node, a, slot: int = 1):
    if "axes" in a:
        return tuple(a["axes"])
    name = _input(node, slot)
    return imp.ints(name) if name else None


def _squeeze(imp, node, a):
    x = imp.value(node.input[0])
    return [F.squeeze(x, _axes(imp, node, a))]


def _unsqueeze(imp, node, a):
    return [F.unsqueeze(imp.value(node.input[0]), _axes(imp, node, a))]


def _reduce(builder: str) -> Rule:
    def rule(imp, node, a):
        x = imp.value(node.input[0])
        axes = _axes(imp, node, a)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = None
        return [_builder(imp, builder)(x, axes, keepdims=bool(a.get("keepdims", 1)))]
    return rule


def _concat(imp, node, a):
    return [F.concat([imp.value(n) for n in node.input], a["axis"])]


def _split(imp, node, a):
    x = imp.value(node.input[0])
    axis = a.get("axis", 0)
    if "split" in a:
        sizes = tuple(a["split"])
    elif _input(node, 1):
        sizes = imp.ints(node.input[1])
    else:
        sizes = int(a.get("num_outputs", len(node.output)))
        d = x.shape[axis]
        if isinstance(d, int) and sizes and d % sizes:  # opset 18: the last part is smaller
            chunk = -(-d // sizes)
            sizes = (chunk,) * (sizes - 1) + (d - chunk * (sizes - 1),)
    outs = F.split(x, sizes, axis)
    return list(outs)


def _slice(imp, node, a):
    x = imp.value(node.input[0])
    if imp.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = imp.ints(node.input[1]), imp.ints(node.input[2])
        axes = imp.ints(node.input[3]) if _input(node, 3) else None
        steps = imp.ints(node.input[4]) if _input(node, 4) else None
    return [F.slice(x, starts, ends, axes, steps)]


def _pad(imp, node, a):
    x = imp.value(node.input[0])
    if a.get("mode", "constant") != "constant":
        raise OnnxImportError(f"{imp.where()}: Pad mode {a['mode']!r} is not supported "
                              "(only constant)")
    pads = tuple(a["pads"]) if "pads" in a else imp.ints(node.input[1])
    value = float(a.get("value", 0.0))
    if _input(node, 2):
        value = float(imp.const(node.input[2]))
    axes = imp.ints(node.input[3]) if _input(node, 3) else tuple(range(x.ndim))
    k = len(axes)
    pairs = [(0, 0)] * x.ndim
    for i, ax in enumerate(axes):
        pairs[ax % x.ndim] = (pads[i], pads[i + k])
    return [F.pad(x, tuple(pairs), value)]


def _gather(imp, node, a):
    x = imp.value(node.input[0])
    idx = node.input[1]
    indices = imp.const(idx) if imp.is_const(idx) else imp.value(idx)
    return [F.gather(x, indices, a.get("axis", 0))]


def _constant_of_shape(imp, node, a):
    value = a.get("value", np.zeros(1, np.float32))
    name = node.input[0]
    if imp.is_const(name) and not is_symbolic(imp.const(name)):
        return [np.full(imp.ints(name), value.reshape(-1)[0], value.dtype)]
    out = tuple(imp.const(name).reshape(-1)) if imp.is_const(name) else \
        _unknown_dims(imp, node, 0)
    out = tuple(d if isinstance(d, str) else int(d) for d in out)
    return [dyn_fill(imp.shape_value(name), value.reshape(-1)[0], out)]


def _nonzero(imp, node, a):
    return [nonzero(imp.value(node.input[0]), unknown_dim(f"{node.output[0]}:1"))]


def _layer_norm(imp, node, a):
    x, scale = imp.value(node.input[0]), imp.value(node.input[1])
    bias = imp.value(node.input[2]) if _input(node, 2) else F.const(
        np.zeros(scale.shape, scale.dtype))
    axis, eps = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))
    y = _builder(imp, "layer_norm")(x, scale, bias, axis=axis, eps=eps)
    outs = [y, None, None]
    if any(o for o in node.output[1:3]):
        # the optional Mean and InvStdDev outputs: statistics over the axes from `axis` on,
        # kept as size-1 dims, computed in float (stash_type 1)
        axes = tuple(range(axis % x.ndim, x.ndim))
        xf = F.cast(x, "float32") if x.dtype != "float64" else x
        mean = F.mean(xf, axes, keepdims=True)
        var = F.mean(F.square(xf - mean), axes, keepdims=True)
        outs[1] = mean
        outs[2] = 1.0 / F.sqrt(var + eps)
    return outs


def _batch_norm(imp, node, a):
    """graphdl's BatchNorm (torch's semantics); an exported training-mode node imports in
    training mode with its running-statistics outputs, and the mode then follows the
    compiled graph (``Model.graph(training=...)``)."""
    x, scale, bias = (imp.value(n) for n in node.input[:3])
    # running statistics are state that training updates, not trainable weights
    mean, var = (imp.value(n, trainable=False) for n in node.input[3:5])
    # ONNX: running = running * momentum + batch * (1 - momentum); graphdl follows torch
    momentum = 1.0 - a.get("momentum", 0.9)
    training = bool(a.get("training_mode", 0))
    # a node that declares ONNX's training mode updates the running variance as ONNX defines
    # (biased); an inference node keeps torch's rule when the model is fine-tuned
    y, new_mean, new_var = F.apply("BatchNorm", x, scale, bias, mean, var, training=training,
                                   momentum=momentum, eps=float(a.get("epsilon", 1e-5)),
                                   unbiased_var=not training)
    return [y, new_mean, new_var] if training else [y]


# ---- convolution and pooling (2-D, NCHW) ---------------------------------------------------

def _spatial(imp, node, a, x: Value, kernel) -> tuple[tuple, tuple, list[int]]:
    """strides, dilations and explicit pads (top, left, bottom, right), auto_pad resolved."""
    if x.ndim != 4:
        raise OnnxImportError(f"{imp.where()}: only 2-D (NCHW) {node.op_type} is supported, "
                              f"input has shape {x.shape}")
    strides = tuple(a.get("strides", (1, 1)))
    dilations = tuple(a.get("dilations", (1, 1)))
    pads = list(a.get("pads", (0, 0, 0, 0)))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            size = x.shape[2 + i]
            if not isinstance(size, int):
                raise OnnxImportError(f"{imp.where()}: auto_pad={auto} needs static spatial "
                                      "dims")
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    return strides, dilations, pads


def _conv(imp, node, a):
    x, w = imp.value(node.input[0]), imp.value(node.input[1])
    b = imp.value(node.input[2]) if _input(node, 2) else None
    kernel = tuple(a.get("kernel_shape", w.shape[2:]))
    strides, dilations, pads = _spatial(imp, node, a, x, kernel)
    return [_builder(imp, "conv2d")(x, w, b, stride=strides, padding=tuple(pads),
                                    dilation=dilations, groups=a.get("group", 1))]


def _max_pool(imp, node, a):
    x = imp.value(node.input[0])
    kernel = tuple(a["kernel_shape"])
    strides, dilations, pads = _spatial(imp, node, a, x, kernel)
    window = dict(stride=strides, padding=tuple(pads), dilation=dilations,
                  ceil_mode=bool(a.get("ceil_mode", 0)))
    if len(node.output) > 1 and node.output[1]:  # Indices: flat positions in x
        return list(_builder(imp, "max_pool2d_with_indices")(
            x, kernel, storage_order=int(a.get("storage_order", 0)), **window))
    return [_builder(imp, "max_pool2d")(x, kernel, **window)]


def _avg_pool(imp, node, a):
    x = imp.value(node.input[0])
    kernel = tuple(a["kernel_shape"])
    strides, dilations, pads = _spatial(imp, node, a, x, kernel)
    if any(d != 1 for d in dilations):
        raise OnnxImportError(f"{imp.where()}: AveragePool with dilations {dilations} is not "
                              "supported (graphdl's average pooling has no dilation)")
    # ONNX counts padding in the mean only when asked (torch's default is the opposite)
    return [_builder(imp, "avg_pool2d")(
        x, kernel, stride=strides, padding=tuple(pads),
        count_include_pad=bool(a.get("count_include_pad", 0)),
        ceil_mode=bool(a.get("ceil_mode", 0)))]


def _global_avg_pool(imp, node, a):
    return [_builder(imp, "global_avg_pool")(imp.value(node.input[0]))]


def _global_max_pool(imp, node, a):
    x = imp.value(node.input[0])
    return [F.max(x, tuple(range(2, x.ndim)), keepdims=True)]


def _shape(imp, node, a):
    x = imp.env[node.input[0]]
    dims = x.shape
    arr = np.array([d if isinstance(d, D.DimExpr) else SymDim(d) if isinstance(d, str)
                    else int(d) for d in dims], dtype=object)  # (N*1024 stays an expression)
    arr = arr[a.get("start", 0):a.get("end", len(dims))]
    if not is_symbolic(arr):
        arr = arr.astype(np.int64)
    return [arr]


def _size(imp, node, a):
    x = imp.env[node.input[0]]
    n = D.product(x.shape)  # an int, or an expression of the symbolic dims (N*32*8*8)
    if isinstance(n, str):
        return [np.array(SymDim(n) if not isinstance(n, D.DimExpr) else n, dtype=object)]
    return [np.array(int(n), np.int64)]


IMPORT_RULES: dict[str, Rule] = {
    **{op: _unary(b) for op, b in UNARY_IMPORTS.items()},
    **{op: _binary(b) for op, b in BINARY_IMPORTS.items()},
    **{op: _variadic(b) for op, b in VARIADIC_IMPORTS.items()},
    "Identity": _identity, "Constant": _constant, "Dropout": _dropout, "Cast": _cast,
    "Clip": _clip, "LeakyRelu": _leaky_relu, "Where": _where,
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"),
    "MatMul": _matmul, "Gemm": _gemm, "Flatten": _flatten, "Reshape": _reshape,
    "Expand": _expand, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "Concat": _concat, "Split": _split, "Slice": _slice,
    "Pad": _pad, "Gather": _gather, "ConstantOfShape": _constant_of_shape,
    "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm, "Conv": _conv,
    "MaxPool": _max_pool, "AveragePool": _avg_pool, "GlobalAveragePool": _global_avg_pool,
    "GlobalMaxPool": _global_max_pool, "Shape": _shape, "Size": _size, "NonZero": _nonzero,
}

# Op families with their rules in their own modules, graphdl.backends.onnx_import_rules_<f>;
# each module's RULES table joins IMPORT_RULES here.
RULE_FAMILIES = ("math", "index", "loss", "attention", "nn", "norm", "quant", "rnn",
                 "control", "signal", "extra", "sample", "pool",
                 "runtime")  # last: its rules wrap the static rules registered before it
for _family in RULE_FAMILIES:
    IMPORT_RULES.update(importlib.import_module(
        f"graphdl.backends.onnx_import_rules_{_family}").RULES)

