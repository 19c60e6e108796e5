"""Named label sets read from files, for real human label noise (CIFAR-10N / CIFAR-100N).

The CIFAR-N files (Wei et al., ICLR 2022) hold several label sets each, so a label file is read
by name: :func:`available_keys` lists the label sets a file holds and :func:`read` returns one,
refusing to guess whenever the choice is ambiguous. The format is told by the file's first bytes
(``.pt``/``.pth``/``.pkl``/``.pickle`` also mark a pickle; anything else not binary is text):

* ``.npy``: one 1-D integer array (no key).
* ``.npz``: named arrays. An array named ``ids``, ``id``, ``path``, ``index``, ``indices``,
  ``idx`` or ``train_ids`` names the samples (the first of these present; none of them is ever a
  label set); every other 1-D integer array is a label set. With one label set the key may be
  left empty; with several it must name one.
* ``.csv`` / ``.txt``: either one integer per line (with an optional non-numeric header line), or
  a header row naming the columns: an id column (``id``, ``path``, ``filename`` or ``file``, any
  case; the first one if several) and named label columns (``key``, else the one named ``label``,
  else the only one; an unnamed column, such as a pandas index, is none). Several columns without
  a header are refused.
* ``.pt``: a dict of label arrays (numpy arrays or tensors) saved by ``torch.save``, as the
  official ``CIFAR-10_human.pt`` (``clean_label, aggre_label, worse_label, random_label1,
  random_label2, random_label3``) and ``CIFAR-100_human.pt`` (``clean_label, noisy_label,
  clean_coarse_label, noisy_coarse_label``); an id entry (the names listed for ``.npz``) names
  the samples. Both the zip format (torch >= 1.6) and the legacy raw-pickle format are read, as is
  a plain pickle of such a dict, of one array or of a list.

Float arrays whose values are all integers count as labels (cast to int64); other non-integer or
non-1-D arrays are not label sets. Ids come back in file order: aligning them is the caller's.

Safety: a ``.pt`` file or another pickle is read by the restricted unpickler of
:mod:`jaxnoise.labels.torch_pickle`, which rebuilds plain arrays only and refuses any other global
before anything is called. ``.npy``/``.npz`` files are loaded with ``allow_pickle=False``.

Every error is a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import zipfile
from typing import Any

import numpy as np

from jaxnoise.labels import torch_pickle

__all__ = ["LabelSet", "available_keys", "read"]

# .npz / .pt entries that name the samples (an index array included): never label sets
_ARRAY_ID_NAMES = ("ids", "id", "path", "index", "indices", "idx", "train_ids")
_CSV_ID_NAMES = ("id", "path", "filename", "file")  # CSV columns that do (any case)
_PICKLE_EXTS = (".pt", ".pth", ".pkl", ".pickle")
_INT = re.compile(r"[+-]?[0-9]+")
_INT64 = np.iinfo(np.int64)


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """One label set of a file: labels in file order, with the samples' ids when the file has them.

    `ids` is a (N,) unicode array when the file names its samples (a CSV id/path column, or an
    ``ids``/``index``/... array in a .npz/.pt), else None. `key` is the set's name in the file
    ('' for a single-array file or a plain one-column text file).
    """

    labels: np.ndarray
    ids: np.ndarray | None
    key: str
    path: str


def available_keys(path: str | os.PathLike) -> list[str]:
    """The names of the label sets `path` holds ([] for a .npy, a .txt or a one-column CSV)."""
    path, fmt = _locate(path)
    if fmt == "npy":
        return []
    if fmt == "text":
        table = _read_table(path)
        return _csv_label_columns(table.header) if table.header and len(table.header) > 1 else []
    contents = _load(path, fmt)
    if not isinstance(contents, dict):
        return []
    return _label_keys(contents)


def read(path: str | os.PathLike, key: str = "") -> LabelSet:
    """Read the label set `key` of `path` ('' when the file holds one); see the module docstring."""
    path, fmt = _locate(path)
    if not isinstance(key, str):
        raise _Error(f"label file {path!r}: label_key must be a string, got {key!r}")
    if fmt == "npy" and key:
        raise _Error(
            f"label file {path!r}: a .npy file holds one array; label_key must be '' (got {key!r})"
        )
    if fmt == "text":
        return _read_text(path, key)
    contents = _load(path, fmt)
    if isinstance(contents, dict):
        return _read_named(path, contents, key)
    if key:
        raise _Error(
            f"label file {path!r} holds one array, not named label sets; label_key must be '' "
            f"(got {key!r})"
        )
    return LabelSet(_labels(contents, path, ""), None, "", path)


# ---------------------------------------------------------------------------------------------
# Shared helpers


class _Error(ValueError):
    """A problem with a label file; the message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


def _locate(path: str | os.PathLike) -> tuple[str, str]:
    """Check that `path` exists and tell its format: 'npy', 'zip', 'pickle' or 'text'."""
    if not isinstance(path, (str, os.PathLike)):
        raise _Error(f"label file must be a path, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not os.path.exists(path):
        raise _Error(f"label file {path!r} does not exist")
    if os.path.isdir(path):
        raise _Error(f"label file {path!r} is a directory")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise _Error(f"cannot read label file {path!r}: {e.strerror or e}") from None
    if head.startswith(b"\x93NUMPY"):
        return path, "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return path, "zip"
    if head.startswith(b"\x80") or os.path.splitext(path)[1].lower() in _PICKLE_EXTS:
        return path, "pickle"
    return path, "text"


def _load(path: str, fmt: str) -> dict[str, np.ndarray | str] | np.ndarray:
    """The named values of a binary file (a value that is no array is a str saying what it is),
    or the one array of a single-array file."""
    if fmt == "npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError) as e:
            raise _Error(f"cannot read label file {path!r} as .npy: {e}") from None
    if fmt == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                torch_zip = torch_pickle.zip_pickle_name(zf) is not None
        except (OSError, zipfile.BadZipFile) as e:
            raise _Error(f"cannot read label file {path!r} as a zip archive: {e}") from None
        if not torch_zip:
            return _load_npz(path)
    try:
        obj = torch_pickle.load_zip(path) if fmt == "zip" else torch_pickle.load_stream(path)
    except torch_pickle.Refused as e:  # its message names the file
        raise _Error(str(e)) from None
    except torch_pickle.Malformed as e:
        raise _Error(f"label file {path!r}: {e}") from None
    except Exception as e:  # a malformed pickle can fail in many ways; report them all alike
        raise _Error(f"cannot unpickle label file {path!r}: {type(e).__name__}: {e}") from None
    return _contents(obj, path)


def _label_problem(value: np.ndarray | str) -> str | None:
    """Why `value` is not a label set (None when it is one)."""
    if isinstance(value, str):
        return value
    if value.ndim != 1:
        return f"a {value.ndim}-D {value.dtype} array of shape {value.shape}"
    if value.dtype.kind in "iu":
        return None
    if value.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            if np.all(np.isfinite(value)) and np.all(value == np.round(value)):
                return None
        return f"a 1-D {value.dtype} array with non-integer values"
    return f"a 1-D {value.dtype} array"


def _labels(value: np.ndarray | str, path: str, key: str) -> np.ndarray:
    """`value` as an int64 label array, or an error saying why it is none."""
    where = f" key {key!r}" if key else ""
    problem = _label_problem(value)
    if problem is not None:
        raise _Error(
            f"label file {path!r}{where} holds {problem}, not labels "
            "(expected a 1-D array of integer labels)"
        )
    if value.dtype.kind in "uf" and value.size and value.max() > _INT64.max:
        raise _Error(f"label file {path!r}{where}: label {value.max()} is out of range")
    if value.dtype.kind == "f" and value.size and value.min() < _INT64.min:
        raise _Error(f"label file {path!r}{where}: label {value.min()} is out of range")
    return np.array(value, dtype=np.int64)


def _ids(value: np.ndarray | str, path: str, key: str, n: int) -> np.ndarray:
    """`value` as a (n,) unicode array of sample ids."""
    ok = not isinstance(value, str) and value.ndim == 1 and value.dtype.kind in "USOiu"
    if ok and value.dtype.kind == "O":
        ok = all(isinstance(x, str) for x in value)
    if not ok:
        what = value if isinstance(value, str) else f"a {value.dtype} array of shape {value.shape}"
        raise _Error(
            f"label file {path!r} key {key!r} holds {what}; expected a 1-D array of sample ids"
        )
    if len(value) != n:
        raise _Error(
            f"label file {path!r} key {key!r} has {len(value)} ids, "
            f"but the label set has {n} labels"
        )
    return value.astype(str)


def _describe(value: np.ndarray | str) -> str:
    return value if isinstance(value, str) else f"a {value.dtype} array of shape {value.shape}"


# ---------------------------------------------------------------------------------------------
# Named arrays (.npz, .pt)


def _ids_key(values: dict[str, Any]) -> str | None:
    return next((k for k in _ARRAY_ID_NAMES if k in values), None)


def _label_keys(values: dict[str, np.ndarray | str]) -> list[str]:
    return [k for k, v in values.items() if k not in _ARRAY_ID_NAMES and _label_problem(v) is None]


def _read_named(path: str, values: dict[str, np.ndarray | str], key: str) -> LabelSet:
    keys = _label_keys(values)
    if not key:
        if len(keys) > 1:
            raise _Error(
                f"label file {path!r} holds several label sets ({', '.join(keys)}): "
                "pass label_key=<one of them>"
            )
        if not keys:
            found = "; ".join(f"{k}: {_describe(v)}" for k, v in values.items()) or "nothing"
            raise _Error(
                f"label file {path!r} holds no label set (a 1-D integer array); found {found}"
            )
        key = keys[0]
    elif key not in values:
        raise _Error(
            f"label file {path!r} has no label set {key!r}; its label sets: "
            f"{', '.join(keys) or 'none'}"
        )
    labels = _labels(values[key], path, key)
    ids_key = _ids_key(values)
    ids = None
    if ids_key is not None and ids_key != key:
        ids = _ids(values[ids_key], path, ids_key, len(labels))
    return LabelSet(labels, ids, key, path)


def _load_npz(path: str) -> dict[str, np.ndarray | str]:
    values: dict[str, np.ndarray | str] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                try:
                    value = z[name]
                except ValueError:  # an object array, which would need unpickling
                    value = "an object array (not read: it would need unpickling)"
                values[name] = (
                    value if isinstance(value, (np.ndarray, str)) else "not a .npy member"
                )
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise _Error(f"cannot read label file {path!r} as .npz: {e}") from None
    return values


def _contents(obj: Any, path: str) -> dict[str, np.ndarray | str] | np.ndarray:
    """An unpickled object as named values (a dict) or one array."""
    if isinstance(obj, dict):
        values: dict[str, np.ndarray | str] = {}
        for k, v in obj.items():
            name = k.decode("latin1") if isinstance(k, bytes) else k
            if isinstance(name, str):
                values[name] = _to_array(v, path, name)
        return values
    array = _to_array(obj, path, "")
    if isinstance(array, str):
        raise _Error(
            f"label file {path!r} holds {array}; expected a dict of label arrays or one array"
        )
    return array


def _to_array(value: Any, path: str, key: str) -> np.ndarray | str:
    if isinstance(value, torch_pickle.Tensor):
        try:
            return value.numpy()
        except torch_pickle.Malformed as e:
            where = f" key {key!r}" if key else ""
            raise _Error(f"label file {path!r}{where}: {e}") from None
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError):
            return f"a {type(value).__name__} that is no array"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# Text / CSV


@dataclasses.dataclass
class _Table:
    header: list[str] | None
    rows: list[tuple[int, list[str]]]  # (line number, stripped fields)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_table(path: str) -> _Table:
    """The rows of a text/CSV label file, with its header row if the first row is one."""
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    first = True
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                for raw in reader:
                    fields = [x.strip() for x in raw]
                    if not any(fields):
                        continue
                    if first and not any(_is_number(x) for x in fields):
                        header = fields
                    else:
                        rows.append((reader.line_num, fields))
                    first = False
            except csv.Error as e:
                raise _Error(f"label file {path!r} line {reader.line_num}: {e}") from None
    except UnicodeDecodeError:
        raise _Error(f"label file {path!r} is not UTF-8 text, nor a .npy/.npz/.pt file") from None
    except OSError as e:
        raise _Error(f"cannot read label file {path!r}: {e.strerror or e}") from None
    if not rows:
        raise _Error(f"label file {path!r} holds no labels")
    width = len(header) if header is not None else len(rows[0][1])
    for line, fields in rows:
        if len(fields) != width:
            raise _Error(
                f"label file {path!r} line {line} has {len(fields)} fields, expected {width}"
            )
    if header is None and width > 1:
        raise _Error(
            f"label file {path!r} has {width} columns but no header row: add a header row naming "
            "an id/path column and a label column (e.g. 'path,label')"
        )
    if header is not None:
        named = [n for n in header if n]
        if len(set(named)) != len(named):
            raise _Error(f"label file {path!r}: its header row names a column twice")
    return _Table(header, rows)


def _csv_id_column(header: list[str]) -> int | None:
    return next((i for i, n in enumerate(header) if n.lower() in _CSV_ID_NAMES), None)


def _csv_label_columns(header: list[str]) -> list[str]:
    id_col = _csv_id_column(header)
    return [n for i, n in enumerate(header) if i != id_col and n]  # unnamed: e.g. an index


def _read_text(path: str, key: str) -> LabelSet:
    table = _read_table(path)
    header = table.header
    if header is None or len(header) == 1:
        name = header[0] if header else ""
        if key and key != name:
            allowed = f"'' or {name!r}" if name else "''"
            raise _Error(
                f"label file {path!r} holds one label column; label_key must be {allowed} "
                f"(got {key!r})"
            )
        return LabelSet(_parse_column(table, 0, path, name), None, key, path)
    columns = _csv_label_columns(header)
    listed = ", ".join(columns) or "none"
    if key:
        if key not in header:
            raise _Error(f"label file {path!r} has no column {key!r}; its label columns: {listed}")
        col = header.index(key)
    else:
        named = [i for i, n in enumerate(header) if n.lower() == "label"]
        if named:
            col = named[0]
        elif len(columns) == 1:
            col = header.index(columns[0])
        elif not columns:
            raise _Error(f"label file {path!r}: its header row names no label column")
        else:
            raise _Error(
                f"label file {path!r} holds several label columns ({listed}): "
                "pass label_key=<one of them>"
            )
    id_col = _csv_id_column(header)
    ids = None
    if id_col is not None and id_col != col:
        ids = np.array([fields[id_col] for _, fields in table.rows], dtype=str)
    return LabelSet(_parse_column(table, col, path, header[col]), ids, header[col], path)


def _parse_column(table: _Table, col: int, path: str, name: str) -> np.ndarray:
    out = np.empty(len(table.rows), dtype=np.int64)
    where = f" column {name!r}" if name else ""
    for i, (line, fields) in enumerate(table.rows):
        field = fields[col]
        value = int(field) if _INT.fullmatch(field) else None
        if value is None or not _INT64.min <= value <= _INT64.max:
            raise _Error(
                f"label file {path!r} line {line}{where}: {field!r} is not an integer label"
            )
        out[i] = value
    return out
