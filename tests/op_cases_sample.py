"""Op cases for graphdl/ops/grid_sample.py and graphdl/ops/linalg_extra.py (GridSample, ...);
tests/test_ops.py and test_onnx_ops.py run them."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, randn, rng, torch_fn, torch_nnf


def _grid(shape, seed: int, reach: float) -> object:
    """Normalized sampling coordinates uniform in [-reach, reach]."""
    return rng(seed).uniform(-reach, reach, shape)


def _gs(mode: str, padding: str, align: bool, **kw) -> dict:
    kw.setdefault("opset", 20)  # onnx.reference runs GridSample-20's mode names only
    return dict(attrs={"mode": mode, "padding_mode": padding, "align_corners": align},
                torch=torch_nnf("grid_sample", mode={"linear": "bilinear",
                                                     "cubic": "bicubic"}.get(mode, mode),
                                padding_mode=padding, align_corners=align), **kw)


_IMG = randn((2, 3, 4, 5), 0)

CASES = {
    "GridSample": [
        OpCase([_IMG, _grid((2, 3, 2, 2), 1, 1.2)], **_gs("linear", "zeros", False),
               id="bilinear_zeros"),
        OpCase([_IMG, _grid((2, 2, 3, 2), 2, 1.3)], **_gs("linear", "border", True),
               id="bilinear_border_align"),
        OpCase([_IMG, _grid((2, 3, 2, 2), 3, 1.7)], **_gs("linear", "reflection", False),
               id="bilinear_reflection"),
        OpCase([_IMG, _grid((2, 3, 2, 2), 4, 1.2)], **_gs("nearest", "zeros", False),
               id="nearest_zeros"),
        OpCase([_IMG, _grid((2, 3, 2, 2), 5, 1.1)], **_gs("cubic", "zeros", False),
               id="bicubic_zeros"),
        # torch pads each cubic tap but not the centre coordinate: inside [-1, 1] they agree
        OpCase([_IMG, _grid((2, 2, 3, 2), 6, 0.9)], **_gs("cubic", "reflection", True),
               id="bicubic_reflection_align"),
        OpCase([randn((1, 2, 3, 4, 3), 7), _grid((1, 2, 2, 3, 3), 8, 1.2)],
               **_gs("linear", "zeros", True), id="trilinear_5d"),
    ],
    "Det": [
        OpCase([randn((3, 3), 9)], torch=torch_fn("det"), id="3x3"),
        OpCase([randn((2, 3, 4, 4), 10)], torch=torch_fn("det"), id="batched_4x4"),
        OpCase([randn((2, 1, 1), 11)], torch=torch_fn("det"), id="1x1"),
        # rank 1: the cofactor gradient holds where an inverse would not exist
        OpCase([np.outer([1.0, 2.0, -1.0], [0.5, -1.0, 2.0])], torch=torch_fn("det"),
               id="singular"),
    ],
    "AffineGrid": [
        OpCase([randn((2, 2, 3), 12), np.array([2, 3, 4, 5], np.int64)],
               {"out_shape": (2, 4, 5, 2), "align_corners": False}, opset=20,
               torch=lambda th, sz: _affine(th, sz, False), id="2d"),
        OpCase([randn((2, 2, 3), 13), np.array([2, 1, 3, 2], np.int64)],
               {"out_shape": (2, 3, 2, 2), "align_corners": True}, opset=20,
               torch=lambda th, sz: _affine(th, sz, True), id="2d_align"),
        OpCase([randn((1, 3, 4), 14), np.array([1, 2, 2, 3, 4], np.int64)],
               {"out_shape": (1, 2, 3, 4, 3), "align_corners": True}, opset=20,
               torch=lambda th, sz: _affine(th, sz, True), id="3d_align"),
    ],
    "Col2Im": [
        OpCase([randn((2, 12, 12), 15), np.array([4, 5], np.int64), np.array([2, 2], np.int64)],
               {"out_shape": (2, 3, 4, 5), "image": (4, 5), "block": (2, 2)}, opset=18,
               torch=lambda c, i, b: _fold(c, i, b), id="basic"),
        OpCase([randn((1, 12, 3), 16), np.array([5, 5], np.int64), np.array([2, 3], np.int64)],
               {"out_shape": (1, 2, 5, 5), "image": (5, 5), "block": (2, 3),
                "dilations": (1, 2), "pads": (1, 0, 1, 0), "strides": (2, 1)}, opset=18,
               torch=lambda c, i, b: _fold(c, i, b, dilation=(1, 2), padding=(1, 0),
                                           stride=(2, 1)), id="strided_dilated_padded"),
    ],
    "Im2Col": [
        OpCase([randn((2, 3, 4, 5), 17)], {"block": (2, 2), "out_shape": (2, 12, 12)},
               torch=torch_nnf("unfold", kernel_size=(2, 2)), id="basic"),
        OpCase([randn((1, 2, 5, 5), 18)], {"block": (2, 3), "dilations": (1, 2),
                                           "pads": (1, 0, 1, 0), "strides": (2, 1),
                                           "out_shape": (1, 12, 3)},
               torch=torch_nnf("unfold", kernel_size=(2, 3), dilation=(1, 2), padding=(1, 0),
                               stride=(2, 1)), id="strided_dilated_padded"),
    ],
}


def _fold(cols, image, block, **kw):
    import torch
    return torch.nn.functional.fold(cols, tuple(image.tolist()), tuple(block.tolist()), **kw)



def _affine(theta, size, align: bool):
    import torch
    return torch.nn.functional.affine_grid(theta, size.tolist(), align_corners=align)