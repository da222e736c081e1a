"""Op test cases for Resize (graphdl/ops/resize.py): every interpolation mode, the coordinate
transformation modes torch shares (nearest = asymmetric/floor, bilinear and bicubic with and
without align_corners) against torch, and the ONNX-only variants (round-prefer-ceil,
exclude_outside, antialias, tf_crop_and_resize extrapolation, integer input) against ONNX
Runtime and onnx.reference in tests/test_onnx_ops.py."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng


def _torch():
    import torch
    return torch


def randn(shape, seed: int) -> np.ndarray:
    """Standard normal float64 values."""
    return rng(seed).standard_normal(shape)


def _interp(size, mode, align_corners=None):
    def ref(x):
        kw = {} if align_corners is None else {"align_corners": align_corners}
        return _torch().nn.functional.interpolate(x, size=size, mode=mode, **kw)
    return ref


def _attrs(shape, sizes, mode, coord, **extra):
    scales = tuple(1.0 if n == d else n / d for n, d in zip(sizes, shape))
    return {"sizes": tuple(sizes), "scales": scales, "mode": mode,
            "coordinate_transformation_mode": coord, "use_scales": False, **extra}


def _scaled(shape, scales, mode, coord, **extra):
    sizes = tuple(int(np.floor(s * d)) for s, d in zip(scales, shape))
    return {"sizes": sizes, "scales": tuple(float(s) for s in scales), "mode": mode,
            "coordinate_transformation_mode": coord, "use_scales": True, **extra}


_X = (1, 2, 4, 5)
CASES: dict[str, list[OpCase]] = {"Resize": [
    OpCase([randn(_X, 1)], _attrs(_X, (1, 2, 7, 10), "nearest", "asymmetric",
                                  nearest_mode="floor"),
           torch=_interp((7, 10), "nearest"), id="nearest-up-torch"),
    OpCase([randn(_X, 2)], _attrs(_X, (1, 2, 3, 2), "nearest", "asymmetric",
                                  nearest_mode="floor"),
           torch=_interp((3, 2), "nearest"), id="nearest-down-torch"),
    OpCase([randn(_X, 3)], _attrs(_X, (1, 2, 7, 8), "linear", "half_pixel"),
           torch=_interp((7, 8), "bilinear", False), id="bilinear"),
    OpCase([randn(_X, 4)], _attrs(_X, (1, 2, 3, 3), "linear", "half_pixel"),
           torch=_interp((3, 3), "bilinear", False), id="bilinear-down"),
    OpCase([randn(_X, 5)], _attrs(_X, (1, 2, 6, 9), "linear", "align_corners"),
           torch=_interp((6, 9), "bilinear", True), id="bilinear-align-corners"),
    OpCase([randn(_X, 6)], _attrs(_X, (1, 2, 6, 7), "cubic", "half_pixel"),
           torch=_interp((6, 7), "bicubic", False), id="bicubic"),
    OpCase([randn(_X, 7)], _attrs(_X, (1, 2, 5, 8), "cubic", "align_corners"),
           torch=_interp((5, 8), "bicubic", True), id="bicubic-align-corners"),
    OpCase([randn((2, 3, 5), 8)], _scaled((2, 3, 5), (1.0, 1.0, 1.7), "nearest", "half_pixel",
                                          nearest_mode="round_prefer_ceil"),
           id="nearest-scales-round-ceil"),
    OpCase([randn((1, 1, 4, 4), 9)], _scaled((1, 1, 4, 4), (1.0, 1.0, 0.6, 0.6), "cubic",
                                             "half_pixel", exclude_outside=1,
                                             cubic_coeff_a=-0.5),
           id="cubic-exclude-outside-down"),
    OpCase([randn((1, 1, 6, 7), 10)], _attrs((1, 1, 6, 7), (1, 1, 3, 4), "linear",
                                             "half_pixel", antialias=1),
           opset=18, id="linear-antialias"),
    OpCase([randn((1, 1, 4, 5), 11)], _attrs((1, 1, 4, 5), (1, 1, 3, 3), "linear",
                                             "tf_crop_and_resize", extrapolation_value=10.0,
                                             roi=(0.0, 0.0, 0.4, 0.6, 1.0, 1.0, 1.2, 1.7)),
           id="tf-crop-and-resize-extrapolate"),
    OpCase([rng(12).integers(0, 100, (1, 1, 3, 4)).astype(np.int32)],  # ORT: no int64 Resize
           _attrs((1, 1, 3, 4), (1, 1, 6, 8), "nearest", "asymmetric", nearest_mode="floor"),
           id="nearest-int"),
]}
