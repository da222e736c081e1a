"""The shape of one op test case, shared by every op family's case table."""
from __future__ import annotations

import importlib
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest


@dataclass
class OpCase:
    """One way to call one op.

    ``inputs`` are float64 arrays for float inputs (tests cast them for float32 runs) and
    integer/bool arrays otherwise; use non-square, seeded shapes. ``torch`` takes the same
    inputs as torch tensors and returns the output (or a tuple of outputs) — the reference for
    the forward pass and for the VJP. ``grad_inputs``/``grad_outputs`` choose which inputs get a
    gradient check and which outputs are seeded with a cotangent (default: every float one).
    ``fd=False`` skips finite differences (e.g. a kink sits too close to an input).
    ``onnx=False`` skips runtime comparisons that cannot agree (random dropout masks).
    ``opset`` is the ONNX opset the case exports at (ops that ONNX added later need more).
    """

    inputs: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    torch: Callable | None = None
    grad_inputs: tuple[int, ...] | None = None
    grad_outputs: tuple[int, ...] | None = None
    fd: bool = True
    onnx: bool = True
    rtol: float = 1e-5
    atol: float = 1e-7
    id: str = ""
    opset: int = 17


# ops whose ONNX lowering refuses by name (LoweringError), and why
REFUSED_LOWERINGS: dict[str, str] = {}


def rng(seed: int = 0) -> np.random.Generator:
    """A seeded generator for case inputs."""
    return np.random.default_rng(seed)


def torch_module():
    """The torch module, imported when a case's reference first runs (torch is optional)."""
    import torch
    return torch


def torch_fn(name: str, **kw):
    """A torch reference ``torch.<name>(*inputs, **kw)``, resolved at call time."""
    return lambda *xs: getattr(torch_module(), name)(*xs, **kw)


def torch_nnf(name: str, **kw):
    """A torch reference ``torch.nn.functional.<name>(*inputs, **kw)``."""
    return lambda *xs: getattr(torch_module().nn.functional, name)(*xs, **kw)


def randn(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float64 values."""
    return rng(seed).standard_normal(shape) * scale


def distinct(shape, seed: int) -> np.ndarray:
    """Values at least 0.1 apart in random order: no ties inside a pooling window."""
    n = int(np.prod(shape))
    g = rng(seed)
    return (g.permutation(n) * 0.1 - 0.05 * n + g.uniform(0, 0.02, n)).reshape(shape)


def load_cases() -> dict[str, list[OpCase]]:
    """CASES from every tests/op_cases*.py table (core, nn, loss, fused, ...), merged."""
    cases: dict[str, list[OpCase]] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("op_cases*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for op, op_cases in getattr(module, "CASES", {}).items():
            cases.setdefault(op, []).extend(op_cases)
    return cases


def case_params(cases: dict[str, list[OpCase]]) -> list:
    """One pytest param per (op, case), with readable ids."""
    return [pytest.param(op, case, id=f"{op}-{case.id or i}")
            for op in sorted(cases) for i, case in enumerate(cases[op])]
