"""Normalization layers: BatchNorm1D, BatchNorm2D and LayerNorm (torch conventions)."""
from __future__ import annotations

from typing import Any

from graphdl import tensor as F
from graphdl.layers.base import Layer


class _BatchNorm(Layer):
    """Shared BatchNorm: normalize per channel (axis 1) with batch statistics while training
    and running statistics at inference (torch: biased batch variance to normalize, unbiased
    for the running variance, new = (1 - momentum) * old + momentum * batch).

    Variables: ``weight`` (ones), ``bias`` (zeros), ``running_mean`` (zeros), ``running_var``
    (ones); the running statistics are state, not trainable parameters.
    """

    ranks: tuple[int, ...] = (4,)
    layout = "N, C, H, W"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True,
                 name: str | None = None, dtype: Any = None):
        super().__init__(name, None, dtype)
        self.momentum, self.eps, self.affine = float(momentum), float(eps), bool(affine)
        self.num_features: int | None = None

    def build(self, types):
        t = types[0]
        self.check_rank(t, self.ranks, self.layout)
        c = self.num_features = self.static_dim(t, 1, "channel")
        dt = self.param_dtype(t)
        self.add_variable("weight", (c,), "ones", dt, trainable=self.affine)
        self.add_variable("bias", (c,), "zeros", dt, trainable=self.affine)
        self.add_variable("running_mean", (c,), "zeros", dt, trainable=False)
        self.add_variable("running_var", (c,), "ones", dt, trainable=False)

    def forward(self, x):
        self.check_rank(x.type, self.ranks, self.layout)
        if x.shape[1] != self.num_features:
            raise self.error(f"was built for {self.num_features} channels, got {x.shape[1]}")
        return F.batch_norm(x, self.value("weight"), self.value("bias"),
                            self.value("running_mean"), self.value("running_var"),
                            training=True, momentum=self.momentum, eps=self.eps)


class BatchNorm2D(_BatchNorm):
    """Batch normalization over (N, H, W) for each channel of an NCHW input."""

    default_name = "batch_norm2d"


class BatchNorm1D(_BatchNorm):
    """Batch normalization for (N, C) features or (N, C, L) sequences (torch's BatchNorm1d)."""

    default_name = "batch_norm1d"
    ranks = (2, 3)
    layout = "N, C or N, C, L"


class LayerNorm(Layer):
    """Normalize each sample over the axes from ``axis`` to the last (ONNX's
    LayerNormalization; ``axis=-1`` is torch's ``LayerNorm(d)``); ``weight`` (ones) and
    ``bias`` (zeros) have the shape of those axes."""

    default_name = "layer_norm"

    def __init__(self, axis: int = -1, eps: float = 1e-5, elementwise_affine: bool = True,
                 name: str | None = None, dtype: Any = None):
        super().__init__(name, None, dtype)
        self.axis, self.eps, self.affine = int(axis), float(eps), bool(elementwise_affine)
        self.normalized_shape: tuple[int, ...] | None = None

    def _shape(self, t) -> tuple[int, ...]:
        if not -t.rank <= self.axis < t.rank or t.rank == 0:
            raise self.error(f"axis {self.axis} is out of range for rank {t.rank}")
        axis = self.axis % t.rank
        return tuple(self.static_dim(t, a, f"normalized (axis {a})")
                     for a in range(axis, t.rank))

    def build(self, types):
        t = types[0]
        shape = self.normalized_shape = self._shape(t)
        dt = self.param_dtype(t)
        self.add_variable("weight", shape, "ones", dt, trainable=self.affine)
        self.add_variable("bias", shape, "zeros", dt, trainable=self.affine)

    def forward(self, x):
        if self._shape(x.type) != self.normalized_shape:
            raise self.error(f"was built for normalized shape {self.normalized_shape}, got "
                             f"{tuple(x.shape)}")
        return F.layer_norm(x, self.value("weight"), self.value("bias"), axis=self.axis,
                            eps=self.eps)
