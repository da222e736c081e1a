"""GridSample (ONNX, torch's grid_sample): sample an N-D image at normalized grid coordinates
with nearest, linear or cubic interpolation and zeros/border/reflection padding; and
AffineGrid, the sampling grid of batched affine maps (its size may be known only at run time).

The sampling is written once, over a small array vocabulary (:class:`_NumpyMath` for the
kernel, :class:`_GraphMath` for graph nodes): the kernel runs it on arrays, and the VJP builds
the same computation as graph nodes and differentiates that (floor/round carry no gradient, so
the grid's gradient flows through the interpolation weights, as in torch).
"""
from __future__ import annotations

import itertools

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, LoweringError, OnnxLowering, OnnxNode, OpDef, \
    apply, constant, fail, lower, register, write_into

__all__ = ["affine_grid", "grid_sample"]

MODES = ("linear", "nearest", "cubic")
PADDING_MODES = ("zeros", "border", "reflection")
_CUBIC_A = -0.75  # Keys' cubic convolution parameter, as torch and ONNX use


class _NumpyMath:
    """The array vocabulary on NumPy arrays (float64 coordinates)."""

    floor, rint, where, logical_and = np.floor, np.rint, np.where, np.logical_and

    @staticmethod
    def clip(v, lo, hi):
        return np.clip(v, lo, hi)

    @staticmethod
    def mask(b, like):
        return b.astype(like.dtype)

    @staticmethod
    def component(grid, k):
        return grid[..., k]

    @staticmethod
    def gather(xflat, idx):
        # xflat (N, C, P), idx (N, M) float holding integers -> (N, C, M)
        return np.take_along_axis(xflat, idx.astype(np.int64)[:, None, :], axis=2)


class _GraphMath:
    """The array vocabulary as graph nodes (``F`` is the functional API a VJP receives)."""

    def __init__(self, F):
        self.F = F

    def floor(self, v):
        return self.F.floor(v)

    def rint(self, v):
        return self.F.round(v)

    def where(self, c, a, b):
        return self.F.where(c, a, b)

    def logical_and(self, a, b):
        return self.F.logical_and(a, b)

    def clip(self, v, lo, hi):
        return self.F.clip(v, lo, hi)

    def mask(self, b, like):
        return self.F.cast(b, like.dtype)

    def component(self, grid, k):
        F = self.F
        parts = F.split(grid, (1,) * grid.shape[-1], axis=grid.ndim - 1)
        return F.squeeze(parts[k], (grid.ndim - 1,))

    def gather(self, xflat, idx):
        F = self.F
        n, c = xflat.shape[0], xflat.shape[1]
        i = F.cast(idx, "int64")
        i = F.broadcast_to(F.unsqueeze(i, (1,)), (n, c, idx.shape[1]))
        return F.gather_elements(xflat, i, axis=2)


def _reflect(M, v, lo: float, hi: float):
    """Reflect ``v`` off the borders lo and hi until it lies between them (torch's rule)."""
    span = hi - lo
    if span <= 0:
        return M.clip(v, lo, lo)
    out = v
    # (distance past a border, that border, the opposite one, direction back inside)
    for dist, near, far, inward in ((lo - v, lo, hi, 1.0), (v - hi, hi, lo, -1.0)):
        pos = M.clip(dist, 0.0, None)
        n = M.floor(pos * (1.0 / span))  # whole spans travelled
        r = pos - n * span
        odd = n - M.floor(n * 0.5) * 2.0  # 1 when an odd number of spans bounced it back
        refl = (r * inward + near) * (1.0 - odd) + (far - r * inward) * odd
        out = M.where(dist > 0.0, refl, out)
    return out


def _cubic_weights(t):
    """Keys' cubic weights of taps at offsets -1, 0, 1, 2 for a fraction t in [0, 1)."""
    a = _CUBIC_A
    t1, u, u1 = t + 1.0, 1.0 - t, 2.0 - t
    return [((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * u - (a + 3)) * u * u + 1,
            ((a * u1 - 5 * a) * u1 + 8 * a) * u1 - 4 * a]


def _sample(M, xflat, coords, sizes, attrs, ones):
    """The sampled values (N, C, M) of ``xflat`` (N, C, prod(sizes)) at the grid's normalized
    ``coords`` (one (N, M) array per spatial axis, first axis first)."""
    mode, pad, align = attrs["mode"], attrs["padding_mode"], bool(attrs["align_corners"])
    per_axis = []
    for c, size in zip(coords, sizes):
        x = (c + 1.0) * (0.5 * (size - 1)) if align else ((c + 1.0) * size - 1.0) * 0.5
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            x = M.rint(x)
        if pad == "border":
            x = M.clip(x, 0.0, size - 1.0)
        elif pad == "reflection":
            x = _reflect(M, x, lo, hi)
        if mode == "nearest":
            taps = [(x, None)]
        else:
            x0 = M.floor(x)
            t = x - x0
            offsets = (0, 1) if mode == "linear" else (-1, 0, 1, 2)
            weights = [1.0 - t, t] if mode == "linear" else _cubic_weights(t)
            taps = [(x0 + float(o), w) for o, w in zip(offsets, weights)]
        fetched = []
        for i, w in taps:
            if pad == "zeros":
                inside = M.mask(M.logical_and(i >= 0.0, i <= size - 1.0), ones)
                w = inside if w is None else w * inside
            elif pad == "reflection":
                i = _reflect(M, i, lo, hi)
            fetched.append((M.floor(M.clip(i, 0.0, size - 1.0)), w))
        per_axis.append(fetched)
    strides = [int(np.prod(sizes[k + 1:])) for k in range(len(sizes))]
    total = None
    for combo in itertools.product(*per_axis):
        flat, weight = None, None
        for (i, w), stride in zip(combo, strides):
            term = i * float(stride)
            flat = term if flat is None else flat + term
            if w is not None:
                weight = w if weight is None else weight * w
        value = M.gather(xflat, flat)
        if weight is not None:
            value = value * _unsqueeze1(M, weight)
        total = value if total is None else total + value
    return total


def _unsqueeze1(M, w):
    return w[:, None, :] if isinstance(w, np.ndarray) else M.F.unsqueeze(w, (1,))


# ---- the op --------------------------------------------------------------------------------

def _infer(types, attrs):
    check_arity("GridSample", types, 2)
    x, grid = types
    if x.dtype not in FLOAT_DTYPES or grid.dtype not in FLOAT_DTYPES:
        raise fail("GridSample", "needs float image and grid", list(types))
    d = x.rank - 2
    if d < 1 or grid.rank != x.rank or grid.shape[-1] != d:
        raise fail("GridSample", f"needs an image (N, C, D1..Dk) and a grid (N, O1..Ok, k); "
                   f"got ranks {x.rank} and {grid.rank}", list(types))
    if any(not isinstance(s, int) for s in x.shape[2:]):
        raise fail("GridSample", "the image's spatial dims must be static", list(types))
    if attrs["mode"] not in MODES or attrs["padding_mode"] not in PADDING_MODES:
        raise fail("GridSample", f"mode must be one of {MODES} and padding_mode one of "
                   f"{PADDING_MODES}, got {attrs['mode']!r}, {attrs['padding_mode']!r}",
                   list(types))
    return [TensorType((x.shape[0], x.shape[1], *grid.shape[1:-1]), x.dtype)]


def _kernel(xs, attrs, out):
    x, grid = xs
    n, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    g = grid.astype(np.float64).reshape(n, -1, len(sizes))
    coords = [g[..., len(sizes) - 1 - k] for k in range(len(sizes))]  # grid is (x, y, ...)
    xflat = x.astype(np.float64).reshape(n, c, -1)
    y = _sample(_NumpyMath, xflat, coords, sizes, attrs, xflat)
    y = y.reshape((n, c) + grid.shape[1:-1]).astype(x.dtype)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _vjp(F, node, grads):
    x, grid = node.inputs
    if grads[0] is None:
        return [None, None]
    n, c, sizes = x.shape[0], x.shape[1], tuple(x.shape[2:])
    d = len(sizes)
    g = F.cast(grid, x.dtype) if grid.dtype != x.dtype else grid
    g = F.reshape(g, (n, -1, d))
    M = _GraphMath(F)
    coords = [M.component(g, d - 1 - k) for k in range(d)]
    xflat = F.reshape(x, (n, c, -1))
    y = F.reshape(_sample(M, xflat, coords, sizes, node.attrs, xflat), node.outputs[0].shape)
    return list(F.grad(y, [x, grid], grad_y=grads[0]))


def _onnx(attrs, tin, tout, opset):
    mode = attrs["mode"]
    if opset < 20:  # GridSample-16: 4-D only, modes named bilinear/bicubic
        if tin[0].rank != 4:
            raise LoweringError(f"GridSample on a rank-{tin[0].rank} image needs opset 20 "
                                f"(got {opset})")
        mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    return OnnxLowering((OnnxNode("GridSample", ("in0", "in1"), ("out0",),
                                  {"mode": mode, "padding_mode": attrs["padding_mode"],
                                   "align_corners": int(attrs["align_corners"])}),))


register(OpDef(name="GridSample", infer=_infer, kernel=_kernel, vjp=_vjp, onnx=_onnx,
               attrs={"mode": Attr(str, "linear", "linear, nearest or cubic"),
                      "padding_mode": Attr(str, "zeros", "zeros, border or reflection"),
                      "align_corners": Attr(bool, False, "-1 and 1 are the corner pixels' "
                                            "centres (else their outer edges)")},
               doc="Sample an image at normalized grid coordinates (ONNX GridSample)."))


def grid_sample(x, grid, mode: str = "linear", padding_mode: str = "zeros",
                align_corners: bool = False):
    """``x`` (N, C, D1..Dk) sampled at ``grid`` (N, O1..Ok, k) of normalized coordinates in
    [-1, 1], the last grid axis ordered (x, y, ...) = (Dk, ..., D1), as torch's grid_sample;
    ``mode`` also accepts ONNX-16's names bilinear and bicubic."""
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    return apply("GridSample", x, grid, mode=mode, padding_mode=padding_mode,
                 align_corners=bool(align_corners))


# ---- AffineGrid ----------------------------------------------------------------------------

def _base_grid(sizes, align: bool) -> np.ndarray:
    """Normalized coordinates (prod(sizes), k), ordered (x, y, ...) with x along the last
    spatial axis (float64)."""
    axes = []
    for s in sizes:
        if align:
            axes.append(np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1))
        else:
            axes.append((np.arange(s) * 2.0 + 1.0) / s - 1.0)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in reversed(mesh)], axis=1)


def _affine_infer(types, attrs):
    check_arity("AffineGrid", types, 2)
    theta, size = types
    out = tuple(attrs["out_shape"])
    k = len(out) - 2
    if theta.dtype not in FLOAT_DTYPES or theta.rank != 3 or tuple(theta.shape[1:]) != (k, k + 1):
        raise fail("AffineGrid", f"theta must be float (N, {k}, {k + 1}) for the output "
                   f"{out}", list(types))
    if size.dtype != "int64" or size.rank != 1 or size.shape[0] != k + 2 or out[-1] != k:
        raise fail("AffineGrid", f"size must be int64[{k + 2}] (N, C, D1..Dk) and out_shape "
                   f"(N, D1..Dk, {k})", list(types))
    return [TensorType(out, theta.dtype)]


def _affine_kernel(xs, attrs, out):
    theta, size = xs
    sizes = [int(s) for s in size[2:]]
    base = _base_grid(sizes, bool(attrs["align_corners"]))  # (P, k)
    t = theta.astype(np.float64)
    # (P, k) @ (N, k, k)^T + (N, 1, k): the linear part and the translation column
    y = np.einsum("pj,nij->npi", base, t[:, :, :-1]) + t[:, None, :, -1]
    y = y.reshape((theta.shape[0], *sizes, len(sizes))).astype(theta.dtype)
    return write_into(out, y)


def _affine_vjp(F, node, grads):
    # grid[n, p, i] = sum_j base[p, j] theta[n, i, j] + theta[n, i, k]: dtheta[n, i, :k] =
    # g[n]^T base, dtheta[n, i, k] = sum_p g[n, p, i]; base is the grid of the identity map
    theta, size = node.inputs
    k = theta.shape[1]
    eye = F.const(np.eye(k, k + 1).reshape(1, k, k + 1).astype(theta.dtype))
    base = apply("AffineGrid", eye, size, align_corners=node.attrs["align_corners"],
                 out_shape=(1,) + tuple(node.attrs["out_shape"][1:]))
    g = F.reshape(grads[0], (0, -1, k))  # (N, P, k)
    linear = F.matmul(F.transpose(g, (0, 2, 1)), F.reshape(base, (1, -1, k)))
    return [F.concat([linear, F.unsqueeze(F.sum(g, (1,)), (2,))], 2), None]


register(OpDef(name="AffineGrid", infer=_affine_infer, kernel=_affine_kernel, vjp=_affine_vjp,
               onnx=lambda a, ti, to, o: lower("AffineGrid", 2,
                                               align_corners=int(a["align_corners"])),
               attrs={"align_corners": Attr(bool, False, "-1 and 1 are the corner pixels' "
                                            "centres (else their outer edges)"),
                      "out_shape": Attr(tuple, REQUIRED, "(N, D1..Dk, k): ints, symbols or "
                                        "dims unknown until run time")},
               doc="The sampling grid of batched affine maps over an image size (ONNX "
                   "AffineGrid)."))


def affine_grid(theta, size, align_corners: bool = False, out_shape=None):
    """The sampling grid (N, D1..Dk, k) of the affine maps ``theta`` (N, k, k + 1) over an
    image of ``size`` (N, C, D1..Dk: ints, or an int64 value known at run time, then with
    ``out_shape`` giving the output's dims), as torch's affine_grid and ONNX AffineGrid."""
    if not hasattr(size, "node"):
        sizes = tuple(int(s) for s in size)
        out_shape = (sizes[0], *sizes[2:], len(sizes) - 2)
        size = constant(np.array(sizes, np.int64))
    return apply("AffineGrid", theta, size, align_corners=bool(align_corners),
                 out_shape=tuple(out_shape))
