"""ONNX's recurrent ops (RNN, GRU, LSTM) over a run-time sequence length.

``Recurrence(x, w, r, b, h0[, c0, p])``: x (T, N, I), and per direction (D = 1, or 2 for
``bidirectional``) w (D, G*H, I), r (D, G*H, H), b (D, 2*G*H) (input then recurrent biases),
h0 (D, N, H); LSTM adds c0 (D, N, H) and its peepholes p (D, 3*H). Gates are in ONNX's order
(GRU z, r, h; LSTM i, o, f, c). The kernel loops over axis 0 of x, so T may be symbolic;
outputs are Y (T, D, N, H) and the last hidden state (D, N, H), and for LSTM the last cell
state: ONNX's op without ``sequence_lens``, in layout 0, and its lowering is that node.

The cell is written once (:func:`cell`) against a small namespace of array operations and
runs on NumPy arrays in the kernel and on graph values in the VJP. The VJP differentiates the
unrolled cells when T is static; over a symbolic T it is one ``RecurrenceGrad`` node
(:mod:`graphdl.ops.recurrent_grad`), whose kernel backpropagates through time over the
run-time length with the step VJP derived from the same :func:`cell`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from graphdl.ir import GraphError, TensorType
from graphdl.ops.infer import check_arity, require_float, same_dtype
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, \
    fail, register

__all__ = ["recurrence"]

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu",
                    "hardsigmoid": "HardSigmoid", "leakyrelu": "LeakyRelu",
                    "thresholdedrelu": "ThresholdedRelu", "elu": "Elu", "softsign": "Softsign",
                    "softplus": "Softplus", "scaledtanh": "ScaledTanh", "affine": "Affine"}
# (alpha, beta) defaults of the activations that take them (ONNX's), None: takes none
ACTIVATION_PARAMS = {"hardsigmoid": (0.2, 0.5), "leakyrelu": (0.01, None),
                     "thresholdedrelu": (1.0, None), "elu": (1.0, None),
                     "scaledtanh": (1.0, 1.0), "affine": (1.0, 0.0)}


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # stable for large |a|


_NUMPY_ACTS = {
    "sigmoid": lambda a, al, be: _sigmoid(a),
    "tanh": lambda a, al, be: np.tanh(a),
    "relu": lambda a, al, be: np.maximum(a, 0),
    "hardsigmoid": lambda a, al, be: np.clip(al * a + be, 0, 1),
    "leakyrelu": lambda a, al, be: np.where(a > 0, a, al * a),
    "thresholdedrelu": lambda a, al, be: np.where(a > al, a, 0),
    "elu": lambda a, al, be: np.where(a > 0, a, al * np.expm1(np.minimum(a, 0))),
    "softsign": lambda a, al, be: a / (1 + np.abs(a)),
    "softplus": lambda a, al, be: np.logaddexp(0, a),
    "scaledtanh": lambda a, al, be: al * np.tanh(be * a),
    "affine": lambda a, al, be: al * a + be,
}


def _graph_acts(F):
    c = F.const
    return {
        "sigmoid": lambda a, al, be: F.sigmoid(a),
        "tanh": lambda a, al, be: F.tanh(a),
        "relu": lambda a, al, be: F.relu(a),
        "hardsigmoid": lambda a, al, be: F.hard_sigmoid(a, alpha=al, beta=be),
        "leakyrelu": lambda a, al, be: F.leaky_relu(a, al),
        "thresholdedrelu": lambda a, al, be: F.thresholded_relu(a, alpha=al),
        "elu": lambda a, al, be: F.elu(a, alpha=al),
        "softsign": lambda a, al, be: F.softsign(a),
        "softplus": lambda a, al, be: F.softplus(a),
        "scaledtanh": lambda a, al, be: F.tanh(a * c(np.array(be, a.dtype))) *
        c(np.array(al, a.dtype)),
        "affine": lambda a, al, be: a * c(np.array(al, a.dtype)) + c(np.array(be, a.dtype)),
    }


def numpy_ops() -> SimpleNamespace:
    """The array operations :func:`cell` uses, on NumPy arrays."""
    return SimpleNamespace(matmul=np.matmul, clip=np.clip, acts=_NUMPY_ACTS,
                           split=lambda v, n: np.split(v, n, axis=-1),
                           one=lambda like: np.ones((), like.dtype))


def graph_ops(F) -> SimpleNamespace:
    """The array operations :func:`cell` uses, on graph values (``F``: graphdl.tensor)."""
    return SimpleNamespace(matmul=F.matmul, acts=_graph_acts(F),
                           clip=lambda v, lo, hi: F.clip(v, lo, hi),
                           split=lambda v, n: list(F.split(v, n, axis=-1)),
                           one=lambda like: F.const(np.ones((), like.dtype)))


def cell(ops, attrs: dict, gates_x, h, c, r_t, rb, peep):
    """One time step of ``attrs['kind']``'s cell: (new h, new c or None). ``gates_x`` is
    this step's x @ W^T + Wb, ``r_t`` the recurrent weight transposed (H, G*H), ``rb`` its
    bias, ``peep`` the LSTM peepholes (i, o, f) or None."""
    kind, clip = attrs["kind"], attrs["clip"]
    names, alphas, betas = attrs["activations"], attrs["alphas"], attrs["betas"]

    def act(j, v):
        return ops.acts[names[j]](v, alphas[j], betas[j])

    def clipped(v):
        return ops.clip(v, -clip, clip) if clip is not None else v

    if kind == "RNN":
        return act(0, clipped(gates_x + ops.matmul(h, r_t) + rb)), None
    if kind == "GRU":
        xz, xr, xh = ops.split(gates_x, 3)
        rz, rr, rh = ops.split(r_t, 3)
        bz, br, bh = ops.split(rb, 3)
        z = act(0, clipped(xz + ops.matmul(h, rz) + bz))
        r = act(0, clipped(xr + ops.matmul(h, rr) + br))
        if attrs["linear_before_reset"]:
            cand = act(1, clipped(xh + r * (ops.matmul(h, rh) + bh)))
        else:
            cand = act(1, clipped(xh + ops.matmul(r * h, rh) + bh))
        return (ops.one(h) - z) * cand + z * h, None  # H = (1 - z) h~ + z H_prev
    xi, xo, xf, xc = ops.split(gates_x + ops.matmul(h, r_t) + rb, 4)
    pi, po, pf = peep if peep is not None else (None, None, None)
    i = act(0, clipped(xi + pi * c if pi is not None else xi))
    f = act(0, clipped(xf + pf * c if pf is not None else xf))
    if attrs["input_forget"]:
        f = ops.one(h) - i  # coupled input and forget gates
    g = act(1, clipped(xc))
    c_new = f * c + i * g
    o = act(0, clipped(xo + po * c_new if po is not None else xo))
    return o * act(2, c_new), c_new


# ---- the op ------------------------------------------------------------------------------

def _dirs(attrs) -> int:
    return 2 if attrs["direction"] == "bidirectional" else 1


def input_slots(attrs) -> tuple[str, ...]:
    """The names of the op's inputs in order: x, w, r, b, then h0 (and c0) unless
    ``zero_state`` (the initial states are zeros and are not inputs), then LSTM's p."""
    lstm = attrs["kind"] == "LSTM"
    states = () if attrs.get("zero_state") else (("h0", "c0") if lstm else ("h0",))
    return ("x", "w", "r", "b") + states + (("p",) if lstm else ())


def named_inputs(xs, attrs, zeros) -> dict:
    """The inputs by slot name, with h0/c0 from ``zeros()`` where ``zero_state``."""
    got = dict(zip(input_slots(attrs), xs))
    if attrs.get("zero_state"):
        got["h0"] = zeros()
        if attrs["kind"] == "LSTM":
            got["c0"] = zeros()
    return got


def _infer(types, attrs):
    kind = attrs["kind"]
    if kind not in GATES:
        raise fail("Recurrence", f"kind must be RNN, GRU or LSTM, got {kind!r}", types)
    if attrs["direction"] not in ("forward", "reverse", "bidirectional"):
        raise fail("Recurrence", "direction must be forward, reverse or bidirectional, got "
                   f"{attrs['direction']!r}", types)
    lstm, dirs = kind == "LSTM", _dirs(attrs)
    slots = input_slots(attrs)
    check_arity("Recurrence", types, len(slots))
    dt = same_dtype("Recurrence", types)
    require_float("Recurrence", types[0])
    hidden = types[2].shape[-1] if types[2].rank == 3 else None
    named = named_inputs(types, attrs, lambda: TensorType(
        (dirs, types[0].shape[1] if types[0].rank == 3 else None, hidden), dt))
    x, w, r, b, h0 = (named[k] for k in ("x", "w", "r", "b", "h0"))
    gates = GATES[kind]
    if x.rank != 3 or not isinstance(hidden, int) or \
            r.shape != (dirs, gates * hidden, hidden) or \
            w.shape != (dirs, gates * hidden, x.shape[2]) or \
            b.shape != (dirs, 2 * gates * hidden) or h0.shape != (dirs, x.shape[1], hidden):
        raise fail("Recurrence", f"{kind} ({attrs['direction']}) with x (T, N, I) needs w "
                   f"({dirs}, {gates}H, I), r ({dirs}, {gates}H, H), b ({dirs}, "
                   f"{2 * gates}H) and h0 ({dirs}, N, H)", types)
    if lstm and (named["c0"].shape != h0.shape or named["p"].shape != (dirs, 3 * hidden)):
        raise fail("Recurrence", f"LSTM needs c0 ({dirs}, N, H) and peepholes p ({dirs}, 3H)",
                   types)
    n_acts = {"RNN": 1, "GRU": 2, "LSTM": 3}[kind] * dirs
    names = tuple(attrs["activations"])
    if len(names) != n_acts or any(a not in ONNX_ACTIVATIONS for a in names) or \
            len(attrs["alphas"]) != n_acts or len(attrs["betas"]) != n_acts:
        raise fail("Recurrence", f"{kind} ({attrs['direction']}) needs {n_acts} activations "
                   f"(of {', '.join(ONNX_ACTIVATIONS)}) with one alpha and beta each, got "
                   f"{names}", types)
    state = TensorType(h0.shape, dt)
    return [TensorType((x.shape[0],) + tuple(h0.shape), dt), state] + ([state] if lstm else [])


def _direction_attrs(attrs, d: int) -> dict:
    """The attributes of direction ``d``: its slice of the activation list."""
    k = len(attrs["activations"]) // _dirs(attrs)
    part = slice(d * k, (d + 1) * k)
    return dict(attrs, activations=attrs["activations"][part], alphas=attrs["alphas"][part],
                betas=attrs["betas"][part])


def _reversed(attrs, d: int) -> bool:
    return attrs["direction"] == "reverse" or d == 1


def _kernel(xs, attrs, out):
    x = xs[0]
    lstm, dirs = attrs["kind"] == "LSTM", _dirs(attrs)
    n_gates, hidden = xs[2].shape[1], xs[2].shape[2]
    ins = named_inputs(xs, attrs, lambda: np.zeros((dirs, x.shape[1], hidden), x.dtype))
    ops = numpy_ops()
    y = np.empty((x.shape[0], dirs, x.shape[1], hidden), x.dtype)
    hs, cs = [], []
    for d in range(dirs):
        w, r, b, h = ins["w"][d], ins["r"][d], ins["b"][d], ins["h0"][d]
        c = ins["c0"][d] if lstm else None
        peep = np.split(ins["p"][d], 3) if lstm else None
        gates_x = np.matmul(x, w.T) + b[:n_gates]  # every step's input projection at once
        a = _direction_attrs(attrs, d)
        steps = range(x.shape[0] - 1, -1, -1) if _reversed(attrs, d) else range(x.shape[0])
        for t in steps:
            h, c_new = cell(ops, a, gates_x[t], h, c, r.T, b[n_gates:], peep)
            c = c_new if c_new is not None else c
            y[t, d] = h
        hs.append(np.asarray(h, x.dtype))
        cs.append(np.asarray(c, x.dtype) if lstm else None)
    return (y, np.stack(hs)) + ((np.stack(cs),) if lstm else ())


def _vjp(F, node, grads):
    x = node.inputs[0]
    steps = x.shape[0]
    if not isinstance(steps, int):  # a run-time length: backpropagation through time
        # lazy: recurrent_grad imports this module (its cell) at import time
        from graphdl.ops.recurrent_grad import recurrence_grad
        return recurrence_grad(F, node, grads)
    lstm, attrs = node.attrs["kind"] == "LSTM", node.attrs
    ins = named_inputs(node.inputs, attrs, lambda: zero_state(F, x, node.inputs[2]))
    ops = graph_ops(F)

    def pick(v, d):
        return F.gather(v, F.const(np.array(d, np.int64)), 0)

    ys, hs, cs = [], [], []
    for d in range(_dirs(attrs)):
        b_in, b_rec = F.split(pick(ins["b"], d), 2, axis=0)
        gates_x = F.matmul(x, F.transpose(pick(ins["w"], d), (1, 0))) + b_in
        r_t = F.transpose(pick(ins["r"], d), (1, 0))
        peep = list(F.split(pick(ins["p"], d), 3, axis=0)) if lstm else None
        h, c = pick(ins["h0"], d), (pick(ins["c0"], d) if lstm else None)
        a = _direction_attrs(attrs, d)
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if _reversed(attrs, d) else range(steps)):
            step_x = F.gather(gates_x, F.const(np.array(t, np.int64)), 0)
            h, c_new = cell(ops, a, step_x, h, c, r_t, b_rec, peep)
            c = c_new if c_new is not None else c
            out[t] = F.unsqueeze(h, 0)
        ys.append(F.unsqueeze(F.concat(out, 0), 1))
        hs.append(F.unsqueeze(h, 0))
        cs.append(F.unsqueeze(c, 0) if lstm else None)
    outs = [F.concat(ys, 1), F.concat(hs, 0)] + ([F.concat(cs, 0)] if lstm else [])
    # seed the unrolled outputs with the cotangents through grad_y, never through a loss
    # sum(v * g): g usually depends on this node's outputs (and so on ins), and a loss would
    # differentiate g as well
    seeded = [(v, g) for v, g in zip(outs, grads) if g is not None]
    y = F.concat([F.reshape(v, (-1,)) for v, _ in seeded], 0)
    cot = F.concat([F.reshape(g, (-1,)) for _, g in seeded], 0)
    return list(F.grad(y, list(node.inputs), grad_y=cot))


def zero_state(F, x, r):
    """Zeros (D, batch, H) as graph values, the batch read from x (T, N, I) at run time and
    D, H from r (D, G*H, H)."""
    dirs, hidden = r.shape[0], r.shape[2]
    step = F.gather(x, F.const(np.array(0, np.int64)), 0)  # (N, I)
    zero = F.zeros_like(F.matmul(step, F.const(np.zeros((x.shape[2], hidden), x.dtype))))
    return F.concat([F.unsqueeze(zero, 0)] * dirs, 0)


def _onnx(attrs, tin, tout, opset):
    kind = attrs["kind"]
    lstm = kind == "LSTM"
    onnx_attrs = {"hidden_size": int(tin[2].shape[2]), "direction": attrs["direction"],
                  "activations": [ONNX_ACTIVATIONS[a] for a in attrs["activations"]]}
    # ONNX Runtime consumes alpha/beta only for the activations that take them, in order
    alphas = [a for n, a in zip(attrs["activations"], attrs["alphas"])
              if n in ACTIVATION_PARAMS]
    betas = [b for n, b in zip(attrs["activations"], attrs["betas"])
             if n in ACTIVATION_PARAMS and ACTIVATION_PARAMS[n][1] is not None]
    if alphas:
        onnx_attrs["activation_alpha"] = [float(a) for a in alphas]
    if betas:
        onnx_attrs["activation_beta"] = [float(b) for b in betas]
    if attrs["clip"] is not None:
        onnx_attrs["clip"] = float(attrs["clip"])
    if kind == "GRU":
        onnx_attrs["linear_before_reset"] = int(attrs["linear_before_reset"])
    if lstm:
        onnx_attrs["input_forget"] = int(attrs["input_forget"])
    name = {k: f"in{i}" for i, k in enumerate(input_slots(attrs))}
    ins = ("in0", "in1", "in2", "in3", "", name.get("h0", "")) + \
        ((name.get("c0", ""), name["p"]) if lstm else ())  # zero_state: omitted (zeros)
    outs = ("out0", "out1") + (("out2",) if lstm else ())
    return OnnxLowering((OnnxNode(kind, ins, outs, onnx_attrs),))


register(OpDef(name="Recurrence", infer=_infer, kernel=_kernel, vjp=_vjp, onnx=_onnx,
               n_outputs=-1,
               attrs={"kind": Attr(str, REQUIRED, "RNN, GRU or LSTM"),
                      "activations": Attr(tuple, REQUIRED, "one name per activation slot "
                                                           "(lower case, ONNX's functions)"),
                      "alphas": Attr(tuple, REQUIRED, "alpha per activation (unused: any)"),
                      "betas": Attr(tuple, REQUIRED, "beta per activation (unused: any)"),
                      "clip": Attr(float, None, "clip gate pre-activations to +-clip"),
                      "linear_before_reset": Attr(int, 0, "GRU: apply r after R h"),
                      "input_forget": Attr(int, 0, "LSTM: couple forget to input gate"),
                      "direction": Attr(str, "forward", "forward, reverse or bidirectional"),
                      "zero_state": Attr(int, 0, "1: h0 (and c0) are zeros, not inputs")},
               doc="ONNX's RNN/GRU/LSTM (no sequence_lens), looping over a run-time sequence."))


DEFAULT_ACTIVATIONS = {"RNN": ("tanh",), "GRU": ("sigmoid", "tanh"),
                       "LSTM": ("sigmoid", "tanh", "tanh")}


def recurrence(kind: str, x, w, r, b, h0=None, c0=None, p=None, activations=None, alphas=None,
               betas=None, clip: float | None = None, linear_before_reset: int = 0,
               input_forget: int = 0, direction: str = "forward"):
    """ONNX's ``kind`` (RNN, GRU, LSTM) over x (T, N, I) with per-direction weights: returns
    (Y, last h) or, for LSTM, (Y, last h, last c). Activations default to ONNX's; h0 (and
    c0) None: zero initial states, which are then no inputs of the op."""
    dirs = 2 if direction == "bidirectional" else 1
    names = tuple(a.lower() for a in (activations or DEFAULT_ACTIVATIONS[kind] * dirs))
    fill = [ACTIVATION_PARAMS.get(n, (0.0, 0.0)) for n in names]
    alphas = tuple(float(a if a is not None else d[0] if d[0] is not None else 0.0)
                   for a, d in zip(alphas or [None] * len(names), fill))
    betas = tuple(float(v if v is not None else d[1] if d[1] is not None else 0.0)
                  for v, d in zip(betas or [None] * len(names), fill))
    lstm = kind == "LSTM"
    zero = h0 is None
    if lstm and zero != (c0 is None):
        raise GraphError(f"{kind}: give both h0 and c0, or neither (zero initial states)")
    states = () if zero else ((h0, c0) if lstm else (h0,))
    ins = (x, w, r, b) + states + ((p,) if lstm else ())
    return apply("Recurrence", *ins, kind=kind, activations=names, alphas=alphas,
                 betas=betas, clip=None if clip is None else float(clip),
                 linear_before_reset=int(linear_before_reset), input_forget=int(input_forget),
                 direction=direction, zero_state=int(zero))
