"""Op test cases for the nn families: convolution, pooling, normalization and dropout, and
their gradient ops (graphdl/ops/conv.py, pool.py, norm.py).

Shapes are small, seeded and non-square; strides, asymmetric padding, dilation, groups and
depthwise variants each get a case. Every case has a torch reference (torch.nn.functional)
except dropout masks and the running-statistics gradients torch does not define.
Gradient ops are referenced through torch autograd with ``create_graph=True``, so their own
VJPs are checked against torch's double backward. tests/test_ops.py runs them.
"""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng
from tests.op_case import distinct, randn
from tests.op_case import torch_module as _torch


def _nnf():
    return _torch().nn.functional


def out_size(size, k, s, p0, p1, d=1, ceil=False) -> int:
    """Output length of a window op along one axis (torch's ceil-mode rule)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= size + p0 else out


# ---- convolution ----------------------------------------------------------------------------

# (x shape, out channels, kernel, strides, pads (t, l, b, r), dilations, group, bias, id)
CONV_SETUPS = [
    ((2, 3, 7, 9), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, "3x3-pad1-bias"),
    ((3, 4, 8, 7), 6, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 2, False, "stride-asympad-dil-g2"),
    ((2, 4, 6, 9), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True, "depthwise"),
    ((2, 3, 9, 8), 6, (3, 3), (2, 2), (2, 1, 1, 2), (2, 1), 3, False, "depthwise-mult2-stride"),
    ((2, 4, 5, 6), 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, True, "pointwise-g2"),
    ((2, 4, 7, 6), 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, False, "pointwise-stride2"),
    ((2, 3, 11, 13), 5, (5, 3), (3, 2), (2, 1, 0, 2), (1, 1), 1, True, "5x3-stride32"),
    # >= 16 channels per group and no more outputs: the implicit-GEMM kernel (and the
    # full-correlation grad-input of the 12->16 case below takes it too)
    ((2, 16, 5, 6), 12, (3, 3), (1, 1), (1, 0, 2, 1), (1, 2), 1, True, "implicit-gemm"),
    ((2, 32, 4, 5), 16, (3, 2), (1, 1), (1, 1, 1, 0), (1, 1), 2, False, "implicit-gemm-g2"),
    ((2, 12, 5, 4), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, "grad-input-implicit"),
]


def _conv_attrs(strides, pads, dilations, group) -> dict:
    return {"strides": strides, "pads": pads, "dilations": dilations, "group": group}


def _torch_conv(attrs):
    """torch conv2d with ONNX-style (possibly asymmetric) pads: pad first, then convolve."""
    pt, pl, pb, pr = attrs["pads"]

    def conv(x, w, b=None):
        xp = _nnf().pad(x, (pl, pr, pt, pb))
        return _nnf().conv2d(xp, w, b, attrs["strides"], 0, attrs["dilations"], attrs["group"])
    return conv


def _conv_grad_input_ref(attrs, x_shape):
    def ref(dy, w, b=None):
        torch = _torch()
        x0 = torch.zeros(x_shape, dtype=dy.dtype, requires_grad=True)
        (gx,) = torch.autograd.grad(_torch_conv(attrs)(x0, w), x0, dy, create_graph=True)
        return gx if b is None else gx + b.reshape(1, -1, 1, 1)  # ConvTranspose's bias
    return ref


def _conv_grad_weight_ref(attrs, w_shape):
    def ref(x, dy):
        torch = _torch()
        w0 = torch.zeros(w_shape, dtype=x.dtype, requires_grad=True)
        (gw,) = torch.autograd.grad(_torch_conv(attrs)(x, w0), w0, dy, create_graph=True)
        return gw
    return ref


def _conv_cases():
    conv, grad_input, grad_weight = [], [], []
    for k, (xs, o, kern, st, pads, dil, g, bias, cid) in enumerate(CONV_SETUPS):
        attrs = _conv_attrs(st, pads, dil, g)
        w_shape = (o, xs[1] // g) + kern
        x, w = randn(xs, 10 + k), randn(w_shape, 20 + k, 0.5)
        ins = [x, w, randn((o,), 30 + k)] if bias else [x, w]
        conv.append(OpCase(ins, attrs, torch=_torch_conv(attrs), id=cid))
        y_shape = (xs[0], o, out_size(xs[2], kern[0], st[0], pads[0], pads[2], dil[0]),
                   out_size(xs[3], kern[1], st[1], pads[1], pads[3], dil[1]))
        dy = randn(y_shape, 40 + k)
        grad_input.append(OpCase([dy, w] + ([randn((xs[1],), 50 + k)] if bias else []),
                                 dict(attrs, input_hw=xs[2:]),
                                 torch=_conv_grad_input_ref(attrs, xs), id=cid))
        grad_weight.append(OpCase([x, dy], dict(attrs, kernel_shape=kern),
                                  torch=_conv_grad_weight_ref(attrs, w_shape), id=cid))
    return {"Conv": conv, "ConvGradInput": grad_input, "ConvGradWeight": grad_weight}


# ---- pooling --------------------------------------------------------------------------------

# (x shape, kernel, strides, (pad h, pad w), dilations, ceil_mode, id)
MAX_SETUPS = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), False, "3x3-s2-p1"),
    ((2, 3, 8, 6), (2, 2), (2, 2), (0, 0), (1, 1), False, "2x2-s2"),
    ((2, 2, 9, 7), (3, 2), (2, 1), (1, 0), (2, 1), False, "3x2-dilated"),
    ((2, 2, 8, 10), (3, 3), (2, 2), (0, 1), (1, 1), True, "ceil-mode"),
]


def _pool_attrs(kernel, strides, pad, ceil) -> dict:
    return {"kernel_shape": kernel, "strides": strides, "pads": (pad[0], pad[1]) * 2,
            "ceil_mode": ceil}


def _torch_max(kernel, strides, pad, dil, ceil, **kw):
    return lambda x: _nnf().max_pool2d(x, kernel, strides, pad, dil, ceil_mode=ceil, **kw)


def _max_grad_ref(pool):
    def ref(x, dy):
        torch = _torch()
        x = x.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(pool(x), x, dy, create_graph=True)
        return gx
    return ref


def _max_gather_ref(pool_with_indices):
    def ref(x, g):
        _, idx = pool_with_indices(x)
        return g.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
    return ref


def _max_cases():
    pool, grad, gather = [], [], []
    for k, (xs, kern, st, pad, dil, ceil, cid) in enumerate(MAX_SETUPS):
        attrs = dict(_pool_attrs(kern, st, pad, ceil), dilations=dil)
        ref = _torch_max(kern, st, pad, dil, ceil)
        x = distinct(xs, 50 + k)
        pool.append(OpCase([x], attrs, torch=ref, id=cid))
        y_shape = xs[:2] + tuple(out_size(xs[2 + a], kern[a], st[a], pad[a], pad[a], dil[a], ceil)
                                 for a in (0, 1))
        grad.append(OpCase([x, randn(y_shape, 60 + k)], attrs, torch=_max_grad_ref(ref),
                           grad_inputs=(1,), id=cid))
        gather.append(OpCase([x, randn(xs, 70 + k)], attrs, grad_inputs=(1,),
                             torch=_max_gather_ref(_torch_max(kern, st, pad, dil, ceil,
                                                              return_indices=True)), id=cid))
    # ties: torch (and we) send the gradient to the first maximum in row-major order
    ties = np.round(randn((2, 2, 6, 8), 80), 0)
    attrs = dict(_pool_attrs((2, 2), (2, 2), (0, 0), False), dilations=(1, 1))
    ref = _torch_max((2, 2), (2, 2), (0, 0), (1, 1), False)
    pool.append(OpCase([ties], attrs, torch=ref, fd=False, id="ties"))
    grad.append(OpCase([ties, randn((2, 2, 3, 4), 81)], attrs, torch=_max_grad_ref(ref),
                       grad_inputs=(1,), id="ties"))
    pool += _indices_cases()
    return {"MaxPool": pool, "MaxPoolGrad": grad, "MaxPoolGather": gather}


def _torch_indices(kern, st, pad, dil, ceil, column_major):
    """torch's per-plane indices made ONNX's: flat over (N, C, H, W), H/W swapped if asked."""
    def ref(x):
        y, idx = _nnf().max_pool2d(x, kern, st, pad, dil, ceil_mode=ceil, return_indices=True)
        n, c, h, w = x.shape
        if column_major:
            idx = (idx % w) * h + idx // w
        planes = _torch().arange(n * c).reshape(n, c, 1, 1) * (h * w)
        return y, idx + planes
    return ref


def _indices_cases():
    """MaxPool with ONNX's Indices output (row and column major)."""
    cases = []
    for k, (xs, kern, st, pad, dil, ceil, cid) in enumerate(MAX_SETUPS):
        for order in (0, 1) if k == 0 else (0,):
            attrs = dict(_pool_attrs(kern, st, pad, ceil), dilations=dil, with_indices=True,
                         storage_order=order)
            cases.append(OpCase([distinct(xs, 90 + k)], attrs, grad_outputs=(0,),
                                torch=_torch_indices(kern, st, pad, dil, ceil, order),
                                id=f"{cid}-indices-order{order}"))
    return cases


# (x shape, kernel, strides, (pad h, pad w), ceil_mode, count_include_pad, id)
AVG_SETUPS = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), False, True, "3x3-s2-p1"),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), False, False, "exclude-pad"),
    ((2, 2, 8, 6), (2, 2), (2, 2), (0, 0), False, True, "2x2-s2"),
    ((2, 2, 7, 10), (2, 3), (2, 2), (1, 1), True, True, "ceil-mode"),
    ((2, 2, 7, 10), (2, 3), (2, 2), (1, 1), True, False, "ceil-exclude-pad"),
]


def _torch_avg(kernel, strides, pad, ceil, include):
    return lambda x: _nnf().avg_pool2d(x, kernel, strides, pad, ceil_mode=ceil,
                                       count_include_pad=include)


def _avg_grad_ref(pool, x_shape):
    def ref(dy):
        torch = _torch()
        x0 = torch.zeros(x_shape, dtype=dy.dtype, requires_grad=True)
        (gx,) = torch.autograd.grad(pool(x0), x0, dy, create_graph=True)
        return gx
    return ref


def _avg_cases():
    pool, grad = [], []
    for k, (xs, kern, st, pad, ceil, include, cid) in enumerate(AVG_SETUPS):
        attrs = dict(_pool_attrs(kern, st, pad, ceil), count_include_pad=include)
        ref = _torch_avg(kern, st, pad, ceil, include)
        pool.append(OpCase([randn(xs, 90 + k)], attrs, torch=ref, id=cid))
        y_shape = xs[:2] + tuple(out_size(xs[2 + a], kern[a], st[a], pad[a], pad[a], 1, ceil)
                                 for a in (0, 1))
        grad.append(OpCase([randn(y_shape, 100 + k)], dict(attrs, input_hw=xs[2:]),
                           torch=_avg_grad_ref(ref, xs), id=cid))
    glob = [OpCase([randn(s, 110 + k)], torch=lambda x: x.mean(tuple(range(2, x.ndim)),
                                                                 keepdim=True), id=f"rank{len(s)}")
            for k, s in enumerate([(2, 3, 4, 5), (3, 2, 7)])]
    return {"AveragePool": pool, "AveragePoolGrad": grad, "GlobalAveragePool": glob}


# ---- normalization and dropout --------------------------------------------------------------

def _bn_inputs(shape, seed):
    c = shape[1]
    g = rng(seed)
    return [g.standard_normal(shape) * 1.5 + 0.5, g.standard_normal(c), g.standard_normal(c),
            g.standard_normal(c) * 0.3, g.uniform(0.5, 1.5, c)]


def _bn_train_ref(momentum, eps):
    def ref(x, w, b, running_mean, running_var):
        mean, var = running_mean.detach().clone(), running_var.detach().clone()
        y = _nnf().batch_norm(x, mean, var, w, b, True, momentum, eps)
        return y, mean, var
    return ref


def _bn_infer_ref(eps):
    def ref(x, w, b, mean, var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / (var.reshape(shape) + eps).sqrt() * w.reshape(shape) \
            + b.reshape(shape)
        return y, mean, var
    return ref


def _bn_grad_ref(eps):
    def ref(x, w, dy):
        torch = _torch()
        b = torch.zeros(w.shape, dtype=w.dtype, requires_grad=True)
        y = _nnf().batch_norm(x, None, None, w, b, True, 0.0, eps)
        return torch.autograd.grad(y, (x, w, b), dy, create_graph=True)
    return ref


def _norm_cases():
    bn, bn_grad = [], []
    for k, shape in enumerate([(4, 3, 5, 6), (6, 3), (4, 3, 7)]):
        ins = _bn_inputs(shape, 120 + k)
        attrs = {"training": True, "momentum": 0.2, "eps": 1e-3}
        bn.append(OpCase(ins, attrs, torch=_bn_train_ref(0.2, 1e-3), grad_outputs=(0,),
                         grad_inputs=(0, 1, 2), id=f"train-rank{len(shape)}"))
        bn.append(OpCase(ins, dict(attrs, training=False), torch=_bn_infer_ref(1e-3),
                         id=f"infer-rank{len(shape)}"))
        bn_grad.append(OpCase([ins[0], ins[1], randn(shape, 130 + k)], {"eps": 1e-3},
                              torch=_bn_grad_ref(1e-3), id=f"rank{len(shape)}"))
        # the lowering through ORT CPU's fused training-mode BatchNormalization
        bn.append(OpCase(ins, dict(attrs, ort_cpu_form=True), torch=_bn_train_ref(0.2, 1e-3),
                         grad_outputs=(0,), grad_inputs=(0, 1, 2),
                         id=f"train-ort-cpu-form-rank{len(shape)}"))
        bn_grad.append(OpCase([ins[0], ins[1], randn(shape, 130 + k)],
                              {"eps": 1e-3, "ort_cpu_form": True}, torch=_bn_grad_ref(1e-3),
                              id=f"ort-cpu-form-rank{len(shape)}"))
    # the running-statistics outputs are differentiable too (torch treats them as buffers)
    bn.append(OpCase(_bn_inputs((3, 2, 4, 3), 140), {"training": True, "momentum": 0.3},
                     id="train-state-gradients"))
    # ONNX's training-mode rule: the running variance takes the biased batch variance
    bn.append(OpCase(_bn_inputs((3, 2, 4, 3), 141), {"training": True, "momentum": 0.3,
                                                     "unbiased_var": False},
                     id="train-biased-running-var"))
    ln = []
    for k, (shape, axis) in enumerate([((3, 4, 5), -1), ((3, 4, 5), 1), ((5, 6), -1)]):
        norm_shape = shape[axis % len(shape):]
        ln.append(OpCase([randn(shape, 150 + k, 2.0), randn(norm_shape, 160 + k),
                          randn(norm_shape, 170 + k)], {"axis": axis, "eps": 1e-5},
                         torch=lambda x, w, b: _nnf().layer_norm(x, w.shape, w, b, 1e-5),
                         id=f"axis{axis}-rank{len(shape)}"))
    seed = np.array(7, np.int64)
    drop = [
        # the counter-based mask is the same on every backend, so ONNX runs compare too
        OpCase([randn((3, 4, 5), 180), seed], {"rate": 0.3, "training": True}, id="train"),
        OpCase([randn((16, 9), 183), np.array(-2**40, np.int64)],
               {"rate": 0.8, "training": True}, id="train-rate0.8-negative-seed"),
        OpCase([randn((4, 6), 181), seed], {"rate": 0.3, "training": False},
               torch=lambda x, s: (x * 1, _torch().ones(x.shape, dtype=_torch().bool), s),
               id="inference"),
        OpCase([randn((4, 6), 182), seed], {"rate": 0.0, "training": True},
               torch=lambda x, s: (x * 1, _torch().ones(x.shape, dtype=_torch().bool), s + 1),
               id="rate0"),
    ]
    return {"BatchNorm": bn, "BatchNormGrad": bn_grad, "LayerNorm": ln, "Dropout": drop}


CASES: dict[str, list[OpCase]] = {**_conv_cases(), **_max_cases(), **_avg_cases(),
                                  **_norm_cases()}
