"""DynResize: ONNX Resize/Upsample whose roi, scales or sizes arrive as run-time tensors.

The importer builds the static ``Resize`` (graphdl.ops.resize) whenever those inputs are
known at import; this op is its run-time variant. The kernel resolves ONNX's rules (scales
or sizes, ``axes``, ``keep_aspect_ratio_policy``, the roi of tf_crop_and_resize) into the
static op's attributes at run time and runs the static kernel, so the interpolation itself
lives in one place. Resized axes are "unknown until run time" dims in the output type.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import GraphError
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, fail, \
    get_op, register, write_into
from graphdl.ops.resize import COORDINATE_MODES, MODES, NEAREST_MODES
from graphdl.ops.runtime_args import run_time_out_type

__all__ = ["dyn_resize"]

_INTERP = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
           "exclude_outside", "extrapolation_value", "antialias")


def resolve(shape: tuple, roi: np.ndarray, scales: np.ndarray, sizes: np.ndarray,
            axes: tuple | None, policy: str, ctm: str) -> dict:
    """The static Resize's ``sizes``, ``scales`` and ``roi`` for ONNX Resize's inputs (empty
    arrays for absent ones), as ONNX defines them. Used at run time by DynResize and at
    import by the static Resize rule; raises ValueError on inconsistent inputs."""
    rank = len(shape)
    axes = tuple(a % rank for a in (axes if axes is not None else range(rank)))
    roi, scales, sizes = (np.asarray(v).reshape(-1) for v in (roi, scales, sizes))
    full_scales, full_sizes = [1.0] * rank, list(shape)
    if sizes.size:
        if sizes.size != len(axes):
            raise ValueError(f"Resize: {sizes.size} sizes for {len(axes)} axes")
        for i, ax in enumerate(axes):
            full_sizes[ax] = int(sizes[i])
            full_scales[ax] = full_sizes[ax] / shape[ax]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(full_scales[ax] for ax in axes)
            for ax in axes:
                full_scales[ax] = s
                full_sizes[ax] = int(s * shape[ax] + 0.5)  # round half up
    elif scales.size:
        if scales.size != len(axes):
            raise ValueError(f"Resize: {scales.size} scales for {len(axes)} axes")
        for i, ax in enumerate(axes):
            full_scales[ax] = float(scales[i])
            if full_scales[ax] != 1.0:  # a scale of 1 keeps the dim (a symbolic one too)
                full_sizes[ax] = int(full_scales[ax] * shape[ax])
    else:
        raise ValueError("Resize needs scales or sizes (both are empty)")
    full_roi = None
    if ctm == "tf_crop_and_resize" and roi.size:
        full_roi = [0.0] * rank + [1.0] * rank
        for i, ax in enumerate(axes):
            full_roi[ax], full_roi[rank + ax] = float(roi[i]), float(roi[len(axes) + i])
    return {"sizes": tuple(full_sizes), "scales": tuple(full_scales),
            "roi": None if full_roi is None else tuple(full_roi)}


def _infer(types, attrs):
    check_arity("DynResize", types, 4)
    x, roi, scales, sizes = types
    if x.dtype in ("bool", "string"):
        raise fail("DynResize", f"cannot resize {x.dtype} values", types)
    if roi.rank != 1 or scales.rank != 1 or sizes.rank != 1 or sizes.dtype != "int64" or \
            scales.dtype not in ("float32", "float64", "float16"):
        raise fail("DynResize", "roi and scales must be 1-D float tensors and sizes a 1-D "
                   "int64 tensor (empty when absent)", types)
    for key, allowed in (("mode", MODES), ("coordinate_transformation_mode", COORDINATE_MODES),
                         ("nearest_mode", NEAREST_MODES)):
        if attrs[key] not in allowed:
            raise fail("DynResize", f"{key} must be one of {', '.join(allowed)}, got "
                       f"{attrs[key]!r}", types)
    return [run_time_out_type("DynResize", attrs, x, types)]


def _kernel(xs, attrs, out):
    x, roi, scales, sizes = xs
    static = {k: attrs[k] for k in _INTERP}
    if attrs["by_sizes"]:
        scales = np.zeros(0)
    else:
        sizes = np.zeros(0, np.int64)
    static.update(resolve(x.shape, roi, scales, sizes, attrs["axes"],
                          attrs["keep_aspect_ratio_policy"],
                          attrs["coordinate_transformation_mode"]))
    y = get_op("Resize").kernel([x], static, None)
    return write_into(out, y)


def _vjp(F, n, g):
    # the adjoint applies each axis' weight matrix transposed, and those matrices depend on
    # run-time values here; the static Resize (constant scales/sizes) has the gradient
    raise GraphError("DynResize: no gradient through a Resize whose scales, sizes or roi "
                     "are computed at run time; make them constants (the importer then "
                     "builds the static Resize, which is differentiable)")


def _onnx(attrs, tin, tout, opset):
    extra = {k: attrs[k] for k in ("mode", "coordinate_transformation_mode", "nearest_mode",
                                   "cubic_coeff_a", "exclude_outside",
                                   "extrapolation_value")}
    if attrs["antialias"]:
        extra["antialias"] = 1
    if attrs["axes"] is not None:
        extra["axes"] = list(attrs["axes"])
    if attrs["keep_aspect_ratio_policy"] != "stretch":
        extra["keep_aspect_ratio_policy"] = attrs["keep_aspect_ratio_policy"]
    # ONNX wants the unused one of scales and sizes absent, not empty
    ins = ("in0", "in1", "", "in3") if attrs["by_sizes"] else ("in0", "in1", "in2")
    return OnnxLowering((OnnxNode("Resize", ins, ("out0",), extra),))


register(OpDef(name="DynResize", infer=_infer, kernel=_kernel, vjp=_vjp, onnx=_onnx,
               attrs={"mode": Attr(str, "nearest", "nearest, linear or cubic"),
                      "coordinate_transformation_mode": Attr(str, "half_pixel", "ONNX's"),
                      "nearest_mode": Attr(str, "round_prefer_floor", "ONNX's"),
                      "cubic_coeff_a": Attr(float, -0.75, "cubic kernel parameter"),
                      "exclude_outside": Attr(int, 0, "drop weights outside the input"),
                      "extrapolation_value": Attr(float, 0.0, "fill outside the roi"),
                      "antialias": Attr(int, 0, "antialiased down-scaling"),
                      "axes": Attr(tuple, None, "the axes roi/scales/sizes name (None: all)"),
                      "keep_aspect_ratio_policy": Attr(str, "stretch", "ONNX's, with sizes"),
                      "by_sizes": Attr(bool, False, "sizes give the output (else scales)"),
                      "out_shape": Attr(tuple, REQUIRED, "the output's shape as inference "
                                                         "knows it (unknown dims)")},
               doc="ONNX Resize with run-time roi, scales or sizes (empty when absent)."))


def dyn_resize(x, roi, scales, sizes, out_shape, **attrs):
    """Resize ``x`` by the run-time ``scales`` or ``sizes`` (the other one empty), with
    ``roi`` for tf_crop_and_resize (else empty); ``attrs`` are ONNX Resize's attributes."""
    return apply("DynResize", x, roi, scales, sizes, out_shape=tuple(out_shape), **attrs)
