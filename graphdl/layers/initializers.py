"""Weight initializers: ``init(shape, fan_in, fan_out, rng) -> float64 array``.

Names follow Keras; the formulas follow torch.nn.init, so a seeded graphdl layer and a torch
layer initialised "the same way" draw from the same distribution:

- ``glorot_uniform`` (Xavier): U(-a, a), a = sqrt(6 / (fan_in + fan_out)) — Dense default.
- ``glorot_normal``: N(0, 2 / (fan_in + fan_out)).
- ``he_normal`` (Kaiming, ReLU gain, fan_in): N(0, 2 / fan_in) — Conv2D default.
- ``he_normal_fan_out``: N(0, 2 / fan_out), torchvision's ResNet/MobileNet conv init.
- ``he_uniform``: U(-a, a), a = sqrt(6 / fan_in).
- ``torch_uniform``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default for nn.Linear and
  nn.Conv2d weights and biases (kaiming_uniform with a = sqrt(5)).
- ``lecun_normal``: N(0, 1 / fan_in).
- ``zeros``, ``ones``; ``normal(std, mean)``, ``uniform(limit)``, ``truncated_normal(std)``,
  ``constant(value)`` build parameterised ones. A user callable with the same signature works.

Fans follow torch: for a weight of shape (out, in, *kernel), fan_in = in * prod(kernel) and
fan_out = out * prod(kernel).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

Initializer = Callable[[tuple, int, int, np.random.Generator], np.ndarray]


def default_fans(shape: tuple) -> tuple[int, int]:
    """torch's fans for a weight of ``shape`` (out, in, *kernel); vectors use their length."""
    if len(shape) < 2:
        n = int(shape[0]) if shape else 1
        return n, n
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def zeros(shape, fan_in, fan_out, rng) -> np.ndarray:
    """All zeros."""
    return np.zeros(shape)


def ones(shape, fan_in, fan_out, rng) -> np.ndarray:
    """All ones."""
    return np.ones(shape)


def glorot_uniform(shape, fan_in, fan_out, rng) -> np.ndarray:
    """Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape, fan_in, fan_out, rng) -> np.ndarray:
    """Xavier normal: N(0, 2 / (fan_in + fan_out))."""
    return rng.normal(0.0, math.sqrt(2.0 / max(fan_in + fan_out, 1)), shape)


def he_normal(shape, fan_in, fan_out, rng) -> np.ndarray:
    """Kaiming normal for ReLU, fan_in mode: N(0, 2 / fan_in)."""
    return rng.normal(0.0, math.sqrt(2.0 / max(fan_in, 1)), shape)


def he_normal_fan_out(shape, fan_in, fan_out, rng) -> np.ndarray:
    """Kaiming normal for ReLU, fan_out mode (torchvision's conv init): N(0, 2 / fan_out)."""
    return rng.normal(0.0, math.sqrt(2.0 / max(fan_out, 1)), shape)


def he_uniform(shape, fan_in, fan_out, rng) -> np.ndarray:
    """Kaiming uniform for ReLU: U(-a, a) with a = sqrt(6 / fan_in)."""
    limit = math.sqrt(6.0 / max(fan_in, 1))
    return rng.uniform(-limit, limit, shape)


def torch_uniform(shape, fan_in, fan_out, rng) -> np.ndarray:
    """torch's nn.Linear/nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(max(fan_in, 1))
    return rng.uniform(-limit, limit, shape)


def lecun_normal(shape, fan_in, fan_out, rng) -> np.ndarray:
    """LeCun normal: N(0, 1 / fan_in)."""
    return rng.normal(0.0, math.sqrt(1.0 / max(fan_in, 1)), shape)


def normal(std: float = 1.0, mean: float = 0.0) -> Initializer:
    """N(mean, std**2) (Embedding's default is ``normal(1.0)``, as in torch)."""
    def init(shape, fan_in, fan_out, rng):
        return rng.normal(mean, std, shape)
    return init


def truncated_normal(std: float = 1.0, mean: float = 0.0, bound: float = 2.0) -> Initializer:
    """N(mean, std**2) redrawn outside mean +- bound * std."""
    def init(shape, fan_in, fan_out, rng):
        x = rng.normal(0.0, 1.0, shape)
        bad = np.abs(x) > bound
        while bad.any():
            x[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
            bad = np.abs(x) > bound
        return mean + std * x
    return init


def uniform(limit: float) -> Initializer:
    """U(-limit, limit)."""
    def init(shape, fan_in, fan_out, rng):
        return rng.uniform(-limit, limit, shape)
    return init


def constant(value: float) -> Initializer:
    """Every element equal to ``value``."""
    def init(shape, fan_in, fan_out, rng):
        return np.full(shape, float(value))
    return init


NAMED: dict[str, Initializer] = {
    f.__name__: f for f in (zeros, ones, glorot_uniform, glorot_normal, he_normal,
                            he_normal_fan_out, he_uniform, torch_uniform, lecun_normal)}
NAMED.update(xavier_uniform=glorot_uniform, xavier_normal=glorot_normal,
             kaiming_normal=he_normal, kaiming_uniform=he_uniform)


def get(spec: Any) -> Initializer:
    """An initializer from a name in ``NAMED`` or a callable."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in NAMED:
        return NAMED[spec]
    raise ValueError(f"unknown initializer {spec!r}; use one of {sorted(NAMED)} or a callable "
                     "(shape, fan_in, fan_out, rng) -> array")
