"""Activation layers (ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax,
Softplus) and ``Activation("relu")``, which picks one by name."""
from __future__ import annotations

from typing import Any, Callable

from graphdl import tensor as F
from graphdl.layers.base import Layer, unique_name


def _relu6(x):
    return F.clip(x, 0.0, 6.0)  # relu6(x) = min(max(x, 0), 6)


# name -> builder(x, **options); the names users pass to Activation and to activation=
ACTIVATIONS: dict[str, Callable] = {
    "relu": F.relu,
    "relu6": _relu6,
    "leaky_relu": F.leaky_relu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "gelu": F.gelu,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "softplus": F.softplus,
}


def resolve_activation(spec: Any) -> Callable | None:
    """None/"linear" -> None; a name -> its builder; a callable passes through."""
    if spec is None or spec == "linear":
        return None
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in ACTIVATIONS:
        return ACTIVATIONS[spec]
    raise ValueError(f"unknown activation {spec!r}; use one of {sorted(ACTIVATIONS)}, "
                     "'linear', None or a callable")


class Activation(Layer):
    """An activation chosen by name: ``Activation("relu")``, ``Activation("softmax", axis=1)``.

    Extra keyword options go to the function (``axis`` for softmax, ``alpha`` for leaky_relu).
    """

    default_name = "activation"

    def __init__(self, activation: Any, name: str | None = None, **options: Any):
        fn = resolve_activation(activation)
        if fn is None:
            fn = F.identity
        if name is None and isinstance(activation, str):
            name = unique_name(activation)
        super().__init__(name)
        self.activation, self.fn, self.options = activation, fn, options

    def forward(self, x):
        return self.fn(x, **self.options)


class _Elementwise(Layer):
    """An activation with no state and no options."""

    fn: Callable = staticmethod(F.identity)

    def forward(self, x):
        return type(self).fn(x)


class ReLU(_Elementwise):
    """max(x, 0)."""

    default_name = "relu"
    fn = staticmethod(F.relu)


class ReLU6(_Elementwise):
    """min(max(x, 0), 6) (MobileNet)."""

    default_name = "relu6"
    fn = staticmethod(_relu6)


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""

    default_name = "sigmoid"
    fn = staticmethod(F.sigmoid)


class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    default_name = "tanh"
    fn = staticmethod(F.tanh)


class GELU(_Elementwise):
    """GELU, exact erf form (torch's default)."""

    default_name = "gelu"
    fn = staticmethod(F.gelu)


class Softplus(_Elementwise):
    """log(1 + exp(x))."""

    default_name = "softplus"
    fn = staticmethod(F.softplus)


class LeakyReLU(Layer):
    """x where x > 0, ``negative_slope * x`` elsewhere (torch's default slope 0.01)."""

    default_name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class Softmax(Layer):
    """exp(x) / sum(exp(x)) along ``axis`` (default: the last)."""

    default_name = "softmax"

    def __init__(self, axis: int = -1, name: str | None = None):
        super().__init__(name)
        self.axis = int(axis)

    def forward(self, x):
        return F.softmax(x, self.axis)


class LogSoftmax(Softmax):
    """log(softmax(x)) along ``axis``, computed stably."""

    default_name = "log_softmax"

    def forward(self, x):
        return F.log_softmax(x, self.axis)
