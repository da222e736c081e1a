"""Convolution and pooling layers over NCHW images.

Padding is an int, a pair (height, width), a 4-tuple (top, left, bottom, right) as ONNX orders
pads, ``"valid"`` (none) or ``"same"`` (output size ceil(input / stride), TensorFlow's rule:
any odd padding goes to the bottom/right; needs static spatial dims).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphdl import tensor as F
from graphdl.ir import TensorType
from graphdl.layers.activations import resolve_activation
from graphdl.layers.base import Layer


def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(d) for d in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v}")
    return v


def resolve_padding(layer: Layer, padding: Any, t: TensorType, kernel: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, ...]:
    """Explicit pads (top, left, bottom, right) for a padding spec and an NCHW input."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{layer._label()}: padding must be 'valid', 'same', an int, a "
                             f"pair or (top, left, bottom, right), got {padding!r}")
        before, after = [], []
        for axis in (0, 1):
            size = layer.static_dim(t, 2 + axis, "spatial")
            out = math.ceil(size / stride[axis])
            total = max((out - 1) * stride[axis] + (kernel[axis] - 1) * dilation[axis] + 1
                        - size, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return (before[0], before[1], after[0], after[1])
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    pads = tuple(int(p) for p in padding)
    if len(pads) == 2:
        return pads + pads
    if len(pads) == 4:
        return pads
    raise ValueError(f"{layer._label()}: padding must be an int, a pair or a 4-tuple, "
                     f"got {padding!r}")


class Conv2D(Layer):
    """2-D convolution (torch's nn.Conv2d): NCHW input, ``weight`` (out, in / groups, kh, kw).

    ``groups`` splits channels into independent groups; ``groups == in_channels`` is a
    depthwise convolution. Default init: He-normal weight (fan_in), zero bias; pass
    ``kernel_init="he_normal_fan_out"`` for torchvision's ResNet init or ``"torch_uniform"``
    for torch's default. ``activation`` (a name) is applied last.
    """

    default_name = "conv2d"

    def __init__(self, filters: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, use_bias: bool = True,
                 activation: Any = None, kernel_init: Any = "he_normal", bias_init: Any = "zeros",
                 name: str | None = None, seed: int | None = None, dtype: Any = None):
        super().__init__(name, seed, dtype)
        self.filters = None if filters is None else int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.padding = padding
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.activation = resolve_activation(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init
        self.in_channels: int | None = None
        if self.filters is not None and self.filters <= 0 or self.groups <= 0:
            raise ValueError(f"{self._label()}: filters and groups must be positive")

    def build(self, types):
        t = types[0]
        self.check_rank(t, (4,), "N, C, H, W")
        c = self.static_dim(t, 1, "channel")
        if c % self.groups or self.filters % self.groups:
            raise self.error(f"groups={self.groups} must divide both the input channels ({c}) "
                             f"and the filters ({self.filters})")
        self.in_channels = c
        dt = self.param_dtype(t)
        kh, kw = self.kernel_size
        shape = (self.filters, c // self.groups, kh, kw)
        self.add_variable("weight", shape, self.kernel_init, dt)
        if self.use_bias:
            fan_in = (c // self.groups) * kh * kw
            self.add_variable("bias", (self.filters,), self.bias_init, dt,
                              fans=(fan_in, self.filters * kh * kw))

    def forward(self, x):
        t = x.type
        self.check_rank(t, (4,), "N, C, H, W")
        if t.shape[1] != self.in_channels:
            raise self.error(f"was built for {self.in_channels} input channels, got "
                             f"{t.shape[1]}")
        pads = resolve_padding(self, self.padding, t, self.kernel_size, self.stride,
                               self.dilation)
        y = F.conv2d(x, self.value("weight"), self.value("bias") if self.use_bias else None,
                     stride=self.stride, padding=pads, dilation=self.dilation,
                     groups=self.groups)
        return self.activation(y) if self.activation else y


class DepthwiseConv2D(Conv2D):
    """Depthwise convolution: each input channel convolved with ``depth_multiplier`` filters
    of its own (a Conv2D with groups = in_channels)."""

    default_name = "depthwise_conv2d"

    def __init__(self, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 depth_multiplier: int = 1, use_bias: bool = True, activation: Any = None,
                 kernel_init: Any = "he_normal", bias_init: Any = "zeros",
                 name: str | None = None, seed: int | None = None, dtype: Any = None):
        super().__init__(None, kernel_size, stride, padding, dilation, 1, use_bias, activation,
                         kernel_init, bias_init, name, seed, dtype)
        self.depth_multiplier = int(depth_multiplier)

    def build(self, types):
        t = types[0]
        self.check_rank(t, (4,), "N, C, H, W")
        c = self.static_dim(t, 1, "channel")
        self.groups, self.filters = c, c * self.depth_multiplier
        super().build(types)


class _Pool2D(Layer):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, name: str | None = None):
        super().__init__(name)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = padding
        self.ceil_mode = bool(ceil_mode)

    def pads(self, t: TensorType) -> tuple[int, ...]:
        self.check_rank(t, (4,), "N, C, H, W")
        return resolve_padding(self, self.padding, t, self.kernel_size, self.stride, (1, 1))


class MaxPool2D(_Pool2D):
    """Max over ``kernel_size`` windows (stride defaults to the kernel size, like torch;
    padding counts as -inf); ``ceil_mode=True`` rounds the output size up, as torch does."""

    default_name = "max_pool2d"

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 dilation: Any = 1, ceil_mode: bool = False, name: str | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, name)
        self.dilation = _pair(dilation, "dilation")

    def pads(self, t: TensorType) -> tuple[int, ...]:
        self.check_rank(t, (4,), "N, C, H, W")
        return resolve_padding(self, self.padding, t, self.kernel_size, self.stride,
                               self.dilation)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.pads(x.type),
                            dilation=self.dilation, ceil_mode=self.ceil_mode)


class AvgPool2D(_Pool2D):
    """Mean over ``kernel_size`` windows (stride defaults to the kernel size); padded zeros
    count in the mean unless ``count_include_pad=False`` (torch's default is True)."""

    default_name = "avg_pool2d"

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 name: str | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, name)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.pads(x.type),
                            count_include_pad=self.count_include_pad, ceil_mode=self.ceil_mode)


class GlobalAvgPool2D(Layer):
    """Mean over H and W: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims=True``."""

    default_name = "global_avg_pool2d"

    def __init__(self, keepdims: bool = False, name: str | None = None):
        super().__init__(name)
        self.keepdims = bool(keepdims)

    def forward(self, x):
        self.check_rank(x.type, (4,), "N, C, H, W")
        y = F.global_avg_pool(x)
        return y if self.keepdims else F.flatten(y, 1)


class AdaptiveAvgPool2D(Layer):
    """torch's AdaptiveAvgPool2d: average into an ``output_size`` grid whatever the input
    size. Window i along an axis of size n covers [floor(i n / o), ceil((i + 1) n / o))."""

    default_name = "adaptive_avg_pool2d"

    def __init__(self, output_size: Any, name: str | None = None):
        super().__init__(name)
        self.output_size = _pair(output_size, "output_size")

    def forward(self, x):
        t = x.type
        self.check_rank(t, (4,), "N, C, H, W")
        h, w = self.static_dim(t, 2, "height"), self.static_dim(t, 3, "width")
        oh, ow = self.output_size
        if (oh, ow) == (1, 1):
            return F.global_avg_pool(x)
        if h % oh == 0 and w % ow == 0:
            return F.avg_pool2d(x, (h // oh, w // ow))
        # Uneven windows: Y = P_h @ X @ P_w^T with row i of P averaging window i.
        dt = np.dtype(t.dtype)
        ph, pw = F.const(_window_matrix(h, oh, dt)), F.const(_window_matrix(w, ow, dt).T)
        return F.matmul(ph, F.matmul(x, pw))


def _window_matrix(n: int, o: int, dtype: np.dtype) -> np.ndarray:
    m = np.zeros((o, n), dtype)
    for i in range(o):
        lo, hi = (i * n) // o, -(-((i + 1) * n) // o)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m
