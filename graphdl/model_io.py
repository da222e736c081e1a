"""Saving and loading a model's variables as ``.npz`` (no pickle), crash-safe and
all-or-nothing.

``save_weights`` writes through :mod:`graphdl.atomic` (a temporary file renamed into place).
``load_weights`` treats the file as untrusted: it reads the zip's central directory and every
member's ``.npy`` header first, refuses sizes that do not match the model before reading any
array data (a small file that declares a huge member is refused up front), reads each array
with a bounded read, checks names, shapes, dtypes (real numbers only) and finiteness, and
returns the whole set only when everything is valid, so a caller assigns nothing on error.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import numpy as np
from numpy.lib import format as npy_format

from graphdl.atomic import atomic_path
from graphdl.ir import GraphError

# room for a member's .npy magic and header (numpy writes them padded to 64 bytes; a v2
# header may hold up to 4 GB, so cap it at what numpy itself refuses beyond by default)
NPY_HEADER_LIMIT = 10_000 + 16


class WeightsMismatchError(GraphError, ValueError):
    """Saved weights do not fit the model: missing, unexpected or differently shaped."""


class ModelFileError(GraphError, ValueError):
    """A weights file that cannot be read safely: not an .npz, truncated, oversized members,
    non-numeric or non-finite arrays. The message names the file."""


def save_weights(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` through a temp file and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_weights(path: str | os.PathLike, expected: Mapping[str, tuple[tuple, str]], *,
                 allow_nonfinite: bool = False, what: str = "model") -> dict[str, np.ndarray]:
    """Read and validate every array of ``path`` against ``expected`` (name -> (shape,
    dtype)); returns name -> array (already in the expected dtype) or raises, with nothing
    half-applied. ``allow_nonfinite=True`` accepts NaN and Inf values."""
    shown = os.fspath(path)
    try:
        archive = zipfile.ZipFile(shown)
    except FileNotFoundError:
        raise ModelFileError(f"weights file {shown!r} does not exist") from None
    except IsADirectoryError:
        raise ModelFileError(f"weights file {shown!r} is a folder, not an .npz file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise ModelFileError(f"weights file {shown!r} is not a valid .npz archive (truncated "
                             f"or not written by Model.save): {err}") from None
    except OSError as err:
        raise ModelFileError(f"cannot read weights file {shown!r}: "
                             f"{err.strerror or err}") from None
    with archive:
        members = _members(archive, shown)
        headers = {name: _header(archive, info, shown) for name, info in members.items()}
        problems = _mismatches(headers, expected)
        if problems:
            raise WeightsMismatchError(f"weights in {shown!r} do not match {what}:\n"
                                       + "\n".join(problems))
        out = {}
        for name, (shape, dtype) in expected.items():
            out[name] = _read_array(archive, members[name], headers[name], dtype, shown,
                                    allow_nonfinite)
    return out


def _members(archive: zipfile.ZipFile, shown: str) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise ModelFileError(f"weights file {shown!r} holds {name!r}, which is not an "
                                 ".npy array; Model.save writes only arrays")
        key = name[:-4]
        if key in members:
            raise ModelFileError(f"weights file {shown!r} holds array {key!r} twice")
        members[key] = info
    return members


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str):
    """(shape, fortran_order, dtype, header_bytes) from the member's .npy header alone."""
    name = info.filename[:-4]
    try:
        with archive.open(info) as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:  # pragma: no cover - read_magic only returns known versions
                raise ValueError(f"unknown .npy version {version}")
            header_bytes = f.tell()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, SyntaxError,
            NotImplementedError) as err:
        raise ModelFileError(f"weights file {shown!r}: array {name!r} has an unreadable "
                             f".npy header ({err})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise ModelFileError(f"weights file {shown!r}: array {name!r} has dtype {dtype}; "
                             "weights must be real numbers (bool, int, uint or float)")
    return tuple(int(d) for d in shape), bool(fortran), dtype, header_bytes


def _mismatches(headers: dict, expected: Mapping[str, tuple[tuple, str]]) -> list[str]:
    problems = []
    for name, (shape, dtype) in expected.items():
        if name not in headers:
            problems.append(f"  - {name}: in the model {tuple(shape)}, missing from the file")
            continue
        got_shape, _, got_dtype, _ = headers[name]
        if got_shape != tuple(shape):
            problems.append(f"  - {name}: model shape {tuple(shape)}, file shape {got_shape}")
        elif not _compatible(got_dtype, np.dtype(dtype)):
            problems.append(f"  - {name}: model dtype {dtype}, file dtype {got_dtype}")
    problems += [f"  - {k}: in the file {headers[k][0]}, not in the model"
                 for k in headers if k not in expected]
    return problems


def _compatible(got: np.dtype, want: np.dtype) -> bool:
    if want.kind == "f":
        return got.kind == "f"
    if want.kind in "iu":
        return got.kind in "iub"
    return got.kind == want.kind


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header, dtype: str,
                shown: str, allow_nonfinite: bool) -> np.ndarray:
    shape, fortran, file_dtype, header_bytes = header
    name = info.filename[:-4]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * file_dtype.itemsize
    # the zip directory's size is checked before a single data byte is inflated
    if info.file_size != header_bytes + nbytes:
        raise ModelFileError(f"weights file {shown!r}: array {name!r} declares "
                             f"{info.file_size:,} bytes, but shape {shape} of {file_dtype} "
                             f"needs {header_bytes + nbytes:,}")
    try:
        with archive.open(info) as f:
            f.read(header_bytes)
            data = f.read(nbytes)  # bounded: never more than the shape needs
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ModelFileError(f"weights file {shown!r}: array {name!r} cannot be read "
                             f"(truncated or corrupt: {err})") from None
    if len(data) != nbytes:
        raise ModelFileError(f"weights file {shown!r}: array {name!r} is truncated "
                             f"({len(data):,} of {nbytes:,} bytes)")
    arr = np.frombuffer(data, dtype=file_dtype, count=count)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    want = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=True)
    if want.kind == "f" and not allow_nonfinite and not np.isfinite(out).all():
        where = np.argwhere(~np.isfinite(out))
        first = tuple(int(i) for i in where[0]) if out.ndim else ()
        overflow = np.isfinite(arr).all()
        why = (f"overflows {want} (file dtype {file_dtype})" if overflow
               else "holds NaN or Inf")
        raise ModelFileError(f"weights file {shown!r}: array {name!r} {why} "
                             f"({len(where)} value(s), first at index {first}); pass "
                             "allow_nonfinite=True to load it anyway")
    if want.kind in "iu" and file_dtype.kind in "iu" and arr.size and (
            arr.min() < np.iinfo(want).min or arr.max() > np.iinfo(want).max):
        raise ModelFileError(f"weights file {shown!r}: array {name!r} holds values outside "
                             f"the range of {want}")
    return out


def model_arrays(variables: list[Any], model_name: str) -> dict[str, np.ndarray]:
    """name -> value for saving; refuses duplicate variable names."""
    names = [v.name for v in variables]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GraphError(f"cannot save model {model_name!r}: several variables are named "
                         f"{dupes}; give the layers distinct names")
    return {v.name: v.value for v in variables}
