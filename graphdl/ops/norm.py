"""Normalization and dropout: BatchNorm (+ BatchNormGrad), LayerNorm and Dropout.

``BatchNorm(x, scale, bias, running_mean, running_var)`` has three outputs: y and the new
running mean and variance, which are the state updates of inputs 3 and 4 (torch conventions:
normalize with the biased batch variance, update the running variance with the unbiased one,
new = (1 - momentum) old + momentum batch). With ``training=False`` it normalizes with the
running statistics and passes them through. Channels are axis 1, for (N, C) and (N, C, ...).

``Dropout(x, seed)`` has outputs (y, mask, next_seed); next_seed updates the seed variable. The
mask comes from the counter-based RNG of :mod:`graphdl.ops.counter_rng`: the NumPy kernel and
the ONNX lowering draw the same mask from the same seed.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType, Value
from graphdl.ops import _norm_kernels as K, counter_rng
from graphdl.ops.infer import check_arity, norm_axis, require_float, same_dtype
from graphdl.ops.registry import (Attr, OnnxDType, OnnxLowering, OnnxNode, OpDef, apply, constant,
                                  fail, onnx_reduce, register, split_along)

__all__ = ["batch_norm", "layer_norm", "dropout"]


def _reduce_axes(rank: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, rank))


def _channel_shape(rank: int) -> tuple[int, ...]:
    """Shape that broadcasts a (C,) vector against (N, C, ...)."""
    return (1, -1) + (1,) * (rank - 2)


# ---- BatchNorm --------------------------------------------------------------------------------

def _bn_infer(types, attrs):
    check_arity("BatchNorm", types, 5)
    dt = same_dtype("BatchNorm", types)
    x = types[0]
    require_float("BatchNorm", x)
    if x.rank < 2:
        raise fail("BatchNorm", f"needs (N, C) or (N, C, ...) input, got {tuple(x.shape)}",
                   types)
    c = x.shape[1]
    names = ("scale", "bias", "running_mean", "running_var")
    for name, t in zip(names, types[1:]):
        if tuple(t.shape) != (c,):
            raise fail("BatchNorm", f"{name} must have shape ({c},) for input "
                       f"{tuple(x.shape)} (channels on axis 1), got {tuple(t.shape)}", types)
    stat = TensorType((c,), dt)
    return [x, stat, stat]


def _first_out(out):
    """The buffer for output 0 when the executor passes one per output."""
    return out[0] if isinstance(out, (tuple, list)) else None


def _bn_kernel(xs, attrs, out):
    eps = float(attrs["eps"])
    if attrs["training"]:
        return K.batch_norm_train(*xs, eps, float(attrs["momentum"]), _first_out(out),
                                  bool(attrs["unbiased_var"]))
    return K.batch_norm_infer(*xs, eps, _first_out(out))


def _bn_vjp(F, node, grads):
    x, scale, bias, running_mean, running_var = node.inputs
    gy, g_mean, g_var = grads
    eps, m = float(node.attrs["eps"]), float(node.attrs["momentum"])
    rank, axes = x.ndim, _reduce_axes(x.ndim)
    gx = gscale = gbias = gmean = gvar = None
    if node.attrs["training"]:
        if gy is not None:
            gx, gscale, gbias = apply("BatchNormGrad", x, scale, gy, eps=eps)
        # running stats: new = (1 - m) old + m batch; d batch mean / dx = 1/n,
        # d unbiased var / dx = 2 (x - mean) / (n - 1)
        if g_mean is not None or g_var is not None:
            n = F.numel(x, axes)
            extra = None
            if g_mean is not None:
                gmean = g_mean * (1.0 - m)
                extra = F.expand_as(F.reshape(g_mean, _channel_shape(rank)), x) * m / n
            if g_var is not None:
                gvar = g_var * (1.0 - m)
                centred = x - F.mean(x, axes, keepdims=True)
                count = n - 1.0 if node.attrs["unbiased_var"] else n
                term = centred * F.reshape(g_var, _channel_shape(rank)) * (2.0 * m) / count
                extra = term if extra is None else extra + term
            gx = extra if gx is None else gx + extra
    else:
        gmean, gvar = g_mean, g_var  # the statistics pass through
        if gy is not None:
            inv = 1.0 / F.sqrt(running_var + eps)
            k = scale * inv
            centred = x - F.reshape(running_mean, _channel_shape(rank))
            gx = gy * F.reshape(k, _channel_shape(rank))
            gbias = F.sum(gy, axes)
            dot = F.sum(gy * centred, axes)
            gscale = dot * inv
            through_mean = -gbias * k  # d/d mean of (x - mean) k
            through_var = dot * scale * (-0.5) * inv * inv * inv  # d (v + eps)^-1/2 = -1/2 ()^-3/2
            gmean = through_mean if gmean is None else gmean + through_mean
            gvar = through_var if gvar is None else gvar + through_var
    return [gx, gscale, gbias, gmean, gvar]


def _bn_onnx(attrs, tin, tout, opset):
    eps = float(attrs["eps"])
    if not attrs["training"]:
        return OnnxLowering((
            OnnxNode("BatchNormalization", ("in0", "in1", "in2", "in3", "in4"), ("out0",),
                     {"epsilon": eps}),
            OnnxNode("Identity", ("in3",), ("out1",)),
            OnnxNode("Identity", ("in4",), ("out2",)),
        ))
    # ONNX's training-mode BatchNormalization updates the running variance with the biased
    # variance and weights momentum the other way round, so lower torch's rule with primitives.
    dt = np.dtype(tin[0].dtype)
    rank = tin[0].rank
    m = float(attrs["momentum"])
    axes = list(_reduce_axes(rank))
    consts: dict = {}

    def reduce_mean(src, dst):
        return onnx_reduce("ReduceMean", src, dst, axes, opset, True, consts)

    if _ort_cpu_form(attrs, tin, opset):
        # one fused kernel for y and the batch statistics: with momentum 0 its "running"
        # outputs are the batch mean and the biased batch variance (measured 1.7x faster
        # than the primitive chain on ORT CPU); torch's running-stat rule follows on (C,)
        statistics = _statistics_inputs("in1") + (
            OnnxNode("BatchNormalization", ("in0", "in1", "in2", "zm", "uv"),
                     ("out0", "mean_c", "var_c"),
                     {"epsilon": eps, "momentum": 0.0, "training_mode": 1}),)
    else:
        statistics = (
            reduce_mean("in0", "mean"),
            OnnxNode("Sub", ("in0", "mean"), ("centred",)),
            OnnxNode("Mul", ("centred", "centred"), ("sq",)),
            reduce_mean("sq", "var"),
            OnnxNode("Add", ("var", "eps"), ("var_eps",)),
            OnnxNode("Sqrt", ("var_eps",), ("std",)),
            OnnxNode("Reshape", ("in1", "cshape"), ("scale_b",)),
            OnnxNode("Reshape", ("in2", "cshape"), ("bias_b",)),
            OnnxNode("Div", ("scale_b", "std"), ("k",)),
            OnnxNode("Mul", ("centred", "k"), ("scaled",)),
            OnnxNode("Add", ("scaled", "bias_b"), ("out0",)),
            OnnxNode("Reshape", ("mean", "flat"), ("mean_c",)),
            OnnxNode("Reshape", ("var", "flat"), ("var_c",)))
    nodes = statistics + (
        # count per channel: size(x) / C, then the unbiased correction n / (n - 1)
        OnnxNode("Size", ("in0",), ("size",)),
        OnnxNode("Shape", ("in0",), ("shape",)),
        OnnxNode("Gather", ("shape", "one_i"), ("channels",), {"axis": 0}),
        OnnxNode("Div", ("size", "channels"), ("count_i",)),
        OnnxNode("Cast", ("count_i",), ("count",), {"to": OnnxDType(dt.name)}),
        OnnxNode("Sub", ("count", "one"), ("count_1",)),
        OnnxNode("Div", ("count", "count_1") if attrs["unbiased_var"] else ("count", "count"),
                 ("unbias",)),
        OnnxNode("Mul", ("in3", "keep"), ("old_mean",)),
        OnnxNode("Mul", ("mean_c", "mom"), ("new_mean",)),
        OnnxNode("Add", ("old_mean", "new_mean"), ("out1",)),
        OnnxNode("Mul", ("var_c", "unbias"), ("var_u",)),
        OnnxNode("Mul", ("var_u", "mom"), ("new_var",)),
        OnnxNode("Mul", ("in4", "keep"), ("old_var",)),
        OnnxNode("Add", ("old_var", "new_var"), ("out2",)),
    )
    consts.update({"eps": np.array(eps, dt), "cshape": np.array(_channel_shape(rank), np.int64),
                   "one_i": np.array(1, np.int64), "one": np.array(1.0, dt),
                   "flat": np.array([-1], np.int64), "keep": np.array(1.0 - m, dt),
                   "mom": np.array(m, dt)})
    return OnnxLowering(nodes, consts)


_EPS = Attr(float, 1e-5, "added to the variance")
# BatchNormalization's training_mode (batch statistics as outputs) exists from this opset
_BN_TRAINING_OPSET = 14
_ORT_CPU_FORM = Attr(bool, False, "lower through ONNX Runtime CPU's training-mode "
                     "BatchNormalization (its running outputs aliased to its inputs, momentum 0: "
                     "the biased batch statistics); set by passes/ort_forms.py for that "
                     "runtime only (cuDNN's running variance is unbiased)")


def _ort_cpu_form(attrs, tin, opset: int) -> bool:
    return (bool(attrs["ort_cpu_form"]) and opset >= _BN_TRAINING_OPSET
            and isinstance(tin[1].shape[0], int))
_TRAINING = Attr(bool, True, "training form (batch statistics, state updates)")

register(OpDef(name="BatchNorm", infer=_bn_infer, kernel=_bn_kernel, vjp=_bn_vjp,
               onnx=_bn_onnx, n_outputs=3, state_outputs={1: 3, 2: 4},
               attrs={"eps": _EPS, "momentum": Attr(float, 0.1, "weight of the batch statistics"),
                      "training": _TRAINING, "ort_cpu_form": _ORT_CPU_FORM,
                      "unbiased_var": Attr(bool, True, "update the running variance with the "
                                           "unbiased batch variance (torch); False: the biased "
                                           "one (ONNX's training-mode BatchNormalization)")},
               # channels are independent: x and y split along axis 1, the rest along 0
               split=split_along((1, 0, 0, 0, 0), (1, 0, 0)),
               doc="Batch normalization over axis 1 (torch conventions); outputs y and the "
                   "new running mean and variance."))


# ---- BatchNormGrad ----------------------------------------------------------------------------

def _bn_grad_infer(types, attrs):
    check_arity("BatchNormGrad", types, 3)
    dt = same_dtype("BatchNormGrad", types)
    x, scale, dy = types
    if x.rank < 2 or tuple(scale.shape) != (x.shape[1],) or dy.shape != x.shape:
        raise fail("BatchNormGrad", "needs x (N, C, ...), scale (C,) and dy shaped like x",
                   types)
    return [x, TensorType(scale.shape, dt), TensorType(scale.shape, dt)]


def _bn_grad_kernel(xs, attrs, out):
    return K.batch_norm_grad(xs[0], xs[1], xs[2], float(attrs["eps"]),
                             _first_out(out))


def bn_grad_composed(F, x, scale, dy, eps: float):
    """(dx, dscale, dbias) of training-mode batch norm, built from primitive ops."""
    rank, axes = x.ndim, _reduce_axes(x.ndim)
    centred = x - F.mean(x, axes, keepdims=True)
    inv = 1.0 / F.sqrt(F.mean(centred * centred, axes, keepdims=True) + eps)
    xhat = centred * inv
    k = F.reshape(scale, _channel_shape(rank)) * inv
    dx = k * (dy - F.mean(dy, axes, keepdims=True)
              - xhat * F.mean(dy * xhat, axes, keepdims=True))
    return dx, F.sum(dy * xhat, axes), F.sum(dy, axes)


def _bn_grad_vjp(F, node, grads):
    # Second derivatives: reverse-mode through the primitive form of the first derivative.
    x, scale, dy = node.inputs
    outs = bn_grad_composed(F, x, scale, dy, float(node.attrs["eps"]))
    total = None
    for value, g in zip(outs, grads):
        if g is not None:
            term = F.sum(value * g)
            total = term if total is None else total + term
    return F.grad(total, [x, scale, dy])


def _bn_grad_onnx(attrs, tin, tout, opset):
    dt = np.dtype(tin[0].dtype)
    rank = tin[0].rank
    axes = list(_reduce_axes(rank))
    sum_axes = np.array(axes, np.int64)
    consts: dict = {}

    def mean(src, dst):
        return onnx_reduce("ReduceMean", src, dst, axes, opset, True, consts)

    if _ort_cpu_form(attrs, tin, opset):
        return _bn_grad_onnx_fused(dt, rank, tin[1].shape[0], float(attrs["eps"]), axes)
    nodes = (
        mean("in0", "mu"),
        OnnxNode("Sub", ("in0", "mu"), ("centred",)),
        OnnxNode("Mul", ("centred", "centred"), ("sq",)),
        mean("sq", "var"),
        OnnxNode("Add", ("var", "eps"), ("ve",)),
        OnnxNode("Sqrt", ("ve",), ("std",)),
        OnnxNode("Div", ("centred", "std"), ("xhat",)),
        OnnxNode("Reshape", ("in1", "cshape"), ("scale_b",)),
        OnnxNode("Div", ("scale_b", "std"), ("k",)),
        mean("in2", "dy_mean"),
        OnnxNode("Mul", ("in2", "xhat"), ("dy_xhat",)),
        mean("dy_xhat", "dyx_mean"),
        OnnxNode("Mul", ("xhat", "dyx_mean"), ("t1",)),
        OnnxNode("Sub", ("in2", "dy_mean"), ("t2",)),
        OnnxNode("Sub", ("t2", "t1"), ("t3",)),
        OnnxNode("Mul", ("k", "t3"), ("out0",)),
        OnnxNode("ReduceSum", ("dy_xhat", "sum_axes"), ("out1",), {"keepdims": 0}),
        OnnxNode("ReduceSum", ("in2", "sum_axes"), ("out2",), {"keepdims": 0}),
    )
    consts.update({"eps": np.array(float(attrs["eps"]), dt), "sum_axes": sum_axes,
                   "cshape": np.array(_channel_shape(rank), np.int64)})
    return OnnxLowering(nodes, consts)


def _statistics_inputs(per_channel: str) -> tuple:
    """(C,) zeros "zm" and ones "uv" for the mean and variance inputs of a training-mode
    BatchNormalization, computed at run time from a (C,) input, for no other use.
    ORT's CPU kernel aliases its running outputs to those inputs (KernelDef Alias(3, 1),
    Alias(4, 2)) and writes into them whoever else reads them: an initializer stayed
    poisoned after a NaN batch, and zeros shared with another use were overwritten.
    ORT's CSE may share these between BatchNormalization nodes (one weight), which is
    harmless: with momentum 0 a finite input does not enter the outputs."""
    return (OnnxNode("Sub", (per_channel, per_channel), ("zm",)),
            OnnxNode("Add", ("zm", "one"), ("uv",)))


def _bn_grad_onnx_fused(dt: np.dtype, rank: int, channels: int, eps: float,
                        axes: list) -> OnnxLowering:
    """BatchNormGrad as 7 full-size kernels instead of 14: xhat and the batch statistics
    from one training-mode BatchNormalization, the two sums, then
    dx = a*dy + (b*xhat + c) with per-channel a = scale/std, b = -a*mean(dy*xhat),
    c = -a*mean(dy), the bracket as one inference-mode BatchNormalization (mean 0, var 1,
    epsilon 0: exactly b*xhat + c)."""
    # zeros and ones (scale 1 and bias 0 here, mean 0 and variance 1 below) are constants:
    # nothing writes into those inputs
    nodes = _statistics_inputs("in1") + (
        OnnxNode("BatchNormalization", ("in0", "ones", "zeros", "zm", "uv"),
                 ("xhat", "mu", "var"), {"epsilon": eps, "momentum": 0.0, "training_mode": 1}),
        OnnxNode("ReduceSum", ("in2", "sum_axes"), ("sum_dy",), {"keepdims": 0}),
        OnnxNode("Mul", ("in2", "xhat"), ("dy_xhat",)),
        OnnxNode("ReduceSum", ("dy_xhat", "sum_axes"), ("sum_dyx",), {"keepdims": 0}),
        OnnxNode("Identity", ("sum_dyx",), ("out1",)),
        OnnxNode("Identity", ("sum_dy",), ("out2",)),
        # per channel (C,): count n = size / C
        OnnxNode("Size", ("in0",), ("size",)),
        OnnxNode("Cast", ("size",), ("size_f",), {"to": OnnxDType(dt.name)}),
        OnnxNode("Div", ("size_f", "channels"), ("count",)),
        OnnxNode("Add", ("var", "eps"), ("ve",)),
        OnnxNode("Sqrt", ("ve",), ("std",)),
        OnnxNode("Div", ("in1", "std"), ("a",)),
        OnnxNode("Div", ("a", "count"), ("a_n",)),
        OnnxNode("Mul", ("a_n", "sum_dyx"), ("b_pos",)),
        OnnxNode("Neg", ("b_pos",), ("b",)),
        OnnxNode("Mul", ("a_n", "sum_dy"), ("c_pos",)),
        OnnxNode("Neg", ("c_pos",), ("c",)),
        OnnxNode("BatchNormalization", ("xhat", "b", "c", "zeros", "ones"), ("bx_c",),
                 {"epsilon": 0.0}),
        OnnxNode("Reshape", ("a", "cshape"), ("a_b",)),
        OnnxNode("Mul", ("in2", "a_b"), ("a_dy",)),
        OnnxNode("Add", ("a_dy", "bx_c"), ("out0",)),
    )
    return OnnxLowering(nodes, {
        "zeros": np.zeros(channels, dt), "ones": np.ones(channels, dt),
        "one": np.array(1.0, dt), "eps": np.array(eps, dt),
        "channels": np.array(channels, dt), "sum_axes": np.array(axes, np.int64),
        "cshape": np.array(_channel_shape(rank), np.int64)})


register(OpDef(name="BatchNormGrad", infer=_bn_grad_infer, kernel=_bn_grad_kernel,
               vjp=_bn_grad_vjp, onnx=_bn_grad_onnx, n_outputs=3,
               attrs={"eps": _EPS, "ort_cpu_form": _ORT_CPU_FORM},
               split=split_along((1, 0, 1), (1, 0, 0)),  # channels are independent
               doc="(dx, dscale, dbias) of training-mode BatchNorm, through the batch "
                   "statistics."))


# ---- LayerNorm --------------------------------------------------------------------------------

def _ln_infer(types, attrs):
    check_arity("LayerNorm", types, 3)
    dt = same_dtype("LayerNorm", types)
    x = types[0]
    require_float("LayerNorm", x)
    axis = norm_axis("LayerNorm", int(attrs["axis"]), x.rank)
    want = tuple(x.shape[axis:])
    for name, t in zip(("scale", "bias"), types[1:]):
        if tuple(t.shape) != want:
            raise fail("LayerNorm", f"{name} must have the normalized shape {want} of input "
                       f"{tuple(x.shape)} (axis {axis}), got {tuple(t.shape)}", types)
    return [TensorType(x.shape, dt)]


def _ln_kernel(xs, attrs, out):
    x = xs[0]
    axis = int(attrs["axis"]) % x.ndim
    return K.layer_norm(x, xs[1], xs[2], axis, float(attrs["eps"]), out)


def _ln_vjp(F, node, grads):
    x, scale, bias = node.inputs
    g = grads[0]
    axis = int(node.attrs["axis"]) % x.ndim
    axes, lead = tuple(range(axis, x.ndim)), tuple(range(axis))
    centred = x - F.mean(x, axes, keepdims=True)
    inv = 1.0 / F.sqrt(F.mean(centred * centred, axes, keepdims=True)
                       + float(node.attrs["eps"]))
    xhat = centred * inv
    gxhat = g * scale
    # dx = inv (gxhat - mean(gxhat) - xhat mean(gxhat xhat)) over the normalized axes
    gx = inv * (gxhat - F.mean(gxhat, axes, keepdims=True)
                - xhat * F.mean(gxhat * xhat, axes, keepdims=True))
    gscale = F.sum(g * xhat, lead) if lead else g * xhat
    gbias = F.sum(g, lead) if lead else g
    return [gx, gscale, gbias]


register(OpDef(name="LayerNorm", infer=_ln_infer, kernel=_ln_kernel, vjp=_ln_vjp,
               onnx=lambda a, ti, to, o: OnnxLowering((OnnxNode(
                   "LayerNormalization", ("in0", "in1", "in2"), ("out0",),
                   {"axis": int(a["axis"]), "epsilon": float(a["eps"])}),)),
               attrs={"axis": Attr(int, -1, "the first normalized axis"), "eps": _EPS},
               doc="Normalize over the axes from ``axis`` on, then scale and shift."))


# ---- Dropout ----------------------------------------------------------------------------------

def _dropout_infer(types, attrs):
    check_arity("Dropout", types, 2)
    x, seed = types
    require_float("Dropout", x)
    if seed.dtype != "int64" or seed.shape != ():
        raise fail("Dropout", f"seed must be an int64 scalar, got {seed}", types)
    rate = float(attrs["rate"])
    if not 0.0 <= rate <= 1.0:
        raise fail("Dropout", f"rate must be in [0, 1], got {rate}", types)
    return [x, TensorType(x.shape, "bool"), seed]


def _dropout_kernel(xs, attrs, out):
    x, seed = xs
    if attrs["training"]:
        return K.dropout_train(x, seed, float(attrs["rate"]), _first_out(out))
    return x, np.ones(x.shape, bool), np.asarray(seed, np.int64)


def _dropout_vjp(F, node, grads):
    g = grads[0]
    if g is None:
        return [None, None]
    rate = float(node.attrs["rate"])
    if not node.attrs["training"]:
        return [g, None]
    mask = F.cast(node.outputs[1], g.dtype)
    return [g * mask * (0.0 if rate >= 1.0 else 1.0 / (1.0 - rate)), None]


def _dropout_onnx(attrs, tin, tout, opset):
    if attrs["training"]:
        # the mask from the counter-based RNG: the NumPy kernel's mask, bit for bit
        rate = float(attrs["rate"])
        nodes, consts = counter_rng.program_nodes("in0", "in1", "bits", opset, "Dropout")
        consts.update(threshold=np.array(counter_rng.keep_threshold(rate), np.uint64),
                      scale=np.array(0.0 if rate >= 1.0 else 1.0 / (1.0 - rate),
                                     np.dtype(tin[0].dtype)),
                      one=np.array(1, np.int64))
        nodes += [
            OnnxNode("GreaterOrEqual", ("bits", "threshold"), ("keep",)),
            OnnxNode("Shape", ("in0",), ("shape",)),
            OnnxNode("Reshape", ("keep", "shape"), ("out1",)),
            OnnxNode("Cast", ("out1",), ("keep_x",), {"to": OnnxDType(tin[0].dtype)}),
            OnnxNode("Mul", ("in0", "keep_x"), ("kept",)),  # x * mask, then * scale: the
            OnnxNode("Mul", ("kept", "scale"), ("out0",)),  # kernel's order of rounding
            OnnxNode("Add", ("in1", "one"), ("out2",)),
        ]
        return OnnxLowering(tuple(nodes), consts)
    return OnnxLowering((
        OnnxNode("Identity", ("in0",), ("out0",)),
        OnnxNode("Shape", ("in0",), ("shape",)),
        OnnxNode("ConstantOfShape", ("shape",), ("out1",), {"value": np.ones(1, bool)}),
        OnnxNode("Identity", ("in1",), ("out2",)),
    ))


register(OpDef(name="Dropout", infer=_dropout_infer, kernel=_dropout_kernel,
               vjp=_dropout_vjp, onnx=_dropout_onnx, n_outputs=3, state_outputs={2: 1},
               attrs={"rate": Attr(float, 0.5, "probability of zeroing an element"),
                      "training": _TRAINING},
               doc="Inverted dropout with an explicit seed; outputs (y, mask, next_seed)."))


# ---- builders ---------------------------------------------------------------------------------

def batch_norm(x, scale, bias, running_mean, running_var, training: bool = True,
               momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalization over axis 1 (torch's F.batch_norm); returns y.

    In training mode the node's outputs 1 and 2 are the new running statistics, which
    ``gd.state_updates`` (and the model's train step) write back to the variables."""
    return apply("BatchNorm", x, scale, bias, running_mean, running_var,
                 training=bool(training), momentum=float(momentum), eps=float(eps))[0]


def layer_norm(x, scale, bias, axis: int = -1, eps: float = 1e-5):
    """Layer normalization over the axes from ``axis`` on (ONNX LayerNormalization)."""
    return apply("LayerNorm", x, scale, bias, axis=int(axis), eps=float(eps))


def dropout(x, rate: float, seed, training: bool = True):
    """Zero elements with probability ``rate`` and scale the rest by 1 / (1 - rate).

    ``seed`` is an int64 scalar (a state variable, so each step draws a new mask; a plain
    int gives the same mask every run). Returns y; the node's output 2 is the next seed."""
    if not isinstance(seed, Value):
        seed = constant(np.array(int(seed), np.int64))
    return apply("Dropout", x, seed, rate=float(rate), training=bool(training))[0]
