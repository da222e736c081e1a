"""NumPy kernels for batch normalization, layer normalization and dropout.

Batch norm views x as (N, C, L) (L = the spatial size, 1 for (N, C) inputs), so every
per-channel reduction runs over contiguous rows. Statistics follow torch: the batch mean and
the biased batch variance normalize; the running variance takes the unbiased one.
"""
from __future__ import annotations

import numpy as np

from graphdl.ops import counter_rng
from graphdl.ops._windows import target


def _rows(x: np.ndarray) -> np.ndarray:
    """x as (N, C, L)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def channel_count(x: np.ndarray) -> int:
    """Values per channel: N times the spatial size."""
    return x.size // x.shape[1] if x.shape[1] else 0


def batch_stats(x: np.ndarray, out: np.ndarray | None = None):
    """(mean, biased variance, centred x as (N, C, L)) over every axis but the channels; the
    centred values go into ``out`` when it is given."""
    x3 = _rows(x)
    count = x.dtype.type(channel_count(x))
    mean = x3.sum(axis=2).sum(axis=0) / count
    centred = np.subtract(x3, mean.reshape(1, -1, 1), out=None if out is None else _rows(out))
    var = np.einsum("ncl,ncl->c", centred, centred) / count
    return mean.astype(x.dtype, copy=False), var.astype(x.dtype, copy=False), centred


def batch_norm_train(x, scale, bias, running_mean, running_var, eps: float, momentum: float,
                     out=None, unbiased: bool = True):
    """(y, new running mean, new running var) with batch statistics (torch's training mode;
    ``unbiased=False``: the running variance takes the biased one, as ONNX's);
    y goes into ``out`` when given."""
    n = channel_count(x)
    if n <= 1:
        raise ValueError(f"BatchNorm: expected more than 1 value per channel when training, "
                         f"got input shape {x.shape}")
    dt = x.dtype.type
    y = target(out, x.shape, x.dtype)
    mean, var, y3 = batch_stats(x, y)
    y3 *= (scale / np.sqrt(var + dt(eps))).reshape(1, -1, 1)
    y3 += bias.reshape(1, -1, 1)
    m = dt(momentum)
    new_mean = (dt(1) - m) * running_mean + m * mean
    correction = dt(n / (n - 1)) if unbiased else dt(1)  # unbiased, as torch
    new_var = (dt(1) - m) * running_var + m * var * correction
    return y, new_mean.astype(x.dtype), new_var.astype(x.dtype)


def batch_norm_infer(x, scale, bias, running_mean, running_var, eps: float, out=None):
    """y with the running statistics; the statistics pass through unchanged."""
    dt = x.dtype.type
    k = scale / np.sqrt(running_var + dt(eps))
    y = target(out, x.shape, x.dtype)
    y3 = np.multiply(_rows(x), k.reshape(1, -1, 1), out=_rows(y))
    y3 += (bias - running_mean * k).reshape(1, -1, 1)  # (x - mean) k + b = x k + (b - mean k)
    # copies, so no caller can write into a variable's value through an output
    return y, running_mean.copy(), running_var.copy()


# Batch-norm backward runs over groups of channels small enough that a group's x, dy, dx and
# one temporary stay in the last-level cache between its passes (measured: 2x faster than
# whole-tensor passes at 8 MB per tensor); a fixed constant, not configuration.
GROUP_BYTES = 4 << 20


def batch_norm_grad(x, scale, dy, eps: float, out=None):
    """(dx, dscale, dbias) of training-mode batch norm, through the batch statistics:
    dx = k (dy - mean(dy) - xhat mean(dy xhat)), k = scale / sqrt(var + eps); dx goes into
    ``out`` when given."""
    x3, dy3 = _rows(x), _rows(dy)
    n, c, length = x3.shape
    dx = target(out, x.shape, x.dtype)
    dx3 = _rows(dx)
    dscale, dbias = np.empty(c, x.dtype), np.empty(c, x.dtype)
    per = max(1, GROUP_BYTES // max(n * length * x.itemsize, 1))
    for c0 in range(0, c, per):
        group = slice(c0, c0 + per)
        dscale[group], dbias[group] = _bn_grad_rows(x3[:, group], scale[group], dy3[:, group],
                                                    eps, dx3[:, group])
    return dx, dscale, dbias


def _bn_grad_rows(x3, scale, dy3, eps: float, dx3):
    """batch_norm_grad on (N, c, L) views; writes dx3, returns (dscale, dbias)."""
    dt = x3.dtype.type
    n = dt(x3.shape[0] * x3.shape[2])
    mean = x3.sum(axis=2).sum(axis=0) / n
    centred = x3 - mean.reshape(1, -1, 1)
    inv = 1.0 / np.sqrt(np.einsum("ncl,ncl->c", centred, centred) / n + dt(eps))
    k = scale * inv
    dbias = dy3.sum(axis=2).sum(axis=0)
    dot = np.einsum("ncl,ncl->c", dy3, centred)  # sum dy (x - mean)
    # dx = (dy - mean(dy)) k - (x - mean) k inv^2 mean(dy (x - mean))
    np.subtract(dy3, (dbias / n).reshape(1, -1, 1), out=dx3)
    dx3 *= k.reshape(1, -1, 1)
    centred *= (k * inv * inv * dot / n).reshape(1, -1, 1)
    dx3 -= centred
    return dot * inv, dbias


def layer_norm(x, scale, bias, axis: int, eps: float, out=None):
    """Normalize over the axes from ``axis`` on, then scale and shift."""
    lead = int(np.prod(x.shape[:axis]))
    x2 = x.reshape(lead, -1)
    dt = x.dtype.type
    mean = x2.mean(axis=1, keepdims=True, dtype=x.dtype)
    result = target(out, x.shape, x.dtype)
    y = np.subtract(x2, mean, out=result.reshape(x2.shape))
    var = np.einsum("ij,ij->i", y, y)[:, None] / dt(x2.shape[1])
    y *= 1.0 / np.sqrt(var + dt(eps))
    y *= scale.reshape(1, -1)
    y += bias.reshape(1, -1)
    return result


def dropout_train(x, seed, rate: float, out=None):
    """(y, mask, next seed): y = x * mask / (1 - rate); y goes into ``out`` when given."""
    mask = counter_rng.keep_mask(x.shape, int(seed), rate)
    y = target(out, x.shape, x.dtype) if out is not None else np.empty(x.shape, x.dtype)
    if rate >= 1.0:
        y.fill(0)
    else:
        np.multiply(x, mask, out=y)
        y *= x.dtype.type(1.0 / (1.0 - rate))
    return y, mask, np.asarray(seed + 1, dtype=np.int64)
