"""Seed ONNX models and mutators (byte-level and structured) for graphdl's own fuzzing:
``tests/test_fuzz_onnx.py`` (hypothesis, in the normal suite) and ``benchmarks/fuzz_onnx.py``
(any number of cases, each in a subprocess under a timeout and a memory cap).

Every mutator is a pure function of a ``random.Random`` and its input, so a case is
reproduced from (seed model, kind, case seed) alone.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# files planted next to every case: attacks the path policy must refuse
ATTACK_LOCATIONS = ("/etc/passwd", "../outside.bin", "link_out.bin", "zero", "sub_out/w.bin",
                    "pipe", "a/../../outside.bin", "weights.bin", "missing.bin", "", ".",
                    "C:\\\\w.bin", "weights.bin\0x")
OP_TYPES = ("Relu", "Add", "MatMul", "Gemm", "Conv", "MaxPool", "Reshape", "Loop", "Scan",
            "ConstantOfShape", "Expand", "Tile", "Range", "Softmax", "Flatten", "Concat",
            "Gather", "Slice", "Transpose", "LayerNormalization", "Resize", "Pad", "OneHot",
            "If", "Identity", "Cast", "Split", "Unsqueeze", "Where", "NonZero", "TopK")


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inputs, outputs, inits=(), name="seed"):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8, producer_name="graphdl-fuzz")


def seed_models() -> dict[str, onnx.ModelProto]:
    """A handful of small models that cover the importer's paths (fresh copies)."""
    out = {}
    for name, model in _SEED_CACHE.setdefault("models", _build_seeds()).items():
        out[name] = onnx.ModelProto()
        out[name].CopyFrom(model)
    return out


_SEED_CACHE: dict = {}  # built once per process; callers get copies


def _build_seeds() -> dict[str, onnx.ModelProto]:
    r = np.random.default_rng(0)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    mlp = _model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
                  helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)],
                 [_vi("x", ["N", 6])], [_vi("y", ["N", 3])],
                 [_init("w1", f32(8, 6)), _init("b1", f32(8)), _init("w2", f32(3, 8)),
                  _init("b2", f32(3))], "mlp")
    cnn = _model([helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                                   strides=[2, 2]),
                  helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
                  helper.make_node("Gemm", ["f", "w", "b"], ["g"], name="fc", transB=1),
                  helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1)],
                 [_vi("x", ["N", 1, 4, 4])], [_vi("y", ["N", 3])],
                 [_init("k", f32(2, 1, 3, 3)), _init("kb", f32(2)), _init("w", f32(3, 8)),
                  _init("b", f32(3))], "cnn")
    shape = _model([helper.make_node("Shape", ["x"], ["s"], name="shape"),
                    helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
                    helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
                    helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat",
                                     axis=0),
                    helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
                    helper.make_node("MatMul", ["flat", "w"], ["m"], name="mm"),
                    helper.make_node("Transpose", ["m"], ["t"], name="tr", perm=[1, 0]),
                    helper.make_node("Transpose", ["t"], ["y"], name="tr2", perm=[1, 0])],
                   [_vi("x", ["N", 2, 3])], [_vi("y", ["N", 4])],
                   [_init("zero", np.array(0, np.int64)), _init("axes", np.array([0])),
                    _init("minus1", np.array([-1])), _init("w", f32(6, 4))], "shape")
    norm = _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln",
                                    axis=-1, epsilon=1e-5),
                   helper.make_node("Add", ["n", "bias"], ["a"], name="add"),
                   helper.make_node("Where", ["mask", "a", "n"], ["y"], name="where")],
                  [_vi("x", ["N", 5])], [_vi("y", ["N", 5])],
                  [_init("g", f32(5)), _init("b", f32(5)), _init("bias", f32(5)),
                   _init("mask", np.array([True, False, True, True, False]))], "norm")
    control = _model([helper.make_node("Range", ["start", "limit", "delta"], ["r"],
                                       name="range"),
                      helper.make_node("Cast", ["r"], ["v"], name="cast", to=TensorProto.FLOAT),
                      helper.make_node("ConstantOfShape", ["shape"], ["c"], name="cos",
                                       value=helper.make_tensor("v", TensorProto.FLOAT, [1],
                                                                [0.5])),
                      helper.make_node("Expand", ["c", "shape"], ["e"], name="expand"),
                      helper.make_node("Add", ["v", "e"], ["vc"], name="addc"),
                      helper.make_node("Mul", ["x", "vc"], ["y"], name="mul")],
                     [_vi("x", ["N", 2])], [_vi("y", ["N", 2])],
                     [_init("start", np.array(0, np.int64)), _init("limit", np.array(2)),
                      _init("delta", np.array(1, np.int64)), _init("shape", np.array([2]))],
                     "control")
    return {"mlp": mlp, "cnn": cnn, "shape": shape, "norm": norm, "control": control}


def external_seed(folder: Path) -> onnx.ModelProto:
    """The MLP with its first weight in ``weights.bin`` (written into ``folder``)."""
    model = seed_models()["mlp"]
    w = model.graph.initializer[0]
    raw = numpy_helper.to_array(w).tobytes()
    (folder / "weights.bin").write_bytes(raw)
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(len(raw)))):
        e = w.external_data.add()
        e.key, e.value = k, v
    return model


def plant_attacks(folder: Path, outside: Path) -> None:
    """Symlinks and special files an attacker would plant next to a model."""
    outside.mkdir(exist_ok=True)
    (outside / "outside.bin").write_bytes(b"SECRET" * 64)
    (outside / "w.bin").write_bytes(b"SECRET" * 64)
    for name, target in (("link_out.bin", outside / "outside.bin"), ("zero", "/dev/zero"),
                         ("sub_out", outside)):
        try:
            os.symlink(target, folder / name)
        except FileExistsError:
            pass
    if not (folder / "pipe").exists():
        os.mkfifo(folder / "pipe")


# ---- structured mutations ------------------------------------------------------------------

def _pick(rng: random.Random, items):
    items = list(items)
    return rng.choice(items) if items else None


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _all_nodes(a.g)


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from _all_graphs(a.g)


def _weird_int(rng: random.Random) -> int:
    return rng.choice([0, 1, -1, 2, 3, 7, 255, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 40, 2 ** 62,
                       -2 ** 62, rng.randint(-10, 10)])


def m_dims(rng, model):
    g = _pick(rng, _all_graphs(model.graph))
    choices = [t for t in g.initializer if t.dims] + [vi for vi in list(g.input) +
                                                     list(g.output)]
    item = _pick(rng, choices)
    if item is None:
        return
    if isinstance(item, TensorProto):
        i = rng.randrange(len(item.dims))
        item.dims[i] = _weird_int(rng)
        if rng.random() < 0.3:
            item.dims.append(_weird_int(rng))
    else:
        dims = item.type.tensor_type.shape.dim
        if dims and rng.random() < 0.7:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_value = abs(_weird_int(rng))
            else:
                d.dim_param = rng.choice(["N", "M", "", "N*2", "\u00e9"])
        else:
            item.type.tensor_type.shape.dim.add().dim_value = abs(_weird_int(rng))


def m_dtype(rng, model):
    g = _pick(rng, _all_graphs(model.graph))
    elem = rng.choice([0, 1, 2, 6, 7, 8, 9, 10, 11, 14, 16, 17, 21, 22, 23, 30, 99, -1])
    items = list(g.initializer) + list(g.input) + list(g.output)
    item = _pick(rng, items)
    if isinstance(item, TensorProto):
        item.data_type = elem if elem >= 0 else 1
    elif item is not None:
        item.type.tensor_type.elem_type = elem if elem >= 0 else 0


def m_attribute(rng, model):
    node = _pick(rng, [n for n in _all_nodes(model.graph)])
    if node is None:
        return
    if node.attribute and rng.random() < 0.3:
        del node.attribute[rng.randrange(len(node.attribute))]
        return
    name = rng.choice([a.name for a in node.attribute] + ["axis", "alpha", "kernel_shape",
                                                          "perm", "pads", "value", "to"])
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    value = rng.choice([_weird_int(rng), [_weird_int(rng) for _ in range(rng.randint(0, 4))],
                        "text", 1e30, float("nan"), [1.5, -2.0],
                        helper.make_tensor("t", rng.choice([1, 7, 9]), [2], [1, 2])])
    try:
        node.attribute.append(helper.make_attribute(name, value))
    except (ValueError, TypeError):
        pass


def m_node(rng, model):
    g = _pick(rng, _all_graphs(model.graph))
    if not g.node:
        return
    i = rng.randrange(len(g.node))
    node = g.node[i]
    names = [v for n in g.node for v in list(n.input) + list(n.output)] + \
        [t.name for t in g.initializer] + ["", "nowhere"]
    choice = rng.randrange(7)
    if choice == 0 and node.input:
        del node.input[rng.randrange(len(node.input))]
    elif choice == 1:
        node.input.append(rng.choice(names))
    elif choice == 2 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(names)
    elif choice == 3:
        node.op_type = rng.choice(OP_TYPES)
    elif choice == 4:
        del g.node[i]
    elif choice == 5:
        g.node.append(node)
    else:
        node.domain = rng.choice(["com.microsoft", "ai.onnx", "", "ai.onnx.ml"])


def m_graph(rng, model):
    g = model.graph
    choice = rng.randrange(5)
    if choice == 0 and g.output:
        del g.output[rng.randrange(len(g.output))]
    elif choice == 1:
        name = _pick(rng, [o for n in g.node for o in n.output] + ["ghost"])
        g.output.append(_vi(name, ["N"]))
    elif choice == 2 and g.input:
        del g.input[rng.randrange(len(g.input))]
    elif choice == 3 and g.initializer:
        del g.initializer[rng.randrange(len(g.initializer))]
    else:
        g.input.append(_vi(_pick(rng, [t.name for t in g.initializer] + ["extra"]), [2]))


def m_header(rng, model):
    choice = rng.randrange(5)
    if choice == 0:
        model.ir_version = rng.choice([0, 1, 2, 3, 7, 8, 10, 13, 14, 99, -1, 2 ** 40])
    elif choice == 1 and model.opset_import:
        model.opset_import[0].version = rng.choice([0, -1, 1, 6, 11, 13, 17, 21, 99, 2 ** 40])
    elif choice == 2:
        model.ClearField("opset_import")
    elif choice == 3:
        model.opset_import.append(helper.make_opsetid(rng.choice(["", "ai.onnx", "x"]),
                                                      rng.choice([1, 17, 0])))
    elif model.opset_import:
        model.opset_import[0].domain = rng.choice(["ai.onnx", "custom", ""])


def m_data(rng, model):
    g = _pick(rng, _all_graphs(model.graph))
    t = _pick(rng, g.initializer)
    if t is None:
        return
    choice = rng.randrange(4)
    if choice == 0:
        raw = t.raw_data if t.HasField("raw_data") else b""
        t.raw_data = raw[: rng.randrange(len(raw) + 1)] if raw else b"\0" * rng.randint(0, 9)
    elif choice == 1:
        t.raw_data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    elif choice == 2:
        t.ClearField("raw_data")
        t.float_data.extend([rng.random() for _ in range(rng.randint(0, 5))])
    else:
        t.raw_data = np.full(max(1, int(np.prod(t.dims or [1]))) if 0 <= int(
            np.prod(t.dims or [1])) < 4096 else 1, rng.choice([np.nan, np.inf, 1e38]),
            np.float32).tobytes()


def m_external(rng, model):
    g = model.graph
    t = _pick(rng, g.initializer)
    if t is None:
        return
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = rng.choice([TensorProto.EXTERNAL] * 5 + [TensorProto.DEFAULT])
    entries = [("location", rng.choice(ATTACK_LOCATIONS))]
    if rng.random() < 0.7:
        entries.append(("offset", str(rng.choice([0, 4, 4096, 2 ** 62, -1]))))
    if rng.random() < 0.7:
        entries.append(("length", str(rng.choice([0, 4, 192, 2 ** 40, -5]))))
    if rng.random() < 0.2:
        entries.append((rng.choice(["basepath", "checksum", "location"]), "x"))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v


def m_bomb(rng, model):
    """The sizes and trip counts an attacker would pick."""
    g = model.graph
    if rng.random() < 0.2:  # the Loop bomb: trip count 2^62 over a trivial body
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
            [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL)],
            [_vi("c_out", [], TensorProto.BOOL)])
        g.initializer.extend([_init("bomb_m", np.array(2 ** 62, np.int64)),
                              _init("bomb_c", np.array(True))])
        g.node.insert(0, helper.make_node("Loop", ["bomb_m", "bomb_c"], [], name="bomb",
                                          body=body))
        return
    big = rng.choice([[2 ** 20, 2 ** 20], [2 ** 31], [2 ** 14, 2 ** 14, 4], [-1, 5], [0]])
    g.initializer.append(_init("bomb_shape", np.array(big, np.int64)))
    op = rng.choice(["ConstantOfShape", "Expand", "Tile", "Range"])
    ins = {"ConstantOfShape": ["bomb_shape"], "Expand": ["bomb_one", "bomb_shape"],
           "Tile": ["bomb_one", "bomb_shape"], "Range": ["bomb_zero", "bomb_lim", "bomb_d"]}[op]
    g.initializer.extend([_init("bomb_one", np.ones([1] * len(big), np.float32)),
                          _init("bomb_zero", np.array(0.0, np.float32)),
                          _init("bomb_lim", np.array(1e12, np.float32)),
                          _init("bomb_d", np.array(rng.choice([1e-3, 0.0, 1.0]), np.float32))])
    g.node.append(helper.make_node(op, ins, ["bomb_out"], name="bomb"))
    g.node.append(helper.make_node("ReduceSum", ["bomb_out"], ["bomb_sum"], name="bomb_sum",
                                   keepdims=0))
    g.output.append(_vi("bomb_sum", []))


MUTATORS: dict[str, Callable] = {
    "dims": m_dims, "dtype": m_dtype, "attribute": m_attribute, "node": m_node,
    "graph": m_graph, "header": m_header, "data": m_data, "external": m_external,
    "bomb": m_bomb}


def mutate_structure(model: onnx.ModelProto, rng: random.Random, count: int = 1) -> onnx.ModelProto:
    """``count`` structured mutations of a copy of ``model``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for _ in range(count):
        MUTATORS[rng.choice(sorted(MUTATORS))](rng, out)
    return out


def mutate_bytes(data: bytes, rng: random.Random, count: int = 1) -> bytes:
    """``count`` byte-level mutations: bit flips, random bytes, cuts, splices, truncation."""
    buf = bytearray(data)
    for _ in range(count):
        choice = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1) if buf else 0
        if choice == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            i = rng.randrange(len(buf))
            buf[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif choice == 2:
            del buf[pos:pos + rng.randint(1, 16)]
        elif choice == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 32)]
            buf[pos:pos] = chunk
        else:
            del buf[rng.randrange(len(buf) + 1):]
    return bytes(buf)


def make_case(kind: str, seed_name: str, case_seed: int, folder: Path) -> Path:
    """Write one fuzz case into ``folder`` (attacks planted beside it); returns its path."""
    rng = random.Random(case_seed)
    outside = folder.parent / (folder.name + "_outside")
    folder.mkdir(parents=True, exist_ok=True)
    plant_attacks(folder, outside)
    model = external_seed(folder) if seed_name == "external" else seed_models()[seed_name]
    path = folder / "model.onnx"
    if kind == "bytes":
        data = mutate_bytes(model.SerializeToString(), rng, rng.randint(1, 8))
    else:
        data = mutate_structure(model, rng, rng.randint(1, 3)).SerializeToString()
    path.write_bytes(data)
    return path


SEEDS = ("mlp", "cnn", "shape", "norm", "control", "external")
