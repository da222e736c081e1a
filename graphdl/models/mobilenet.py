"""MobileNetV2 in torchvision's layout: inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 linear projection), ReLU6 = clip(x, 0, 6), torchvision's names (``features.0.0``,
``features.1.conv.0.0``, ``features.2.conv.3``, ``classifier.1``...) and initialization
(Kaiming-normal fan_out convs, N(0, 0.01) classifier), so it has 3,504,872 parameters at 1000
classes, as torchvision does.
"""
from __future__ import annotations

from typing import Any, Sequence

from graphdl import layers as L
from graphdl.ir import Value
from graphdl.layers import initializers
from graphdl.models._common import LayerFactory, check_classes, image_input, make_model

# (expand ratio t, output channels c, repeats n, first stride s), from the paper's Table 2
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never dropping more than 10%
    (torchvision's _make_divisible)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(make: LayerFactory, x: Value, name: str, filters: int, kernel: int,
                  stride: int = 1, groups: int = 1) -> Value:
    """conv (no bias) -> BatchNorm -> ReLU6, as torchvision's Conv2dNormActivation."""
    x = make(L.Conv2D, f"{name}.0", filters, kernel, stride=stride, padding=(kernel - 1) // 2,
             groups=groups, use_bias=False, kernel_init="he_normal_fan_out")(x)
    return L.ReLU6(name=f"{name}.2")(make(L.BatchNorm2D, f"{name}.1")(x))


def inverted_residual(make: LayerFactory, x: Value, name: str, out_channels: int, stride: int,
                      expand_ratio: int) -> Value:
    """Expand (1x1), depthwise 3x3 (strided), project (1x1, no activation); add the input
    when the shapes allow (stride 1 and equal channels)."""
    in_channels = x.shape[1]
    hidden = int(round(in_channels * expand_ratio))
    h, j = x, 0
    if expand_ratio != 1:
        h = conv_bn_relu6(make, h, f"{name}.conv.0", hidden, 1)
        j = 1
    h = conv_bn_relu6(make, h, f"{name}.conv.{j}", hidden, 3, stride, groups=hidden)
    h = make(L.Conv2D, f"{name}.conv.{j + 1}", out_channels, 1, use_bias=False,
             kernel_init="he_normal_fan_out")(h)
    h = make(L.BatchNorm2D, f"{name}.conv.{j + 2}")(h)
    if stride == 1 and in_channels == out_channels:
        h = L.Add(name=f"{name}.add")([x, h])
    return h


def mobilenet_v2(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
                 width_mult: float = 1.0, dropout: float = 0.2, seed: int = 0,
                 dtype: Any = "float32"):
    """MobileNetV2 (3,504,872 parameters at 1000 classes, width 1.0). Inputs of 32x32 and
    up work (a global average pool ends the feature extractor)."""
    num_classes = check_classes(num_classes, "mobilenet_v2")
    make = LayerFactory(seed)
    x = image_input(input_shape, dtype, "mobilenet_v2")
    channels = make_divisible(32 * width_mult)
    last_channels = make_divisible(1280 * max(1.0, width_mult))
    h = conv_bn_relu6(make, x, "features.0", channels, 3, stride=2)
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        out_channels = make_divisible(c * width_mult)
        for i in range(n):
            h = inverted_residual(make, h, f"features.{index}", out_channels, s if i == 0 else 1,
                                  t)
            index += 1
    h = conv_bn_relu6(make, h, f"features.{index}", last_channels, 1)
    h = L.GlobalAvgPool2D(name="avgpool")(h)
    h = make(L.Dropout, "classifier.0", dropout)(h)
    logits = make(L.Dense, "classifier.1", num_classes, kernel_init=initializers.normal(0.01),
                  bias_init="zeros")(h)
    return make_model(x, logits, "mobilenet_v2")
