"""One path policy for every ONNX external-data read and write, in graphdl's own code.

A model file is untrusted input, and onnx's own checks differ between versions (onnx 1.16
follows symlinks out of the model's folder). So graphdl loads models with
``load_external_data=False`` and resolves every external tensor here, under these rules:

- ``location`` is a relative path (no drive, no leading ``/``, no NUL, not empty); its real
  path, with every symlink followed, lies inside the model's real folder;
- the file is a regular file (not a device, FIFO, socket or folder), opened without
  following a final symlink and checked again on the open descriptor;
- ``offset`` and ``length`` are non-negative integers, ``length`` equals the tensor's size
  (from its dims and element type) and ``offset + length`` lies within the file; all of this
  is checked before a byte is read;
- only the keys ``location``, ``offset``, ``length`` and ``checksum`` are allowed, each once.

Writers use :func:`resolve_location` with ``for_write=True``: the same folder rule, and the
target's folder must exist.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

ALLOWED_KEYS = ("location", "offset", "length", "checksum")
# element types stored packed below one byte per element
_PACKED_BITS = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2}


class UnsafeExternalData(ValueError):
    """An external-data reference that breaks the path policy (the message says which rule);
    callers re-raise it as their own error type (import or export)."""


def resolve_location(folder: str | os.PathLike, location: str, *,
                     for_write: bool = False) -> str:
    """The real path of ``location`` relative to ``folder``; refuses anything outside it."""
    if not isinstance(location, str) or not location:
        raise UnsafeExternalData(f"external data location {location!r} is empty")
    if "\0" in location:
        raise UnsafeExternalData(f"external data location {location!r} contains a NUL byte")
    if os.path.isabs(location) or os.path.splitdrive(location)[0] or location.startswith(
            ("/", "\\")):
        raise UnsafeExternalData(f"external data location {location!r} is an absolute path; "
                                 "it must be a relative file name inside the model's folder")
    norm = os.path.normpath(location)
    real_folder = os.path.realpath(os.fspath(folder))
    real = os.path.realpath(os.path.join(real_folder, norm))
    if norm == ".." or norm.startswith(".." + os.sep) or os.path.commonpath(
            [real_folder, real]) != real_folder or real == real_folder:
        raise UnsafeExternalData(f"external data location {location!r} escapes the model's "
                                 f"folder {real_folder} (it resolves to {real}; symlinks are "
                                 "followed)")
    if for_write and not os.path.isdir(os.path.dirname(real)):
        raise UnsafeExternalData(f"external data location {location!r}: the folder "
                                 f"{os.path.dirname(real)} does not exist")
    return real


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes the tensor's data takes (from its dims and element type), before any read."""
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in \
        TensorProto.DataType.values() else None
    if name is None or name in ("UNDEFINED", "STRING"):
        raise UnsafeExternalData(f"tensor {t.name!r} has element type {t.data_type} "
                                 f"({name or 'unknown'}), which cannot be stored as external "
                                 "data")
    if any(d < 0 for d in t.dims):
        raise UnsafeExternalData(f"tensor {t.name!r} has negative dims {list(t.dims)}")
    count = 1
    for d in t.dims:
        count *= int(d)
    bits = _PACKED_BITS.get(name)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def external_info(t: TensorProto) -> dict[str, str]:
    """The tensor's external_data entries, checked: known keys, each once."""
    info: dict[str, str] = {}
    for entry in t.external_data:
        if entry.key not in ALLOWED_KEYS:
            raise UnsafeExternalData(f"tensor {t.name!r}: unknown external data key "
                                     f"{entry.key!r} (allowed: {', '.join(ALLOWED_KEYS)})")
        if entry.key in info:
            raise UnsafeExternalData(f"tensor {t.name!r}: external data key {entry.key!r} "
                                     "given twice")
        info[entry.key] = entry.value
    if "location" not in info:
        raise UnsafeExternalData(f"tensor {t.name!r} is stored externally but names no "
                                 "location")
    return info


def _int_field(t: TensorProto, info: dict[str, str], key: str) -> int | None:
    if key not in info:
        return None
    text = info[key]
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise UnsafeExternalData(f"tensor {t.name!r}: external data {key} {text!r} is not a "
                                 "non-negative integer")
    return int(text)


def _open_regular(path: str, t: TensorProto, location: str) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeExternalData(f"tensor {t.name!r}: external data file {location!r} does "
                                 "not exist") from None
    except OSError as err:
        raise UnsafeExternalData(f"tensor {t.name!r}: cannot open external data file "
                                 f"{location!r}: {err.strerror or err}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeExternalData(f"tensor {t.name!r}: external data {location!r} is not a "
                                 "regular file (a device, FIFO, socket or folder)")
    return fd


def check_tensor(t: TensorProto, folder: str | os.PathLike) -> tuple[str, int, int]:
    """(real path, offset, length) of an external tensor, every rule checked; reads nothing
    but the file's metadata."""
    if t.data_location != TensorProto.EXTERNAL:
        raise UnsafeExternalData(f"tensor {t.name!r} has external_data entries but its "
                                 "data_location is not EXTERNAL")
    info = external_info(t)
    location = info["location"]
    path = resolve_location(folder, location)
    offset = _int_field(t, info, "offset") or 0
    length = _int_field(t, info, "length")
    need = tensor_nbytes(t)
    if length is not None and length != need:
        raise UnsafeExternalData(f"tensor {t.name!r}: external data length {length:,} does "
                                 f"not match its dims {list(t.dims)} ({need:,} bytes)")
    fd = _open_regular(path, t, location)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if offset + need > size:
        raise UnsafeExternalData(f"tensor {t.name!r}: external data range [{offset:,}, "
                                 f"{offset + need:,}) lies outside {location!r} ({size:,} "
                                 "bytes)")
    return path, offset, need


def read_tensor(t: TensorProto, folder: str | os.PathLike) -> bytes:
    """The external tensor's bytes, read under the policy (see the module docstring)."""
    path, offset, need = check_tensor(t, folder)
    location = external_info(t)["location"]
    fd = _open_regular(path, t, location)
    try:
        chunks, got = [], 0
        while got < need:
            chunk = os.pread(fd, min(need - got, 1 << 26), offset + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got != need:
        raise UnsafeExternalData(f"tensor {t.name!r}: external data {location!r} ended after "
                                 f"{got:,} of {need:,} bytes")
    return b"".join(chunks)


def external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor of the model (initializers, sparse parts, attribute tensors in every
    subgraph) that refers to external data."""
    for t in graph_tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            yield t
    for f in model.functions:
        for node in f.node:
            for t in node_tensors(node):
                if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
                    yield t


def graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph holds: initializers, sparse parts, attribute tensors and those
    of every subgraph."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        yield from node_tensors(node)


def node_tensors(node: onnx.NodeProto) -> Iterator[TensorProto]:
    """Every tensor in a node's attributes, subgraphs included."""
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        if a.HasField("g"):
            yield from graph_tensors(a.g)
        for g in a.graphs:
            yield from graph_tensors(g)


def load_external(model: onnx.ModelProto, folder: str | os.PathLike) -> int:
    """Read every external tensor into the model (in place) under the policy; returns the
    number of bytes read. Everything is checked before the first read."""
    tensors = list(external_tensors(model))
    for t in tensors:
        check_tensor(t, folder)
    total = 0
    for t in tensors:
        data = read_tensor(t, folder)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        t.raw_data = data
        total += len(data)
    return total
