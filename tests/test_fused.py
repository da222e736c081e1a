"""The fused elementwise interpreter (graphdl/ops/fused.py) runs each member op's own registry
kernel: for every elementwise op, a program of that op agrees with the op's kernel run alone,
whether the result goes to a fresh buffer, to ``out``, or to ``out`` aliasing an input (the
memory planner's in-place reuse), and inside a chain whose temporaries the program reuses."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl  # noqa: F401  (registers every op)
from graphdl.ir import TensorType, numpy_dtype
from graphdl.ops import fused
from graphdl.ops.registry import REGISTRY, ShapeError, check_attrs, get_op

# attributes an op needs before it infers (required ones, or ones whose default needs a
# particular input dtype)
NEEDED_ATTRS = {"Cast": {"to": "float16"}, "BitShift": {"direction": "LEFT"}}
DTYPES = ("float32", "int64", "bool", "uint8")


def _signature(name: str):
    """(attrs, input types, result type) of the first arity and dtype the op accepts."""
    opdef = get_op(name)
    attrs = NEEDED_ATTRS.get(name, {})
    for arity in (1, 2, 3):
        for dtype in DTYPES:
            # Where: a bool condition first; everything else takes one dtype throughout
            types = [TensorType((3, 4), "bool" if (name == "Where" and i == 0) else dtype)
                     for i in range(arity)]
            try:
                out = opdef.infer(types, check_attrs(opdef, dict(attrs)))[0]
            except (ShapeError, TypeError, ValueError, KeyError, IndexError):
                continue
            return attrs, types, out
    raise AssertionError(f"{name}: no arity/dtype in {DTYPES} infers")


def _inputs(types, seed: int):
    r = np.random.default_rng(seed)
    arrays = []
    for t in types:
        if t.dtype == "bool":
            arrays.append(r.random(t.shape) > 0.5)
        elif t.dtype in ("int64", "uint8"):
            arrays.append(r.integers(1, 5, t.shape).astype(t.dtype))
        else:  # inside (0, 1): in the domain of log, sqrt, acos, atanh, ...
            arrays.append(r.uniform(0.05, 0.95, t.shape).astype(t.dtype))
    return arrays


MEMBERS = sorted(n for n, d in REGISTRY.items() if d.elementwise and not d.holds_program)


def test_every_elementwise_op_is_checked():
    assert {"Add", "Relu", "Where", "Cast", "Sigmoid", "LeakyRelu", "Clip", "Erf"} <= set(MEMBERS)


@pytest.mark.parametrize("name", MEMBERS)
def test_program_runs_the_registry_kernel(name):
    attrs, types, out_type = _signature(name)
    opdef = get_op(name)
    xs = _inputs(types, seed=len(name))
    with np.errstate(all="ignore"):
        want = np.asarray(opdef.kernel([x.copy() for x in xs], check_attrs(opdef, dict(attrs)),
                                       None))
        program = (fused.instruction(name, range(len(xs)), attrs),)
        fresh = fused.run_program(program, xs, None)
        into = fused.run_program(program, xs, np.empty(want.shape, numpy_dtype(out_type.dtype)))
        # the same program bound once to these types (what the executor runs per binding)
        bound = fused.bind_program(program, types, out_type)
        results = {"fresh": fresh, "out": into, "bound": bound(
            xs, np.empty(want.shape, numpy_dtype(out_type.dtype)))}
        if types[0] == out_type:  # the result overwrites input 0, as the planner may ask
            buf = xs[0].copy()
            results["in place"] = fused.run_program(program, [buf, *xs[1:]], buf)
            assert results["in place"] is buf
            buf = xs[0].copy()
            results["bound in place"] = bound([buf, *xs[1:]], buf)
            assert results["bound in place"] is buf
        # a chain: the op over a temporary (a copy of input 0 made by Max(x, x)) whose buffer
        # the program may reuse for the op's result
        if types[0].dtype != "bool":
            chain = (fused.instruction("Max", (0, 0)),
                     fused.instruction(name, (len(xs), *range(1, len(xs))), attrs))
            results["chain"] = fused.run_program(chain, xs, None)
            if types[0] == out_type:
                buf = xs[0].copy()
                results["bound chain in place"] = fused.bind_program(chain, types, out_type)(
                    [buf, *xs[1:]], buf)
    for how, got in results.items():
        assert got.dtype == want.dtype and got.shape == want.shape, (name, how)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} ({how})")
