"""Rewrites giving ONNX Runtime's CPU kernels the forms they are fastest at (a train step).

Measured on ORT 1.31 (MLAS), 2 threads (benchmarks/bench_ort_train.py has the profile):

- The weight gradient of a convolution, lowered as one ``Conv`` over batch-transposed tensors
  (``ConvGradWeight``'s own ONNX lowering), runs one skinny GEMM per input channel and took
  about half of the step. As im2col and one ``MatMul`` contracting over the batch and the
  pixels it is 2-7x faster. im2col is a grouped ``Conv`` with a 0/1 kernel on large maps
  (one MLAS kernel), strided ``Slice`` windows joined by ``Concat`` on small ones and a
  selection ``MatMul`` (below) on the smallest.
- A convolution on a small feature map (ResNet stage 4 at 64x64 inputs: 2x2 pixels, 512
  channels) is run by MLAS image by image, streaming the whole weight matrix once per image;
  as im2col over the whole batch and one ``MatMul`` the weights are read once.
  The same holds for the input gradient (a transposed convolution: each dx pixel sums
  W times the dy pixels its taps reach).
- Training BatchNorm and its gradient lowered to elementwise chains were about a fifth of
  the ResNet-50 step (full-size Sub/Mul/Add/ReduceMean); ORT's training-mode
  ``BatchNormalization`` computes y (or xhat) and the batch statistics in one kernel.
- On the smallest maps (under 64 pixels: ResNet-18's stages 3-4 at 64x64 inputs, ResNet-50's
  stage 4 at 224x224) the windows are one ``MatMul``
  with a constant 0/1 selection matrix instead of ``Pad`` + strided ``Slice`` + ``Concat``
  (about 25 small kernels per convolution): ResNet-18 kernel time 238 -> 208 ms per step,
  2 threads (bench_ort_train's profile); the input gradient reads its rows straight out of
  that product, a strided dy's zero spreading folded into the matrix.
- ORT's ``Transpose`` of a weight is slow (a general permutation of 512x512x3x3 cost more
  than the GEMM), so the windows are laid out channel-major and every weight reshapes to its
  matrix as it is; the only transposes left swap the last two axes of activations (which
  ORT runs at copy speed) or fold into ``MatMul`` (ORT's FusedMatMul transA/transB), and
  the input gradient's weight, transposed as a 2-D (O*C, kk) matrix, which ORT splits over
  its threads.
- On tiny maps (at most 16 pixels in and out) even that copy goes: the convolution is
  ``W @ windows`` with the weight as the left operand as it lies (MLAS copies only a right
  or a transposed operand into its packed panels), the input gradient ``W^T @ dy`` with the
  transpose inside the GEMM and the col2im a 0/1 product; only the small activations are
  transposed (ResNet-18 at 64x64, 1 thread: kernel time 414 -> 389 ms per step).
Each rule keeps the arithmetic of the op it replaces (the same products, summed in another
order), so losses agree with the NumPy executor within float tolerance. The pass is a
lowering for one runtime: the ``onnxruntime_cpu`` pipeline runs it; the NumPy executor and
the CUDA provider keep the plain ops.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import Graph, Value
from graphdl.passes.rewrite import Match, Rule, apply_rules, op

# im2col multiplies the feature map's size by the kernel's: larger kernels (the 7x7 stem)
# stay a convolution, which measured faster there
MAX_IM2COL_TAPS = 9
# below this many output pixels per image, one GEMM over the whole batch beats one per image
SMALL_MAP_PIXELS = 64
# weight gradients: one GEMM over batch and pixels below this many pixels per image, else
# one GEMM per image and a sum over the batch. ORT, 2 threads, min of 25 (one GEMM vs per
# image): 8x8 maps (16x128 -> 128 3x3) 3.1 vs 8.1 ms, (16x64x16x16 -> 128 3x3/2) 3.0 vs
# 9.9 ms; 14x14 maps (8x256 -> 256 3x3) 41 vs 21 ms, 16x16 (16x64 -> 64) 9.3 vs 8.0 ms
WEIGHT_GRAD_GEMM_PIXELS = 128
# im2col by a grouped 0/1-kernel Conv from this many pixels per image (else Slice + Concat)
IM2COL_CONV_PIXELS = SMALL_MAP_PIXELS
# im2col as one MatMul with a 0/1 selection matrix below this many source pixels per image
# (taps, stride, padding and a transposed conv's zero spreading folded into the matrix).
# ORT, min of 40, 3x3 pad 1 (selection MatMul vs Pad + 9 Slices + Concat), 1 / 2 threads:
# 16x256x4x4 0.65 / 0.48 vs 1.74 / 1.74 ms; 16x512x2x2 0.26 / 0.24 vs 1.50 / 1.48 ms;
# 8x512x7x7 3.2 / 3.2 vs 3.6 / 3.6 ms, 16x128x8x8 2.2 vs 2.2 ms. The selection MatMul adds
# (source pixels / channels) of the conv's FLOPs: ResNet-50's 7x7 stage (49 / 512), whole
# step 1809 -> 1769 ms median with the threshold at 64 instead of 32 (2 threads, 6 repeats;
# 3044 -> 3100 ms on 1 thread: within the noise of the loaded machine either way). Per op
# at 8x512x7x7 on 1 thread: input gradient 22.8 vs 24.5 ms, conv and weight gradient even
SELECTION_PIXELS = 64
# on tiny maps (input and output of at most this many pixels per image: ResNet-18's stages
# 3-4 at 64x64 inputs, where a 512x512x3x3 weight is 18x the 16x512x2x2 activation) the
# convolution and its input gradient read the weight as it lies, as a GEMM's left operand
# (MLAS packs, i.e. copies, only a right operand or a transposed one) and transpose the small
# activations instead. ResNet-18, 1 thread, ORT kernel time per step (profiler, 4 rounds
# interleaved): 387 -> 377 ms, transposes 23 -> 11 ms. Above it the selection products run
# as one small GEMM per channel: ResNet-50's 7x7 stage 4 took 80 ms more of MatMul than
# the weight copies it saved
TINY_MAP_PIXELS = 16


def _geometry(node) -> tuple:
    a = node.attrs
    return (tuple(a["strides"]), tuple(a["pads"]), tuple(a["dilations"]), int(a["group"]))


def _selection(src_hw, kernel, out_hw, source, dtype) -> np.ndarray:
    """The 0/1 matrix S (H*W, kh*kw*Ho*Wo) with ``x_flat @ S`` = im2col of x: column
    ``t*Ho*Wo + p`` holds the source pixel ``source(i, j, a, b)`` (or none: zero) of tap
    t = (i, j) of output pixel p = (a, b)."""
    (h, w), (kh, kw), (ho, wo) = src_hw, kernel, out_hw
    sel = np.zeros((h * w, kh * kw * ho * wo), dtype)
    for i in range(kh):
        for j in range(kw):
            for a in range(ho):
                for b in range(wo):
                    rc = source(i, j, a, b)
                    if rc is not None and 0 <= rc[0] < h and 0 <= rc[1] < w:
                        sel[rc[0] * w + rc[1], ((i * kw + j) * ho + a) * wo + b] = 1
    return sel


def _selected_windows(m: Match, x: Value, kernel, out_hw, source) -> Value:
    """im2col of a small map x (N, C, H, W) as one MatMul: (N, C, kh*kw, Ho*Wo). Each
    entry is one x times 1 plus zeros, so it equals x exactly (for finite x)."""
    h, w = x.shape[2:]
    sel = _selection((h, w), kernel, out_hw, source, np.dtype(x.dtype))
    cols = m.op("MatMul", m.op("Reshape", x, shape=(0, x.shape[1], h * w)), m.const(sel))
    return m.op("Reshape", cols, shape=(0, x.shape[1], kernel[0] * kernel[1],
                                        out_hw[0] * out_hw[1]))


def _windows(m: Match, x: Value, kernel, out_hw, strides, pads, dilations) -> Value:
    """im2col of x (N, C, H, W): (N, C*kh*kw, Ho*Wo), row ``c*kh*kw + i*kw + j`` holding the
    window tap (i, j) of channel c, so a (O, C, kh, kw) weight reshapes to its matrix with
    no transpose (ORT's Transpose of a weight costs more than the GEMM)."""
    (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel, out_hw, strides, dilations
    pt, pl, pb, pr = pads
    c = x.shape[1]
    span_h, span_w = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    if kh == kw == 1 and not any(pads) and x.shape[2:] == (span_h, span_w) == (ho, wo):
        return m.op("Reshape", x, shape=(0, c, ho * wo))  # a 1x1 conv's windows: x itself
    if x.shape[2] * x.shape[3] < SELECTION_PIXELS:
        def source(i, j, a, b):  # y[a, b] reads x[a*s + i*d - p] (the forward convolution)
            return a * sh + i * dh - pt, b * sw + j * dw - pl
        cols = _selected_windows(m, x, kernel, out_hw, source)
        return m.op("Reshape", cols, shape=(0, c * kh * kw, ho * wo))
    if ho * wo >= IM2COL_CONV_PIXELS and kh * kw > 1:
        # one grouped Conv with a 0/1 kernel per channel copies the taps out in one kernel
        # (MLAS); the strided Slices + Concat measured 1.5-2x slower on large maps
        eye = np.zeros((c, kh * kw, 1, kh * kw), np.dtype(x.dtype))
        eye[:, np.arange(kh * kw), 0, np.arange(kh * kw)] = 1
        taps = m.op("Conv", x, m.const(eye.reshape(c * kh * kw, 1, kh, kw)),
                    strides=strides, pads=pads, dilations=dilations, group=c)
        return m.op("Reshape", taps, shape=(0, c * kh * kw, ho * wo))
    if any(pads):
        x = m.op("Pad", x, pads=((0, 0), (0, 0), (pt, pb), (pl, pr)), value=0.0)
    if kh == kw == 1 and x.shape[2:] == (span_h, span_w) == (ho, wo):
        return m.op("Reshape", x, shape=(0, c, ho * wo))  # (a strided one still slices)
    taps = [m.op("Slice", x, starts=(i * dh, j * dw), ends=(i * dh + span_h, j * dw + span_w),
                 axes=(2, 3), steps=(sh, sw)) for i in range(kh) for j in range(kw)]
    # joined along Ho: (N, C, kk*Ho, Wo), which has the layout of (N, C, kk, Ho, Wo) (no
    # Unsqueeze kernel per tap)
    stacked = taps[0] if len(taps) == 1 else m.op("Concat", *taps, axis=2)
    return m.op("Reshape", stacked, shape=(0, c * kh * kw, ho * wo))


def _swap_last(m: Match, v: Value) -> Value:
    """(A, B, C) -> (A, C, B): the one Transpose form ORT runs at copy speed."""
    return m.op("Transpose", v, perm=(0, 2, 1))


def _rows(m: Match, cols: Value) -> Value:
    """(N, K, P) -> (N*P, K): one row per output pixel of the whole batch."""
    return m.op("Reshape", _swap_last(m, cols), shape=(-1, cols.shape[1]))


def _conv_grad_weight_as_matmul(m: Match):
    node = m.root
    x, dy = node.inputs
    strides, pads, dilations, group = _geometry(node)
    kernel = tuple(node.attrs["kernel_shape"])
    c, (o, ho, wo) = x.shape[1], dy.shape[1:]
    if (group != 1 or kernel[0] * kernel[1] > MAX_IM2COL_TAPS
            or not _static(c, o, ho, wo, *x.shape[2:])):
        return None
    cols = _windows(m, x, kernel, (ho, wo), strides, pads, dilations)
    d = m.op("Reshape", dy, shape=(0, o, ho * wo))
    if ho * wo >= WEIGHT_GRAD_GEMM_PIXELS:
        # per image (N, O, P) @ (N, P, C*kk), then a sum over the batch
        s = m.op("ReduceSum", m.op("MatMul", d, _swap_last(m, cols)), axes=(0,),
                 keepdims=False)
    else:
        # one GEMM contracting batch and pixels together: (O, N*P) @ (N*P, C*kk); a
        # per-image product would write N weight-sized partial sums
        d_rows = m.op("Reshape", _swap_last(m, d), shape=(-1, o))
        s = m.op("MatMul", m.op("Transpose", d_rows, perm=(1, 0)), _rows(m, cols))
    return m.op("Reshape", s, shape=(o, c) + kernel)  # dW[o, c, i, j] = sum dy * x-window


def _pixels_to_nchw(m: Match, rows: Value, out_hw) -> Value:
    """(N*P, C) -> (N, C, Ho, Wo)."""
    ho, wo = out_hw
    per_image = m.op("Reshape", rows, shape=(-1, ho * wo, rows.shape[1]))
    return m.op("Reshape", _swap_last(m, per_image), shape=(0, rows.shape[1], ho, wo))


def _static(*dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _small(out_hw, kernel) -> bool:
    return (_static(*out_hw, *kernel) and out_hw[0] * out_hw[1] < SMALL_MAP_PIXELS
            and kernel[0] * kernel[1] <= MAX_IM2COL_TAPS)


def _tiny(src_hw, out_hw) -> bool:
    return src_hw[0] * src_hw[1] <= TINY_MAP_PIXELS and out_hw[0] * out_hw[1] <= TINY_MAP_PIXELS


def _tiny_conv(m: Match, x: Value, w: Value, kernel, out_hw, strides, pads, dilations) -> Value:
    """conv(x, W) on a tiny map with the weight as the GEMM's left operand, read as it lies:
    y^T (O, P*N) = W (O, C*kk) @ windows (C*kk, P*N), the windows taken pixel-major from x
    transposed to (C, H*W, N) by the 0/1 selection: G[(t, p), q] @ x_t."""
    o, c, (kh, kw), (h, wd) = w.shape[0], x.shape[1], kernel, x.shape[2:]
    (sh, sw), (dh, dw), (pt, pl) = strides, dilations, pads[:2]
    x_t = m.op("Transpose", m.op("Reshape", x, shape=(0, c, h * wd)), perm=(1, 2, 0))
    if (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(pads):
        cols_t = x_t  # a 1x1 conv's windows: x itself
    else:
        def source(i, j, a, b):  # y[a, b] reads x[a*s + i*d - p] (the forward convolution)
            return a * sh + i * dh - pt, b * sw + j * dw - pl
        sel = _selection((h, wd), kernel, out_hw, source, np.dtype(x.dtype))
        cols_t = m.op("MatMul", m.const(np.ascontiguousarray(sel.T)), x_t)  # (C, kk*P, N)
    y_t = m.op("MatMul", m.op("Reshape", w, shape=(o, -1)),
               m.op("Reshape", cols_t, shape=(c * kh * kw, -1)))  # (O, P*N)
    y = m.op("Transpose", m.op("Reshape", y_t, shape=(o, out_hw[0] * out_hw[1], -1)),
             perm=(2, 0, 1))
    return m.op("Reshape", y, shape=(-1, o) + out_hw)


def _tiny_conv_grad_input(m: Match, dy: Value, w: Value, kernel, out_hw, strides, pads,
                          dilations) -> Value:
    """dX on a tiny map with no copy of the weight beyond the one inside the GEMM:
    cols (C*kk, P*N) = W^T @ dy_t (FusedMatMul transA; dy transposed to (O, P*N)), then
    col2im as one product with a 0/1 matrix G[q, (t, p)]: dx pixel q sums the taps t of the
    dy pixels p that reach it (the stride's zero spreading and the padding folded in)."""
    o, c, (kh, kw), (h, wd), (ho, wo) = *w.shape[:2], kernel, out_hw, dy.shape[2:]
    (sh, sw), (dh, dw), (pt, pl) = strides, dilations, pads[:2]
    dy_t = m.op("Transpose", m.op("Reshape", dy, shape=(0, o, ho * wo)), perm=(1, 2, 0))
    wm = m.op("Reshape", w, shape=(o, c * kh * kw))
    cols = m.op("MatMul", m.op("Transpose", wm, perm=(1, 0)),
                m.op("Reshape", dy_t, shape=(o, -1)))
    cols = m.op("Reshape", cols, shape=(c, kh * kw * ho * wo, -1))  # (C, kk*P, N)
    if (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(pads):
        dx_t = cols  # dy's pixels are dx's
    else:
        def source(i, j, r, q):  # dx[r, q] gets w[., ., i, j] * dy[a, b]: r = a*s + i*d - p
            a, ra = divmod(r + pt - i * dh, sh)
            b, rb = divmod(q + pl - j * dw, sw)
            return None if ra or rb else (a, b)
        sel = _selection((ho, wo), kernel, out_hw, source, np.dtype(dy.dtype))
        g = sel.reshape(ho * wo, kh * kw, h * wd).transpose(2, 1, 0).reshape(h * wd, -1)
        dx_t = m.op("MatMul", m.const(np.ascontiguousarray(g)), cols)  # (C, P_in, N)
    return m.op("Reshape", m.op("Transpose", dx_t, perm=(2, 0, 1)), shape=(-1, c, h, wd))


def _conv_as_matmul(m: Match):
    node = m.root
    if len(node.inputs) != 2:
        return None
    x, w = node.inputs
    strides, pads, dilations, group = _geometry(node)
    kernel, out_hw = tuple(w.shape[2:]), tuple(m.type.shape[2:])
    if group != 1 or not _small(out_hw, kernel):
        return None
    if not _static(*x.shape[1:], *w.shape):
        return None
    if _tiny(x.shape[2:], out_hw):
        return _tiny_conv(m, x, w, kernel, out_hw, strides, pads, dilations)
    cols = _windows(m, x, kernel, out_hw, strides, pads, dilations)
    wm = m.op("Reshape", w, shape=(w.shape[0], -1))  # (O, C*kk)
    y = m.op("MatMul", _rows(m, cols), m.op("Transpose", wm, perm=(1, 0)))  # (N*P, O)
    return _pixels_to_nchw(m, y, out_hw)


def _conv_grad_input_as_matmul(m: Match):
    node = m.root
    dy, w = node.inputs
    strides, pads, dilations, group = _geometry(node)
    kernel, out_hw = tuple(w.shape[2:]), tuple(m.type.shape[2:])
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = kernel, strides, dilations, pads
    o, c = w.shape[:2]
    if group != 1 or not _small(out_hw, kernel) or not _static(*dy.shape[1:], *w.shape):
        return None
    (h, wd), (ho, wo) = out_hw, dy.shape[2:]
    if _tiny((ho, wo), out_hw):
        return _tiny_conv_grad_input(m, dy, w, kernel, out_hw, strides, pads, dilations)
    # the weight as (kk, O, C) rows: the 2-D transpose (O*C, kk) -> (kk, O*C), which ORT
    # splits over its threads, unlike (O, C, kk) -> (O, kk, C) (512x512x3x3, min of 40:
    # 0.74 vs 1.57 ms on 2 threads; 1.35 ms each on 1)
    wr = m.op("Reshape", m.op("Transpose", m.op("Reshape", w, shape=(o * c, kh * kw)),
                              perm=(1, 0)), shape=(-1, c))  # wr[(t, o), c] = w[o, c, t]
    flat = m.op("Reshape", dy, shape=(0, o, ho * wo))
    if (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(pads):
        rows = _swap_last(m, flat)  # dy's pixels are dx's: dx = dy @ W
    else:
        def source(i, j, r, q):  # dx[r, q] gets w[., ., i, j] * dy[a, b]: r = a*s + i*d - p
            a, ra = divmod(r + pt - i * dh, sh)
            b, rb = divmod(q + pl - j * dw, sw)
            return None if ra or rb else (a, b)
        # rows (N*P, kk*O) tap-major straight from a selection with its rows in (pixel, tap)
        # order times dy^T (the stride's zero spreading, the padding and the taps folded in);
        # a Transpose of windows (N, O, kk, P) -> (N, P, kk, O) cost as much as the Pads,
        # Slices and Concats the selection replaced (ResNet-18, 2 threads)
        sel = _selection((ho, wo), kernel, out_hw, source, np.dtype(dy.dtype))
        sel = sel.reshape(ho * wo, kh * kw, h * wd).transpose(2, 1, 0).reshape(-1, ho * wo)
        rows = m.op("MatMul", m.const(np.ascontiguousarray(sel)), _swap_last(m, flat))
    rows = m.op("Reshape", rows, shape=(-1, kh * kw * o))  # (N*P, kk*O)
    return _pixels_to_nchw(m, m.op("MatMul", rows, wr), out_hw)


def _batch_norm_ort_cpu_form(m: Match):
    node = m.root
    # BatchNormGrad has no "training" attribute: a gradient is always of a training BatchNorm
    if node.attrs["ort_cpu_form"] or not node.attrs.get("training", True):
        return None
    return m.op(node.op, *node.inputs, **{**node.attrs, "ort_cpu_form": True})


ORT_CPU_RULES = [
    Rule("batch_norm_ort_cpu_form", op(("BatchNorm", "BatchNormGrad")), _batch_norm_ort_cpu_form),
    # ^ training BatchNorm and its gradient through ORT's fused training-mode
    #   BatchNormalization kernel (one pass for y or xhat and the batch statistics) instead
    #   of chains of full-size Sub/Mul/ReduceMean: the forward 6 full-size kernels -> 1, the
    #   gradient 14 -> 7 (graphdl/ops/norm.py lowers both)
    Rule("conv_grad_weight_as_matmul", op("ConvGradWeight"), _conv_grad_weight_as_matmul),
    # ^ dW = sum_n dy_n @ im2col(x_n)^T
    Rule("small_map_conv_as_matmul", op("Conv"), _conv_as_matmul),
    # ^ conv(x, W) = im2col(x) @ W^T, one GEMM for the whole batch
    Rule("small_map_conv_grad_input_as_matmul", op("ConvGradInput"), _conv_grad_input_as_matmul),
    # ^ dX[r] = sum_(o, t) W[o, ., t] dY[o, a] over r = a*s + t*d - p: a 0/1 selection of dY's
    #   pixels per (dx pixel, tap), then one GEMM with W
]


def lower_for_ort_cpu(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Convolution weight gradients, small-map convolutions and input gradients into the
    GEMM forms ONNX Runtime's CPU kernels run fastest."""
    return apply_rules(graph, ORT_CPU_RULES, fired)
