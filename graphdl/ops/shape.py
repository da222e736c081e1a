"""Shape ops that move no data between elements: reshape, flatten, transpose, squeeze,
unsqueeze, expand (broadcast_to) and expand_as, plus the gradient helper ``sum_to``."""
from __future__ import annotations

import numpy as np

from graphdl import dims

from graphdl.ir import Dim, TensorType
from graphdl.ops.infer import broadcast_shapes, check_arity, norm_axes
from graphdl.ops.reduce import sum as reduce_sum
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, fail, \
    lower, register


def dim_product(op: str, dims) -> Dim:
    """Product of dims; a single symbolic dim survives only when the rest multiply to 1."""
    ints = [d for d in dims if isinstance(d, int)]
    syms = [d for d in dims if not isinstance(d, int)]
    prod = int(np.prod(ints)) if ints else 1
    if not syms:
        return prod
    if len(syms) == 1 and prod == 1:
        return syms[0]
    raise fail(op, f"cannot merge the symbolic dimension(s) {syms} with others {tuple(dims)}; "
               "keep the batch dimension separate")


def _reshape_infer(types, attrs):
    check_arity("Reshape", types, 1)
    t = types[0]
    target = [t.shape[i] if d == 0 else d for i, d in enumerate(attrs["shape"])]
    if sum(1 for d in target if d == -1) > 1:
        raise fail("Reshape", f"shape {tuple(attrs['shape'])} has more than one -1", types)
    bad = fail("Reshape", f"cannot reshape {tuple(t.shape)} to {tuple(attrs['shape'])}", types)
    # element counts as polynomials over the symbolic dims (graphdl.dims): N*16 elements
    # reshaped to (-1, 8) gives a first dim of 2*N
    total = dims.product(t.shape)
    known = dims.product(d for d in target if d != -1)
    if -1 in target:
        fill = dims.floordiv(total, known) if known != 0 else None
        if fill is None or dims.mul(fill, known) != total:
            raise bad
        target = [fill if d == -1 else d for d in target]
    elif known != total:
        raise bad
    return [TensorType(tuple(target), t.dtype)]


def _reshape_kernel(xs, attrs, out):
    x = xs[0]
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(attrs["shape"])]
    return np.reshape(x, shape)


def _reshape_back(F, n, g):
    return [F.reshape_like(g[0], n.inputs[0])]


register(OpDef(
    name="Reshape", infer=_reshape_infer, kernel=_reshape_kernel, vjp=_reshape_back,
    onnx=lambda a, ti, to, o: OnnxLowering(
        (OnnxNode("Reshape", ("in0", "shape"), ("out0",)),),
        {"shape": np.array(a["shape"], np.int64)}),
    attrs={"shape": Attr(tuple, REQUIRED, "target dims; 0 copies the input's, -1 is inferred")},
    view=True, reshape=True,
))


def _flatten_infer(types, attrs):
    check_arity("Flatten", types, 1)
    t = types[0]
    axis = attrs["axis"]
    if not 0 <= axis <= t.rank:
        raise fail("Flatten", f"axis {axis} is out of range for rank {t.rank}", types)
    return [TensorType((dim_product("Flatten", t.shape[:axis]),
                        dim_product("Flatten", t.shape[axis:])), t.dtype)]


def _flatten_kernel(xs, attrs, out):
    x, axis = xs[0], attrs["axis"]
    return x.reshape(int(np.prod(x.shape[:axis])), -1) if x.size else x.reshape(
        int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


register(OpDef(name="Flatten", infer=_flatten_infer, kernel=_flatten_kernel, vjp=_reshape_back,
               onnx=lambda a, ti, to, o: lower("Flatten", axis=int(a["axis"])),
               attrs={"axis": Attr(int, 1, "dims before it form the rows, the rest the columns")},
               view=True, reshape=True))


def _transpose_infer(types, attrs):
    check_arity("Transpose", types, 1)
    t = types[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(t.rank)):
        raise fail("Transpose", f"perm {tuple(perm)} is not a permutation of rank {t.rank}",
                   types)
    return [TensorType(tuple(t.shape[p] for p in perm), t.dtype)]


def _transpose_vjp(F, n, g):
    inverse = tuple(int(i) for i in np.argsort(n.attrs["perm"]))
    return [F.transpose(g[0], inverse)]


register(OpDef(name="Transpose", infer=_transpose_infer,
               kernel=lambda xs, a, out: np.transpose(xs[0], a["perm"]),
               vjp=_transpose_vjp,
               onnx=lambda a, ti, to, o: lower("Transpose", perm=list(a["perm"])),
               attrs={"perm": Attr(tuple, REQUIRED, "output axis i is input axis perm[i]")},
               view=True))


def _squeeze_infer(types, attrs):
    check_arity("Squeeze", types, 1)
    t = types[0]
    axes = norm_axes("Squeeze", attrs["axes"], t.rank)
    for a in axes:
        if t.shape[a] != 1:
            raise fail("Squeeze", f"axis {a} has size {t.shape[a]}, not 1", types)
    return [TensorType(tuple(d for i, d in enumerate(t.shape) if i not in axes), t.dtype)]


def _unsqueeze_infer(types, attrs):
    check_arity("Unsqueeze", types, 1)
    t = types[0]
    rank = t.rank + len(attrs["axes"])
    axes = norm_axes("Unsqueeze", attrs["axes"], rank)
    dims = iter(t.shape)
    return [TensorType(tuple(1 if i in axes else next(dims) for i in range(rank)), t.dtype)]


def _axes_input_lowering(op):
    return lambda a, ti, to, o: OnnxLowering(
        (OnnxNode(op, ("in0", "axes"), ("out0",)),), {"axes": np.array(a["axes"], np.int64)})


register(OpDef(name="Squeeze", infer=_squeeze_infer,
               kernel=lambda xs, a, out: np.squeeze(xs[0], tuple(a["axes"])),
               vjp=_reshape_back, onnx=_axes_input_lowering("Squeeze"),
               attrs={"axes": Attr(tuple, REQUIRED, "size-1 axes to drop")},
               view=True, reshape=True))


def _unsqueeze_kernel(xs, attrs, out):
    x = xs[0]
    shape = list(x.shape)
    for a in sorted(d % (x.ndim + len(attrs["axes"])) for d in attrs["axes"]):
        shape.insert(a, 1)
    return x.reshape(shape)  # a view, as np.expand_dims (without its Python-level checks)


register(OpDef(name="Unsqueeze", infer=_unsqueeze_infer,
               kernel=_unsqueeze_kernel,
               vjp=_reshape_back, onnx=_axes_input_lowering("Unsqueeze"),
               attrs={"axes": Attr(tuple, REQUIRED, "positions of new size-1 axes (output)")},
               view=True, reshape=True))


def _expand_infer(types, attrs):
    check_arity("Expand", types, 1)
    t = types[0]
    shape = tuple(attrs["shape"])
    out = broadcast_shapes("Expand", [t, TensorType(shape, t.dtype)])
    return [TensorType(out, t.dtype)]


def _expand_kernel(xs, attrs, out):
    shape = np.broadcast_shapes(xs[0].shape, tuple(attrs["shape"]))
    if out is not None:
        np.copyto(out, np.broadcast_to(xs[0], shape))
        return out
    return np.array(np.broadcast_to(xs[0], shape))


register(OpDef(
    name="Expand", infer=_expand_infer, kernel=_expand_kernel,
    vjp=lambda F, n, g: [F.sum_to(g[0], n.inputs[0].shape)],
    onnx=lambda a, ti, to, o: OnnxLowering(
        (OnnxNode("Expand", ("in0", "shape"), ("out0",)),),
        {"shape": np.array(a["shape"], np.int64)}),
    attrs={"shape": Attr(tuple, REQUIRED, "the shape to broadcast to")}, expand=True,
))


def _like_infer(op, broadcast):
    def infer(types, attrs):
        check_arity(op, types, 2)
        x, like = types
        if broadcast:
            out = broadcast_shapes(op, [x, like])
            if out != like.shape:
                raise fail(op, f"{tuple(x.shape)} does not broadcast to {tuple(like.shape)}",
                           types)
        elif dims.product(x.shape) != dims.product(like.shape):  # polynomials: (T, N, 8)
            # and (T, N, 2, 4) hold the same number of elements
            raise fail(op, f"cannot reshape {tuple(x.shape)} to {tuple(like.shape)}", types)
        return [TensorType(like.shape, x.dtype)]
    return infer


def _expand_as_kernel(xs, attrs, out):
    if out is not None:
        np.copyto(out, np.broadcast_to(xs[0], xs[1].shape))
        return out
    return np.array(np.broadcast_to(xs[0], xs[1].shape))


def _shape_of_lowering(op):
    return lambda a, ti, to, o: OnnxLowering((
        OnnxNode("Shape", ("in1",), ("s",)),
        OnnxNode(op, ("in0", "s"), ("out0",)),
    ))


register(OpDef(name="ExpandAs", infer=_like_infer("ExpandAs", True), kernel=_expand_as_kernel,
               vjp=lambda F, n, g: [F.sum_to(g[0], n.inputs[0].shape), None],
               onnx=_shape_of_lowering("Expand"), attrs={}, expand=True,
               doc="Broadcast input 0 to the shape of input 1 (known at run time)."))
register(OpDef(name="ReshapeLike", infer=_like_infer("ReshapeLike", False),
               kernel=lambda xs, a, out: np.reshape(xs[0], xs[1].shape),
               vjp=lambda F, n, g: [F.reshape_like(g[0], n.inputs[0]), None],
               onnx=_shape_of_lowering("Reshape"), attrs={}, view=True, reshape=True,
               doc="Reshape input 0 to the shape of input 1 (known at run time)."))


# ---- builders ------------------------------------------------------------------------------

def reshape(x, shape):
    """Reshape with ONNX semantics: one -1 is inferred, 0 copies the input dimension."""
    return apply("Reshape", x, shape=tuple(int(d) for d in shape))


def reshape_like(x, like):
    """Reshape ``x`` to the shape of ``like``; static when possible, else at run time."""
    if tuple(x.shape) == tuple(like.shape):
        return x
    dims = like.shape
    syms = [d for d in dims if not isinstance(d, int)]
    if not syms:
        return reshape(x, dims)
    if len(syms) == 1:
        return reshape(x, tuple(-1 if not isinstance(d, int) else d for d in dims))
    return apply("ReshapeLike", x, like)


def flatten(x, axis: int = 1):
    """Collapse to 2-D: dims before ``axis`` and dims from ``axis`` on."""
    return apply("Flatten", x, axis=int(axis))


def transpose(x, perm=None):
    """Permute axes (reverse them when ``perm`` is None)."""
    perm = tuple(range(x.ndim))[::-1] if perm is None else tuple(int(p) for p in perm)
    return apply("Transpose", x, perm=perm)


def swap_last(x):
    """Swap the last two axes."""
    perm = list(range(x.ndim))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return transpose(x, perm)


def squeeze(x, axes=None):
    """Remove size-1 axes (all of them when ``axes`` is None)."""
    if axes is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return x if not axes else apply("Squeeze", x, axes=tuple(int(a) for a in axes))


def unsqueeze(x, axes):
    """Insert size-1 axes at ``axes`` (positions in the output)."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return apply("Unsqueeze", x, axes=tuple(int(a) for a in axes))


def broadcast_to(x, shape):
    """Broadcast to a static ``shape`` (NumPy rules)."""
    return apply("Expand", x, shape=tuple(int(d) for d in shape))


def expand_as(x, like):
    """Broadcast ``x`` to the shape of ``like`` (which may have a symbolic batch)."""
    if tuple(x.shape) == tuple(like.shape):
        return x
    return apply("ExpandAs", x, like)


def sum_to(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``g``."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = reduce_sum(g, tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = reduce_sum(g, axes, keepdims=True)
    return g


