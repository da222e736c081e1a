"""Resize (ONNX Resize/Upsample): nearest, linear and cubic interpolation with every
coordinate transformation mode, antialiasing, exclude_outside and tf_crop_and_resize.

Resizing is separable and linear in the input: along each resized axis the output is
``W @ x`` for an (out, in) weight matrix that depends only on the sizes and the attributes
(plus a constant where tf_crop_and_resize extrapolates). The kernel applies those matrices;
the VJP applies their transposes as graph matmuls with constant matrices.

Attributes: ``sizes`` (the full output shape), ``scales`` (one float per axis), ``roi``
(2 * rank floats, or None), ``use_scales`` (whether the ONNX lowering passes scales or
sizes, as the source model did), and ONNX's mode, coordinate_transformation_mode,
nearest_mode, cubic_coeff_a, exclude_outside, extrapolation_value and antialias.
"""
from __future__ import annotations

import math

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import (REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, fail,
                                  register)

__all__ = ["resize"]

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


# ---- the per-axis weight matrices (ONNX's reference definition, vectorized) ----------------

def _nearest(ratio, scale, a):
    if float(ratio).is_integer():
        return np.array([0.0, 1.0])
    mode = a["nearest_mode"]
    up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
          "floor": False, "ceil": True}[mode]
    return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])


def _linear(ratio, scale, a):
    if not a["antialias"]:
        return np.array([1 - ratio, ratio])
    scale = min(scale, 1.0)  # antialiasing widens the kernel when downsampling
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    c = np.clip(1 - np.abs(args), 0, 1)
    return c / c.sum()


def _cubic(ratio, scale, a):
    A = float(a["cubic_coeff_a"])
    if not a["antialias"]:
        r1, r2 = ratio + 1, 2 - ratio
        return np.array([((A * r1 - 5 * A) * r1 + 8 * A) * r1 - 4 * A,
                         ((A + 2) * ratio - (A + 3)) * ratio * ratio + 1,
                         ((A + 2) * (1 - ratio) - (A + 3)) * (1 - ratio) * (1 - ratio) + 1,
                         ((A * r2 - 5 * A) * r2 + 8 * A) * r2 - 4 * A])
    scale = min(scale, 1.0)
    start = int(np.floor(-2 / scale) + 1)
    x = np.abs(scale * (np.arange(start, 2 - start) - ratio))
    c = np.where(x <= 1, (A + 2) * x ** 3 - (A + 3) * x ** 2 + 1,
                 np.where(x < 2, A * x ** 3 - 5 * A * x ** 2 + 8 * A * x - 4 * A, 0.0))
    return c / c.sum()


_COEFFS = {"nearest": _nearest, "linear": _linear, "cubic": _cubic}


def _source_coords(a, y, scale, n_in, n_out, roi):
    mode = a["coordinate_transformation_mode"]
    width = scale * n_in
    if mode == "align_corners":
        return np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        x = np.full(n_out, (roi[1] - roi[0]) * (n_in - 1) / 2) if width == 1 else \
            y * (roi[1] - roi[0]) * (n_in - 1) / (width - 1)
        return x + roi[0] * (n_in - 1)
    if mode == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5  # half_pixel


def axis_weights(a: dict, n_in: int, n_out: int, scale: float, roi) -> tuple:
    """(W (n_out, n_in), extrapolated rows (bool, n_out) or None) for one axis."""
    y = np.arange(n_out, dtype=np.float64)
    x = _source_coords(a, y, scale, n_in, n_out, roi)
    x_int = np.floor(x)
    ratios = np.where(x == x_int, 1.0, x - x_int)  # the left neighbour is preferred
    fn = _COEFFS[a["mode"]]
    coeffs = np.stack([fn(float(r), scale, a) for r in ratios]) if n_out else np.zeros((0, 2))
    n = coeffs.shape[1]
    pad = int(np.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if a["exclude_outside"]:
        coeffs = np.where((idx < 0) | (idx >= n_in), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.repeat(np.arange(n_out), n), np.clip(idx, 0, n_in - 1).reshape(-1)),
              coeffs.reshape(-1))  # edge padding = clamped indices
    outside = None
    if a["coordinate_transformation_mode"] == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
        w[outside] = 0.0
    return w, outside


def _axes_to_resize(attrs, shape):
    """Per resized axis: (axis, W, extrapolated rows)."""
    rank = len(shape)
    roi = attrs.get("roi")
    out = []
    for ax in range(rank):
        scale, n_out = float(attrs["scales"][ax]), attrs["sizes"][ax]
        r = None if roi is None else (roi[ax], roi[ax + rank])
        if math.isclose(scale, 1.0) and (n_out == shape[ax] or not isinstance(n_out, int)) and (
                r is None or (math.isclose(r[0], 0.0) and math.isclose(r[1], 1.0))):
            continue  # identity along this axis
        w, outside = axis_weights(attrs, int(shape[ax]), int(n_out), scale, r)
        out.append((ax, w, outside))
    return out


# ---- the op --------------------------------------------------------------------------------

def _resize_infer(types, attrs):
    check_arity("Resize", types, 1)
    t = types[0]
    if t.dtype in ("bool", "string"):
        raise fail("Resize", f"cannot resize {t.dtype} values", types)
    sizes, scales = tuple(attrs["sizes"]), tuple(attrs["scales"])
    if len(sizes) != t.rank or len(scales) != t.rank:
        raise fail("Resize", f"sizes {sizes} and scales {scales} need one entry per axis "
                   f"(rank {t.rank})", types)
    for key, allowed in (("mode", MODES), ("coordinate_transformation_mode", COORDINATE_MODES),
                         ("nearest_mode", NEAREST_MODES)):
        if key in attrs and attrs[key] not in allowed:
            raise fail("Resize", f"{key} must be one of {', '.join(allowed)}, got "
                       f"{attrs[key]!r}", types)
    for d, s, n in zip(t.shape, scales, sizes):
        if not isinstance(d, int) and (s != 1.0 or n != d):
            raise fail("Resize", f"a resized axis must be static, got {tuple(t.shape)}", types)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and \
            len(attrs.get("roi") or ()) != 2 * t.rank:
        raise fail("Resize", "tf_crop_and_resize needs roi with 2 * rank entries", types)
    return [TensorType(tuple(sizes), t.dtype)]


def _resize_kernel(xs, attrs, out):
    x = xs[0]
    y = x.astype(np.float64)
    for ax, w, outside in _axes_to_resize(attrs, x.shape):
        y = np.moveaxis(np.tensordot(w, y, axes=(1, ax)), 0, ax)
        if outside is not None and outside.any():
            mask = outside.reshape((1,) * ax + (-1,) + (1,) * (x.ndim - ax - 1))
            y = np.where(mask, float(attrs["extrapolation_value"]), y)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        y = np.clip(np.round(y), info.min, info.max)
    y = y.astype(x.dtype)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _resize_vjp(F, node, grads):
    x = node.inputs[0]
    g = grads[0]
    # y = W_k ... W_1 x (+ constants): the adjoint applies each W^T, last axis first
    for ax, w, _ in reversed(_axes_to_resize(node.attrs, x.shape)):
        perm = tuple(i for i in range(x.ndim) if i != ax) + (ax,)
        back = tuple(int(i) for i in np.argsort(perm))
        moved = F.matmul(F.transpose(g, perm), F.const(w.astype(x.dtype)))
        g = F.transpose(moved, back)
    return [g]


def _resize_onnx(attrs, tin, tout, opset):
    onnx_attrs = {"mode": attrs["mode"],
                  "coordinate_transformation_mode": attrs["coordinate_transformation_mode"],
                  "nearest_mode": attrs["nearest_mode"],
                  "cubic_coeff_a": float(attrs["cubic_coeff_a"]),
                  "exclude_outside": int(attrs["exclude_outside"]),
                  "extrapolation_value": float(attrs["extrapolation_value"])}
    if attrs["antialias"]:
        onnx_attrs["antialias"] = 1  # opset 18
    consts = {"roi": np.array(attrs["roi"] if attrs.get("roi") is not None else [],
                              np.float32)}
    if attrs["use_scales"]:
        consts["scales"] = np.array(attrs["scales"], np.float32)
        ins = ("in0", "roi", "scales")
    else:
        consts["scales"] = np.zeros(0, np.float32)
        consts["sizes"] = np.array(attrs["sizes"], np.int64)
        ins = ("in0", "roi", "scales", "sizes")
    return OnnxLowering((OnnxNode("Resize", ins, ("out0",), onnx_attrs),), consts)


register(OpDef(name="Resize", infer=_resize_infer, kernel=_resize_kernel, vjp=_resize_vjp,
               attrs={"sizes": Attr(tuple, REQUIRED, "output size per axis"),
                      "scales": Attr(tuple, REQUIRED, "scale per axis"),
                      "roi": Attr(tuple, None, "crop box (tf_crop_and_resize)"),
                      "mode": Attr(str, "nearest", "nearest, linear or cubic"),
                      "coordinate_transformation_mode": Attr(str, "half_pixel", "ONNX's"),
                      "nearest_mode": Attr(str, "round_prefer_floor", "ONNX's"),
                      "cubic_coeff_a": Attr(float, -0.75, "cubic kernel parameter"),
                      "exclude_outside": Attr(int, 0, "drop weights outside the input"),
                      "extrapolation_value": Attr(float, 0.0, "fill outside the roi"),
                      "antialias": Attr(int, 0, "antialiased down-scaling (opset 18)"),
                      "use_scales": Attr(bool, False, "lower with scales, not sizes")},
               onnx=_resize_onnx,
               doc="Nearest/linear/cubic resize to a static output shape (ONNX Resize)."))


def resize(x, sizes=None, scales=None, mode: str = "nearest",
           coordinate_transformation_mode: str = "half_pixel", **attrs):
    """Resize ``x`` to ``sizes`` (the full output shape) or by ``scales`` (one factor per
    axis; the output is floor(scale * size)). Other keywords are ONNX Resize attributes
    (nearest_mode, cubic_coeff_a, exclude_outside, extrapolation_value, antialias, roi)."""
    shape = tuple(x.shape)
    if (sizes is None) == (scales is None):
        raise ValueError("resize: give exactly one of sizes and scales")
    if scales is not None:
        scales = tuple(float(s) for s in scales)
        sizes = tuple(d if s == 1.0 else int(math.floor(s * d)) for d, s in zip(shape, scales))
        use_scales = True
    else:
        sizes = tuple(sizes)
        scales = tuple(1.0 if n == d else float(n) / float(d) for n, d in zip(sizes, shape))
        use_scales = False
    return apply("Resize", x, sizes=sizes, scales=scales, mode=mode,
                 coordinate_transformation_mode=coordinate_transformation_mode,
                 use_scales=use_scales, **attrs)
