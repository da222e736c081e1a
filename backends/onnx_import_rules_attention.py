"""Import rules for ONNX's Attention, RotaryEmbedding and RMSNormalization (opset 23) and
LinearAttention (opset 26, unrolled over the sequence),
built from graph ops.

Both are composite ONNX ops (ONNX defines them by function bodies); graphdl imports them as
the same composition of its own ops, so they optimize, differentiate and export like any
other subgraph. Attention follows onnx.reference's definition: 3-D inputs split into heads,
the past key/value cache is concatenated, grouped-query heads are repeat-interleaved, the
scores are soft-capped, then masked (boolean or additive mask, causal mask aligned to the
bottom right), softmaxed (fully masked rows give 0) and applied to V.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ir import FLOAT_DTYPES


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _heads(x, n_heads: int):
    """(B, S, H * D) -> (B, H, S, D)."""
    return F.transpose(F.reshape(x, (0, 0, n_heads, -1)), (0, 2, 1, 3))


def _repeat_heads(imp, x, reps: int):
    """(B, H, S, D) -> (B, H * reps, S, D), each head repeated ``reps`` times in place."""
    b, h, s, d = x.shape
    if not all(isinstance(v, int) for v in (b, h, s, d)):
        raise OnnxImportError(f"{imp.where()}: grouped-query Attention needs static shapes, "
                              f"got {x.shape}")
    return F.reshape(F.broadcast_to(F.unsqueeze(x, 2), (b, h, reps, s, d)), (b, h * reps, s, d))


def _mask_bias(imp, mask, kv_len: int, dtype: str):
    """The attention mask as an additive bias, padded on the right to ``kv_len`` keys."""
    pad = kv_len - mask.shape[-1]
    if isinstance(pad, int) and pad > 0:
        pairs = ((0, 0),) * (mask.ndim - 1) + ((0, pad),)
        if mask.dtype == "bool":
            mask = F.cast(F.pad(F.cast(mask, "int64"), pairs, 0.0), "bool")
        else:
            mask = F.pad(mask, pairs, -np.inf)
    if mask.dtype == "bool":
        return F.where(mask, F.const(np.array(0.0, dtype)), F.const(np.array(-np.inf, dtype)))
    return mask


def _attention(imp, node, a):
    q, k, v = (imp.value(n) for n in node.input[:3])
    nonpad = F.cast(imp.value(node.input[6]), "int64") if _input(node, 6) else None
    if nonpad is not None and _input(node, 4):
        raise OnnxImportError(f"{imp.where()}: Attention's nonpad_kv_seqlen cannot be combined "
                              "with a past key/value cache")
    if q.dtype not in FLOAT_DTYPES:
        raise OnnxImportError(f"{imp.where()}: Attention needs float inputs, got {q.dtype}")
    three_d = q.ndim == 3
    if three_d:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise OnnxImportError(f"{imp.where()}: 3-D Attention needs q_num_heads and "
                                  "kv_num_heads")
        q, k, v = _heads(q, a["q_num_heads"]), _heads(k, a["kv_num_heads"]), \
            _heads(v, a["kv_num_heads"])
    past_len = 0
    if _input(node, 4):
        past_k, past_v = imp.value(node.input[4]), imp.value(node.input[5])
        past_len = past_k.shape[2]
        k, v = F.concat([past_k, k], 2), F.concat([past_v, v], 2)
    present_k, present_v = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    dt = q.dtype
    scale = a.get("scale")
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    if q.shape[1] != k.shape[1]:
        if q.shape[1] % k.shape[1]:
            raise OnnxImportError(f"{imp.where()}: {q.shape[1]} query heads are not a "
                                  f"multiple of {k.shape[1]} key/value heads")
        reps = q.shape[1] // k.shape[1]
        k, v = _repeat_heads(imp, k, reps), _repeat_heads(imp, v, reps)
    # q k^T scale, with sqrt(scale) applied to each side as ONNX's definition does (it
    # matters in float16)
    root = F.const(np.array(math.sqrt(scale), dt))
    qk = F.matmul(q * root, F.transpose(k * root, (0, 1, 3, 2)))
    softcap = float(a.get("softcap", 0.0))
    if softcap > 0:  # softcap * tanh(qk / softcap), before the mask so -inf stays -inf
        qk = F.tanh(qk * F.const(np.array(1.0 / softcap, dt))) * F.const(np.array(softcap, dt))
    bias = None
    if _input(node, 3):
        bias = _mask_bias(imp, imp.value(node.input[3]), kv_len, dt)
    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    for on, allowed in ((a.get("is_causal", 0), lambda d: d >= 0),
                        (left >= 0 or right >= 0, lambda d: (d <= left if left >= 0 else True)
                         & (-d <= right if right >= 0 else True))):
        if not on:
            continue
        if not (isinstance(q_len, int) and isinstance(kv_len, int) and isinstance(past_len,
                                                                                  int)):
            raise OnnxImportError(f"{imp.where()}: causal or windowed Attention needs static "
                                  "sequence lengths")
        # query i sits at position i + past_len: causal allows keys j <= it (bottom-right
        # aligned), the window keys within [pos - left, pos + right]
        diff = np.arange(q_len)[:, None] + past_len - np.arange(kv_len)[None, :]
        if nonpad is None:
            term = F.const(np.where(allowed(diff), 0.0, -np.inf).astype(dt))
        else:  # an external cache: batch b's queries end at key nonpad[b] (B, 1, q, kv)
            term = _per_batch_term(nonpad, diff, q_len, on is a.get("is_causal", 0), left,
                                   right, dt)
        bias = term if bias is None else bias + term
    if nonpad is not None:  # keys at or past nonpad[b] are padding: (B, 1, 1, kv)
        if not isinstance(kv_len, int):
            raise OnnxImportError(f"{imp.where()}: nonpad_kv_seqlen needs a static key length")
        keep = F.less(F.const(np.arange(kv_len, dtype=np.int64)), F.reshape(nonpad, (-1, 1)))
        term = F.reshape(F.where(keep, F.const(np.array(0.0, dt)),
                                 F.const(np.array(-np.inf, dt))), (-1, 1, 1, kv_len))
        bias = term if bias is None else bias + term
    scores = qk if bias is None else qk + bias
    precision = a.get("softmax_precision")
    if precision is not None:  # the softmax may run in a wider type (float16 -> float32)
        wide = np.dtype(helper.tensor_dtype_to_np_dtype(precision)).name
        probs = F.cast(F.softmax(F.cast(scores, wide), -1), dt) if wide != dt else \
            F.softmax(scores, -1)
    else:
        probs = F.softmax(scores, -1)
    if bias is not None:  # a row with every key masked attends nothing: zeros, not NaN
        dead = F.equal(F.max(bias, (bias.ndim - 1,), keepdims=True),
                       F.const(np.array(-np.inf, dt)))
        probs = F.where(dead, F.const(np.array(0.0, dt)), probs)
    y = F.matmul(probs, v)
    if three_d:
        y = F.reshape(F.transpose(y, (0, 2, 1, 3)), (0, 0, -1))
    mode = int(a.get("qk_matmul_output_mode", 0))
    qk_out = {2: scores, 3: probs}.get(mode, qk)
    return [y, present_k, present_v, qk_out][:len(node.output)]


def _per_batch_term(nonpad, diff, q_len: int, causal: bool, left: int, right: int, dt: str):
    """The causal (``causal``) or sliding-window bias (B, 1, q, kv) when batch b's query
    block ends at key nonpad[b]: its offset is nonpad[b] - q_len instead of past_len."""
    offset = F.reshape(F.sub(nonpad, F.const(np.array(q_len, np.int64))), (-1, 1, 1))
    d = F.add(F.const(diff.astype(np.int64)), offset)  # (B, q, kv): pos - key
    zero = F.const(np.array(0, np.int64))
    if causal:
        ok = F.greater_equal(d, zero)
    else:
        ok = None
        if left >= 0:
            ok = F.less_equal(d, F.const(np.array(left, np.int64)))
        if right >= 0:
            r = F.greater_equal(d, F.const(np.array(-right, np.int64)))
            ok = r if ok is None else F.logical_and(ok, r)
    term = F.where(ok, F.const(np.array(0.0, dt)), F.const(np.array(-np.inf, dt)))
    return F.unsqueeze(term, 1)


def _rms_norm(imp, node, a):
    x, scale = imp.value(node.input[0]), imp.value(node.input[1])
    axis = a.get("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    stash = a.get("stash_type", 1)
    xs = F.cast(x, "float32") if stash == 1 and x.dtype == "float16" else x
    eps = F.const(np.array(a.get("epsilon", 1e-5), xs.dtype))
    # y = x / sqrt(mean(x^2) + eps) * scale
    y = xs / F.sqrt(F.mean(xs * xs, axes, keepdims=True) + eps)
    if y.dtype != x.dtype:
        y = F.cast(y, x.dtype)
    return [y * scale]


def _rotary(imp, node, a):
    x, cos, sin = (imp.value(n) for n in node.input[:3])
    three_d = x.ndim == 3
    if three_d:
        if not a.get("num_heads"):
            raise OnnxImportError(f"{imp.where()}: 3-D RotaryEmbedding needs num_heads")
        xs = F.reshape(x, (0, 0, int(a["num_heads"]), -1))  # (B, S, H, D)
    else:
        xs = F.transpose(x, (0, 2, 1, 3))
    head = xs.shape[3]
    rot = int(a.get("rotary_embedding_dim", 0)) or head
    if _input(node, 3):  # caches indexed by position: (B, S, rot / 2)
        ids = imp.value(node.input[3])
        cos, sin = F.gather(cos, ids, 0), F.gather(sin, ids, 0)
    cos, sin = F.unsqueeze(cos, cos.ndim - 1), F.unsqueeze(sin, sin.ndim - 1)
    x_rot = F.slice(xs, (0,), (rot,), (3,)) if rot < head else xs
    if a.get("interleaved", 0):
        x1 = F.slice(x_rot, (0,), (rot,), (3,), (2,))
        x2 = F.slice(x_rot, (1,), (rot,), (3,), (2,))
    else:
        x1, x2 = F.split(x_rot, 2, 3)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2  # (x1 + i x2) e^{i theta}
    if a.get("interleaved", 0):
        y = F.reshape_like(F.concat([F.unsqueeze(real, 4), F.unsqueeze(imag, 4)], 4), x_rot)
    else:
        y = F.concat([real, imag], 3)
    if rot < head:
        y = F.concat([y, F.slice(xs, (rot,), (head,), (3,))], 3)
    return [F.reshape_like(y, x) if three_d else F.transpose(y, (0, 2, 1, 3))]


def _step(x, i: int):
    """x[:, :, i] of a (B, H, T, D) value, kept as (B, H, 1, D)."""
    return F.slice(x, (i,), (i + 1,), (2,))


def _linear_attention(imp, node, a):
    """LinearAttention (opset 26), unrolled over the static sequence in float32: per step the
    state S (B, H, dk, dv) decays by exp(g) (gated), takes the delta-rule correction
    beta (v - k S) (delta), adds k^T v, and the output is scale * q S."""
    q, k, v = (imp.value(n) for n in node.input[:3])
    rule = a.get("update_rule", "gated_delta")
    hq, hk = int(a["q_num_heads"]), int(a["kv_num_heads"])
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta") or hq % hk or q.ndim != 3 \
            or gating != bool(_input(node, 4)) or delta != bool(_input(node, 5)):
        raise OnnxImportError(f"{imp.where()}: LinearAttention needs rank-3 q/k/v, q heads a "
                              f"multiple of kv heads and the decay/beta inputs update_rule "
                              f"{rule!r} takes")
    b, t = q.shape[0], q.shape[1]
    if not all(isinstance(d, int) for d in (b, t, q.shape[2], v.shape[2])):
        raise OnnxImportError(f"{imp.where()}: LinearAttention is unrolled over the sequence: "
                              f"it needs static shapes, got {q.shape}")
    dk, dv, group = q.shape[2] // hq, v.shape[2] // hk, hq // hk
    wide = lambda x: F.cast(x, "float32") if x.dtype != "float32" else x  # noqa: E731
    q4, k4, v4 = wide(_heads(q, hq)), wide(_heads(k, hk)), wide(_heads(v, hk))
    if gating:
        g = imp.value(node.input[4])
        g4 = _heads(g, hk) if g.shape[-1] == hk * dk else \
            F.transpose(F.reshape(g, (b, t, hk, 1)), (0, 2, 1, 3))
        g4 = F.exp(wide(g4))  # (B, H, T, 1 or dk)
    if delta:
        beta = imp.value(node.input[5])
        beta4 = wide(F.transpose(F.reshape(beta, (b, t, -1, 1)), (0, 2, 1, 3)))
    if _input(node, 3):
        past = imp.value(node.input[3])
        state, state_dtype = wide(past), past.dtype
    else:
        state = F.const(np.zeros((b, hk, dk, dv), np.float32))
        state_dtype = q.dtype
    scale = float(a.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(dk)
    outs = []
    for i in range(t):
        k_t, v_t = _step(k4, i), _step(v4, i)  # (B, H, 1, dk), (B, H, 1, dv)
        if gating:
            state = state * F.transpose(_step(g4, i), (0, 1, 3, 2))  # rows of S decay
        if delta:
            v_t = _step(beta4, i) * (v_t - F.matmul(k_t, state))
        state = state + F.matmul(F.transpose(k_t, (0, 1, 3, 2)), v_t)
        read = state if group == 1 else F.reshape(
            F.broadcast_to(F.unsqueeze(state, 2), (b, hk, group, dk, dv)), (b, hq, dk, dv))
        outs.append(F.matmul(_step(q4, i), read) * F.const(np.array(scale, np.float32)))
    y = F.reshape(F.transpose(F.concat(outs, 2), (0, 2, 1, 3)), (b, t, hq * dv))
    y = F.cast(y, q.dtype) if q.dtype != "float32" else y
    present = F.cast(state, state_dtype) if state_dtype != "float32" else state
    return [y, present][:len(node.output)]


RULES = {"Attention": _attention, "LinearAttention": _linear_attention,
         "RMSNormalization": _rms_norm, "RotaryEmbedding": _rotary}
