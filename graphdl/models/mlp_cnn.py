"""Small models: a multilayer perceptron and a small conv net (8x8 digits, 32x32 images)."""
from __future__ import annotations

from typing import Any, Sequence

from graphdl import layers as L
from graphdl.models._common import LayerFactory, check_classes, make_model
from graphdl.tensor import input as gd_input


def mlp(num_classes: int = 10, input_shape: Sequence[int] = (784,),
        hidden: Sequence[int] = (512, 512), activation: str = "relu", dropout: float = 0.0,
        seed: int = 0, dtype: Any = "float32", name: str = "mlp"):
    """Dense layers ``fc1``...``fc{k}`` with ``activation`` between them, then the output
    layer ``fc{k+1}`` (logits). Inputs of rank > 1 are flattened first; ``dropout > 0`` adds
    ``dropout{i}`` after each hidden layer. Glorot-uniform weights, zero biases."""
    num_classes = check_classes(num_classes, name)
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    make = LayerFactory(seed)
    x = gd_input("x", (None,) + tuple(int(d) for d in input_shape), dtype)
    h = L.Flatten(name="flatten")(x) if len(input_shape) > 1 else x
    for i, units in enumerate(hidden, start=1):
        h = make(L.Dense, f"fc{i}", units, activation=activation)(h)
        if dropout:
            h = make(L.Dropout, f"dropout{i}", dropout)(h)
    logits = make(L.Dense, f"fc{len(hidden) + 1}", num_classes)(h)
    return make_model(x, logits, name)


def cnn(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (32, 64), hidden: int = 128, dropout: float = 0.0,
        seed: int = 0, dtype: Any = "float32", name: str = "cnn"):
    """A small conv net. For each ``channels[i]`` (i = 1, 2, ...):
    ``conv{i}`` (3x3, padding 1, no bias) -> ``bn{i}`` -> ReLU -> ``pool{i}`` (2x2 max pool;
    skipped once the feature map is 1 pixel). Then ``flatten`` -> ``fc1`` (``hidden`` units,
    ReLU) -> ``dropout`` (when ``dropout > 0``) -> ``fc2`` (logits).

    He-normal conv weights, Glorot-uniform dense weights, zero biases; BatchNorm momentum
    0.1 and eps 1e-5 (torch's). The equivalent torch module is
    ``Conv2d(c_in, c, 3, padding=1, bias=False), BatchNorm2d(c), ReLU(), MaxPool2d(2)`` per
    block, then ``Flatten(), Linear(., hidden), ReLU(), Linear(hidden, num_classes)``; names
    and shapes of the state variables match its state dict.
    """
    num_classes = check_classes(num_classes, name)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"{name}: input_shape must be (C, H, W) with positive ints, "
                         f"got {input_shape!r}")
    make = LayerFactory(seed)
    x = gd_input("x", (None,) + shape, dtype)
    h = x
    for i, c in enumerate(channels, start=1):
        h = make(L.Conv2D, f"conv{i}", c, 3, padding=1, use_bias=False)(h)
        h = L.ReLU(name=f"relu{i}")(make(L.BatchNorm2D, f"bn{i}")(h))
        if h.shape[2] >= 2 and h.shape[3] >= 2:
            h = L.MaxPool2D(2, name=f"pool{i}")(h)
    h = L.Flatten(name="flatten")(h)
    h = make(L.Dense, "fc1", hidden, activation="relu")(h)
    if dropout:
        h = make(L.Dropout, "dropout", dropout)(h)
    logits = make(L.Dense, "fc2", num_classes)(h)
    return make_model(x, logits, name)
