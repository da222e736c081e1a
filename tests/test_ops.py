"""Every registered op, parametrized over the registry and the op case tables.

For each op: all four parts are present and it has a case; inferred types equal the kernel's
output (float32 and float64); the VJP matches central finite differences in float64; forward
and VJP match torch autograd when a case names a torch reference.
"""
from __future__ import annotations


import numpy as np
import pytest

import graphdl as gd
import graphdl.passes  # noqa: F401  (fused ops register themselves with the passes)
from graphdl.ir import FLOAT_DTYPES
from graphdl.ops.registry import REGISTRY, LoweringError, OnnxLowering, apply, get_op
from tests.op_case import REFUSED_LOWERINGS, case_params, load_cases

FD_EPS = 1e-6
FD_MAX_ELEMENTS = 96  # larger inputs get a seeded sample of elements checked


CASES = load_cases()
OPS = sorted(name for name, op in REGISTRY.items() if not op.source)
CASE_PARAMS = case_params(CASES)


def _arrays(case, float_dtype: str) -> list[np.ndarray]:
    out = []
    for a in case.inputs:
        a = np.asarray(a)
        out.append(a.astype(float_dtype) if a.dtype.kind == "f" else a)
    return out


def _build(op: str, case, arrays):
    ins = [gd.input(f"in{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    outs = apply(op, *ins, **case.attrs)
    return ins, (outs if isinstance(outs, tuple) else (outs,))


def _as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _grad_setup(op, case, ins, outs):
    """(checked input indices, seeded output indices) or None when nothing is differentiable."""
    if not get_op(op).differentiable:
        return None
    grad_in = case.grad_inputs if case.grad_inputs is not None else tuple(
        i for i, v in enumerate(ins) if v.dtype in FLOAT_DTYPES)
    grad_out = case.grad_outputs if case.grad_outputs is not None else tuple(
        i for i, v in enumerate(outs) if v.dtype in FLOAT_DTYPES)
    return (grad_in, grad_out) if grad_in and grad_out else None


def _cotangents(outs, grad_out) -> list[np.ndarray]:
    g = np.random.default_rng(1234)
    return [g.standard_normal(tuple(outs[i].shape)).astype(outs[i].dtype) for i in grad_out]


def _loss(outs, grad_out, cots):
    """sum_i <out_i, cot_i>: its gradient is the VJP of the op at the cotangents."""
    total = None
    for i, c in zip(grad_out, cots):
        term = gd.sum(outs[i] * gd.const(c))
        total = term if total is None else total + term
    return total


# ---- (a) every op is complete and has a case ---------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_op_has_all_parts_and_a_case(op):
    opdef = REGISTRY[op]
    assert callable(opdef.infer), f"{op} has no shape inference"
    assert callable(opdef.kernel), f"{op} has no NumPy kernel"
    assert callable(opdef.onnx), f"{op} has no ONNX lowering"
    if opdef.differentiable:
        assert callable(opdef.vjp), f"{op} is differentiable but has no VJP"
    assert CASES.get(op), f"{op} has no case in tests/op_cases*.py"


def test_every_case_names_a_registered_op():
    unknown = sorted(set(CASES) - set(REGISTRY))
    assert not unknown, f"cases for ops that are not registered: {unknown}"


# ---- (b) inferred types are the kernel's types ---------------------------------------------

@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
@pytest.mark.parametrize("op,case", CASE_PARAMS)
def test_inferred_type_matches_kernel(op, case, float_dtype):
    arrays = _arrays(case, float_dtype)
    _, outs = _build(op, case, arrays)
    opdef = get_op(op)
    copies = [a.copy() for a in arrays]
    results = _as_tuple(opdef.kernel(arrays, dict(outs[0].node.attrs), None))
    assert len(results) == len(outs), f"{op}: kernel gave {len(results)} outputs, " \
        f"inference {len(outs)}"
    for i, (r, v) in enumerate(zip(results, outs)):
        r = np.asarray(r)
        assert r.shape == tuple(v.shape), f"{op} output {i}: kernel {r.shape}, inferred {v.shape}"
        assert r.dtype.name == v.dtype, f"{op} output {i}: kernel {r.dtype}, inferred {v.dtype}"
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c, err_msg=f"{op}'s kernel modified its input")
    if len(outs) == 1:  # the kernel may write into a preallocated output buffer
        buf = np.full(tuple(outs[0].shape), 7, dtype=outs[0].dtype)
        into = opdef.kernel(arrays, dict(outs[0].node.attrs), buf)
        np.testing.assert_array_equal(np.asarray(into), np.asarray(results[0]),
                                      err_msg=f"{op}: kernel with out= differs")


def test_kernel_results_run_through_the_executor():
    """The executor runs kernels as-is: one case per op family through gd.function."""
    x = gd.input("x", (2, 5), "float64")
    a, b = gd.split(x, (2, 3), axis=1)
    y = gd.concat([b, a], axis=1)[:, ::-1]
    f = gd.function([x], [y, a], optimize=False)
    xv = np.arange(10.0).reshape(2, 5)
    out_y, out_a = f(xv)
    np.testing.assert_array_equal(out_y, np.concatenate([xv[:, 2:], xv[:, :2]], 1)[:, ::-1])
    np.testing.assert_array_equal(out_a, xv[:, :2])


# ---- (c) VJP vs central finite differences (float64) -----------------------------------------

def _fd_positions(size: int, seed: int) -> np.ndarray:
    if size <= FD_MAX_ELEMENTS:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, FD_MAX_ELEMENTS, replace=False))


@pytest.mark.parametrize("op,case", CASE_PARAMS)
def test_vjp_matches_finite_differences(op, case):
    if not case.fd:
        pytest.skip("case marks finite differences as unreliable (kink or randomness)")
    arrays = _arrays(case, "float64")
    ins, outs = _build(op, case, arrays)
    setup = _grad_setup(op, case, ins, outs)
    if setup is None:
        pytest.skip(f"{op} has no float gradient path in this case")
    grad_in, grad_out = setup
    cots = _cotangents(outs, grad_out)
    loss = _loss(outs, grad_out, cots)
    grads = gd.grad(loss, [ins[i] for i in grad_in])
    f_loss = gd.function(ins, loss, optimize=False)
    f_grad = gd.function(ins, grads, optimize=False)
    analytic = f_grad(*arrays)
    for k, i in enumerate(grad_in):
        base = arrays[i]
        numeric = np.zeros(base.size)
        positions = _fd_positions(base.size, seed=k)
        for j in positions:
            plus, minus = base.copy(), base.copy()
            plus.flat[j] += FD_EPS
            minus.flat[j] -= FD_EPS
            fp = f_loss(*arrays[:i], plus, *arrays[i + 1:])
            fm = f_loss(*arrays[:i], minus, *arrays[i + 1:])
            numeric[j] = (fp - fm) / (2 * FD_EPS)
        got = np.asarray(analytic[k]).reshape(-1)[positions]
        want = numeric[positions]
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{op}: VJP wrt input {i} vs finite differences")


# ---- (d) forward and VJP vs torch autograd (float64) ---------------------------------------

@pytest.mark.parametrize("op,case", CASE_PARAMS)
def test_matches_torch(op, case):
    torch = pytest.importorskip("torch")
    if case.torch is None:
        pytest.skip(f"{op} has no torch reference in this case")
    arrays = _arrays(case, "float64")
    ins, outs = _build(op, case, arrays)
    setup = _grad_setup(op, case, ins, outs)
    grad_in = setup[0] if setup else ()
    tensors = [torch.tensor(a, requires_grad=i in grad_in) for i, a in enumerate(arrays)]
    ref = _as_tuple(case.torch(*tensors))
    ours = gd.function(ins, list(outs), optimize=False)(*arrays)
    for i, (r, o) in enumerate(zip(ref, ours)):
        r_np = r.detach().numpy()
        assert r_np.shape == o.shape, f"{op} output {i}: torch {r_np.shape}, ours {o.shape}"
        if o.dtype.name in FLOAT_DTYPES:
            np.testing.assert_allclose(o, r_np, rtol=case.rtol, atol=case.atol,
                                       err_msg=f"{op} output {i} vs torch")
        else:
            np.testing.assert_array_equal(o, r_np, err_msg=f"{op} output {i} vs torch")
    if setup is None:
        return
    grad_out = setup[1]
    cots = _cotangents(outs, grad_out)
    loss = _loss(outs, grad_out, cots)
    grads = gd.function(ins, gd.grad(loss, [ins[i] for i in grad_in]), optimize=False)(*arrays)
    want = torch.autograd.grad([ref[i] for i in grad_out], [tensors[i] for i in grad_in],
                               [torch.tensor(c) for c in cots], allow_unused=True)
    for i, g, w in zip(grad_in, grads, want):
        w_np = np.zeros_like(arrays[i]) if w is None else w.numpy()
        np.testing.assert_allclose(g, w_np, rtol=case.rtol, atol=max(case.atol, 1e-12),
                                   err_msg=f"{op}: VJP wrt input {i} vs torch autograd")


# ---- ONNX lowerings are well-formed data (the runtime check lives with the exporter) -------

@pytest.mark.parametrize("op,case", CASE_PARAMS)
def test_onnx_lowering_is_well_formed(op, case):
    arrays = _arrays(case, "float32")
    ins, outs = _build(op, case, arrays)
    attrs = dict(outs[0].node.attrs)
    if get_op(op).collective:  # no single-process ONNX form: the lowering refuses by name
        with pytest.raises(LoweringError, match=f"{op} is a collective"):
            get_op(op).onnx(attrs, [v.type for v in ins], [v.type for v in outs], 17)
        return
    if op in REFUSED_LOWERINGS:  # refuses, naming the op (reason in tests/op_case.py)
        with pytest.raises(LoweringError, match=op):
            get_op(op).onnx(attrs, [v.type for v in ins], [v.type for v in outs], case.opset)
        return
    lowering = get_op(op).onnx(attrs, [v.type for v in ins],
                               [v.type for v in outs], case.opset)
    assert isinstance(lowering, OnnxLowering)
    defined = {f"in{i}" for i in range(len(ins))} | set(lowering.consts) | {""}
    for node in lowering.nodes:
        missing = [n for n in node.inputs if n not in defined]
        assert not missing, f"{op}: ONNX node {node.op_type} reads undefined {missing}"
        defined.update(node.outputs)
    for name, value in lowering.consts.items():
        assert isinstance(value, np.ndarray), f"{op}: constant {name} is not an array"
    produced = {o for n in lowering.nodes for o in n.outputs}
    if lowering.nodes:
        assert {f"out{i}" for i in range(len(outs))} <= produced, \
            f"{op}: lowering does not produce every output"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_where_into_out_is_exact_with_non_finite_values(dtype, bad):
    # where(c, x, 0) runs as x * c only when x is finite: an inf or NaN where c is false
    # must still give 0 there (relu's gradient), and one where c is true must stay
    kernel = get_op("Where").kernel
    x = np.arange(12, dtype=dtype).reshape(3, 4) - 5
    c = x > 0
    for pos in [(0, 0), (2, 3)]:  # masked out, then kept
        xb = x.copy()
        xb[pos] = bad
        zero = np.zeros((), dtype)
        for args in ([c, xb, zero], [~c, zero, xb]):
            got = kernel(args, {}, np.empty_like(xb))
            np.testing.assert_array_equal(got, np.where(*args))
