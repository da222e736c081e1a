"""ResNet-18/34/50/101/152 in torchvision's layout (ResNet v1.5: a bottleneck block strides
in its 3x3 conv), with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``...) and initialization (Kaiming-normal fan_out convs, BN
weight 1 and bias 0, torch's default Linear init), so parameter counts match torchvision
exactly and state dicts copy 1:1.
"""
from __future__ import annotations

from typing import Any, Sequence

from graphdl import layers as L
from graphdl.ir import Value
from graphdl.models._common import LayerFactory, check_classes, image_input, make_model

_CONV_INIT = "he_normal_fan_out"


def _conv_bn(make: LayerFactory, x: Value, conv: str, bn: str, filters: int, kernel: int,
             stride: int = 1, padding: int = 0) -> Value:
    x = make(L.Conv2D, conv, filters, kernel, stride=stride, padding=padding, use_bias=False,
             kernel_init=_CONV_INIT)(x)
    return make(L.BatchNorm2D, bn)(x)


def _downsample(make, x, prefix, filters, stride):
    return _conv_bn(make, x, f"{prefix}.downsample.0", f"{prefix}.downsample.1", filters, 1,
                    stride)


def basic_block(make: LayerFactory, x: Value, prefix: str, planes: int, stride: int) -> Value:
    """Two 3x3 convs with a residual connection (ResNet-18/34); output has ``planes``
    channels."""
    identity = x
    h = L.ReLU(name=f"{prefix}.relu")(_conv_bn(make, x, f"{prefix}.conv1", f"{prefix}.bn1",
                                               planes, 3, stride, 1))
    h = _conv_bn(make, h, f"{prefix}.conv2", f"{prefix}.bn2", planes, 3, 1, 1)
    if stride != 1 or x.shape[1] != planes:
        identity = _downsample(make, x, prefix, planes, stride)
    return L.ReLU(name=f"{prefix}.relu")(L.Add(name=f"{prefix}.add")([h, identity]))


def bottleneck_block(make: LayerFactory, x: Value, prefix: str, planes: int,
                     stride: int) -> Value:
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * ``planes``, plus the residual
    (ResNet-50/101/152)."""
    out_channels = planes * 4
    identity = x
    relu = f"{prefix}.relu"
    h = L.ReLU(name=relu)(_conv_bn(make, x, f"{prefix}.conv1", f"{prefix}.bn1", planes, 1))
    h = L.ReLU(name=relu)(_conv_bn(make, h, f"{prefix}.conv2", f"{prefix}.bn2", planes, 3,
                                   stride, 1))
    h = _conv_bn(make, h, f"{prefix}.conv3", f"{prefix}.bn3", out_channels, 1)
    if stride != 1 or x.shape[1] != out_channels:
        identity = _downsample(make, x, prefix, out_channels, stride)
    return L.ReLU(name=relu)(L.Add(name=f"{prefix}.add")([h, identity]))


def resnet(block: str, layers: Sequence[int], num_classes: int = 1000,
           input_shape: Sequence[int] = (3, 224, 224), seed: int = 0, dtype: Any = "float32",
           name: str = "resnet", width: int = 64):
    """A ResNet with ``block`` ("basic" or "bottleneck") and ``layers`` blocks per stage.

    Any input of 32x32 or more works: a global average pool ends the feature extractor.
    ``width`` is the stem's and the first stage's channel count (64 in the paper and in
    torchvision); the stages have width, 2, 4 and 8 times width. A smaller width keeps the
    architecture (depth, blocks, strides, BatchNorms) with fewer channels, e.g. for tests.
    """
    if int(width) < 1:
        raise ValueError(f"{name}: width must be a positive channel count, got {width}")
    width = int(width)
    num_classes = check_classes(num_classes, name)
    build = {"basic": basic_block, "bottleneck": bottleneck_block}[block]
    make = LayerFactory(seed)
    x = image_input(input_shape, dtype, name)
    h = _conv_bn(make, x, "conv1", "bn1", width, 7, 2, 3)
    h = L.ReLU(name="relu")(h)
    h = L.MaxPool2D(3, 2, 1, name="maxpool")(h)
    stages = (width, 2 * width, 4 * width, 8 * width)
    for stage, (planes, count) in enumerate(zip(stages, layers), start=1):
        for i in range(count):
            stride = 2 if stage > 1 and i == 0 else 1
            h = build(make, h, f"layer{stage}.{i}", planes, stride)
    h = L.GlobalAvgPool2D(name="avgpool")(h)
    logits = make(L.Dense, "fc", num_classes, kernel_init="torch_uniform",
                  bias_init="torch_uniform")(h)
    return make_model(x, logits, name)


def resnet18(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
             seed: int = 0, dtype: Any = "float32", width: int = 64):
    """ResNet-18 (basic blocks 2-2-2-2; 11,689,512 parameters at 1000 classes)."""
    return resnet("basic", (2, 2, 2, 2), num_classes, input_shape, seed, dtype, "resnet18",
                  width)


def resnet34(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
             seed: int = 0, dtype: Any = "float32", width: int = 64):
    """ResNet-34 (basic blocks 3-4-6-3; 21,797,672 parameters at 1000 classes)."""
    return resnet("basic", (3, 4, 6, 3), num_classes, input_shape, seed, dtype, "resnet34",
                  width)


def resnet50(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
             seed: int = 0, dtype: Any = "float32", width: int = 64):
    """ResNet-50 (bottleneck blocks 3-4-6-3; 25,557,032 parameters at 1000 classes)."""
    return resnet("bottleneck", (3, 4, 6, 3), num_classes, input_shape, seed, dtype,
                  "resnet50", width)


def resnet101(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
              seed: int = 0, dtype: Any = "float32", width: int = 64):
    """ResNet-101 (bottleneck blocks 3-4-23-3; 44,549,160 parameters at 1000 classes)."""
    return resnet("bottleneck", (3, 4, 23, 3), num_classes, input_shape, seed, dtype,
                  "resnet101", width)


def resnet152(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
              seed: int = 0, dtype: Any = "float32", width: int = 64):
    """ResNet-152 (bottleneck blocks 3-8-36-3; 60,192,808 parameters at 1000 classes)."""
    return resnet("bottleneck", (3, 8, 36, 3), num_classes, input_shape, seed, dtype,
                  "resnet152", width)
