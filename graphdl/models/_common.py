"""Shared pieces of the zoo: the input, seeded layer factories and the Model wrapper."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

from graphdl.ir import Value
from graphdl.layers.base import derive_seed
from graphdl.model import Model
from graphdl.tensor import input as gd_input


def image_input(input_shape: Sequence[int], dtype: Any, model: str) -> Value:
    """The (N, C, H, W) input of an image model, after checking ``input_shape``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"{model}: input_shape must be (C, H, W) with positive ints, "
                         f"got {input_shape!r}")
    return gd_input("x", (None,) + shape, dtype)


def check_classes(num_classes: int, model: str) -> int:
    """``num_classes`` as a positive int."""
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


class LayerFactory:
    """Makes named layers with seeds derived from one model seed and each layer's name, so a
    model's initial weights depend only on (seed, architecture)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __call__(self, cls, name: str, *args, **kwargs):
        if "seed" in _params(cls):
            kwargs.setdefault("seed", derive_seed(self.seed, name))
        return cls(*args, name=name, **kwargs)


@functools.lru_cache(maxsize=None)
def _params(cls) -> tuple[str, ...]:
    return tuple(inspect.signature(cls.__init__).parameters)


def make_model(x: Value, outputs: Value | list[Value], name: str):
    """Wrap the zoo graph in a gd.Model."""
    return Model(x, outputs, name=name)
