"""``graphdl info FILE.onnx``: what an ONNX file holds (inputs, outputs, opset, ops, size)."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graphdl.backends.onnx_external import tensor_nbytes
from graphdl.backends.onnx_file import read_model


def _dims(type_proto: onnx.TypeProto) -> list[int | str | None]:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in type_proto.tensor_type.shape.dim]


def _dtype(type_proto: onnx.TypeProto) -> str:
    if not type_proto.HasField("tensor_type"):
        return type_proto.WhichOneof("value") or "unknown"
    elem = type_proto.tensor_type.elem_type
    if elem == TensorProto.UNDEFINED:
        return "unknown"
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


def _numel(dims) -> int:
    return int(np.prod(dims)) if len(dims) else 1


def describe(path: str | os.PathLike | onnx.ModelProto) -> dict[str, Any]:
    """A plain-data summary of an ONNX model: inputs/outputs (name, shape, dtype), opset
    imports, IR version, producer, op histogram, node count and parameter count."""
    if isinstance(path, onnx.ModelProto):
        model, size = path, None
    else:
        # header rules and the external-data path policy apply; no tensor data is read
        model = read_model(path, load_external_data=False)
        size = os.path.getsize(path)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    params = sum(_numel(t.dims) for t in g.initializer)
    param_bytes = sum(tensor_nbytes(t) for t in g.initializer
                      if t.data_type != TensorProto.STRING)
    ops = Counter(n.op_type if not n.domain else f"{n.domain}.{n.op_type}" for n in g.node)
    return {
        "path": None if size is None else os.fspath(path),
        "file_bytes": size,
        "graph_name": g.name,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [{"name": v.name, "shape": _dims(v.type), "dtype": _dtype(v.type)}
                   for v in g.input if v.name not in inits],
        "outputs": [{"name": v.name, "shape": _dims(v.type), "dtype": _dtype(v.type)}
                    for v in g.output],
        "num_nodes": len(g.node),
        "op_histogram": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "num_initializers": len(inits),
        "num_parameters": params,
        "parameter_bytes": param_bytes,
        "external_data": any(t.data_location == TensorProto.EXTERNAL for t in g.initializer),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _printable(value: Any) -> Any:
    """Names from the file as plain text: rich markup escaped, control characters shown as
    escapes (a model file must not restyle or rewrite the terminal)."""
    if isinstance(value, str):
        return escape("".join(c if c.isprintable() else repr(c)[1:-1] for c in value))
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def print_info(path: str | os.PathLike, console=None) -> dict[str, Any]:
    """Print :func:`describe` as rich tables; returns the summary."""
    raw = describe(path)
    info = _printable(raw)
    console = console or Console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opset"].items())
    head = Table(title=f"ONNX model {info['path'] or info['graph_name']}", show_header=False)
    head.add_column("field", style="bold")
    head.add_column("value")
    for key, value in (("graph", info["graph_name"]), ("producer", info["producer"] or "-"),
                       ("IR version", str(info["ir_version"])), ("opset", opsets),
                       ("nodes", str(info["num_nodes"])),
                       ("parameters", f"{info['num_parameters']:,} "
                                      f"({_fmt_count(info['num_parameters'])}, "
                                      f"{info['parameter_bytes'] / 2**20:.1f} MiB)"),
                       ("external data", "yes" if info["external_data"] else "no")):
        head.add_row(key, value)
    console.print(head)
    io_table = Table(title="inputs and outputs")
    for col in ("kind", "name", "shape", "dtype"):
        io_table.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io_table.add_row(kind[:-1], v["name"], _fmt_shape(v["shape"]), v["dtype"])
    console.print(io_table)
    ops = Table(title="op histogram")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["op_histogram"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    return raw
