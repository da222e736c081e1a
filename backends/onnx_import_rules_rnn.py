"""Import rules for ONNX's recurrent ops (RNN, GRU, LSTM): all directions, both layouts,
biases, initial states, LSTM peepholes and input_forget, GRU's linear_before_reset, cell
clipping and the activation list.

Without ``sequence_lens`` each direction is one ``Recurrence`` op, whose kernel loops over a
sequence length that may be symbolic. With it, the cells are unrolled over a static sequence
into graphdl ops, and ``sequence_lens`` masks the steps past each entry's length (its state
holds, its outputs are zero).
"""
from __future__ import annotations

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ops.recurrent import recurrence, zero_state
from graphdl.passes.rewrite import any_value, match_value, op


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _c(value, like):
    return F.const(np.array(value, np.dtype(like.dtype)))


def _activation(name: str, alpha, beta, like):
    """The ONNX activation ``name`` as a graphdl function (alpha/beta where it takes them)."""
    name = name.lower()
    if name == "sigmoid":
        return F.sigmoid
    if name == "tanh":
        return F.tanh
    if name == "relu":
        return F.relu
    if name == "hardsigmoid":
        return lambda x: F.hard_sigmoid(x, alpha=0.2 if alpha is None else alpha,
                                        beta=0.5 if beta is None else beta)
    if name == "leakyrelu":
        return lambda x: F.leaky_relu(x, 0.01 if alpha is None else alpha)
    if name == "thresholdedrelu":
        return lambda x: F.thresholded_relu(x, alpha=1.0 if alpha is None else alpha)
    if name == "elu":
        return lambda x: F.elu(x, alpha=1.0 if alpha is None else alpha)
    if name == "softsign":
        return F.softsign
    if name == "softplus":
        return F.softplus
    if name == "scaledtanh":
        return lambda x: F.tanh(x * _c(beta, like)) * _c(alpha, like)
    if name == "affine":
        return lambda x: x * _c(alpha, like) + _c(beta, like)
    raise OnnxImportError(f"recurrent activation {name!r} is not supported")


def _activations(imp, node, a, defaults: list[str], dirs: int, like):
    names = [n.decode() if isinstance(n, bytes) else n for n in a.get("activations", [])] \
        or defaults * dirs
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    k = len(defaults)
    fns = []
    for d in range(dirs):
        fns.append([_activation(names[d * k + j], alphas[d * k + j] if d * k + j < len(alphas)
                                else None,
                                betas[d * k + j] if d * k + j < len(betas) else None, like)
                    for j in range(k)])
    return fns


def _pick(v, d: int):
    """Entry ``d`` of the leading (direction) axis."""
    return F.gather(v, F.const(np.array(d, np.int64)), 0)


def _step_input(xw, t: int):
    return F.gather(xw, F.const(np.array(t, np.int64)), 0)


def _split(v, n: int):
    return list(F.split(v, n, axis=-1))


def _cell(kind: str, a, acts, gates_x, h, c, r_t, rb, p, hidden: int):
    """One time step: (new h, new c)."""
    clip = a.get("clip")

    def clipped(v):
        return F.clip(v, -clip, clip) if clip is not None else v

    if kind == "RNN":
        return acts[0](clipped(gates_x + F.matmul(h, r_t) + rb)), None
    if kind == "GRU":
        xz, xr, xh = _split(gates_x, 3)
        rz, rr, rh = _split(r_t, 3)
        bz, br, bh = _split(rb, 3)
        z = acts[0](clipped(xz + F.matmul(h, rz) + bz))
        r = acts[0](clipped(xr + F.matmul(h, rr) + br))
        if a.get("linear_before_reset", 0):
            cand = acts[1](clipped(xh + r * (F.matmul(h, rh) + bh)))
        else:
            cand = acts[1](clipped(xh + F.matmul(r * h, rh) + bh))
        one = _c(1.0, h)
        return (one - z) * cand + z * h, None  # H = (1 - z) h~ + z H_prev
    xi, xo, xf, xc = _split(gates_x + F.matmul(h, r_t) + rb, 4)
    pi, po, pf = p if p is not None else (None, None, None)
    i = acts[0](clipped(xi + pi * c if pi is not None else xi))
    f = acts[0](clipped(xf + pf * c if pf is not None else xf))
    if a.get("input_forget", 0):
        f = _c(1.0, h) - i  # coupled input and forget gates
    g = acts[1](clipped(xc))
    c_new = f * c + i * g
    o = acts[0](clipped(xo + po * c_new if po is not None else xo))
    return o * acts[2](c_new), c_new


def _recurrent(kind: str, n_gates: int, defaults: list[str]):
    def rule(imp, node, a):
        x, w, r = (imp.value(n) for n in node.input[:3])
        layout = int(a.get("layout", 0))
        if layout:
            x = F.transpose(x, (1, 0, 2))  # (batch, seq, in) -> (seq, batch, in)
        seq, batch = x.shape[0], x.shape[1]
        lens = None
        if _input(node, 4) and not (imp.is_const(node.input[4]) and np.all(
                np.asarray(imp.const(node.input[4])) == seq)):
            # steps at or past an entry's length leave its state alone and output zeros
            lens = F.cast(imp.value(node.input[4]), "int64")
        if lens is None:
            return _looped(imp, node, a, kind, n_gates, x, w, r, defaults)
        if not isinstance(seq, int):
            raise OnnxImportError(f"{imp.where()}: {kind} with sequence_lens needs a static "
                                  f"sequence length to unroll, got {x.shape}")
        direction = a.get("direction", "forward")
        dirs = 2 if direction == "bidirectional" else 1
        hidden = int(a.get("hidden_size", r.shape[-1]))
        acts = _activations(imp, node, a, defaults, dirs, x)
        zeros = F.const(np.zeros((batch, hidden), np.dtype(x.dtype))) \
            if isinstance(batch, int) else None
        ys, hs, cs = [], [], []
        for d in range(dirs):
            w_t = F.transpose(_pick(w, d), (1, 0))  # (in, gates * H)
            r_t = F.transpose(_pick(r, d), (1, 0))
            if _input(node, 3):
                wb, rbias = _split(_pick(imp.value(node.input[3]), d), 2)
            else:
                wb = rbias = F.const(np.zeros(n_gates * hidden, np.dtype(x.dtype)))
            xw = F.matmul(x, w_t) + wb  # every step's input projection at once
            state = {}
            for slot, key in ((5, "h"), (6, "c")):
                if _input(node, slot):
                    v = imp.value(node.input[slot])
                    state[key] = _pick(F.transpose(v, (1, 0, 2)) if layout else v, d)
                else:
                    if zeros is None:
                        raise OnnxImportError(f"{imp.where()}: {kind} with a symbolic batch "
                                              "needs initial states")
                    state[key] = zeros
            peep = None
            if kind == "LSTM" and _input(node, 7):
                peep = _split(_pick(imp.value(node.input[7]), d), 3)
            reverse = direction == "reverse" or d == 1
            h, c = state["h"], state["c"]
            outs = [None] * seq
            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                h_new, c_next = _cell(kind, a, acts[d], _step_input(xw, t), h, c, r_t, rbias,
                                      peep, hidden)
                if lens is None:
                    h, c = h_new, (c_next if c_next is not None else c)
                    outs[t] = h
                    continue
                live = F.unsqueeze(F.less(F.const(np.array(t, np.int64)), lens), 1)
                h = F.where(live, h_new, h)
                c = F.where(live, c_next, c) if c_next is not None else c
                outs[t] = F.where(live, h_new, _c(0.0, h_new))
            ys.append(F.concat([F.unsqueeze(o, 0) for o in outs], 0))  # (seq, batch, H)
            hs.append(h)
            cs.append(c)
        y = F.concat([F.unsqueeze(v, 1) for v in ys], 1)  # (seq, dirs, batch, H)
        y_h = F.concat([F.unsqueeze(v, 0) for v in hs], 0)  # (dirs, batch, H)
        y_c = F.concat([F.unsqueeze(v, 0) for v in cs], 0)
        if layout:
            y = F.transpose(y, (2, 0, 1, 3))  # (batch, seq, dirs, H)
            y_h, y_c = F.transpose(y_h, (1, 0, 2)), F.transpose(y_c, (1, 0, 2))
        outs = [y, y_h, y_c] if kind == "LSTM" else [y, y_h]
        return outs[:len(node.output)]
    return rule


_RUNTIME_FILL = op("DynConstantOfShape", any_value())  # a fill of a run-time shape


def _is_zero(imp, node, slot: int) -> bool:
    """Whether input ``slot`` of ``node`` is absent or known to be all zeros."""
    name = _input(node, slot)
    if not name:
        return True
    if imp.is_const(name):
        value = np.asarray(imp.const(name))
        return value.dtype.kind == "f" and not np.any(value)
    v = imp.value(name)
    if match_value(_RUNTIME_FILL, v, {}) is not None:  # torch's Shape->Concat->ConstantOfShape
        return not np.any(np.asarray(v.node.attrs["value"]))
    return False


def _looped(imp, node, a, kind, n_gates, x, w, r, defaults):
    """The rule without sequence_lens: one Recurrence op (a run-time loop over the sequence,
    which may be symbolic), ONNX's op itself in layout 0."""
    layout = int(a.get("layout", 0))
    direction = a.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    hidden = int(a.get("hidden_size", r.shape[-1]))
    names = [n.decode() if isinstance(n, bytes) else n for n in a.get("activations", [])] \
        or defaults * dirs
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    dt = np.dtype(x.dtype)
    slots = (5, 6) if kind == "LSTM" else (5,)
    # initial states that are absent or all zeros (torch writes Shape -> Concat ->
    # ConstantOfShape(0)) are ONNX's default: the op takes none, and its ONNX node omits them
    zero = [_is_zero(imp, node, slot) for slot in slots]
    states = [None] * len(slots)
    if not all(zero):
        for k, slot in enumerate(slots):
            if not zero[k]:
                v = imp.value(node.input[slot])
                states[k] = F.transpose(v, (1, 0, 2)) if layout else v
            else:
                states[k] = zero_state(F, x, r)
    bias = imp.value(node.input[3]) if _input(node, 3) else \
        F.const(np.zeros((dirs, 2 * n_gates * hidden), dt))
    extra = ()
    if kind == "LSTM":
        peep = imp.value(node.input[7]) if _input(node, 7) else \
            F.const(np.zeros((dirs, 3 * hidden), dt))
        extra = (states[1], peep)
    n = len(names)
    outs = list(recurrence(
        kind, x, w, r, bias, states[0], *extra, activations=names,
        alphas=[alphas[i] if i < len(alphas) else None for i in range(n)],
        betas=[betas[i] if i < len(betas) else None for i in range(n)],
        clip=a.get("clip"), linear_before_reset=a.get("linear_before_reset", 0),
        input_forget=a.get("input_forget", 0), direction=direction))
    if layout:
        outs[0] = F.transpose(outs[0], (2, 0, 1, 3))  # (batch, seq, dirs, H)
        outs[1:] = [F.transpose(v, (1, 0, 2)) for v in outs[1:]]
    return outs[:len(node.output)]


RULES = {"RNN": _recurrent("RNN", 1, ["Tanh"]),
         "GRU": _recurrent("GRU", 3, ["Sigmoid", "Tanh"]),
         "LSTM": _recurrent("LSTM", 4, ["Sigmoid", "Tanh", "Tanh"])}
