"""Op cases for graphdl/ops/runtime_args.py (axes, starts, pads as run-time int64 tensors).
``out_shape`` holds what the kernels will produce, fully static, so the inferred types can be
checked against the kernels; the importer puts unknown dims there instead. tests/test_ops.py
and tests/test_onnx_ops.py run them."""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, distinct, randn, torch_module


def _i64(*v):
    return np.array(v, np.int64)


_x = randn((2, 3, 4), 0)
_pos = np.abs(randn((2, 3, 4), 1)) + 0.5  # away from 0: prod's gradient divides by x
_ext = distinct((2, 3, 4), 2)  # no ties: max/min gradients are smooth


def _t():
    return torch_module()


def _reduce(kind, data, axes, keep, out, torch=None, opset=18, noop=False, rtol=1e-5):
    return OpCase([data, _i64(*axes)], {"kind": kind, "keepdims": keep, "out_shape": out,
                                        "noop_with_empty_axes": noop},
                  torch=torch, opset=opset, rtol=rtol,
                  id=f"{kind}_{'_'.join(map(str, axes)) or 'none'}_{int(keep)}")


CASES = {
    "DynReduce": [
        _reduce("sum", _x, (0, 2), True, (1, 3, 1), opset=17,
                torch=lambda x, a: x.sum((0, 2), keepdim=True)),
        _reduce("sum", _x, (-1,), False, (2, 3), opset=17,
                torch=lambda x, a: x.sum(-1)),
        _reduce("mean", _x, (1,), False, (2, 4), torch=lambda x, a: x.mean(1)),
        _reduce("max", _ext, (2, 0), False, (3,), torch=lambda x, a: x.amax((0, 2))),
        _reduce("min", _ext, (1,), True, (2, 1, 4),
                torch=lambda x, a: x.amin(1, keepdim=True)),
        _reduce("prod", _pos, (0,), False, (3, 4), torch=lambda x, a: x.prod(0)),
        _reduce("sum", _x, (), False, (), torch=lambda x, a: x.sum()),
        _reduce("mean", _x, (), True, (2, 3, 4), noop=True, torch=lambda x, a: x * 1.0),
    ],
    "DynSlice": [
        OpCase([_x, _i64(1, 0), _i64(3, -1), _i64(1, 2), _i64(1, 1)], {"out_shape": (2, 2, 3)},
               torch=lambda x, s, e, a, st: x[:, 1:3, 0:3], id="starts_ends"),
        OpCase([_x, _i64(-1), _i64(-10**9), _i64(2), _i64(-2)], {"out_shape": (2, 3, 2)},
               torch=lambda x, s, e, a, st: x.flip(2)[:, :, ::2], id="negative_step"),
    ],
    "DynSliceGrad": [
        OpCase([randn((2, 2, 3), 3), _x, _i64(1, 0), _i64(3, -1), _i64(1, 2), _i64(1, 1)],
               {}, grad_inputs=(0,), id="into_zeros"),
    ],
    "DynPad": [
        OpCase([_x, _i64(0, 1, 2, 0, 0, 1), np.array(0.5), _i64(0, 1, 2)],
               {"mode": "constant", "out_shape": (2, 4, 7)},
               torch=lambda x, p, v, a: _t().nn.functional.pad(x - v, (2, 1, 1, 0)) + v,
               opset=18, id="constant"),
        OpCase([_x, _i64(-1, 1), np.array(0.0), _i64(-1)],
               {"mode": "constant", "out_shape": (2, 3, 4)},
               torch=lambda x, p, v, a: _t().nn.functional.pad(x - v, (-1, 1)) + v,
               # onnx.reference's Pad refuses negative pads (np.pad), so no runtime
               # comparison here; tests/test_onnx_import_runtime.py checks a crop against ORT
               opset=18, onnx=False, id="crop_and_pad"),
        OpCase([_x, _i64(1, 2), np.array(0.0), _i64(2)],
               {"mode": "reflect", "out_shape": (2, 3, 7)}, grad_inputs=(), fd=False,
               opset=18, id="reflect"),
    ],
    "DynSqueeze": [
        OpCase([randn((2, 1, 3, 1), 4), _i64(-1, 1)], {"out_shape": (2, 3)},
               torch=lambda x, a: x.squeeze(3).squeeze(1), id="two_axes"),
    ],
    "DynUnsqueeze": [
        OpCase([randn((2, 3), 5), _i64(0, -1)], {"out_shape": (1, 2, 3, 1)},
               torch=lambda x, a: x[None, :, :, None], id="ends"),
    ],
}

_boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.1, 1.0, 1.1], [0.0, -0.1, 1.0, 0.9],
                    [0.0, 10.0, 1.0, 11.0], [0.0, 10.1, 1.0, 11.1], [0.0, 100.0, 1.0, 101.0]]])
_scores = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]])

CASES.update({
    "Unique": [
        OpCase([np.array([2.0, 1.0, 1.0, 3.0, 4.0, 3.0])], {"sorted": False, "count": 4},
               id="first_occurrence"),
        OpCase([np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4]], np.int64)],
               {"sorted": True, "axis": 0, "count": 2}, id="rows"),
    ],
    "NonMaxSuppression": [
        OpCase([_boxes, _scores, _i64(3), np.array([0.5]), np.array([0.0])],
               {"center_point_box": 0, "count": 6}, id="two_classes"),
        OpCase([_boxes[:, :, [1, 0, 3, 2]] * 0 + np.array([0.5, 0.5, 1.0, 1.0]) +
                np.arange(6).reshape(1, 6, 1) * np.array([0, 0.3, 0, 0]),
                _scores[:, :1], _i64(10), np.array([0.2]), np.array([0.35])],
               {"center_point_box": 1, "count": 2}, id="center_boxes"),
    ],
})

_img = randn((1, 2, 3, 4), 6)
_no_f, _no_i = np.zeros(0), np.zeros(0, np.int64)

# DynResize has no VJP (its weights depend on run-time values; the static Resize has one):
# fd=False, and tests/test_onnx_import_runtime.py checks the refusal names the op
CASES.update({
    "DynResize": [
        OpCase([_img, _no_f, np.array([1.0, 1.0, 2.0, 1.5]), _no_i],
               {"mode": "linear", "out_shape": (1, 2, 6, 6)}, fd=False, opset=18,
               id="linear_scales"),
        OpCase([_img, _no_f, _no_f, _i64(5, 2)],
               {"mode": "nearest", "axes": (3, 2), "by_sizes": True, "out_shape": (1, 2, 2, 5)}, fd=False,
               opset=18, id="nearest_sizes_axes"),
        OpCase([randn((1, 1, 4, 4), 7), np.array([0.0, 0.0, 0.4, 0.6, 1.0, 1.0, 0.6, 0.8]),
                _no_f, _i64(1, 1, 3, 3)],
               {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                "by_sizes": True, "out_shape": (1, 1, 3, 3)}, fd=False, opset=18,
               id="crop_and_resize"),
    ],
})
