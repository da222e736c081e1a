"""Core layers: Dense, Flatten, Reshape, Dropout, Embedding, Identity, Add, Concatenate."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from graphdl import tensor as F
from graphdl.ir import Value
from graphdl.layers import initializers
from graphdl.layers.activations import resolve_activation
from graphdl.layers.base import Layer, derive_seed


class Dense(Layer):
    """Fully connected: ``y = x @ weight.T + bias`` over the last axis (torch's nn.Linear).

    ``weight`` has torch's layout (out_features, in_features), so weights copy 1:1 to torch.
    Default init is Keras's: Glorot-uniform weight, zero bias (pass ``kernel_init=
    "torch_uniform"`` and ``bias_init="torch_uniform"`` for torch's default). Inputs of rank 2
    lower to a single Gemm; higher ranks apply to the last axis (MatMul + Add).
    ``activation`` (a name, as in ``Activation``) is applied last.
    """

    default_name = "dense"

    def __init__(self, units: int, use_bias: bool = True, activation: Any = None,
                 kernel_init: Any = "glorot_uniform", bias_init: Any = "zeros",
                 name: str | None = None, seed: int | None = None, dtype: Any = None):
        super().__init__(name, seed, dtype)
        if int(units) <= 0:
            raise ValueError(f"Dense: units must be positive, got {units}")
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.activation = resolve_activation(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init
        self.in_features: int | None = None

    def build(self, types):
        t = types[0]
        if t.rank < 2:
            raise self.error(f"expects input of rank >= 2 (batch, ..., features), got rank "
                             f"{t.rank}; add a batch axis")
        self.in_features = self.static_dim(t, -1, "feature (last)")
        dt = self.param_dtype(t)
        fans = (self.in_features, self.units)
        self.add_variable("weight", (self.units, self.in_features), self.kernel_init, dt,
                          fans=fans)
        if self.use_bias:
            self.add_variable("bias", (self.units,), self.bias_init, dt, fans=fans)

    def forward(self, x):
        t = x.type
        if t.rank < 2 or t.shape[-1] != self.in_features:
            raise self.error(f"was built for inputs (..., {self.in_features}), got "
                             f"{tuple(t.shape)}")
        w = self.value("weight")
        b = self.value("bias") if self.use_bias else None
        if t.rank == 2:
            y = F.gemm(x, w, b, trans_b=True)
        else:
            y = F.matmul(x, F.transpose(w))
            if b is not None:
                y = y + b
        return self.activation(y) if self.activation else y


class Flatten(Layer):
    """Collapse every axis after the batch axis: (N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    default_name = "flatten"

    def forward(self, x):
        if x.ndim < 1:
            raise self.error("expects an input with a batch axis, got a scalar")
        return F.flatten(x, 1)


class Reshape(Layer):
    """Reshape every sample to ``target_shape`` (the batch axis is kept; one -1 is inferred)."""

    default_name = "reshape"

    def __init__(self, target_shape: Sequence[int], name: str | None = None):
        super().__init__(name)
        self.target_shape = tuple(int(d) for d in target_shape)

    def forward(self, x):
        if x.ndim < 1:
            raise self.error("expects an input with a batch axis, got a scalar")
        return F.reshape(x, (0,) + self.target_shape)  # 0 copies the (symbolic) batch dim


class Identity(Layer):
    """The input, unchanged (a named node; handy as a placeholder)."""

    default_name = "identity"

    def forward(self, x):
        return F.identity(x)


class Dropout(Layer):
    """Zero each element with probability ``rate`` while training and scale the rest by
    1 / (1 - rate) (inverted dropout); the identity at inference.

    The layer owns an int64 scalar Variable ``f"{name}.seed"``: every training step uses it
    and writes the next seed back, so runs are reproducible from the initial seed.
    """

    default_name = "dropout"

    def __init__(self, rate: float, name: str | None = None, seed: int | None = None):
        super().__init__(name, seed)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def build(self, types):
        initial = self.seed if self.seed is not None else derive_seed(0, self.name)
        self.add_state("seed", np.array(initial, dtype=np.int64))

    def forward(self, x):
        if self.rate == 0.0:
            return F.identity(x)
        return F.dropout(x, self.rate, self.value("seed"), training=True)


class Embedding(Layer):
    """A lookup table: integer ids of any shape -> ids.shape + (embedding_dim,).

    ``weight`` is (num_embeddings, embedding_dim), initialised N(0, 1) like torch.
    """

    default_name = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, init: Any = None,
                 name: str | None = None, seed: int | None = None, dtype: Any = "float32"):
        super().__init__(name, seed, dtype)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.init = initializers.normal(1.0) if init is None else init

    def build(self, types):
        shape = (self.num_embeddings, self.embedding_dim)
        self.add_variable("weight", shape, self.init, self.dtype, fans=shape)

    def forward(self, ids):
        if ids.dtype not in ("int64", "int32"):
            raise self.error(f"expects integer ids (int64 or int32), got {ids.dtype}")
        return F.gather(self.value("weight"), ids, axis=0)


class Add(Layer):
    """Elementwise sum of a list of values (residual connections): ``Add()([a, b])``."""

    default_name = "add"
    multi_input = True

    def forward(self, *xs):
        _same_shapes(self, xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out if len(xs) > 1 else F.identity(out)


class Concatenate(Layer):
    """Join a list of values along ``axis`` (default 1: channels in NCHW)."""

    default_name = "concatenate"
    multi_input = True

    def __init__(self, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)

    def forward(self, *xs):
        return F.concat(list(xs), axis=self.axis)


def _same_shapes(layer: Layer, xs: Sequence[Value]) -> None:
    shapes = [tuple(x.shape) for x in xs]
    if any(s != shapes[0] for s in shapes):
        raise layer.error(f"inputs must have the same shape, got {shapes}")


__all__ = ["Add", "Concatenate", "Dense", "Dropout", "Embedding", "Flatten", "Identity",
           "Reshape"]
