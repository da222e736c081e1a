"""Write ONNX models to disk atomically, with external data for models over 2 GB.

Every file is written to a temporary name in the target folder and moved into place with
``os.replace``, so a failure never leaves a half-written model. External data may only live
inside the model's folder: a location that escapes it (``"../x"``, an absolute path, a symlink
pointing out) is refused before anything is written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from graphdl.atomic import temp_path_for
from graphdl.backends.onnx_export import DEFAULT_OPSET, ExportError, to_onnx
from graphdl.ir import as_graph
from graphdl.passes import optimize_graph

PROTOBUF_LIMIT = 2 ** 31  # protobuf cannot serialize a message of 2 GB or more
_HEADROOM = 64 * 2 ** 20  # room left for the graph itself when deciding on external data
_ALIGN = 4096  # page-aligned offsets let runtimes memory-map external tensors


def export_onnx(model_or_graph: Any, path: str | os.PathLike, opset: int = DEFAULT_OPSET, *,
                external_data: bool | str | None = None, optimize: bool = True,
                dtype: str | None = None, ir_version: int | None = None,
                name: str | None = None, check: bool = False) -> Path:
    """Export a Model (its inference graph), a Graph or an ``onnx.ModelProto`` to ``path``.

    ``optimize=True`` runs graphdl's inference passes first (BatchNorm folding, fusion, ...).
    ``external_data``: None decides by size (over 2 GB -> ``<file>.data`` next to the model),
    True forces it, a string names the data file (relative, inside the model's folder).
    ``check=True`` runs ``onnx.checker.check_model(full_check=True)`` before the file lands.
    """
    if isinstance(model_or_graph, onnx.ModelProto):
        model = model_or_graph
    else:
        graph = as_graph(model_or_graph, what="ONNX export")
        if optimize:
            graph = optimize_for_onnx(graph)
        model = to_onnx(graph, opset=opset, ir_version=ir_version, dtype=dtype, name=name)
    return save_model(model, path, external_data=external_data, check=check)


def optimize_for_onnx(graph):
    """graphdl's ``"onnx_export"`` pipeline: an inference graph is frozen (parameters become
    constants, as in any export) so BatchNorm folds into the Conv/Gemm weights and constant
    subgraphs fold; a training step keeps its state."""
    training = bool(graph.updates)
    optimized, _ = optimize_graph(graph, training=training, passes="onnx_export",
                                  freeze_params=not training, memory=False)
    return optimized


def save_model(model: onnx.ModelProto, path: str | os.PathLike,
               external_data: bool | str | None = None, check: bool = False,
               size_threshold: int = 1024) -> Path:
    """Write ``model`` to ``path`` atomically (see the module docstring); returns the path."""
    target = Path(os.path.abspath(os.fspath(path)))
    folder = target.parent
    _check_writable(folder, target)
    payload = payload_bytes(model)
    if external_data is None:
        external_data = payload + _HEADROOM >= PROTOBUF_LIMIT
    elif external_data is False and payload + _HEADROOM >= PROTOBUF_LIMIT:
        raise ExportError(f"the model holds {payload / 2**30:.2f} GB of tensors, over "
                          f"protobuf's 2 GB limit; export with external_data=True")
    location = None
    if external_data:
        location = _safe_location(folder, target, external_data)
    if check and not location:
        onnx.checker.check_model(model, full_check=True)
    temps: list[str] = []
    try:
        moves = []
        if location:
            model = _copy(model)
            data_tmp = _temp(folder, target.name, temps)
            _write_external(model, data_tmp, location, size_threshold)
            moves.append((data_tmp, str(folder / location)))
        model_tmp = _temp(folder, target.name, temps)
        with open(model_tmp, "wb") as f:
            f.write(model.SerializeToString())
        moves.append((model_tmp, str(target)))
        for src, dst in moves:  # data first: the model never lands before its data
            os.replace(src, dst)
            temps.remove(src)
    except OSError as err:
        raise ExportError(f"cannot write the ONNX model to {target}: "
                          f"{err.strerror or err}") from None
    finally:
        for t in temps:
            try:
                os.unlink(t)
            except OSError:
                pass
    if check and location:
        onnx.checker.check_model(str(target), full_check=True)
    return target


def _check_writable(folder: Path, target: Path) -> None:
    if not folder.exists():
        raise ExportError(f"cannot write the ONNX model to {target}: the folder {folder} "
                          "does not exist")
    if not folder.is_dir():
        raise ExportError(f"cannot write the ONNX model to {target}: {folder} is not a folder")
    if target.is_dir():
        raise ExportError(f"cannot write the ONNX model to {target}: it is a folder; give a "
                          "file name such as model.onnx")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write the ONNX model to {target}: the folder {folder} is "
                          "not writable")


def _safe_location(folder: Path, target: Path, external_data: bool | str) -> str:
    """The external data location, relative to the model's folder; refuses any escape."""
    location = f"{target.name}.data" if external_data is True else os.fspath(external_data)
    if not location or os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise ExportError(f"external data location {location!r} must be a relative file name "
                          f"inside the model's folder {folder}")
    norm = os.path.normpath(location)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(real_folder, norm))
    if norm.startswith("..") or os.path.commonpath([real_folder, real]) != real_folder:
        raise ExportError(f"external data location {location!r} escapes the model's folder "
                          f"{folder}; it must stay inside it")
    if real == os.path.realpath(target):
        raise ExportError(f"external data location {location!r} is the model file itself")
    if not os.path.isdir(os.path.dirname(real)):
        raise ExportError(f"external data location {location!r}: the folder "
                          f"{os.path.dirname(real)} does not exist")
    return norm.replace(os.sep, "/")


def _temp(folder: Path, base: str, temps: list[str]) -> str:
    name = temp_path_for(folder / base)  # umask-respecting, unlike tempfile.mkstemp
    temps.append(name)
    return name


def payload_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held inside the model (external data not counted)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            n = int(np.prod(t.dims)) if t.dims else 1
            total += n * max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
                             .itemsize)
    return total


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _write_external(model: onnx.ModelProto, data_path: str, location: str,
                    size_threshold: int) -> None:
    """Move every initializer of ``size_threshold`` bytes or more into ``data_path``."""
    offset = 0
    with open(data_path, "wb") as f:
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                raise ExportError(f"initializer {t.name!r} already refers to external data; "
                                  "load the model with its data before saving it")
            # ONNX external data is little-endian, like every machine ORT runs on
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            if len(raw) < size_threshold:
                continue
            pad = (-offset) % _ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            name, dims, dtype = t.name, list(t.dims), t.data_type
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)),
                               ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
