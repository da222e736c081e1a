"""Write ONNX models to disk atomically, with external data for models over 2 GB.

Every file is written to a temporary name in the target folder and moved into place with
``os.replace``, so a failure never leaves a half-written model; with external data, renaming
the model is the single commit (see :func:`save_model`). External data may only live inside
the model's folder: a location that escapes it (``"../x"``, an absolute path, a symlink
pointing out) is refused before anything is written.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from graphdl.atomic import fsync_file, pid_alive, remove_stale_temps, temp_path_for
from graphdl.backends.onnx_external import UnsafeExternalData, resolve_location
from graphdl.backends.onnx_file import decode, read_bytes
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
    ``external_data``: None decides by size (over 2 GB -> external data next to the model),
    True forces it, a string names the data file (relative, inside the model's folder). Each
    save writes a fresh data file, ``<name>.<pid>-<random><suffix>`` (``m.onnx.data`` ->
    ``m.onnx.4242-1a2b3c4d.data``), so that renaming the model is the single commit.
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
    """Write ``model`` to ``path`` with one commit point; returns the path.

    With external data, the tensors go to a fresh, uniquely named data file (see
    :func:`data_file_name`), then the model that references it is written to a temporary
    file, and renaming that over ``path`` is the single commit: a kill at any moment leaves
    the old model with its old data or the new model with its new data. The old data file
    is removed only after the commit. Leftovers of writers that died (temporary files, data
    files no model references) are removed by the next save to the same target.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    folder = target.parent
    _check_writable(folder, target)
    payload = payload_bytes(model)
    if external_data is None:
        external_data = payload + _HEADROOM >= PROTOBUF_LIMIT
    elif external_data is False and payload + _HEADROOM >= PROTOBUF_LIMIT:
        raise ExportError(f"the model holds {payload / 2**30:.2f} GB of tensors, over "
                          f"protobuf's 2 GB limit; export with external_data=True")
    location = _safe_location(folder, target, external_data) if external_data else None
    if check and not location:
        onnx.checker.check_model(model, full_check=True)
    old_data = _owned_data_files(folder, target)
    temps: list[str] = []
    written: list[str] = []
    try:
        _remove_orphans(folder, target, old_data)
        if location and os.path.dirname(location):
            remove_stale_temps(folder / os.path.dirname(location) / target.name)
        if location:
            model = _copy(model)
            data_rel = data_file_name(folder, location)
            # named after the model, so the next save to it finds a dead writer's temp
            data_tmp = _temp((folder / data_rel).parent, target.name, temps)
            _reached("data_open")
            _write_external(model, data_tmp, data_rel, size_threshold)
            fsync_file(data_tmp)
            _reached("data_written")
            os.replace(data_tmp, folder / data_rel)  # a new name: nothing refers to it yet
            temps.remove(data_tmp)
            written.append(str(folder / data_rel))
            _reached("data_renamed")
        model_tmp = _temp(folder, target.name, temps)
        with open(model_tmp, "wb") as f:
            f.write(model.SerializeToString())
        fsync_file(model_tmp)
        _reached("model_written")
        if check and location:
            onnx.checker.check_model(model_tmp, full_check=True)
        os.replace(model_tmp, target)  # the commit
        temps.remove(model_tmp)
        written.clear()
        _reached("committed")
    except OSError as err:
        raise ExportError(f"cannot write the ONNX model to {target}: "
                          f"{err.strerror or err}") from None
    finally:
        for t in temps + written:  # a failed save removes what it wrote; committed is kept
            with contextlib.suppress(OSError):
                os.unlink(t)
    new_data = {os.path.realpath(folder / location_of(t)) for t in _external(model)}
    for old in old_data["referenced"] - new_data:
        with contextlib.suppress(OSError):
            os.unlink(old)
    _reached("old_data_removed")
    return target


def _reached(step: str) -> None:
    """A named step of :func:`save_model` (tests inject faults here by monkeypatching)."""


def data_file_name(folder: Path, location: str) -> str:
    """A fresh data file name for ``location``: ``<stem>.<pid>-<random><suffix>``
    (``m.onnx.data`` -> ``m.onnx.4242-1a2b3c4d.data``); the pid lets a later save tell a
    dead writer's leftovers from a save in progress."""
    head, tail = os.path.split(location)
    stem, suffix = os.path.splitext(tail)
    while True:
        name = f"{stem}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        rel = f"{head}/{name}" if head else name
        if not os.path.lexists(folder / rel):
            return rel


_OWNED = re.compile(r"^(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[^./]*)?$")


def location_of(t: TensorProto) -> str:
    """A tensor's external data location (empty when it has none)."""
    return next((e.value for e in t.external_data if e.key == "location"), "")


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _owned_data_files(folder: Path, target: Path) -> dict[str, set[str]]:
    """Data files graphdl wrote for the model now at ``target`` (real paths, inside the
    folder, named by :func:`data_file_name`): the ones it references."""
    referenced: set[str] = set()
    if target.is_file():
        try:
            old = decode(read_bytes(target), str(target))
        except Exception:  # noqa: BLE001  (an unreadable old file references nothing)
            old = None
        for t in _external(old) if old is not None else ():
            try:
                real = resolve_location(folder, location_of(t))
            except UnsafeExternalData:
                continue
            if _OWNED.match(os.path.basename(real)) and os.path.isfile(real):
                referenced.add(real)
    return {"referenced": referenced}


def _remove_orphans(folder: Path, target: Path, old_data: dict[str, set[str]]) -> None:
    """Remove ``<target>.<pid>-<hex>.data`` files of dead writers that no model references
    (a writer killed between writing its data and committing its model)."""
    remove_stale_temps(target)
    prefix = f"{target.name}."
    for name in os.listdir(folder):
        m = _OWNED.match(name)
        if not m or not name.startswith(prefix) or m.group("stem") != target.name:
            continue
        real = os.path.realpath(folder / name)
        if real in old_data["referenced"] or pid_alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(folder / name)


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
    """The external data location, relative to the model's folder; refuses any escape (the
    same path policy as every read, :mod:`graphdl.backends.onnx_external`)."""
    location = f"{target.name}.data" if external_data is True else os.fspath(external_data)
    try:
        real = resolve_location(folder, location, for_write=True)
    except UnsafeExternalData as err:
        raise ExportError(f"{err}; it must be a relative file name inside the folder of "
                          f"{target}") from None
    if real == os.path.realpath(target):
        raise ExportError(f"external data location {location!r} is the model file itself")
    return os.path.normpath(location).replace(os.sep, "/")


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
