"""Import rules for GridSample, AffineGrid, Col2Im and Det; ops rebuilt from existing ones:
MaxUnpool and TensorScatter (one ScatterElements each), SwiGLU (a * sigmoid(alpha * a) * b)
and Pad's reflect/edge/wrap modes (one Gather per axis); and bfloat16 inputs of Softmax, Elu,
Celu and Attention (computed in float32, rounded back)."""
from __future__ import annotations

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES
from graphdl.ir import Value
from graphdl.ops.dynamic import unknown_dim


def _input(node, i: int) -> bool:
    return len(node.input) > i and node.input[i] != ""


def _grid_sample(imp, node, a):
    x, grid = imp.value(node.input[0]), imp.value(node.input[1])
    return [F.grid_sample(x, grid, a.get("mode", "bilinear"), a.get("padding_mode", "zeros"),
                          bool(a.get("align_corners", 0)))]


def _affine_grid(imp, node, a):
    theta, name = imp.value(node.input[0]), node.input[1]
    k = theta.shape[1]
    if imp.is_const(name):
        sizes = imp.ints(name)
        out = (sizes[0], *sizes[2:], k)
    else:  # the grid's dims come from a run-time size
        out = (theta.shape[0], *(unknown_dim(f"{node.output[0]}:{i}") for i in range(1, k + 1)),
               k)
    size = F.cast(imp.value(name), "int64")
    return [F.affine_grid(theta, size, bool(a.get("align_corners", 0)), out)]


def _swiglu(imp, node, a):
    # y = a * sigmoid(alpha * a) * b (opset 28), in the inputs' dtype as ONNX's reference
    x, gate = imp.value(node.input[0]), imp.value(node.input[1])
    if tuple(x.shape) != tuple(gate.shape) or x.dtype != gate.dtype:
        raise OnnxImportError(f"{imp.where()}: SwiGLU needs inputs of one shape and dtype, "
                              f"got {x.type} and {gate.type}")
    alpha = float(a.get("alpha", 1.0))
    return [F.mul(F.mul(x, F.sigmoid(F.mul(x, alpha) if alpha != 1.0 else x)), gate)]


def _tensor_scatter(imp, node, a):
    # present = past with update written along `axis` at write_indices[b] + s (mod the cache
    # length when circular): one ScatterElements with those positions broadcast over update
    past, update = imp.value(node.input[0]), imp.value(node.input[1])
    rank = past.ndim
    axis = int(a.get("axis", -2)) % rank
    mode = a.get("mode", "linear")
    if mode not in ("linear", "circular") or update.ndim != rank or axis == 0:
        raise OnnxImportError(f"{imp.where()}: TensorScatter needs mode linear or circular, "
                              f"update of the cache's rank and a non-batch axis")
    if any(not isinstance(update.shape[i], int) for i in range(rank)):
        raise OnnxImportError(f"{imp.where()}: TensorScatter needs a static update shape")
    if _input(node, 2):
        start = F.cast(imp.value(node.input[2]), "int64")
    else:
        start = F.const(np.zeros(update.shape[0], np.int64))
    start = F.reshape(start, (-1,) + (1,) * (rank - 1))
    steps = np.arange(update.shape[axis], dtype=np.int64).reshape(
        (1,) * axis + (-1,) + (1,) * (rank - axis - 1))
    pos = F.add(start, F.const(steps))
    if mode == "circular":
        pos = F.mod(pos, F.const(np.array(past.shape[axis], np.int64)))
    return [F.scatter_elements(past, F.broadcast_to(pos, tuple(update.shape)), update, axis)]


def _col2im(imp, node, a):
    cols = imp.value(node.input[0])
    shapes = []
    for name in node.input[1:3]:
        shapes.append(imp.ints(name) if imp.is_const(name) else
                      F.cast(imp.value(name), "int64"))
    image, block = shapes
    k = len(image) if not hasattr(image, "node") else image.shape[0]
    if not hasattr(image, "node") and not hasattr(block, "node"):
        out = None  # static: the builder works it out
    else:
        taps = int(np.prod(block)) if not hasattr(block, "node") else None
        channels = cols.shape[1] // taps if taps else unknown_dim(f"{node.output[0]}:1")
        out = (cols.shape[0], channels,
               *(image if not hasattr(image, "node") else
                 (unknown_dim(f"{node.output[0]}:{2 + i}") for i in range(k))))
    return [F.col2im(cols, image, block, out, a.get("dilations"), a.get("pads"),
                     a.get("strides"))]


def _det(imp, node, a):
    return [F.det(imp.value(node.input[0]))]


def _max_unpool(imp, node, a):
    # y = zeros(N, C, *out) with x written at its flat indices: one ScatterElements
    x, idx = imp.value(node.input[0]), imp.value(node.input[1])
    kernel = [int(k) for k in a["kernel_shape"]]
    k = len(kernel)
    strides = [int(s) for s in a.get("strides", [1] * k)]
    pads = [int(p) for p in a.get("pads", [0] * 2 * k)]
    if _input(node, 2):
        if not imp.is_const(node.input[2]):
            raise OnnxImportError(f"{imp.where()}: MaxUnpool needs a constant output_shape")
        out = tuple(int(d) for d in imp.const(node.input[2]).tolist())
    else:
        out = tuple(x.shape[:2]) + tuple((x.shape[2 + i] - 1) * strides[i] - pads[i]
                                         - pads[k + i] + kernel[i] for i in range(k))
    if any(not isinstance(d, int) for d in tuple(x.shape) + out):
        raise OnnxImportError(f"{imp.where()}: MaxUnpool needs static shapes")
    total = int(np.prod(out))
    flat = F.scatter_elements(F.const(np.zeros(total, np.dtype(x.dtype))),
                              F.reshape(F.cast(idx, "int64"), (-1,)), F.reshape(x, (-1,)), 0)
    return [F.reshape(flat, out)]


def _pad_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index along one axis of size n for each output position, padded by ``before``
    and ``after`` (negative: cropped) in ``mode``: reflect (mirror without repeating the
    edge), edge (repeat it) or wrap (periodic)."""
    i = np.arange(-before, n + after)
    if mode == "edge" or n == 1:
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    m = np.mod(i, 2 * n - 2)  # reflect: period 2(n - 1)
    return np.where(m < n, m, 2 * n - 2 - m)


def _pad_modes(imp, node, a):
    """Pad in reflect, edge or wrap mode with constant pads: one Gather per padded axis (its
    gradient sums the copies back)."""
    mode = a.get("mode", "constant")
    if mode == "constant":
        return _BASE["Pad"](imp, node, a)
    x = imp.value(node.input[0])
    if mode not in ("reflect", "edge", "wrap"):
        raise OnnxImportError(f"{imp.where()}: Pad mode {mode!r} is not one of constant, "
                              "reflect, edge, wrap")
    pads = tuple(a["pads"]) if "pads" in a else imp.ints(node.input[1])
    axes = imp.ints(node.input[3]) if _input(node, 3) else tuple(range(x.ndim))
    k = len(axes)
    for i, ax in enumerate(axes):
        ax %= x.ndim
        before, after = int(pads[i]), int(pads[i + k])
        if before == 0 and after == 0:
            continue
        n = x.shape[ax]
        if not isinstance(n, int) or (mode == "reflect" and max(before, after) >= n > 1):
            raise OnnxImportError(f"{imp.where()}: Pad mode {mode} needs a static axis {ax} "
                                  f"longer than its pads, got {x.shape} and pads {pads}")
        x = F.gather(x, F.const(_pad_index(n, before, after, mode)), ax)
    return [x]


def _in_float32(op: str):
    """The op's rule run on bfloat16 inputs cast to float32, its float32 outputs cast back
    (ONNX runs these ops on bfloat16; graphdl's kernels compute them in float32)."""

    def rule(imp, node, a):
        base = _BASE[op]
        narrow = [n for n in dict.fromkeys(node.input) if n and _dtype(imp.env.get(n)) ==
                  "bfloat16"]
        if not narrow:
            return base(imp, node, a)
        saved = {n: imp.env[n] for n in narrow}
        try:
            for n in narrow:  # the rule reads its inputs by name: widen them in place
                imp.env[n] = F.cast(imp.value(n), "float32")
            outs = base(imp, node, a)
        finally:
            imp.env.update(saved)
        return [F.cast(o, "bfloat16") if isinstance(o, Value) and o.dtype == "float32" else o
                for o in outs]
    return rule


def _dtype(v) -> str | None:
    return v.dtype if isinstance(v, Value) else getattr(getattr(v, "dtype", None), "name", None)


_WIDENED = ("Softmax", "LogSoftmax", "Elu", "Celu", "Attention")
_BASE = {op: IMPORT_RULES[op] for op in _WIDENED + ("Pad",)}  # the rules these wrap

RULES = {**{op: _in_float32(op) for op in _WIDENED}, "Pad": _pad_modes,
         "GridSample": _grid_sample, "AffineGrid": _affine_grid, "Col2Im": _col2im,
         "Det": _det, "TensorScatter": _tensor_scatter, "MaxUnpool": _max_unpool,
         "SwiGLU": _swiglu}
