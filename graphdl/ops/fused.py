"""Fused kernels built by the fusion passes: an elementwise program run as one node, and
Conv/Gemm/MatMul followed by an elementwise epilogue (bias, residual add, activation).

A *program* is plain data: a tuple of instructions ``(op, args, attrs)``. ``args``
index the program's inputs first, then earlier instructions' results; ``attrs`` is a sorted
tuple of (name, value) pairs; the last instruction's result is the output. The kernel runs the
instructions with NumPy's ``out=`` arguments into as few buffers as it can: the output buffer
carries the chain, and a temporary is reused as soon as its value dies, so a chain of ``k``
ops allocates nothing beyond ``out``.

Each fused op keeps the four parts: inference replays the members' inference; the VJP expands
the program back into ordinary nodes and differentiates those; the ONNX lowering is the
members' own lowerings, chained (ONNX sees the unfused graph).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.registry import OnnxLowering, OnnxNode, OpDef, apply, fail, get_op, register

# Ops a program may contain: each maps inputs elementwise (with broadcasting) to one output.
FUSIBLE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Neg", "Exp", "Log", "Sqrt", "Abs", "Sign",
    "Erf", "Relu", "Sigmoid", "Tanh", "Gelu", "Softplus", "Clip", "LeakyRelu", "Where", "Cast",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
})

Instruction = tuple  # (op, args, attrs)
_COMPARISONS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})


def instruction(op: str, args: Sequence[int], attrs: dict | None = None) -> Instruction:
    """One program step, frozen into hashable plain data."""
    frozen = tuple(sorted((k, _plain(v)) for k, v in (attrs or {}).items()))
    return (op, tuple(int(a) for a in args), frozen)


def _plain(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_plain(x) for x in v)
    return v


# ---- inference -----------------------------------------------------------------------------

def program_types(program: Sequence[Instruction], in_types: Sequence[TensorType],
                  op_name: str = "FusedElementwise") -> list[TensorType]:
    """Types of the program's inputs followed by each instruction's result."""
    types = list(in_types)
    for i, (op, args, attrs) in enumerate(program):
        if op not in FUSIBLE_OPS:
            raise fail(op_name, f"instruction {i} runs {op}, which is not fusible")
        if any(a < 0 or a >= len(types) for a in args):
            raise fail(op_name, f"instruction {i} reads {args}, beyond the "
                       f"{len(types)} values defined before it")
        types.append(get_op(op).infer([types[a] for a in args], dict(attrs))[0])
    return types


def _check_program(op_name: str, attrs: dict) -> tuple:
    program = attrs.get("program")
    if not program:
        raise fail(op_name, "needs a non-empty 'program' attribute")
    return tuple(program)


# ---- the interpreter -----------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _compile(program: tuple, n_in: int) -> tuple:
    """The program as ready-to-run steps (evaluator, args, attrs dict, dtype rule), and for
    each value (inputs, then results) the last instruction that reads it."""
    last = [-1] * (n_in + len(program))
    steps = []
    for i, (op, args, attrs) in enumerate(program):
        for a in args:
            last[a] = i
        attrs_dict = dict(attrs)
        if op in _COMPARISONS:
            dtype_rule = np.dtype(bool)
        elif op == "Cast":
            dtype_rule = np.dtype(attrs_dict["to"])
        else:
            dtype_rule = 1 if op == "Where" else 0  # the dtype of that argument
        steps.append((_EVAL.get(op, _fallback), op, args, attrs_dict, dtype_rule))
    return tuple(steps), tuple(last)


def _broadcast(shapes: list) -> tuple:
    """NumPy broadcasting of ``shapes``, fast when they agree (scalars aside)."""
    first = ()
    for sh in shapes:
        if sh and sh != first:
            if first:
                return np.broadcast_shapes(*shapes)
            first = sh
    return first


_COMPILED: dict[int, tuple] = {}  # id(program) -> (program, compiled); a memo, see below


def _compiled(program: tuple, n_in: int) -> tuple:
    # Looked up by identity (a node's program is one tuple object for its lifetime), which
    # skips hashing the whole program on every run; the stored program guards id reuse.
    hit = _COMPILED.get(id(program))
    if hit is not None and hit[0] is program and hit[1] == n_in:
        return hit[2]
    if len(_COMPILED) > 4096:
        _COMPILED.clear()
    compiled = _compile(program, n_in)
    _COMPILED[id(program)] = (program, n_in, compiled)
    return compiled


def run_program(program: tuple, inputs: Sequence[np.ndarray], out: np.ndarray | None
                ) -> np.ndarray:
    """Evaluate ``program`` over ``inputs``; the result is written into ``out`` when given."""
    n_in = len(inputs)
    steps, last = _compiled(program, n_in)
    out_free_at = 0  # ``out`` may hold intermediates once aliased inputs are read for good
    if out is not None:
        shape = out.shape
        for k, a in enumerate(inputs):
            # only a same-sized input can alias out (the planner's in-place reuse)
            if getattr(a, "shape", None) == shape and np.may_share_memory(a, out):
                out_free_at = max(out_free_at, last[k])
    key = (id(program), n_in, out_free_at,
           None if out is None else (out.shape, out.dtype),
           tuple((a.shape, a.dtype) for a in inputs))
    hit = _DESTS.get(key)
    if hit is None or hit[0] is not program:
        if len(_DESTS) > 4096:
            _DESTS.clear()
        hit = (program, _destinations(steps, last, key[4], n_in, key[3], out_free_at))
        _DESTS[key] = hit
    vals: list = list(inputs)
    for (fn, op, args, attrs, _), (kind, where) in zip(steps, hit[1]):
        # where each result goes: 0 out, 1 the buffer of a dead temporary, 2 a new buffer
        dest = out if kind == 0 else vals[where] if kind == 1 else np.empty(*where)
        vals.append(fn(op, [vals[a] for a in args], attrs, dest))
    result = vals[-1]
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


# (id(program), input and output signature) -> (program, destinations); a memo of what
# _destinations decides, as _COMPILED is of _compile (the program guards id reuse)
_DESTS: dict[tuple, tuple] = {}


def _destinations(steps, last, in_types, n_in, out_type, out_free_at) -> tuple:
    """Where each instruction writes, decided once per signature: the output buffer for the
    last one (when its type fits); else a temporary that dies there and has the result's
    type; else ``out`` while no live value needs it; else a new buffer."""
    types = list(in_types)
    owned = [False] * (n_in + len(steps))  # buffers the program allocated (or ``out``)
    in_out = [False] * (n_in + len(steps))  # values that live in ``out``
    out_busy_until = -1
    dests = []
    final = len(steps) - 1
    for i, (fn, op, args, attrs, dtype_rule) in enumerate(steps):
        shape = _broadcast([types[a][0] for a in args])
        dtype = dtype_rule if isinstance(dtype_rule, np.dtype) else types[args[dtype_rule]][1]
        dest = None
        fits_out = out_type is not None and out_type == (shape, dtype)
        if i == final:
            if fits_out:
                dest = (0, None)
        else:
            for a in args:  # a temporary that dies here takes the result
                if owned[a] and last[a] == i and types[a] == (shape, dtype):
                    dest = (1, a)
                    break
            if dest is None and fits_out and i >= out_free_at and i >= out_busy_until:
                dest = (0, None)
        if dest is None:
            dest = (2, (shape, dtype))
        elif dest[0] == 0 or in_out[dest[1]]:
            in_out[n_in + i] = True
            out_busy_until = last[n_in + i]
        dests.append(dest)
        types.append((shape, dtype))
        owned[n_in + i] = True
    return tuple(dests)


def _ufunc(fn):
    return lambda op, a, attrs, out: fn(*a, out=out)


def _relu(op, a, attrs, out):
    return np.maximum(a[0], 0, out=out)


def _clip(op, a, attrs, out):
    return np.clip(a[0], attrs.get("min"), attrs.get("max"), out=out)


def _leaky(op, a, attrs, out):
    x = a[0]
    negative = x < 0
    if out is not x:
        np.copyto(out, x)
    np.multiply(out, out.dtype.type(attrs.get("alpha", 0.01)), out=out, where=negative)
    return out


def _where(op, a, attrs, out):
    c, x, y = a
    if out.dtype.kind == "f":
        # where(c, x, 0) = x * c and where(c, 0, y) = y * !c exactly when x (y) is finite:
        # one fast pass, where np.where and masked copies take ten times longer (relu and
        # clip gradients are all of this form)
        if np.ndim(y) == 0 and y == 0 and _finite(x):
            return np.multiply(x, c, out=out)
        if np.ndim(x) == 0 and x == 0 and _finite(y):
            return np.multiply(y, np.logical_not(c), out=out)
    np.copyto(out, np.where(c, x, y))  # computed aside first: out may alias x or y
    return out


def _finite(x) -> bool:
    # the sum is finite only if every element is (an inf or NaN makes it inf or NaN): one
    # pass, no temporary; a sum that overflows only sends the caller down the exact path
    return bool(np.isfinite(np.add.reduce(x, axis=None)))


def _cast(op, a, attrs, out):
    np.copyto(out, a[0], casting="unsafe")
    return out


def _sigmoid(op, a, attrs, out):
    from scipy import special  # lazy: scipy.special adds ~0.7 s to `import graphdl`

    return special.expit(a[0], out=out)  # a ufunc that takes out=


def _erf_eval(op, a, attrs, out):
    from scipy import special  # lazy: scipy.special adds ~0.7 s to `import graphdl`

    return special.erf(a[0], out=out)


def _fallback(op, a, attrs, out):
    np.copyto(out, get_op(op).kernel(list(a), attrs, None), casting="unsafe")
    return out


_EVAL = {
    "Add": _ufunc(np.add), "Sub": _ufunc(np.subtract), "Mul": _ufunc(np.multiply),
    "Div": _ufunc(np.divide), "Pow": _ufunc(np.power), "Max": _ufunc(np.maximum),
    "Min": _ufunc(np.minimum), "Neg": _ufunc(np.negative), "Exp": _ufunc(np.exp),
    "Log": _ufunc(np.log), "Sqrt": _ufunc(np.sqrt), "Abs": _ufunc(np.abs),
    "Sign": _ufunc(np.sign), "Tanh": _ufunc(np.tanh), "Equal": _ufunc(np.equal),
    "Less": _ufunc(np.less), "Greater": _ufunc(np.greater),
    "LessOrEqual": _ufunc(np.less_equal), "GreaterOrEqual": _ufunc(np.greater_equal),
    "Relu": _relu, "Clip": _clip, "LeakyRelu": _leaky, "Where": _where, "Cast": _cast,
    "Sigmoid": _sigmoid, "Erf": _erf_eval,
}


# ---- expansion back into ordinary nodes (VJP) ----------------------------------------------

def expand_program(program: Sequence[Instruction], inputs: Sequence) -> Any:
    """Build the unfused nodes of ``program`` over ``inputs`` (values); returns the result."""
    vals = list(inputs)
    for op, args, attrs in program:
        vals.append(apply(op, *[vals[a] for a in args], **dict(attrs)))
    return vals[-1]


def _vjp_through(F, expanded, inputs, grads) -> list:
    if grads[0] is None:
        return [None] * len(inputs)
    wrt = [i for i, v in enumerate(inputs) if v.dtype in FLOAT_DTYPES]
    gs = F.grad(expanded, [inputs[i] for i in wrt], grad_y=grads[0]) if wrt else []
    result: list = [None] * len(inputs)
    for i, g in zip(wrt, gs):
        result[i] = g
    return result


# ---- ONNX: the members' lowerings, chained --------------------------------------------------

def program_lowering(program: Sequence[Instruction], in_types: Sequence[TensorType],
                     in_names: Sequence[str], out_name: str, opset: int, prefix: str = "p"
                     ) -> tuple[list[OnnxNode], dict[str, np.ndarray]]:
    """ONNX nodes computing ``program``; its inputs are named ``in_names``."""
    types = program_types(program, in_types)
    names = list(in_names) + [f"{prefix}{i}" for i in range(len(program))]
    names[-1] = out_name
    nodes: list[OnnxNode] = []
    consts: dict[str, np.ndarray] = {}
    for i, (op, args, attrs) in enumerate(program):
        low = get_op(op).onnx(dict(attrs), [types[a] for a in args], [types[len(in_names) + i]],
                              opset)
        rename = {f"in{j}": names[a] for j, a in enumerate(args)}
        rename["out0"] = names[len(in_names) + i]
        _append(nodes, consts, low, rename, f"{prefix}{i}_")
    return nodes, consts


def _append(nodes, consts, low: OnnxLowering, rename: dict, local: str) -> None:
    def name(n: str) -> str:
        if n == "" or n in rename:
            return rename.get(n, n)
        return local + n
    for key, value in low.consts.items():
        consts[local + key] = value
    for n in low.nodes:
        nodes.append(OnnxNode(n.op_type, tuple(name(x) for x in n.inputs),
                              tuple(name(x) for x in n.outputs), n.attrs, n.domain))


# ---- FusedElementwise ----------------------------------------------------------------------

def _elementwise_infer(types, attrs):
    program = _check_program("FusedElementwise", attrs)
    return [program_types(program, types)[-1]]


def _elementwise_kernel(xs, attrs, out):
    return run_program(tuple(attrs["program"]), xs, out)


def _elementwise_vjp(F, node, grads):
    return _vjp_through(F, expand_program(node.attrs["program"], node.inputs), node.inputs,
                        grads)


def _elementwise_onnx(attrs, tin, tout, opset):
    nodes, consts = program_lowering(attrs["program"], tin,
                                     [f"in{i}" for i in range(len(tin))], "out0", opset)
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(
    name="FusedElementwise", infer=_elementwise_infer, kernel=_elementwise_kernel,
    vjp=_elementwise_vjp, onnx=_elementwise_onnx, elementwise=True,
    doc="A chain of elementwise ops run as one kernel over one output buffer (attr program).",
))


# ---- producer + epilogue: FusedConv, FusedGemm, FusedMatMul ---------------------------------

def _register_epilogue_op(name: str, main_op: str) -> None:
    def split(xs, attrs):
        n = int(attrs["n_main"])
        return xs[:n], xs[n:]

    def infer(types, attrs):
        program = _check_program(name, attrs)
        main_types, extras = split(types, attrs)
        produced = get_op(main_op).infer(list(main_types), dict(attrs["main"]))[0]
        return [program_types(program, [produced, *extras], name)[-1]]

    def kernel(xs, attrs, out):
        main_in, extras = split(xs, attrs)
        # the producer writes straight into out (the fusion pass only fuses epilogues that
        # keep the producer's type); the epilogue then runs there, in place
        into = out if out is not None and out.dtype == np.asarray(main_in[0]).dtype else None
        y = get_op(main_op).kernel(list(main_in), dict(attrs["main"]), into)
        if out is None:
            # a fresh result no input shares can carry the epilogue in place
            fresh = isinstance(y, np.ndarray) and y.flags.writeable and not any(
                isinstance(x, np.ndarray) and np.may_share_memory(y, x) for x in xs)
            out = y if fresh and y.shape == _shape_of(attrs, y, extras) else None
        return run_program(tuple(attrs["program"]), [y, *extras], out)

    def vjp(F, node, grads):
        main_in, extras = split(node.inputs, node.attrs)
        y = apply(main_op, *main_in, **dict(node.attrs["main"]))
        return _vjp_through(F, expand_program(node.attrs["program"], [y, *extras]),
                            node.inputs, grads)

    def onnx(attrs, tin, tout, opset):
        n = int(attrs["n_main"])
        main_types = list(tin[:n])
        produced = get_op(main_op).infer(main_types, dict(attrs["main"]))[0]
        low = get_op(main_op).onnx(dict(attrs["main"]), main_types, [produced], opset)
        nodes: list[OnnxNode] = []
        consts: dict[str, np.ndarray] = {}
        rename = {f"in{j}": f"in{j}" for j in range(n)}
        rename["out0"] = "main_out"
        _append(nodes, consts, low, rename, "main_")
        more, more_consts = program_lowering(
            attrs["program"], [produced, *tin[n:]],
            ["main_out"] + [f"in{n + k}" for k in range(len(tin) - n)], "out0", opset)
        consts.update(more_consts)
        return OnnxLowering(tuple(nodes + more), consts)

    register(OpDef(name=name, infer=infer, kernel=kernel, vjp=vjp, onnx=onnx,
                   doc=f"{main_op} followed by an elementwise epilogue program (bias, residual "
                       "add, activation) applied in place on its output."))


def _shape_of(attrs, y, extras) -> tuple:
    """The epilogue's output shape: the producer's, broadcast with the extra inputs'."""
    return np.broadcast_shapes(np.shape(y), *(np.shape(e) for e in extras)) \
        if extras else np.shape(y)


_register_epilogue_op("FusedConv", "Conv")
_register_epilogue_op("FusedGemm", "Gemm")
_register_epilogue_op("FusedMatMul", "MatMul")
