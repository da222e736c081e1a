"""GoogLeNet (Inception v1) in torchvision's layout: BatchNorm after every conv (eps 1e-3),
nine inception modules (3a, 3b, 4a-4e, 5a, 5b), ceil-mode max pools, and optional auxiliary
classifiers after 4a and 4d. Names and initialization follow torchvision (``conv1.conv``,
``inception3a.branch2.1.bn``, ``aux1.fc2``, ``fc``...; truncated-normal std 0.01 convs and
Linear weights), so parameter counts match: 6,624,904 without the auxiliary heads and
13,004,888 with them at 1000 classes.

As in torchvision, the "5x5" branch uses a 3x3 conv (the layout pretrained weights use).
"""
from __future__ import annotations

from typing import Any, Sequence

from graphdl import layers as L
from graphdl.ir import Value
from graphdl.layers import initializers
from graphdl.models._common import LayerFactory, check_classes, image_input, make_model

# torchvision: trunc_normal_(std=0.01, a=-2, b=2); the bounds sit 200 std out, so it is a
# plain N(0, 0.01^2).
_INIT = initializers.truncated_normal(0.01, bound=200.0)

# (name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) for the nine modules
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def basic_conv(make: LayerFactory, x: Value, name: str, filters: int, kernel: int,
               stride: int = 1, padding: int = 0) -> Value:
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, as torchvision's BasicConv2d."""
    x = make(L.Conv2D, f"{name}.conv", filters, kernel, stride=stride, padding=padding,
             use_bias=False, kernel_init=_INIT)(x)
    x = make(L.BatchNorm2D, f"{name}.bn", eps=1e-3)(x)
    return L.ReLU(name=f"{name}.relu")(x)


def inception(make: LayerFactory, x: Value, name: str, ch1x1: int, ch3x3red: int, ch3x3: int,
              ch5x5red: int, ch5x5: int, pool_proj: int) -> Value:
    """Four parallel branches concatenated on channels."""
    b1 = basic_conv(make, x, f"{name}.branch1", ch1x1, 1)
    b2 = basic_conv(make, x, f"{name}.branch2.0", ch3x3red, 1)
    b2 = basic_conv(make, b2, f"{name}.branch2.1", ch3x3, 3, padding=1)
    b3 = basic_conv(make, x, f"{name}.branch3.0", ch5x5red, 1)
    b3 = basic_conv(make, b3, f"{name}.branch3.1", ch5x5, 3, padding=1)
    b4 = L.MaxPool2D(3, 1, 1, ceil_mode=True, name=f"{name}.branch4.0")(x)
    b4 = basic_conv(make, b4, f"{name}.branch4.1", pool_proj, 1)
    return L.Concatenate(axis=1, name=name)([b1, b2, b3, b4])


def aux_head(make: LayerFactory, x: Value, name: str, num_classes: int) -> Value:
    """Auxiliary classifier: 4x4 adaptive pool, 1x1 conv, fc 2048->1024, dropout 0.7, fc."""
    h = L.AdaptiveAvgPool2D((4, 4), name=f"{name}.pool")(x)
    h = L.Flatten(name=f"{name}.flatten")(basic_conv(make, h, f"{name}.conv", 128, 1))
    h = make(L.Dense, f"{name}.fc1", 1024, activation="relu", kernel_init=_INIT,
             bias_init="torch_uniform")(h)
    h = make(L.Dropout, f"{name}.dropout", 0.7)(h)
    return make(L.Dense, f"{name}.fc2", num_classes, kernel_init=_INIT,
                bias_init="torch_uniform")(h)


def googlenet(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
              aux_logits: bool = False, dropout: float = 0.2, seed: int = 0,
              dtype: Any = "float32"):
    """GoogLeNet / Inception v1 (6,624,904 parameters at 1000 classes without aux heads).

    With ``aux_logits=True`` the model has three outputs, in torchvision's order: the main
    logits, then aux2 (after 4d) and aux1 (after 4a). Inputs of 32x32 and up work (a global
    average pool ends the feature extractor).
    """
    num_classes = check_classes(num_classes, "googlenet")
    make = LayerFactory(seed)
    x = image_input(input_shape, dtype, "googlenet")
    h = basic_conv(make, x, "conv1", 64, 7, stride=2, padding=3)
    h = L.MaxPool2D(3, 2, ceil_mode=True, name="maxpool1")(h)
    h = basic_conv(make, h, "conv2", 64, 1)
    h = basic_conv(make, h, "conv3", 192, 3, padding=1)
    h = L.MaxPool2D(3, 2, ceil_mode=True, name="maxpool2")(h)
    h = inception(make, h, "inception3a", *INCEPTION["3a"])
    h = inception(make, h, "inception3b", *INCEPTION["3b"])
    h = L.MaxPool2D(3, 2, ceil_mode=True, name="maxpool3")(h)
    h = inception(make, h, "inception4a", *INCEPTION["4a"])
    aux1 = aux_head(make, h, "aux1", num_classes) if aux_logits else None
    for key in ("4b", "4c", "4d"):
        h = inception(make, h, f"inception{key}", *INCEPTION[key])
    aux2 = aux_head(make, h, "aux2", num_classes) if aux_logits else None
    h = inception(make, h, "inception4e", *INCEPTION["4e"])
    h = L.MaxPool2D(2, 2, ceil_mode=True, name="maxpool4")(h)
    h = inception(make, h, "inception5a", *INCEPTION["5a"])
    h = inception(make, h, "inception5b", *INCEPTION["5b"])
    h = L.GlobalAvgPool2D(name="avgpool")(h)
    h = make(L.Dropout, "dropout", dropout)(h)
    logits = make(L.Dense, "fc", num_classes, kernel_init=_INIT, bias_init="torch_uniform")(h)
    return make_model(x, [logits, aux2, aux1] if aux_logits else logits, "googlenet")
