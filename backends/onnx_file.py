"""Reading an untrusted ONNX file: the bytes, the header rules, then external data under the
path policy of :mod:`graphdl.backends.onnx_external`.

Rules (each refusal is an :class:`OnnxFileError` naming the file and the problem):

- the path is a regular file (not a device, FIFO or folder), not empty, under protobuf's 2 GB;
- the bytes decode as an ``onnx.ModelProto``; every text field is valid UTF-8;
- ``ir_version`` lies in [3, ``onnx.IR_VERSION``] (3 is the first with ``opset_import``);
- ``opset_import`` is present, names each domain once, includes the ONNX domain (``""`` or
  ``"ai.onnx"``) and gives it a version in [1, the newest opset the installed onnx knows];
  other domains need a version >= 1;
- every tensor's element type is a known ONNX type (never ``UNDEFINED`` for data);
- external data is resolved by graphdl itself (the model is decoded with
  ``load_external_data=False``), so onnx's version-dependent checks are never relied on.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Iterator

import onnx
from onnx import TensorProto

from graphdl.backends.onnx_external import UnsafeExternalData, graph_tensors, node_tensors, \
    check_tensor, external_tensors, load_external, tensor_nbytes
from graphdl.backends.onnx_import import OnnxImportError

PROTOBUF_LIMIT = 2 ** 31
MIN_IR_VERSION = 3
ONNX_DOMAINS = ("", "ai.onnx")


class OnnxFileError(OnnxImportError):
    """An ONNX file that is refused before import: unreadable, undecodable, an invalid
    header, or external data that breaks the path policy."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, refusing non-regular, empty and oversized files."""
    shown = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(shown, flags)
    except FileNotFoundError:
        raise OnnxFileError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise OnnxFileError(f"{shown}: is a folder, not an ONNX file") from None
    except OSError as err:
        raise OnnxFileError(f"{shown}: cannot open: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OnnxFileError(f"{shown}: is a folder, not an ONNX file")
        if not stat.S_ISREG(st.st_mode):
            raise OnnxFileError(f"{shown}: is not a regular file (a device, FIFO or socket)")
        if st.st_size == 0:
            raise OnnxFileError(f"{shown}: the file is empty (0 bytes), not an ONNX model")
        if st.st_size >= PROTOBUF_LIMIT:
            raise OnnxFileError(f"{shown}: {st.st_size:,} bytes, over protobuf's 2 GB limit "
                                "for one message (large weights belong in external data)")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(st.st_size)
    finally:
        os.close(fd)


def decode(data: bytes, shown: str) -> onnx.ModelProto:
    """``data`` as a ModelProto with its header checked (see the module docstring)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # noqa: BLE001  (protobuf's DecodeError; protobuf is onnx's)
        raise OnnxFileError(f"{shown}: not an ONNX model (the bytes do not decode as an ONNX "
                            f"protobuf: {err})") from None
    check_header(model, shown)
    return model


def check_header(model: onnx.ModelProto, shown: str) -> None:
    """Refuse invalid IR versions, opset imports, non-UTF-8 text and unknown element types."""
    bad = next(_non_utf8(model, "model"), None)
    if bad is not None:
        raise OnnxFileError(f"{shown}: {bad} is not valid UTF-8 text")
    if not model.HasField("ir_version") or model.ir_version == 0:
        raise OnnxFileError(f"{shown}: no IR version: not an ONNX model (or a corrupt one)")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise OnnxFileError(f"{shown}: IR version {model.ir_version} is not supported (graphdl "
                            f"reads {MIN_IR_VERSION} to {onnx.IR_VERSION}, the newest the "
                            f"installed onnx {onnx.__version__} knows)")
    if not model.HasField("graph"):
        raise OnnxFileError(f"{shown}: the model has no graph")
    if not model.opset_import:
        raise OnnxFileError(f"{shown}: the model has no opset_import; it must say which ONNX "
                            "opset its nodes follow")
    seen: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in seen:
            raise OnnxFileError(f"{shown}: opset_import names domain {o.domain or 'ai.onnx'!r} "
                                "twice")
        seen[domain] = o.version
    if "" not in seen:
        raise OnnxFileError(f"{shown}: opset_import has no entry for the ONNX domain "
                            f"(it names only {sorted(seen)})")
    newest = onnx.defs.onnx_opset_version()
    for domain, version in seen.items():
        low, high = (1, newest) if domain == "" else (1, 2 ** 31)
        if not low <= version <= high:
            raise OnnxFileError(f"{shown}: opset {version} for domain "
                                f"{domain or 'ai.onnx'!r} is not valid (graphdl reads "
                                f"{low} to {high})")
    for t in _every_tensor(model):
        if any(d < 0 for d in t.dims):
            raise OnnxFileError(f"{shown}: tensor {t.name!r} has negative dims {list(t.dims)}")
    known = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
    for where, elem in _element_types(model.graph, "graph"):
        if elem not in known:
            raise OnnxFileError(f"{shown}: {where} has element type {elem}, which is not a "
                                "known ONNX type")


def read_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read, decode and check an ONNX file; external data is read (or, without
    ``load_external_data``, only checked) under graphdl's path policy."""
    shown = os.fspath(path)
    model = decode(read_bytes(shown), shown)
    folder = os.path.dirname(os.path.abspath(shown))
    try:
        if load_external_data:
            load_external(model, folder)
        else:
            for t in external_tensors(model):
                check_tensor(t, folder)
        if load_external_data:
            check_tensor_data(model)
    except UnsafeExternalData as err:
        raise OnnxFileError(f"{shown}: {err}") from None
    return model


# typed fields per element type, and how many entries one element takes there
_TYPED_FIELD = {
    "FLOAT": ("float_data", 1), "COMPLEX64": ("float_data", 2), "DOUBLE": ("double_data", 1),
    "COMPLEX128": ("double_data", 2), "INT64": ("int64_data", 1), "UINT32": ("uint64_data", 1),
    "UINT64": ("uint64_data", 1), "STRING": ("string_data", 1)}


def check_tensor_data(model: onnx.ModelProto) -> None:
    """Every tensor's data matches its declared dims and type (checked before any array
    is made from it)."""
    for t in _every_tensor(model):
        if t.data_location == TensorProto.EXTERNAL:
            continue
        if t.HasField("segment"):
            raise UnsafeExternalData(f"tensor {t.name!r} is a segment of a larger tensor, "
                                     "which graphdl does not read")
        need = tensor_nbytes(t) if t.data_type != TensorProto.STRING else None
        name = TensorProto.DataType.Name(t.data_type)
        count = 1
        for d in t.dims:
            count *= int(d)
        if t.HasField("raw_data") and t.data_type != TensorProto.STRING:
            if len(t.raw_data) != need:
                raise UnsafeExternalData(f"tensor {t.name!r}: {len(t.raw_data):,} bytes of "
                                         f"data for dims {list(t.dims)} of {name} "
                                         f"({need:,} bytes)")
            continue
        field, per = _TYPED_FIELD.get(name, ("int32_data", 1))
        have = len(getattr(t, field))
        want = count * per
        if field == "int32_data" and name in ("INT4", "UINT4", "FLOAT4E2M1"):
            want = (count + 1) // 2
        elif field == "int32_data" and name in ("INT2", "UINT2"):
            want = (count + 3) // 4
        if have != want and not (have == 0 and want == 0):
            raise UnsafeExternalData(f"tensor {t.name!r}: {have:,} values in {field} for dims "
                                     f"{list(t.dims)} of {name} ({want:,} expected)")


def _every_tensor(model: onnx.ModelProto) -> Iterator[TensorProto]:
    yield from graph_tensors(model.graph)
    for f in model.functions:
        for node in f.node:
            yield from node_tensors(node)


def check_model_proto(model: onnx.ModelProto) -> onnx.ModelProto:
    """An in-memory model's header checked; external tensors are refused, since their paths
    are only meaningful next to the file (import the file instead)."""
    check_header(model, "ONNX model")
    for t in external_tensors(model):
        raise OnnxFileError(f"ONNX model: tensor {t.name!r} refers to external data; import "
                            "the model from its file (gd.import_onnx(path)) so the data is "
                            "read under graphdl's path policy")
    try:
        check_tensor_data(model)
    except UnsafeExternalData as err:
        raise OnnxFileError(f"ONNX model: {err}") from None
    return model


def _non_utf8(msg: Any, where: str) -> Iterator[str]:
    """Paths of string fields that did not decode as UTF-8 (protobuf hands back bytes)."""
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE:
            items = value if _repeated(field) else [value]
            for i, item in enumerate(items):
                yield from _non_utf8(item, f"{where}.{field.name}[{i}]")
        elif field.type == field.TYPE_STRING:
            items = value if _repeated(field) else [value]
            for item in items:
                if not isinstance(item, str):
                    yield f"{where}.{field.name} ({bytes(item)[:40]!r})"


def _repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return field.label == field.LABEL_REPEATED


def _element_types(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, int]]:
    for t in graph.initializer:
        yield f"{where} initializer {t.name!r}", t.data_type
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for vi in infos:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                yield f"{where} {kind} {vi.name!r}", vi.type.tensor_type.elem_type
    for node in graph.node:
        label = f"node {node.name or '(unnamed)'!r} ({node.op_type})"
        for a in node.attribute:
            if a.HasField("t"):
                yield f"{label} attribute {a.name!r}", a.t.data_type
            for t in a.tensors:
                yield f"{label} attribute {a.name!r}", t.data_type
            if a.HasField("g"):
                yield from _element_types(a.g, f"{label} subgraph {a.name!r}")
            for g in a.graphs:
                yield from _element_types(g, f"{label} subgraph {a.name!r}")
