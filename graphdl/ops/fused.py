"""Fused kernels built by the fusion passes: an elementwise program run as one node, and
Conv/Gemm/MatMul followed by an elementwise epilogue (bias, residual add, activation).

A *program* is plain data: a tuple of instructions ``(op, args, attrs)``. ``args``
index the program's inputs first, then earlier instructions' results; ``attrs`` is a sorted
tuple of (name, value) pairs; the last instruction's result is the output. Each instruction
runs its op's own registry kernel (there is no second kernel table here), writing into the
buffer a per-signature plan gives it (the kernels' ``out=``) so the program uses as few
buffers as it can: the output buffer carries the chain, and a temporary is reused as soon as
its value dies, so a chain of ``k`` ops allocates nothing beyond ``out``. A kernel that does
not take ``out=`` has its result copied in.

Each fused op keeps the four parts: inference replays the members' inference; the VJP expands
the program back into ordinary nodes and differentiates those; the ONNX lowering is the
members' own lowerings, chained (ONNX sees the unfused graph).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType, normalize_dtype, numpy_dtype
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, \
    check_attrs, fail, get_op, register


Instruction = tuple  # (op, args, attrs)


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
        opdef = get_op(op)
        if not opdef.elementwise or opdef.holds_program:
            raise fail(op_name, f"instruction {i} runs {op}, which is not fusible")
        if any(a < 0 or a >= len(types) for a in args):
            raise fail(op_name, f"instruction {i} reads {args}, beyond the "
                       f"{len(types)} values defined before it")
        types.append(opdef.infer([types[a] for a in args], dict(attrs))[0])
    return types


def _check_program(op_name: str, attrs: dict) -> tuple:
    program = attrs.get("program")
    if not program:
        raise fail(op_name, "needs a non-empty 'program' attribute")
    return tuple(program)


# ---- the interpreter -----------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _compile(program: tuple, n_in: int) -> tuple:
    """The program as ready-to-run steps (the member's own registry kernel, args, attrs with
    the op's defaults filled in), and for each value (inputs, then results) the last
    instruction that reads it."""
    last = [-1] * (n_in + len(program))
    steps = []
    for i, (op, args, attrs) in enumerate(program):
        for a in args:
            last[a] = i
        opdef = get_op(op)
        steps.append((opdef.kernel, args, check_attrs(opdef, dict(attrs))))
    return tuple(steps), tuple(last)


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
    """Evaluate ``program`` over ``inputs``; the result is written into ``out`` when given.
    Each instruction runs its op's registry kernel into the buffer the plan gives it."""
    n_in = len(inputs)
    steps, last = _compiled(program, n_in)
    out_free_at = 0  # ``out`` may hold intermediates once aliased inputs are read for good
    out_type = None
    if out is not None:
        shape = out.shape
        out_type = (shape, out.dtype)
        for k, a in enumerate(inputs):
            # only a same-sized input can alias out (the planner's in-place reuse, or an
            # epilogue's producer result, which is out itself)
            if a is out or (getattr(a, "shape", None) == shape and np.may_share_memory(a, out)):
                out_free_at = max(out_free_at, last[k])
    # (the signature is built with a list comprehension: measurably cheaper than a generator
    # on a path that runs once per fused kernel call)
    key = (id(program), n_in, out_free_at, out_type, tuple([(a.shape, a.dtype) for a in inputs]))
    hit = _DESTS.get(key)
    if hit is None or hit[0] is not program:
        if len(_DESTS) > 4096:
            _DESTS.clear()
        hit = (program, _destinations(program, last, key[4], n_in, key[3], out_free_at))
        _DESTS[key] = hit
    vals: list = list(inputs)
    for (kernel, args, attrs), (kind, where) in zip(steps, hit[1]):
        # where each result goes: 0 out, 1 the buffer of a dead temporary, 2 a new buffer
        dest = out if kind == 0 else vals[where] if kind == 1 else np.empty(*where)
        r = kernel([vals[a] for a in args], attrs, dest)
        if r is not dest:  # a kernel that does not take out=: its result is copied in
            np.copyto(dest, r, casting="unsafe")
        vals.append(dest)
    result = vals[-1]
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


def bind_program(program: tuple, in_types: Sequence[TensorType], out_type: TensorType
                 ) -> Callable[[Sequence[np.ndarray], np.ndarray | None], np.ndarray]:
    """:func:`run_program` made once for inputs and an output of fixed, concrete types: the
    returned ``run(inputs, out)`` skips building and looking up the per-call signature
    (which costs as much as a small kernel). Only whether an input shares ``out``'s memory
    is checked per call (that varies with the memory plan's in-place reuse); an ``out`` of
    another type falls back to :func:`run_program`."""
    n_in = len(in_types)
    steps, last = _compiled(program, n_in)
    sig = tuple((tuple(t.shape), numpy_dtype(t.dtype)) for t in in_types)
    out_sig = (tuple(out_type.shape), numpy_dtype(out_type.dtype))
    may_alias = tuple(k for k, (shape, _) in enumerate(sig) if shape == out_sig[0])
    plans: dict[int, tuple] = {}  # out_free_at -> ((kernel, args, attrs), (kind, where))...

    def run(inputs: Sequence[np.ndarray], out: np.ndarray | None) -> np.ndarray:
        if out is None or out.shape != out_sig[0] or out.dtype != out_sig[1]:
            return run_program(program, inputs, out)
        out_free_at = 0
        for k in may_alias:
            a = inputs[k]
            if (a is out or np.may_share_memory(a, out)) and last[k] > out_free_at:
                out_free_at = last[k]
        plan = plans.get(out_free_at)
        if plan is None:
            plan = plans[out_free_at] = tuple(zip(steps, _destinations(
                program, last, sig, n_in, out_sig, out_free_at)))
        vals = list(inputs)
        for (kernel, args, attrs), (kind, where) in plan:
            dest = out if kind == 0 else vals[where] if kind == 1 else np.empty(*where)
            r = kernel([vals[a] for a in args], attrs, dest)
            if r is not dest:
                np.copyto(dest, r, casting="unsafe")
            vals.append(dest)
        if vals[-1] is not out:
            np.copyto(out, vals[-1])
        return out
    return run


# (id(program), input and output signature) -> (program, destinations); a memo of what
# _destinations decides, as _COMPILED is of _compile (the program guards id reuse)
_DESTS: dict[tuple, tuple] = {}


def _destinations(program, last, in_types, n_in, out_type, out_free_at) -> tuple:
    """Where each instruction writes, decided once per signature: the output buffer for the
    last one (when its type fits); else a temporary that dies there and has the result's
    type; else ``out`` while no live value needs it; else a new buffer. Result types come
    from the members' own inference."""
    result_types = program_types(program, [TensorType(shape, normalize_dtype(dtype))
                                           for shape, dtype in in_types])[n_in:]
    types = list(in_types)
    owned = [False] * (n_in + len(program))  # buffers the program allocated (or ``out``)
    in_out = [False] * (n_in + len(program))  # values that live in ``out``
    out_busy_until = -1
    dests = []
    final = len(program) - 1
    for i, ((op, args, attrs), result) in enumerate(zip(program, result_types)):
        shape, dtype = result.shape, numpy_dtype(result.dtype)
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

_PROGRAM = Attr(tuple, REQUIRED, "the elementwise program: ((op, args, attrs), ...)")

def _elementwise_infer(types, attrs):
    program = _check_program("FusedElementwise", attrs)
    return [program_types(program, types)[-1]]


def _elementwise_kernel(xs, attrs, out):
    return run_program(tuple(attrs["program"]), xs, out)


def _elementwise_specialize(attrs, in_types, out_types):
    run = bind_program(tuple(attrs["program"]), in_types, out_types[0])
    return lambda xs, attrs_, out: run(xs, out)


def _elementwise_vjp(F, node, grads):
    return _vjp_through(F, expand_program(node.attrs["program"], node.inputs), node.inputs,
                        grads)


def _elementwise_onnx(attrs, tin, tout, opset):
    nodes, consts = program_lowering(attrs["program"], tin,
                                     [f"in{i}" for i in range(len(tin))], "out0", opset)
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(
    name="FusedElementwise", infer=_elementwise_infer, kernel=_elementwise_kernel,
    vjp=_elementwise_vjp, onnx=_elementwise_onnx, specialize=_elementwise_specialize,
    elementwise=True, inplace=True,
    holds_program=True, attrs={"program": _PROGRAM},
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
        first = main_in[0]
        dtype = first.dtype if isinstance(first, np.ndarray) else np.asarray(first).dtype
        into = out if out is not None and out.dtype == dtype else None
        y = get_op(main_op).kernel(list(main_in), _main_attrs(attrs["main"]), into)
        if out is None:
            # a fresh result no input shares can carry the epilogue in place
            fresh = isinstance(y, np.ndarray) and y.flags.writeable and not any(
                isinstance(x, np.ndarray) and np.may_share_memory(y, x) for x in xs)
            out = y if fresh and y.shape == _shape_of(attrs, y, extras) else None
        return run_program(tuple(attrs["program"]), [y, *extras], out)

    def specialize(attrs, in_types, out_types):
        n = int(attrs["n_main"])
        main_kernel, main_attrs = get_op(main_op).kernel, _main_attrs(attrs["main"])
        produced = get_op(main_op).infer(list(in_types[:n]), dict(attrs["main"]))[0]
        run = bind_program(tuple(attrs["program"]), [produced, *in_types[n:]], out_types[0])
        into_dtype = numpy_dtype(produced.dtype)
        if numpy_dtype(in_types[0].dtype) != into_dtype:
            return kernel

        def specialized(xs, attrs_, out):
            if out is None or out.dtype != into_dtype:
                return kernel(xs, attrs_, out)
            # as kernel: the producer writes into out, the epilogue runs there in place
            return run([main_kernel(xs[:n], main_attrs, out), *xs[n:]], out)
        return specialized

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
                   specialize=specialize,
                   attrs={"main": Attr(tuple, REQUIRED, f"{main_op}'s attributes, frozen"),
                          "n_main": Attr(int, REQUIRED, f"how many inputs {main_op} takes"),
                          "program": _PROGRAM},
                   doc=f"{main_op} followed by an elementwise epilogue program (bias, residual "
                       "add, activation) applied in place on its output."))


_MAIN_ATTRS: dict[int, tuple] = {}  # id(frozen attrs) -> (frozen attrs, dict); a memo


def _main_attrs(main: tuple) -> dict:
    """The producer's frozen attributes as the dict its kernel takes, built once per node
    (looked up by identity, as :func:`_compiled` does; kernels only read their attrs)."""
    hit = _MAIN_ATTRS.get(id(main))
    if hit is not None and hit[0] is main:
        return hit[1]
    if len(_MAIN_ATTRS) > 4096:
        _MAIN_ATTRS.clear()
    attrs = dict(main)
    _MAIN_ATTRS[id(main)] = (main, attrs)
    return attrs


def _shape_of(attrs, y, extras) -> tuple:
    """The epilogue's output shape: the producer's, broadcast with the extra inputs'."""
    return np.broadcast_shapes(np.shape(y), *(np.shape(e) for e in extras)) \
        if extras else np.shape(y)


_register_epilogue_op("FusedConv", "Conv")
_register_epilogue_op("FusedGemm", "Gemm")
_register_epilogue_op("FusedMatMul", "MatMul")
