"""Col2Im (ONNX, torch's fold) and its adjoint Im2Col (torch's unfold), N-D.

Col2Im sums sliding blocks back into an image: ``cols`` (N, C * prod(block), L) holds, for
each of the L block positions (row-major over the spatial axes) and each tap of the block,
one value per channel; the image's shape and the block's may arrive as run-time tensors (the
output's dims are then unknown until run time). Its gradient is Im2Col, which needs both
shapes static: when they are known the op carries them in ``image``/``block``.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import GraphError, TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, \
    constant, fail, lower, register, write_into

__all__ = ["col2im", "im2col"]

_GEOMETRY = {
    "dilations": Attr(tuple, None, "per spatial axis (default 1)"),
    "pads": Attr(tuple, None, "begins then ends per spatial axis (default 0)"),
    "strides": Attr(tuple, None, "per spatial axis (default 1)"),
}


def _geometry(attrs, k: int):
    dil = tuple(attrs["dilations"] or (1,) * k)
    pads = tuple(attrs["pads"] or (0,) * 2 * k)
    strides = tuple(attrs["strides"] or (1,) * k)
    return dil, pads, strides


def block_table(image, block, dil, pads, strides) -> np.ndarray:
    """(prod(block), L): the flat image position each tap of each block position reads,
    -1 where it falls in the padding."""
    k = len(image)
    counts = [(image[d] + pads[d] + pads[k + d] - (dil[d] * (block[d] - 1) + 1)) // strides[d]
              + 1 for d in range(k)]
    if min(counts, default=1) < 1:
        raise ValueError(f"no block of {tuple(block)} fits the image {tuple(image)} with "
                         f"pads {pads}")
    flat = np.zeros((1,) * (2 * k), np.int64)
    inside = np.ones((1,) * (2 * k), bool)
    stride_flat = [int(np.prod(image[d + 1:])) for d in range(k)]
    for d in range(k):
        # axes: (tap_1..tap_k, pos_1..pos_k)
        tap = np.arange(block[d]).reshape([1] * d + [-1] + [1] * (2 * k - d - 1))
        at = np.arange(counts[d]).reshape([1] * (k + d) + [-1] + [1] * (k - d - 1))
        pos = at * strides[d] - pads[d] + tap * dil[d]
        inside = inside & (pos >= 0) & (pos < image[d])
        flat = flat + np.clip(pos, 0, image[d] - 1) * stride_flat[d]
    shape = tuple(block) + tuple(counts)
    flat, inside = np.broadcast_to(flat, shape), np.broadcast_to(inside, shape)
    return np.where(inside, flat, -1).reshape(int(np.prod(block)), -1)


def _vector(op, t, k, types, what):
    if t.dtype != "int64" or t.rank != 1 or t.shape[0] != k:
        raise fail(op, f"{what} must be int64[{k}], got {t}", list(types))


# ---- Col2Im ----------------------------------------------------------------------------------

def _col2im_infer(types, attrs):
    check_arity("Col2Im", types, 3)
    cols, image, block = types
    out = tuple(attrs["out_shape"])
    k = len(out) - 2
    if cols.rank != 3 or k < 1:
        raise fail("Col2Im", "needs cols (N, C * prod(block), L) and an (N, C, D1..Dk) "
                   "out_shape", list(types))
    _vector("Col2Im", image, k, types, "image_shape")
    _vector("Col2Im", block, k, types, "block_shape")
    return [TensorType(out, cols.dtype)]


def _col2im_kernel(xs, attrs, out):
    cols, image, block = xs
    image, block = [int(v) for v in image], [int(v) for v in block]
    table = block_table(image, block, *_geometry(attrs, len(image)))
    n, cb, length = cols.shape
    taps = table.shape[0]
    if cb % taps or table.shape[1] != length:
        raise ValueError(f"Col2Im: cols {cols.shape} do not fit {taps} taps x "
                         f"{table.shape[1]} block positions")
    c = cb // taps
    size = int(np.prod(image))
    y = np.zeros((n, c, size + 1), cols.dtype)  # the last slot takes the padding
    v = cols.reshape(n, c, taps, length)
    for t in range(taps):  # within one tap the block positions hit distinct pixels
        y[:, :, np.where(table[t] < 0, size, table[t])] += v[:, :, t]
    y = y[:, :, :size].reshape((n, c, *image))
    return write_into(out, y)


def _col2im_vjp(F, node, grads):
    cols = node.inputs[0]
    if node.attrs["image"] is None or node.attrs["block"] is None:
        raise GraphError("the gradient of Col2Im needs its image_shape and block_shape known "
                         f"when the graph is built (made at {node.site})")
    g = apply("Im2Col", grads[0], block=tuple(node.attrs["block"]),
              **{k: node.attrs[k] for k in _GEOMETRY}, out_shape=tuple(cols.shape))
    return [g, None, None]


def _col2im_onnx(attrs, tin, tout, opset):
    k = tin[1].shape[0]
    dil, pads, strides = _geometry(attrs, k)
    return lower("Col2Im", 3, dilations=list(dil), pads=list(pads), strides=list(strides))


register(OpDef(name="Col2Im", infer=_col2im_infer, kernel=_col2im_kernel, vjp=_col2im_vjp,
               onnx=_col2im_onnx,
               attrs={**_GEOMETRY,
                      "out_shape": Attr(tuple, REQUIRED, "(N, C, D1..Dk): ints, symbols or "
                                        "dims unknown until run time"),
                      "image": Attr(tuple, None, "the image shape when static (gradient)"),
                      "block": Attr(tuple, None, "the block shape when static (gradient)")},
               doc="Sum sliding blocks back into an image (ONNX Col2Im, torch's fold)."))


# ---- Im2Col ----------------------------------------------------------------------------------

def _im2col_infer(types, attrs):
    check_arity("Im2Col", types, 1)
    (x,) = types
    block = tuple(attrs["block"])
    out = tuple(attrs["out_shape"])
    if x.rank != len(block) + 2 or len(out) != 3:
        raise fail("Im2Col", f"needs an (N, C, D1..Dk) image for the block {block}",
                   list(types))
    return [TensorType(out, x.dtype)]


def _im2col_kernel(xs, attrs, out):
    x = xs[0]
    block = [int(b) for b in attrs["block"]]
    table = block_table(list(x.shape[2:]), block, *_geometry(attrs, len(block)))
    n, c = x.shape[:2]
    flat = np.concatenate([x.reshape(n, c, -1), np.zeros((n, c, 1), x.dtype)], 2)
    y = flat[:, :, np.where(table < 0, flat.shape[2] - 1, table)].reshape(n, -1,
                                                                          table.shape[1])
    return write_into(out, y)


def _im2col_vjp(F, node, grads):
    x = node.inputs[0]
    image = tuple(int(d) for d in x.shape[2:])
    return [col2im(grads[0], image, tuple(node.attrs["block"]), out_shape=tuple(x.shape),
                   **{k: node.attrs[k] for k in _GEOMETRY})]


def _im2col_onnx(attrs, tin, tout, opset):
    """A grouped Conv whose kernels pick one tap each: channel c * B + t of the output is tap
    t of channel c (Col2Im's layout), then the block positions flattened."""
    block = [int(b) for b in attrs["block"]]
    c, taps = int(tin[0].shape[1]), int(np.prod(block))
    dil, pads, strides = _geometry(attrs, len(block))
    picks = np.tile(np.eye(taps).reshape(taps, 1, *block), (c, 1) + (1,) * len(block))
    node = OnnxNode("Conv", ("in0", "picks"), ("blocks",),
                    {"group": c, "kernel_shape": block, "dilations": list(dil),
                     "pads": list(pads), "strides": list(strides)})
    return OnnxLowering((node, OnnxNode("Reshape", ("blocks", "shape"), ("out0",))),
                        {"picks": picks.astype(np.dtype(tin[0].dtype)),
                         "shape": np.array([0, c * taps, -1], np.int64)})


register(OpDef(name="Im2Col", infer=_im2col_infer, kernel=_im2col_kernel, vjp=_im2col_vjp,
               onnx=_im2col_onnx,
               attrs={**_GEOMETRY,
                      "block": Attr(tuple, REQUIRED, "the block shape"),
                      "out_shape": Attr(tuple, REQUIRED, "(N, C * prod(block), L)")},
               doc="Sliding blocks of an image as columns (torch's unfold; Col2Im's "
                   "adjoint)."))


def col2im(cols, image_shape, block_shape, out_shape=None, dilations=None, pads=None,
           strides=None):
    """Sum the sliding blocks ``cols`` (N, C * prod(block), L) into an (N, C, *image) image.
    ``image_shape``/``block_shape`` are int sequences or int64 values known at run time (then
    ``out_shape`` gives the output's dims)."""
    static = {}
    for key, v in (("image", image_shape), ("block", block_shape)):
        static[key] = None if hasattr(v, "node") else tuple(int(d) for d in v)
    if out_shape is None:
        if static["image"] is None or static["block"] is None:
            raise ValueError("col2im: give out_shape when a shape is a run-time value")
        taps = int(np.prod(static["block"]))
        out_shape = (cols.shape[0], cols.shape[1] // taps, *static["image"])
    return apply("Col2Im", cols, _int64(image_shape), _int64(block_shape),
                 out_shape=tuple(out_shape), image=static["image"], block=static["block"],
                 dilations=_opt(dilations), pads=_opt(pads), strides=_opt(strides))


def im2col(x, block, dilations=None, pads=None, strides=None):
    """The sliding blocks of ``x`` (N, C, D1..Dk) as columns (N, C * prod(block), L)."""
    block = tuple(int(b) for b in block)
    image = tuple(int(d) for d in x.shape[2:])
    dil, pd, st = _geometry({"dilations": _opt(dilations), "pads": _opt(pads),
                             "strides": _opt(strides)}, len(block))
    length = block_table(image, block, dil, pd, st).shape[1]
    return apply("Im2Col", x, block=block, dilations=_opt(dilations), pads=_opt(pads),
                 strides=_opt(strides),
                 out_shape=(x.shape[0], x.shape[1] * int(np.prod(block)), length))


def _int64(v):
    return v if hasattr(v, "node") else constant(np.array(v, np.int64))


def _opt(v):
    return None if v is None else tuple(int(i) for i in v)
