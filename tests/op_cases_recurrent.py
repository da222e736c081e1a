"""Cases for the Recurrence op (one direction of ONNX's RNN, GRU and LSTM). No torch
reference: torch orders and splits the gates differently; the forward is checked against
ONNX Runtime and onnx.reference, the VJP against finite differences."""
from __future__ import annotations

from tests.op_case import OpCase, randn

T, N, I, H = 3, 2, 4, 3


def _case(kind, seed, gates, attrs, cid, dirs=1):
    ins = [randn((T, N, I), seed), randn((dirs, gates * H, I), seed + 1, 0.5),
           randn((dirs, gates * H, H), seed + 2, 0.5), randn((dirs, 2 * gates * H), seed + 3, 0.3),
           randn((dirs, N, H), seed + 4, 0.5)]
    if kind == "LSTM":
        ins += [randn((dirs, N, H), seed + 5, 0.5), randn((dirs, 3 * H), seed + 6, 0.3)]
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
]}
