"""The op registry: one definition per op, lookup errors, apply() and constants."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.ir import ShapeError, TensorType
from graphdl.ops.registry import (REGISTRY, Attr, AttrError, OnnxLowering, UnsupportedOpError,
                                  apply, constant, fail, get_op, lower, ops_where, register)


def test_names_are_camel_case_keys():
    for name, op in REGISTRY.items():
        assert op.name == name
        assert name[0].isupper() and "_" not in name, name


def test_an_op_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        register(REGISTRY["Add"])


def test_unknown_op_lookup():
    with pytest.raises(UnsupportedOpError, match="'Frobnicate' is not supported"):
        get_op("Frobnicate")


def test_source_ops_are_not_built_by_apply():
    for name in ("Input", "Param", "Const"):
        assert REGISTRY[name].source and not REGISTRY[name].differentiable
    with pytest.raises(TypeError, match="gd.input"):
        apply("Input")


def test_apply_returns_a_value_or_a_tuple_for_multi_output_ops():
    x = gd.input("x", (6, 2))
    assert isinstance(apply("Relu", x), gd.Value)
    parts = apply("Split", x, sizes=(1, 2, 3), axis=0)
    assert isinstance(parts, tuple) and [p.shape for p in parts] == [(1, 2), (2, 2), (3, 2)]
    assert REGISTRY["Split"].n_outputs == -1  # variable: fixed per node by its attrs


def test_python_scalars_take_the_dtype_of_the_other_operand():
    for dtype in ("float64", "float32", "int32"):
        x = gd.input("x", (2,), dtype)
        assert (x + 1).dtype == dtype and (2 * x).dtype == dtype


def test_constant_dtype_defaults():
    assert constant(1.5).dtype == "float32"  # Python floats are float32, as in torch
    assert constant(3).dtype == "int64"
    assert constant(np.arange(3.0)).dtype == "float64"  # arrays keep their dtype
    assert constant([1.0, 2.0], dtype="float64").dtype == "float64"
    with pytest.raises(ShapeError, match="not supported"):
        constant(np.zeros(2, np.complex64))


def test_lower_helper_names_inputs_and_outputs_in_order():
    low = lower("Split", 1, 3, axis=1)
    assert isinstance(low, OnnxLowering)
    (node,) = low.nodes
    assert node.inputs == ("in0",) and node.outputs == ("out0", "out1", "out2")
    assert node.attrs == {"axis": 1}


def test_fail_formats_op_message_and_types():
    err = fail("Conv", "kernel larger than input", [TensorType((1, 3), "float32")])
    assert isinstance(err, ShapeError)
    assert str(err) == "Conv: kernel larger than input (inputs: float32[1,3])"


def test_non_differentiable_ops_declare_it():
    for name in ("Equal", "Less", "Greater", "Sign", "Numel", "ZerosLike"):
        assert not REGISTRY[name].differentiable, name
    x = gd.input("x", (3,), "float64")
    (g,) = gd.grad(gd.sum(gd.sign(x) * x), [x])  # no gradient through sign itself
    out = gd.function([x], g, optimize=False)(np.array([-2.0, 0.5, 3.0]))
    np.testing.assert_array_equal(out, [-1.0, 1.0, 1.0])


def test_a_scalar_that_does_not_fit_an_integer_value_is_an_error():
    i = gd.input("i", (2,), "int64")
    with pytest.raises(ShapeError, match="0.5 does not fit"):
        i * 0.5  # would silently multiply by 0
    assert (i * 2).dtype == "int64"
    f = gd.input("f", (2,), "float32")
    assert (f * float("nan")).dtype == "float32"


def test_integer_division_truncates_like_onnx():
    a = gd.input("a", (4,), "int64")
    b = gd.input("b", (4,), "int64")
    out = gd.function([a, b], a / b, optimize=False)(np.array([7, -7, 7, -7]),
                                                     np.array([2, 2, -2, -2]))
    np.testing.assert_array_equal(out, [3, -3, -3, 3])
    assert out.dtype == np.int64


def test_reductions_refuse_dtypes_they_cannot_keep():
    with pytest.raises(ShapeError, match="ReduceMean: cannot reduce int64"):
        gd.mean(gd.input("i", (3,), "int64"))
    with pytest.raises(ShapeError, match="ReduceSum: cannot reduce bool"):
        gd.sum(gd.input("b", (3,), "bool"))


def test_gemm_bias_must_broadcast_to_the_output():
    a, b = gd.input("a", (3, 4)), gd.input("b", (4, 5))
    with pytest.raises(ShapeError, match="does not broadcast to the output shape"):
        gd.gemm(a, b, gd.input("c", (2, 3, 5)))
    assert gd.gemm(a, b, gd.input("c2", (5,))).shape == (3, 5)


# ---- declared attributes: validated once in apply, defaults filled in ----------------------

def test_every_op_declares_its_attributes():
    undeclared = sorted(name for name, op in REGISTRY.items() if op.attrs is None)
    assert not undeclared, f"ops without an attribute schema (OpDef.attrs): {undeclared}"


def test_attribute_defaults_are_filled_in_once():
    x = gd.input("x", (2, 3))
    node = apply("LeakyRelu", x).node
    assert node.attrs == {"alpha": 0.01}
    bn = gd.batch_norm(gd.input("y", (2, 3)), *[gd.param(n, np.ones(3, np.float32))
                                                 for n in ("s", "b", "m", "v")])
    assert bn.node.attrs["eps"] == 1e-5 and bn.node.attrs["momentum"] == 0.1


def test_unknown_attribute_names_the_op_and_the_call_site():
    x = gd.input("x", (2, 3))
    with pytest.raises(AttrError, match=r"Relu: unknown attribute 'alpha'.*\n.*test_registry"):
        apply("Relu", x, alpha=0.2)


def test_attribute_of_the_wrong_type_is_an_error():
    x = gd.input("x", (2, 3))
    with pytest.raises(AttrError, match=r"LeakyRelu: attribute 'alpha' must be float, got str"):
        apply("LeakyRelu", x, alpha="steep")
    with pytest.raises(AttrError, match=r"Transpose: attribute 'perm' must be tuple"):
        apply("Transpose", x, perm=1)


def test_missing_required_attribute_is_an_error():
    x = gd.input("x", (2, 3))
    with pytest.raises(AttrError, match=r"Concat: missing required attribute 'axis' \(int\)"):
        apply("Concat", x, x)


def test_attr_types_accept_what_python_code_passes():
    assert Attr(float, 1.0).accepts(2) and Attr(float, 1.0).accepts(np.float32(2))
    assert Attr(int, 0).accepts(np.int64(3)) and not Attr(int, 0).accepts(2.5)
    assert Attr(tuple, ()).accepts([1, 2]) and Attr(float, None).accepts(None)
    assert not Attr(float, 0.0).accepts(None) and Attr(float).required


def test_ops_where_selects_by_declared_property():
    commutative = ops_where(lambda d: d.commutative)
    assert {"Add", "Mul", "Max", "Min", "Equal"} <= commutative
    assert "Sub" not in commutative and "Div" not in commutative
    assert {"Reshape", "Flatten", "Transpose"} <= ops_where(lambda d: d.view)
