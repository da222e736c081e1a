"""Cases for the Recurrence op and its RecurrenceGrad (one direction of ONNX's RNN, GRU and LSTM). No torch
reference: torch orders and splits the gates differently; the forward is checked against
ONNX Runtime and onnx.reference, the VJP against finite differences."""
from __future__ import annotations

from graphdl.autodiff import VJP_API
from graphdl.ir import TensorType
from graphdl.ops.recurrent_grad import step_vjp_graphs
from tests.op_case import OpCase, randn

T, N, I, H = 3, 2, 4, 3


def _case(kind, seed, gates, attrs, cid, dirs=1):
    zero = attrs.get("zero_state", 0)  # zero initial states: h0/c0 are no inputs
    ins = [randn((T, N, I), seed), randn((dirs, gates * H, I), seed + 1, 0.5),
           randn((dirs, gates * H, H), seed + 2, 0.5), randn((dirs, 2 * gates * H), seed + 3, 0.3)]
    if not zero:
        ins += [randn((dirs, N, H), seed + 4, 0.5)]
    if kind == "LSTM":
        ins += ([] if zero else [randn((dirs, N, H), seed + 5, 0.5)]) + \
            [randn((dirs, 3 * H), seed + 6, 0.3)]
    names = {"RNN": ("tanh",), "GRU": ("sigmoid", "tanh"),
             "LSTM": ("sigmoid", "tanh", "tanh")}[kind] * dirs
    full = dict(kind=kind, activations=names, alphas=(0.0,) * len(names),
                betas=(0.0,) * len(names), **attrs)
    return OpCase(ins, full, id=cid)


CASES = {"Recurrence": [
    _case("RNN", 10, 1, {}, "rnn"),
    _case("RNN", 20, 1, {"direction": "reverse"}, "rnn-reverse"),
    _case("GRU", 30, 3, {}, "gru"),
    _case("GRU", 40, 3, {"linear_before_reset": 1, "direction": "bidirectional"},
          "gru-linear-before-reset-bidirectional", dirs=2),
    _case("LSTM", 50, 4, {}, "lstm-peepholes"),
    _case("LSTM", 60, 4, {"direction": "bidirectional"}, "lstm-bidirectional", dirs=2),
    _case("GRU", 100, 3, {"zero_state": 1}, "gru-zero-state"),
    _case("LSTM", 110, 4, {"zero_state": 1, "direction": "bidirectional"},
          "lstm-zero-state-bidirectional", dirs=2),
]}


def _grad_case(kind, seed, gates, attrs, cid, seeded, dirs=1):
    """RecurrenceGrad: the forward inputs, then one cotangent per seeded output. Its own
    gradient refuses (no second derivative through the loop), so only the kernel's types
    are checked here; its values are checked in tests/test_recurrent_grad.py."""
    fwd = _case(kind, seed, gates, attrs, cid, dirs)
    shapes = [(T, dirs, N, H), (dirs, N, H), (dirs, N, H)]
    cots = [randn(s, seed + 10 + i) for i, (s, f) in enumerate(zip(shapes, seeded)) if f]
    full = dict({"clip": None, "linear_before_reset": 0, "input_forget": 0,
                 "direction": "forward", "zero_state": 0}, **fwd.attrs)  # the op's defaults
    steps = step_vjp_graphs(VJP_API, full, TensorType((T, N, I), "float64"), H)
    return OpCase(fwd.inputs + cots, dict(fwd.attrs, seeded=seeded, steps=steps),
                  grad_inputs=(), id=cid)


CASES["RecurrenceGrad"] = [
    _grad_case("RNN", 70, 1, {}, "rnn-all-seeded", (1, 1)),
    _grad_case("GRU", 80, 3, {"direction": "bidirectional"}, "gru-bidirectional-y-only",
               (1, 0), dirs=2),
    _grad_case("LSTM", 90, 4, {"direction": "reverse"}, "lstm-reverse-last-c-only", (0, 0, 1)),
    _grad_case("LSTM", 120, 4, {"zero_state": 1}, "lstm-zero-state", (1, 1, 1)),
]
