"""Tests for jaxnoise.labels.files: named label sets from .pt/.npz/.npy/.csv files, without torch.

The `.pt` files are written here without torch, in torch.save's formats: a zip holding
`archive/data.pkl` (pickled with the same GLOBAL opcodes and persistent ids torch writes) and
`archive/data/<key>` storage bytes, and the legacy raw-pickle stream.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import shlex
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from jaxnoise import labels as labels_lib

CIFAR10N_KEYS = (
    "clean_label",
    "aggre_label",
    "worse_label",
    "random_label1",
    "random_label2",
    "random_label3",
)
CIFAR100N_KEYS = ("clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label")
STORAGES = {np.dtype("int64"): "LongStorage", np.dtype("int32"): "IntStorage"}
STORAGES.update({np.dtype("uint8"): "ByteStorage", np.dtype("float32"): "FloatStorage"})


# ---------------------------------------------------------------------------------------------
# Writing torch.save files without torch


class FakeTensor:
    """Stands for a torch tensor: a view (offset, size, stride in elements) of a 1-D storage."""

    def __init__(self, storage: np.ndarray, offset=0, size=None, stride=(1,)) -> None:
        self.storage = np.ascontiguousarray(storage)
        self.offset = offset
        self.size = (storage.size,) if size is None else size
        self.stride = stride


class _StorageRef:
    def __init__(self, key: str, tensor: FakeTensor) -> None:
        self.key, self.tensor = key, tensor


def _fake_torch() -> dict[str, types.ModuleType]:
    """Stand-in `torch` and `torch._utils` modules whose globals pickle as torch's do."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    return {"torch": torch, "torch._utils": utils}


class _TorchPickler(pickle.Pickler):
    """Pickles FakeTensors as torch.save does; `legacy` adds the view-metadata field."""

    def __init__(self, f, torch: types.ModuleType, legacy: bool = False) -> None:
        super().__init__(f, protocol=2)  # torch.save's default protocol
        self.torch, self.legacy = torch, legacy
        self.storages: dict[int, tuple[str, np.ndarray]] = {}

    def reducer_override(self, obj):
        if isinstance(obj, FakeTensor):
            key, _ = self.storages.setdefault(id(obj.storage), (str(len(self.storages)), obj))
            rebuild = self.torch._utils._rebuild_tensor_v2
            ref = _StorageRef(key, obj)
            return rebuild, (ref, obj.offset, obj.size, obj.stride, False, OrderedDict())
        return NotImplemented

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        storage = obj.tensor.storage
        pid = ("storage", getattr(self.torch, STORAGES[storage.dtype]), obj.key, "cpu")
        return pid + ((storage.size, None) if self.legacy else (storage.size,))


def _pickle_torch(obj: Any, monkeypatch, legacy: bool = False) -> tuple[bytes, dict]:
    """`obj` pickled as torch.save would, and its storages (key -> array)."""
    modules = _fake_torch()
    buf = io.BytesIO()
    with monkeypatch.context() as m:  # the fake torch is importable only while pickling
        for name, module in modules.items():
            m.setitem(sys.modules, name, module)
        pickler = _TorchPickler(buf, modules["torch"], legacy)
        pickler.dump(obj)
    assert "torch" not in sys.modules
    return buf.getvalue(), {k: t.storage for k, t in pickler.storages.values()}


def write_pt(path, obj: Any, monkeypatch=None, *, data_pkl: bytes | None = None) -> str:
    """Write `obj` as a zip-format torch.save file (or a given data.pkl, storages none)."""
    storages: dict[str, np.ndarray] = {}
    if data_pkl is None:
        data_pkl, storages = _pickle_torch(obj, monkeypatch)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            zf.writestr(
                f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes()
            )
        zf.writestr("archive/version", "3\n")
    return os.fspath(path)


def write_legacy_pt(path, obj: Any, monkeypatch) -> str:
    """Write `obj` in torch.save's legacy (pre-zip) format."""
    data_pkl, storages = _pickle_torch(obj, monkeypatch, legacy=True)
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, info):
            pickle.dump(header, f, protocol=2)
        f.write(data_pkl)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", storages[key].size) + storages[key].tobytes())
    return os.fspath(path)


def shuffled_sets(keys, n=97, classes=10, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.permutation(np.arange(n) % classes).astype(np.int64) for k in keys}


# ---------------------------------------------------------------------------------------------
# .pt files


@pytest.mark.parametrize(
    "keys,classes", [(CIFAR10N_KEYS, 10), (CIFAR100N_KEYS, 100)], ids=["cifar10n", "cifar100n"]
)
def test_pt_tensors(tmp_path, monkeypatch, keys, classes):
    """An official-format .pt of tensors: every key reads back exactly."""
    sets = shuffled_sets(keys, n=211, classes=classes)
    path = write_pt(tmp_path / "human.pt", {k: FakeTensor(v) for k, v in sets.items()}, monkeypatch)
    assert labels_lib.available_keys(path) == list(keys)
    for key, expected in sets.items():
        got = labels_lib.read(path, key)
        assert got.key == key and got.path == path and got.ids is None
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, expected)
    with pytest.raises(ValueError, match=r"several label sets \(clean_label, .*label_key="):
        labels_lib.read(path)


def test_pt_numpy_values(tmp_path, monkeypatch):
    """The official files hold numpy arrays pickled inside data.pkl (numpy 1.x and 2.x names)."""
    sets = shuffled_sets(CIFAR10N_KEYS, seed=1)
    data_pkl = pickle.dumps(sets, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in data_pkl
    old = data_pkl.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    for name, pkl in (("new.pt", data_pkl), ("old.pt", old)):
        path = write_pt(tmp_path / name, None, data_pkl=pkl)
        assert labels_lib.available_keys(path) == list(CIFAR10N_KEYS)
        for key, expected in sets.items():
            np.testing.assert_array_equal(labels_lib.read(path, key).labels, expected)


def test_pt_views_dtypes_and_ids(tmp_path, monkeypatch):
    """Offsets and strides into a shared storage, int32/uint8 storages, integral floats, ids."""
    storage = np.arange(20, dtype=np.int64) % 7
    obj = {
        "strided": FakeTensor(storage, offset=3, size=(3,), stride=(2,)),
        "int32": FakeTensor(np.array([3, 1, 2], dtype=np.int32)),
        "uint8": FakeTensor(np.array([9, 0, 4], dtype=np.uint8)),
        "float": FakeTensor(np.array([2.0, 5.0, 1.0], dtype=np.float32)),
        "matrix": FakeTensor(storage, size=(4, 5), stride=(5, 1)),
        "path": ["a.png", "b.png", "c.png"],
    }
    path = write_pt(tmp_path / "x.pt", obj, monkeypatch)
    assert labels_lib.available_keys(path) == ["strided", "int32", "uint8", "float"]
    np.testing.assert_array_equal(labels_lib.read(path, "strided").labels, storage[3:9:2])
    for key in ("strided", "int32", "uint8", "float"):
        got = labels_lib.read(path, key)
        assert got.labels.dtype == np.int64
        if key != "strided":
            np.testing.assert_array_equal(got.labels, obj[key].storage.astype(np.int64))
        assert list(got.ids) == ["a.png", "b.png", "c.png"]
    with pytest.raises(ValueError, match=r"key 'matrix' holds a 2-D int64 array"):
        labels_lib.read(path, "matrix")


def test_pt_tensor_outside_storage_refused(tmp_path, monkeypatch):
    """A tensor whose stride reaches past its storage is refused (no out-of-bounds read)."""
    obj = {"labels": FakeTensor(np.arange(4), size=(3,), stride=(5,))}
    path = write_pt(tmp_path / "bad.pt", obj, monkeypatch)
    with pytest.raises(ValueError, match=r"'labels'.*does not fit its storage of 4 elements"):
        labels_lib.read(path)


def test_pt_single_tensor_and_float_values(tmp_path, monkeypatch):
    """A .pt of one tensor is a single label set; non-integral floats are refused."""
    path = write_pt(tmp_path / "one.pt", FakeTensor(np.array([4, 2, 0])), monkeypatch)
    assert labels_lib.available_keys(path) == []
    np.testing.assert_array_equal(labels_lib.read(path).labels, [4, 2, 0])
    with pytest.raises(ValueError, match="holds one array.*label_key must be ''"):
        labels_lib.read(path, "clean_label")
    values = {"soft": np.array([0.5, 1.0])}
    path = write_pt(tmp_path / "f.pt", None, data_pkl=pickle.dumps(values, protocol=2))
    with pytest.raises(ValueError, match=r"key 'soft' holds a 1-D float64 array with non-integer"):
        labels_lib.read(path, "soft")


def test_legacy_pt_and_plain_pickle(tmp_path, monkeypatch):
    """The legacy torch.save stream, and a plain pickle of a dict of numpy arrays and lists."""
    sets = shuffled_sets(CIFAR100N_KEYS, classes=100, seed=2)
    obj = {k: FakeTensor(v) for k, v in sets.items()}
    path = write_legacy_pt(tmp_path / "legacy.pt", obj, monkeypatch)
    assert labels_lib.available_keys(path) == list(CIFAR100N_KEYS)
    for key, expected in sets.items():
        np.testing.assert_array_equal(labels_lib.read(path, key).labels, expected)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"noisy_label": sets["noisy_label"], "ids": ["x", "y"] * 48}))
    with pytest.raises(ValueError, match="'ids' has 96 ids, but the label set has 97 labels"):
        labels_lib.read(plain)
    plain.write_bytes(pickle.dumps({"noisy_label": [3, 1, 2], "id": np.array(["x", "y", "z"])}))
    got = labels_lib.read(plain)
    assert got.key == "noisy_label" and list(got.ids) == ["x", "y", "z"]
    np.testing.assert_array_equal(got.labels, [3, 1, 2])
    plain.write_bytes(pickle.dumps(sets, protocol=5))  # arrays pickle through _frombuffer
    np.testing.assert_array_equal(labels_lib.read(plain, "noisy_label").labels, sets["noisy_label"])


class _Payload:
    """Unpickling this runs `func(*args)`: what a malicious label file would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_pt_with_code_refused(tmp_path, monkeypatch):
    """A .pt (zip or legacy) carrying os.system is refused and the payload never runs."""
    marker = tmp_path / "pwned"
    payload = _Payload(os.system, f"touch {shlex.quote(str(marker))}")
    data_pkl = pickle.dumps({"clean_label": np.arange(3), "x": payload}, protocol=2)
    path = write_pt(tmp_path / "evil.pt", None, data_pkl=data_pkl)
    with pytest.raises(ValueError, match=r"asks to load posix\.system.*refusing to unpickle"):
        labels_lib.read(path, "clean_label")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        labels_lib.available_keys(path)
    legacy = tmp_path / "evil_legacy.pt"
    with open(legacy, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(data_pkl)
    with pytest.raises(ValueError, match=r"asks to load posix\.system"):
        labels_lib.read(legacy)
    assert not marker.exists()


def test_raw_pickle_with_code_refused(tmp_path):
    """A raw pickle carrying builtins.exec is refused, with a one-line message naming the file."""
    marker = tmp_path / "pwned"
    path = tmp_path / "labels.pkl"
    payload = _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    path.write_bytes(pickle.dumps([payload, 1, 2]))
    with pytest.raises(ValueError) as e:
        labels_lib.read(path)
    message = str(e.value)
    assert message == (
        f"label file {str(path)!r} asks to load builtins.exec, which a label file never needs; "
        "refusing to unpickle it (it could run code)"
    )
    assert "\n" not in message and not marker.exists()


def test_pt_unexpected_persistent_id_refused(tmp_path):
    """A plain pickle may not refer to external objects; a zip .pt needs its data.pkl."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = lambda obj: "ext" if obj == "secret" else None
    pickler.dump(["secret"])
    path = tmp_path / "p.pkl"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="refers to an external object"):
        labels_lib.read(path)
    with zipfile.ZipFile(tmp_path / "nopkl.pt", "w") as zf:
        zf.writestr("archive/other.txt", "x")
    with pytest.raises(ValueError, match="holds no label set.*other.txt: not a .npy member"):
        labels_lib.read(tmp_path / "nopkl.pt")


# ---------------------------------------------------------------------------------------------
# .npz / .npy


def test_npz_several_sets(tmp_path):
    sets = shuffled_sets(("clean_label", "worse_label", "aggre_label"), seed=3)
    path = tmp_path / "x.npz"
    np.savez(path, **sets)
    assert labels_lib.available_keys(path) == ["clean_label", "worse_label", "aggre_label"]
    with pytest.raises(ValueError) as e:
        labels_lib.read(path)
    assert str(e.value) == (
        f"label file {str(path)!r} holds several label sets (clean_label, worse_label, "
        "aggre_label): pass label_key=<one of them>"
    )
    got = labels_lib.read(path, "worse_label")
    np.testing.assert_array_equal(got.labels, sets["worse_label"])
    assert got.key == "worse_label" and got.ids is None
    with pytest.raises(ValueError, match=r"no label set 'labels'.*clean_label, worse_label"):
        labels_lib.read(path, "labels")


def test_npz_single_set_with_ids(tmp_path):
    path = tmp_path / "y.npz"
    labels = np.array([2, 0, 1, 2])
    ids = np.array(["d.png", "a.png", "c.png", "b.png"])
    np.savez(path, aggre_label=labels, ids=ids, features=np.zeros((4, 3), np.float32))
    assert labels_lib.available_keys(path) == ["aggre_label"]
    got = labels_lib.read(path)
    assert got.key == "aggre_label"
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.ids, ids)
    np.savez(path, ids=ids, features=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="holds no label set.*features: a float32 array"):
        labels_lib.read(path)


def test_npy(tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.array([1, 0, 3], dtype=np.int32))
    assert labels_lib.available_keys(path) == []
    got = labels_lib.read(path)
    assert got.key == "" and got.ids is None and got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.labels, [1, 0, 3])
    with pytest.raises(ValueError, match="a .npy file holds one array; label_key must be ''"):
        labels_lib.read(path, "clean_label")
    np.save(path, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="holds a 2-D int64 array"):
        labels_lib.read(path)


def test_missing_file():
    with pytest.raises(ValueError, match="^label file 'nope.pt' does not exist$"):
        labels_lib.read("nope.pt")
    with pytest.raises(ValueError, match="does not exist"):
        labels_lib.available_keys("nope.csv")


# ---------------------------------------------------------------------------------------------
# CSV / text


def test_csv_path_label(tmp_path):
    """Labels and ids come back in file order (aligning them is the caller's)."""
    path = tmp_path / "l.csv"
    path.write_text("path , label\n c.png, 2\nA.png,0\n\nb.png ,1\n")
    assert labels_lib.available_keys(path) == ["label"]
    got = labels_lib.read(path)
    assert got.key == "label"
    np.testing.assert_array_equal(got.labels, [2, 0, 1])
    assert list(got.ids) == ["c.png", "A.png", "b.png"]


def test_csv_several_columns(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("ID,clean_label,worse_label\n7,1,2\n3,4,5\n")
    assert labels_lib.available_keys(path) == ["clean_label", "worse_label"]
    with pytest.raises(ValueError, match=r"several label columns \(clean_label, worse_label\)"):
        labels_lib.read(path)
    got = labels_lib.read(path, "worse_label")
    np.testing.assert_array_equal(got.labels, [2, 5])
    assert list(got.ids) == ["7", "3"]
    with pytest.raises(ValueError, match="no column 'label'; its label columns: clean_label"):
        labels_lib.read(path, "label")
    path.write_text(",aggre_label\n0,3\n1,5\n")  # pandas' to_csv: an unnamed index column
    assert labels_lib.available_keys(path) == ["aggre_label"]
    np.testing.assert_array_equal(labels_lib.read(path).labels, [3, 5])


def test_csv_one_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("3\n1\n\n 2 \n")
    assert labels_lib.available_keys(path) == []
    got = labels_lib.read(path)
    assert got.key == "" and got.ids is None
    np.testing.assert_array_equal(got.labels, [3, 1, 2])
    path.write_text("aggre_label\n3\n1\n")
    np.testing.assert_array_equal(labels_lib.read(path).labels, [3, 1])
    np.testing.assert_array_equal(labels_lib.read(path, "aggre_label").labels, [3, 1])
    with pytest.raises(ValueError, match="one label column; label_key must be '' or 'aggre_label'"):
        labels_lib.read(path, "worse_label")


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "txt"])
def test_one_unnamed_label_set(tmp_path, fmt):
    """One label set without a name (np.save; np.savez of one positional array; one integer per
    line in a .csv or .txt), named by a str or a Path: the labels as written. These are the files
    that noise.from_human read before the one reader (ported from test_noise.py)."""
    human = np.random.default_rng(16).integers(0, 10, 1000)
    path = tmp_path / f"human.{fmt}"
    if fmt == "npy":
        np.save(path, human)
    elif fmt == "npz":
        np.savez(path, human)  # stored as 'arr_0'
    else:
        path.write_text("\n".join(str(int(v)) for v in human) + "\n")
    for p in (path, str(path)):
        got = labels_lib.read(p)
        assert got.ids is None and got.path == str(path)
        np.testing.assert_array_equal(got.labels, human)


def test_csv_refusals(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("a.png,3\nb.png,1\n")
    with pytest.raises(ValueError, match="2 columns but no header row.*id/path column"):
        labels_lib.read(path)
    path.write_text("0,3\n1,1\n")
    with pytest.raises(ValueError, match="no header row"):
        labels_lib.available_keys(path)
    path.write_text("path,label\na.png,3\nb.png,x\n")
    with pytest.raises(ValueError, match=r"q.csv' line 3 column 'label': 'x' is not an integer"):
        labels_lib.read(path)
    path.write_text("3\n1\n2.5\n")
    with pytest.raises(ValueError, match=r"line 3: '2.5' is not an integer label$"):
        labels_lib.read(path)
    path.write_text("path,label\na.png,3,9\n")
    with pytest.raises(ValueError, match="line 2 has 3 fields, expected 2"):
        labels_lib.read(path)
    path.write_bytes(b"label\n\xff\xfe\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        labels_lib.read(path)
