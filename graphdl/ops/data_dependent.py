"""Ops whose output sizes depend on the data: Unique and NonMaxSuppression (ONNX's).

Their outputs have "unknown until run time" dims (:func:`graphdl.ops.dynamic.unknown_dim`,
filled in by the builders), so the memory plan leaves them out of the arena and the executor
lets the kernels allocate them. Neither is differentiable: Unique's values are a selection
whose size changes with the data, NonMaxSuppression returns indices.
"""
from __future__ import annotations

import numpy as np

from graphdl import dims
from graphdl.ir import Dim, TensorType
from graphdl.ops.dynamic import unknown_dim
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, lower, register

__all__ = ["unique", "non_max_suppression"]


# ---- Unique ----------------------------------------------------------------------------------

def _unique_infer(types, attrs):
    check_arity("Unique", types, 1)
    x = types[0]
    count = attrs["count"]
    axis = attrs["axis"]
    if axis is None:
        y_shape, inverse = (count,), (dims.product(x.shape),)
    else:
        if not -x.rank <= axis < x.rank:
            raise fail("Unique", f"axis {axis} is out of range for rank {x.rank}", types)
        axis %= x.rank
        y_shape = tuple(count if i == axis else d for i, d in enumerate(x.shape))
        inverse = (x.shape[axis],)
    return [TensorType(y_shape, x.dtype), TensorType((count,), "int64"),
            TensorType(inverse, "int64"), TensorType((count,), "int64")]


def _unique_kernel(xs, attrs, out):
    x, axis = xs[0], attrs["axis"]
    if axis is None:
        x = x.reshape(-1)
        axis = 0
    y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not attrs["sorted"]:  # the order of first occurrence
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first, counts, inverse = first[order], counts[order], rank[inverse]
        y = np.take(x, first, axis=axis)
    return (y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))


def _unique_onnx(attrs, tin, tout, opset):
    extra = {"sorted": int(attrs["sorted"])}
    if attrs["axis"] is not None:
        extra["axis"] = int(attrs["axis"])
    return lower("Unique", 1, 4, **extra)


register(OpDef(name="Unique", infer=_unique_infer, kernel=_unique_kernel, vjp=None,
               n_outputs=4, differentiable=False, onnx=_unique_onnx,
               attrs={"sorted": Attr(bool, True, "ascending (else first-occurrence) order"),
                      "axis": Attr(int, None, "unique slices along this axis (None: "
                                              "elements of the flattened input)"),
                      "count": Attr(object, REQUIRED, "how many unique (a run-time dim)")},
               doc="Unique values (or slices), first indices, inverse indices and counts."))


# ---- NonMaxSuppression -----------------------------------------------------------------------

def _nms_infer(types, attrs):
    check_arity("NonMaxSuppression", types, 5)
    boxes, scores, top, iou, score_min = types
    if boxes.rank != 3 or boxes.shape[2] != 4 or scores.rank != 3:
        raise fail("NonMaxSuppression", "boxes must be (batch, boxes, 4) and scores (batch, "
                   "classes, boxes)", types)
    if top.dtype != "int64" or iou.dtype != boxes.dtype or score_min.dtype != boxes.dtype:
        raise fail("NonMaxSuppression", "max_output_boxes_per_class must be int64 and the "
                   "thresholds of the boxes' dtype", types)
    for t in (top, iou, score_min):
        if t.rank > 1 or (t.rank == 1 and t.shape[0] != 1):
            raise fail("NonMaxSuppression", f"the limits must hold one value each, got {t}",
                       types)
    return [TensorType((attrs["count"], 3), "int64")]


def _corners(b: np.ndarray, center: bool) -> np.ndarray:
    """(y1, x1, y2, x2) with y1 <= y2 and x1 <= x2, per box (ONNX's two box layouts)."""
    b = b.astype(np.float64)
    if center:  # (x_center, y_center, width, height)
        return np.stack([b[:, 1] - b[:, 3] / 2, b[:, 0] - b[:, 2] / 2,
                         b[:, 1] + b[:, 3] / 2, b[:, 0] + b[:, 2] / 2], 1)
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                     np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], 1)


def _suppresses(c: np.ndarray, i: int, others: np.ndarray, iou_max: float) -> np.ndarray:
    """Whether box ``i`` overlaps each of ``others`` by IoU > iou_max."""
    y1 = np.maximum(c[i, 0], c[others, 0])
    x1 = np.maximum(c[i, 1], c[others, 1])
    y2 = np.minimum(c[i, 2], c[others, 2])
    x2 = np.minimum(c[i, 3], c[others, 3])
    inter = np.where((y2 > y1) & (x2 > x1), (y2 - y1) * (x2 - x1), 0.0)
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    union = area[i] + area[others] - inter
    valid = (inter > 0) & (area[i] > 0) & (area[others] > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return valid & (inter / np.where(union > 0, union, 1.0) > iou_max)


def _nms_kernel(xs, attrs, out):
    boxes, scores, top, iou, score_min = xs
    top = max(int(np.asarray(top).reshape(-1)[0]), 0)
    iou_max = float(np.asarray(iou).reshape(-1)[0])
    floor = float(np.asarray(score_min).reshape(-1)[0])
    picked = []
    for b in range(boxes.shape[0]):
        c = _corners(boxes[b], bool(attrs["center_point_box"]))
        for k in range(scores.shape[1]):
            s = scores[b, k]
            # candidates by score, highest first, ties by index (ONNX's reference order)
            order = [int(i) for i in np.lexsort((np.arange(len(s)), -s)) if s[i] > floor]
            kept: list[int] = []
            for i in order:
                if len(kept) >= top:
                    break
                if not kept or not _suppresses(c, i, np.array(kept), iou_max).any():
                    kept.append(i)
            picked.extend((b, k, i) for i in kept)
    return np.array(picked, np.int64).reshape(-1, 3)


register(OpDef(name="NonMaxSuppression", infer=_nms_infer, kernel=_nms_kernel, vjp=None,
               differentiable=False,
               onnx=lambda a, ti, to, o: lower("NonMaxSuppression", 5,
                                               center_point_box=int(a["center_point_box"])),
               attrs={"center_point_box": Attr(int, 0, "0: corners (y1, x1, y2, x2); 1: "
                                                       "(x, y, width, height)"),
                      "count": Attr(object, REQUIRED, "how many selected (a run-time dim)")},
               doc="Greedy non-maximum suppression per batch and class; (count, 3) indices."))


# ---- builders --------------------------------------------------------------------------------

def unique(x, sorted: bool = True, axis: int | None = None, count: Dim | None = None):
    """(values, first indices, inverse indices, counts) of the unique elements of ``x`` (or
    its unique slices along ``axis``); their number is unknown until run time."""
    return apply("Unique", x, sorted=bool(sorted), axis=axis,
                 count=count if count is not None else unknown_dim("unique"))


def non_max_suppression(boxes, scores, max_output_boxes_per_class, iou_threshold,
                        score_threshold, center_point_box: int = 0, count: Dim | None = None):
    """ONNX NonMaxSuppression: (selected, 3) rows of (batch, class, box) indices."""
    return apply("NonMaxSuppression", boxes, scores, max_output_boxes_per_class,
                 iou_threshold, score_threshold, center_point_box=int(center_point_box),
                 count=count if count is not None else unknown_dim("nms"))
