"""Sliding-window geometry shared by the convolution and pooling kernels.

Every 2-D window op (conv, its gradients, pooling) reads the input through *taps*: for each
kernel position (i, j) a strided view of a padded buffer whose element (y, x) is the input
pixel under that tap for output pixel (y, x). Views come from ``as_strided``, so no Python loop
ever walks the batch or the pixels; the only loops are over the kh*kw kernel taps and over
cache-sized chunks of the batch.

The padded buffer has a row *pitch* ``Wb`` (a multiple of the column stride) that can exceed
the padded width. Output rows are then computed ``Wq = Wb // sw`` columns wide instead of
``Wo``: the extra columns are garbage that the kernels crop, but they make the (row, column)
axes of every tap view one uniform stride apart, so NumPy copies and adds run over long
contiguous runs instead of ``Wo``-element rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Batch chunks are sized so the unfolded (im2col) block stays in the last-level cache; a
# fixed constant, not configuration.
CHUNK_BYTES = 1 << 20


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def four_pads(padding) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right): an int, a (h, w) pair or a 4-tuple."""
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return p, p, p, p
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[1], padding[0], padding[1]
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, a (h, w) pair or (top, left, bottom, right), "
                     f"got {padding}")


def same_pads(in_hw, kernel, strides, dilations) -> tuple[int, int, int, int]:
    """ONNX SAME_UPPER padding: output = ceil(input / stride), extra pad at the end."""
    pads = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        pads.append(max((out - 1) * s + d * (k - 1) + 1 - size, 0))
    (th, tw) = (pads[0] // 2, pads[1] // 2)
    return th, tw, pads[0] - th, pads[1] - tw


def output_size(size: int, k: int, s: int, p0: int, p1: int, d: int,
                ceil_mode: bool = False) -> int:
    """Output length along one axis (torch rule for ceil mode: the last window must start
    inside the input or its leading padding)."""
    span = size + p0 + p1 - (d * (k - 1) + 1)
    if not ceil_mode:
        return span // s + 1 if span >= 0 else 0
    out = -(-span // s) + 1  # may keep one window that overhangs the end (as torch does)
    if (out - 1) * s >= size + p0:
        out -= 1
    return out


@dataclass(frozen=True)
class Window2d:
    """Where each kernel tap of a 2-D window op reads its input."""

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    out_hw: tuple[int, int]
    pitch: int  # Wb: row length of the padded buffer, a multiple of the column stride
    rows: int  # Hb: rows of the padded buffer (padding, plus spill room for garbage columns)

    @property
    def wide(self) -> int:
        """Wq: columns computed per output row (>= Wo; the rest is cropped)."""
        return self.pitch // self.strides[1]

    @property
    def taps(self) -> list[tuple[int, int]]:
        """Kernel positions in row-major order (the order ties are broken in)."""
        return [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def padded(self, x: np.ndarray, fill: float = 0.0, buf: np.ndarray | None = None):
        """``x`` (n, c, H, W) copied into a (n, c, Hb, Wb) buffer filled with ``fill``."""
        n, c = x.shape[:2]
        if buf is None:
            buf = np.full((n, c, self.rows, self.pitch), fill, x.dtype)
        pt, pl = self.pads[0], self.pads[1]
        h, w = self.in_hw
        buf[:, :, pt:pt + h, pl:pl + w] = x
        return buf

    def empty_padded(self, n: int, c: int, dtype, fill: float = 0.0) -> np.ndarray:
        """A padded buffer for ``n`` images of ``c`` channels, filled with ``fill``."""
        return np.full((n, c, self.rows, self.pitch), fill, dtype)

    def interior(self, buf: np.ndarray) -> np.ndarray:
        """The unpadded (n, c, H, W) part of a padded buffer (a view)."""
        pt, pl = self.pads[0], self.pads[1]
        h, w = self.in_hw
        return buf[:, :, pt:pt + h, pl:pl + w]

    def tap(self, buf: np.ndarray, i: int, j: int, crop: bool = False) -> np.ndarray:
        """View (n, c, Ho, Wq) of what tap (i, j) reads from a padded buffer; ``crop`` trims
        it to (n, c, Ho, Wo). Writable: col2im adds into it.

        Cropped taps only need a C-contiguous buffer that covers every window (any row
        length; an unpadded input when the op has no padding); wide taps need the (Hb, Wb)
        buffer of :meth:`padded`.
        """
        n, c, rows, pitch = buf.shape
        item = buf.itemsize
        plane = rows * pitch
        offset = i * self.dilations[0] * pitch + j * self.dilations[1]
        flat = buf.reshape(n, c, plane)[:, :, offset:]
        cols = self.out_hw[1] if crop else self.wide
        return as_strided(flat, (n, c, self.out_hw[0], cols),
                          (c * plane * item, plane * item, self.strides[0] * pitch * item,
                           self.strides[1] * item))

    def needs_padding(self) -> bool:
        """True when some window reaches outside the input (cropped taps of an unpadded
        input would then be out of bounds)."""
        (h, w), (ho, wo) = self.in_hw, self.out_hw
        return any(self.pads) or (ho - 1) * self.strides[0] + self.dilations[0] * (
            self.kernel[0] - 1) >= h or (wo - 1) * self.strides[1] + self.dilations[1] * (
            self.kernel[1] - 1) >= w

    def unfold(self, buf: np.ndarray) -> np.ndarray:
        """View (n, c, kh, kw, Ho, Wq) of every tap at once (the im2col operand)."""
        n, c = buf.shape[:2]
        item = buf.itemsize
        plane = self.rows * self.pitch
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        return as_strided(buf.reshape(n, c, plane), (n, c, kh, kw, self.out_hw[0], self.wide),
                          (c * plane * item, plane * item, dh * self.pitch * item, dw * item,
                           sh * self.pitch * item, sw * item))


def window2d(in_hw, kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
             ceil_mode: bool = False) -> Window2d:
    """The geometry of a 2-D window op over an input of spatial size ``in_hw``."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = in_hw, kernel, strides, dilations
    pt, pl, pb, pr = pads
    ho = output_size(h, kh, sh, pt, pb, dh, ceil_mode)
    wo = output_size(w, kw, sw, pl, pr, dw, ceil_mode)
    # ceil mode can place the last window past the bottom/right padding: pad further
    need_h = max(h + pt + pb, (ho - 1) * sh + dh * (kh - 1) + 1)
    need_w = max(w + pl + pr, (wo - 1) * sw + dw * (kw - 1) + 1)
    pitch = -(-need_w // sw) * sw
    wide = pitch // sw
    last = ((ho - 1) * sh + (kh - 1) * dh) * pitch + (wide - 1) * sw + (kw - 1) * dw
    rows = max(need_h, math.ceil((last + 1) / pitch))
    return Window2d((h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), (ho, wo),
                    pitch, rows)


def batch_chunk(n: int, bytes_per_image: int) -> int:
    """How many images to process at once so one chunk's unfolded block fits the cache."""
    return max(1, min(n, CHUNK_BYTES // max(bytes_per_image, 1)))


def target(out: np.ndarray | None, shape, dtype) -> np.ndarray:
    """``out`` (the executor's preallocated buffer) when the result can be written straight
    into it, else a new array."""
    if out is not None and out.shape == tuple(shape) and out.dtype == dtype and \
            out.flags.c_contiguous and out.flags.writeable:
        return out
    return np.empty(shape, dtype)
