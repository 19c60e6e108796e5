"""Datasets for jaxnoise: loaders (host side, NumPy) and augmentation (device side, JAX).

Three sources give the same in-memory :class:`Dataset` (uint8 images, int32 labels):

* ``tfds``: a tensorflow-datasets dataset (e.g. ``cifar10``), read with
  ``tfds.data_source`` (ArrayRecord files, random access). We prefer it over ``tfds.load``
  because reading needs no TensorFlow at run time: records are parsed with protobuf and
  images decoded with Pillow, and TensorFlow is not a jaxnoise dependency. *Building* a
  dataset (``download_and_prepare``) needs network access and, for most image datasets,
  TensorFlow (to encode the images); when it fails, :func:`load_tfds` raises a
  ``RuntimeError`` that names the offline alternatives below. Only when TensorFlow is
  importable and the data-source path fails (e.g. data prepared earlier as TFRecord) does it
  fall back to ``tfds.load``.
* ``folder``: an image folder ``ROOT/{train,test}/<class>/<image>``, decoded with Pillow and
  cached as an uncompressed ``.npz`` keyed by a fingerprint of the file list.
* ``digits``: scikit-learn's embedded 8x8 digits (no network at all).

Augmentation (:func:`augment`) and :func:`normalize` are pure ``jax.numpy``, jit-friendly,
with explicit PRNG keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

logger = logging.getLogger(__name__)

SOURCES = ("tfds", "folder", "digits", "features")
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_CACHE_VERSION = "1"
_TFDS_CHUNK = 1024
_OFFLINE_HINT = (
    "Offline alternatives: --config.data.source=folder --config.data.root=/path/to/images "
    "(class-per-folder layout ROOT/{train,test}/<class>/<img>) or --config.data.source=digits."
)


class ImageFolderError(ValueError):
    """An image folder is missing, malformed, or holds an unreadable image."""


@dataclasses.dataclass
class Dataset:
    """An in-memory image-classification dataset: uint8 NHWC images and int32 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    name: str
    train_paths: list[str] | None = None
    # Per-sample identifiers of the training set, kept through subsets so that label files are
    # aligned by identity: tfds the record's `id` (CIFAR: "train_XXXXX", XXXXX = the position
    # in the original CIFAR order), image folders the path relative to the root, features a
    # given `train_ids` array or the row index. None: the row index.
    train_ids: np.ndarray | None = None
    # Named per-sample label sets of the training set besides `train_labels` (e.g. tfds
    # cifar10_n's worse_label, aggre_label, ...; or a resolved label file), aligned with it.
    label_sets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that arrays and paths have consistent shapes."""
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim not in (2, 4):  # features: float (N, D); see jaxnoise/features.py
                raise ValueError(
                    f"{split}_images must be (N, H, W, C) images or (N, D) features, got shape "
                    f"{images.shape}"
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{split}_labels must have shape ({images.shape[0]},), got {labels.shape}"
                )
        if self.train_paths is not None and len(self.train_paths) != len(self.train_labels):
            raise ValueError(
                f"train_paths has {len(self.train_paths)} entries for "
                f"{len(self.train_labels)} training images"
            )
        n = len(self.train_labels)
        if self.train_ids is not None:
            self.train_ids = np.asarray(self.train_ids).astype(str)
            if self.train_ids.shape != (n,):
                raise ValueError(f"train_ids has shape {self.train_ids.shape}, expected ({n},)")
        for key, values in self.label_sets.items():
            if np.shape(values) != (n,):
                raise ValueError(
                    f"label set {key!r} has shape {np.shape(values)}, expected ({n},)"
                )

    def ids(self) -> np.ndarray:
        """The training samples' identifiers as strings (the row index when none are known)."""
        if self.train_ids is not None:
            return self.train_ids
        return np.arange(len(self.train_labels)).astype(str)

    def take(self, rows: np.ndarray) -> Dataset:
        """The dataset with only the training samples ``rows`` (test split untouched)."""
        rows = np.asarray(rows)
        return dataclasses.replace(
            self,
            train_images=self.train_images[rows],
            train_labels=self.train_labels[rows],
            train_paths=None if self.train_paths is None else [self.train_paths[i] for i in rows],
            train_ids=None if self.train_ids is None else self.train_ids[rows],
            label_sets={k: np.asarray(v)[rows] for k, v in self.label_sets.items()},
        )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape (H, W, C) of one image, or (D,) of one feature vector."""
        return tuple(int(s) for s in self.train_images.shape[1:])

    @property
    def is_features(self) -> bool:
        """Whether the samples are (N, D) feature vectors rather than images."""
        return self.train_images.ndim == 2

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and (population) std of train_images / 255, as float32 (C,)."""
        x = self.train_images
        if x.ndim == 2:  # features: per-feature mean / std (a constant feature gets std 1)
            mean = np.zeros(x.shape[1], np.float64)
            sq = np.zeros(x.shape[1], np.float64)
            for start in range(0, x.shape[0], 65536):  # float64 sums without a full copy
                block = x[start : start + 65536].astype(np.float64)
                mean += block.sum(0)
                sq += (block * block).sum(0)
            mean /= x.shape[0]
            std = np.sqrt(np.maximum(sq / x.shape[0] - mean**2, 0.0))
            std[std <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
            return mean.astype(np.float32), std.astype(np.float32)
        if x.dtype != np.uint8:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
            return flat.mean(0).astype(np.float32), flat.std(0).astype(np.float32)
        # Exact and memory-light for uint8: a 256-bin histogram per channel.
        values = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for ch in range(x.shape[-1]):
            counts = np.bincount(x[..., ch].ravel(), minlength=256).astype(np.float64)
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = max((counts * values**2).sum() / n - mean**2, 0.0)
            means.append(mean)
            stds.append(np.sqrt(var))
        return np.asarray(means, np.float32), np.asarray(stds, np.float32)


# The published code's input normalisation (CIFAR-10 constants, used there for CIFAR-100 too).
PUBLISHED_MEAN = np.asarray((0.4914, 0.4822, 0.4465), np.float32)
PUBLISHED_STD = np.asarray((0.2023, 0.1994, 0.2010), np.float32)


def normalization_stats(ds: Dataset, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of the inputs: "published" constants or the "dataset"'s own."""
    if kind == "dataset":
        return ds.mean_std()
    if kind != "published":
        raise ValueError(f"normalization must be 'published' or 'dataset', got {kind!r}")
    channels = ds.image_shape[-1]
    if channels != 3:
        raise ValueError(
            f"config.data.normalization = 'published' is for 3-channel images (the CIFAR "
            f"constants); dataset {ds.name!r} has {channels} channel(s): use 'dataset'"
        )
    return PUBLISHED_MEAN, PUBLISHED_STD


# --------------------------------------------------------------------------------------
# tensorflow-datasets


def _tf_importable() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def _get_records(source: Any, keys: list[int]) -> list[Any]:
    """Read records `keys` from a tfds data source, batched when the source supports it."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return list(getitems(keys))
        except TypeError:
            # tfds.testing.mock_data (tfds 4.9.10) installs `__getitems__` on a MagicMock
            # without binding `self`, so batched access raises TypeError under the mock;
            # per-record access below works there (and re-raises any genuine error).
            pass
    return [source[k] for k in keys]


def _as_image(value: Any, where: str) -> np.ndarray:
    """Convert one decoded tfds image to a uint8 (H, W, C) array."""
    img = np.asarray(value)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected a uint8 (H, W[, C]) image, got {img.dtype} {img.shape}"
        )
    return img


# Features of tfds records that are label sets of the training split (cifar10_n, cifar100_n).
TFDS_LABEL_SETS = ("worse_label", "aggre_label", "random_label1", "random_label2",
                   "random_label3", "noise_label")  # fmt: skip


def _text(value: Any) -> str:
    """A tfds Text feature's value (bytes, str or a 0-d array of either) as str."""
    value = np.asarray(value).item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_split(source: Any, where: str, label_sets: Sequence[str] = ()):
    """Read every record of a tfds data source: uint8 images, int32 labels, ids (or None) and
    the named extra label sets."""
    n = len(source)
    if n == 0:
        raise ValueError(f"{where} is empty")
    images: np.ndarray | None = None
    labels = np.empty(n, np.int32)
    ids: list[str] | None = []
    sets = {k: np.empty(n, np.int32) for k in label_sets}
    for start in range(0, n, _TFDS_CHUNK):
        keys = list(range(start, min(n, start + _TFDS_CHUNK)))
        for i, record in zip(keys, _get_records(source, keys), strict=True):
            img = _as_image(record["image"], f"{where}[{i}]")
            if images is None:
                images = np.empty((n, *img.shape), np.uint8)
            if img.shape != images.shape[1:]:
                raise ValueError(
                    f"{where}: record {i} has image shape {img.shape}, record 0 has "
                    f"{images.shape[1:]}; variable-size images are not supported"
                )
            images[i] = img
            labels[i] = int(record["label"])
            if ids is not None:
                if "id" in record:
                    ids.append(_text(record["id"]))
                else:
                    ids = None
            for k in sets:
                sets[k][i] = int(record[k])
    assert images is not None
    return images, labels, None if ids is None else np.asarray(ids), sets


def _label_set_names(info: Any) -> list[str]:
    """The extra label sets (TFDS_LABEL_SETS) among a tfds dataset's features."""
    try:
        keys = set(info.features.keys())
    except AttributeError:
        return []
    return [k for k in TFDS_LABEL_SETS if k in keys]


def _label_names(info: Any, labels: Sequence[np.ndarray]) -> list[str]:
    """Class names from a tfds DatasetInfo's 'label' feature, else '0'..'K-1'."""
    try:
        names = list(info.features["label"].names)
    except (AttributeError, KeyError, TypeError):
        names = []
    if names:
        return [str(n) for n in names]
    k = int(max(int(lab.max()) for lab in labels)) + 1
    return [str(i) for i in range(k)]


def _load_tfds_with_tf(name: str, data_dir: str | None, download: bool) -> Dataset:
    """Fallback reader through tfds.load + tfds.as_numpy (needs TensorFlow)."""
    import tensorflow_datasets as tfds

    (train, test), info = tfds.load(
        name,
        split=["train", "test"],
        data_dir=data_dir,
        download=download,
        batch_size=-1,
        with_info=True,
    )
    arrays = []
    for split in (tfds.as_numpy(train), tfds.as_numpy(test)):
        images = np.asarray(split["image"], np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        arrays.append((images, np.asarray(split["label"], np.int32)))
    (xtr, ytr), (xte, yte) = arrays
    train = tfds.as_numpy(train)
    ids = np.asarray([_text(v) for v in train["id"]]) if "id" in train else None
    sets = {k: np.asarray(train[k], np.int32) for k in _label_set_names(info)}
    return Dataset(xtr, ytr, xte, yte, _label_names(info, [ytr, yte]), name, train_ids=ids,
                   label_sets=sets)  # fmt: skip


class DatasetUnavailable(RuntimeError):
    """A tfds dataset is not prepared and cannot be prepared here (offline, no TensorFlow)."""


_PREPARE_HINT = (
    "on a machine with network access run pip install -e '.[prepare]' (TensorFlow CPU, "
    "which tfds needs to build image datasets) and re-run the same command, or copy a prepared "
    "tfds data_dir here (--config.data.data_dir=DIR)"
)
_PROBE_TIMEOUT_S = 5.0


def _unreachable_hosts(urls: Sequence[str], timeout: float = _PROBE_TIMEOUT_S) -> list[str]:
    """Hosts of `urls` that a TCP connection cannot reach within `timeout` seconds.

    Skipped (empty) when a proxy is configured: the proxy, not a direct connection, downloads.
    """
    import socket
    import urllib.parse

    if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return []
    bad = []
    parts = [urllib.parse.urlsplit(u) for u in urls]
    addresses = {(u.hostname, u.port or (443 if u.scheme == "https" else 80)) for u in parts}
    for host, port in sorted(a for a in addresses if a[0]):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            bad.append(f"{host} ({type(err).__name__}: {err})")
    return bad


def _check_can_prepare(builder: Any, name: str, where: str) -> None:
    """Fail in seconds, naming what is missing, before tfds retries a download for minutes."""
    import tensorflow_datasets as tfds

    prepare = type(builder).download_and_prepare
    if getattr(prepare, "__module__", "").startswith("tensorflow_datasets.testing"):
        return  # tfds.testing.mock_data: nothing is downloaded or built
    problems = []
    unreachable = _unreachable_hosts(list(getattr(builder, "url_infos", None) or {}))
    if unreachable:
        problems.append(f"its download host is unreachable: {', '.join(unreachable)}")
    needs_tf = type(builder).__module__.startswith("tensorflow_datasets.") and any(
        isinstance(f, tfds.features.Image) for f in builder.info.features.values()
    )  # tfds encodes numpy images with TensorFlow when it builds (tfds issue #11058)
    if needs_tf and not _tf_importable():
        problems.append("building its images needs TensorFlow, which is not installed")
    if problems:
        raise DatasetUnavailable(
            f"tfds dataset {name!r} is not prepared in {where} and cannot be prepared here: "
            f"{'; '.join(problems)}. To fix: {_PREPARE_HINT}. {_OFFLINE_HINT}"
        )


def _one_line(err: BaseException, limit: int = 300) -> str:
    """'Type: last line of the message', shortened: the useful end of a chained error."""
    lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
    text = lines[-1] if lines else ""
    return f"{type(err).__name__}: {text[:limit]}"


def _quietly(fn: Any) -> Any:
    """fn() without absl's warnings (tfds warns that an unprepared folder has no info file)."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return fn()
    finally:
        absl_logging.set_verbosity(old)


def load_tfds(name: str, *, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Load the 'train' and 'test' splits of a tfds dataset via tfds.data_source.

    A dataset that is not prepared yet is downloaded and built first (``download=True``); when
    that cannot work (no network, no TensorFlow) :class:`DatasetUnavailable` says so in seconds,
    in one line, with what to run instead.
    """
    import tensorflow_datasets as tfds

    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    # `file_format` must be given explicitly: tfds.data_source only defaults to ArrayRecord
    # when neither data_dir nor builder_kwargs is passed.
    builder_kwargs = {"file_format": "array_record"}
    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)  # unknown name: ValueError
    if not _quietly(builder.is_prepared):
        if not download:
            raise DatasetUnavailable(
                f"tfds dataset {name!r} is not prepared in {where} (download=False). To "
                f"prepare it: {_PREPARE_HINT}. {_OFFLINE_HINT}"
            )
        _check_can_prepare(builder, name, where)
    try:
        train_src, test_src = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            download=download,
            builder_kwargs=builder_kwargs,
        )
    except tfds.core.registered.DatasetNotFoundError:
        raise
    except Exception as err:
        detail = _one_line(err)
        if _tf_importable():
            logger.warning("tfds.data_source failed (%s); falling back to tfds.load", detail)
            try:
                return _load_tfds_with_tf(name, data_dir, download)
            except Exception as err2:
                detail += f"; the tfds.load fallback also failed: {_one_line(err2)}"
        raise DatasetUnavailable(
            f"preparing tfds dataset {name!r} in {where} failed: {detail}. Building a tfds "
            f"dataset needs network access and, for most image datasets, TensorFlow: "
            f"{_PREPARE_HINT}. {_OFFLINE_HINT}"
        ) from err
    info = getattr(train_src, "dataset_info", None) or builder.info
    sets = _label_set_names(info)
    xtr, ytr, ids, label_sets = _read_split(train_src, f"tfds {name!r} split 'train'", sets)
    xte, yte, _, _ = _read_split(test_src, f"tfds {name!r} split 'test'")
    return Dataset(xtr, ytr, xte, yte, _label_names(info, [ytr, yte]), name, train_ids=ids,
                   label_sets=label_sets)  # fmt: skip


# --------------------------------------------------------------------------------------
# image folder


@dataclasses.dataclass
class _Listing:
    """The image files of one image folder, in load order."""

    class_names: list[str]
    train: list[tuple[str, int]]  # (path relative to root, label)
    test: list[tuple[str, int]]
    fingerprint: str


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted non-hidden subfolder names of split_dir."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _list_images(class_dir: Path, hasher: Any) -> list[str]:
    """Sorted image file names in class_dir, feeding (name, size, mtime) to hasher."""
    entries = []
    with os.scandir(class_dir) as it:
        for e in it:
            name = e.name
            if name[0] == "." or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if e.is_file():
                st = e.stat()
                entries.append((name, st.st_size, st.st_mtime_ns))
    entries.sort()
    hasher.update(class_dir.name.encode() + b"\0")
    hasher.update("".join(f"{n}\0{size}\0{mtime}\n" for n, size, mtime in entries).encode())
    return [name for name, _, _ in entries]


def _scan_folder(root: Path) -> _Listing:
    """Validate the folder layout and list its images (cheap: no image is opened)."""
    if not root.is_dir():
        raise ImageFolderError(f"image folder root {root} does not exist or is not a directory")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ImageFolderError(
                f"image folder {root} has no {split}/ subfolder {root / split} "
                "(expected ROOT/{train,test}/<class>/<image>)"
            )
    classes = _class_dirs(root / "train")
    if not classes:
        raise ImageFolderError(f"no class folders in {root / 'train'}")
    test_classes = _class_dirs(root / "test")
    if not test_classes:
        raise ImageFolderError(f"no class folders in {root / 'test'}")
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise ImageFolderError(
            f"test class folder {root / 'test' / extra[0]} has no counterpart in "
            f"{root / 'train'} (test classes must be a subset of train classes {classes})"
        )
    hasher = hashlib.sha256(f"jaxnoise-imagefolder-v{_CACHE_VERSION}\n".encode())
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, names in (("train", classes), ("test", test_classes)):
        hasher.update(f"[{split}]\n".encode())
        items: list[tuple[str, int]] = []
        for cname in names:
            cdir = root / split / cname
            files = _list_images(cdir, hasher)
            if not files:
                raise ImageFolderError(
                    f"class folder {cdir} holds no images "
                    f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            label = classes.index(cname)
            prefix = os.path.join(split, cname, "")
            items.extend((prefix + f, label) for f in files)
        splits[split] = items
    return _Listing(classes, splits["train"], splits["test"], hasher.hexdigest())


def _decode_files(root: Path, relpaths: Sequence[str]) -> np.ndarray:
    """Decode images with Pillow into (N, H, W, C) uint8; C=1 iff every image is grayscale."""
    from PIL import Image

    # Sequential on purpose: for small images (e.g. CIFAR's 32x32 JPEGs) decoding is
    # dominated by Python overhead under the GIL, and a thread pool was measured slower.
    n = len(relpaths)
    out: np.ndarray | None = None
    gray = np.zeros(n, bool)
    ref = ""
    for i, rel in enumerate(relpaths):
        path = root / rel
        try:
            with Image.open(path) as im:
                size = im.size
                is_gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if is_gray else "RGB"))
        except Exception as err:
            raise ImageFolderError(
                f"cannot read image {path}: {type(err).__name__}: {err}"
            ) from err
        if out is None:
            out = np.empty((n, size[1], size[0], 3), np.uint8)
            ref = str(path)
        elif arr.shape[:2] != out.shape[1:3]:
            raise ImageFolderError(
                f"images have different sizes: {ref} is {out.shape[2]}x{out.shape[1]} but "
                f"{path} is {size[0]}x{size[1]} (all images must share one size)"
            )
        gray[i] = is_gray
        out[i] = arr[..., None] if is_gray else arr
    assert out is not None
    return out[..., :1].copy() if gray.all() else out


def _default_cache_dir(root: Path) -> Path:
    """ROOT/.jaxnoise_cache if writable, else ~/.cache/jaxnoise/<hash of root>."""
    local = root / ".jaxnoise_cache"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "jaxnoise" / digest


def _cache_prefix(root: Path) -> str:
    """File-name prefix of this root's cache files (so a shared cache_dir is safe)."""
    return "imagefolder-" + hashlib.sha256(str(root).encode()).hexdigest()[:8] + "-"


def _read_cache(path: Path, listing: _Listing) -> dict[str, np.ndarray] | None:
    """Load a cache file, or None when it is absent, unreadable or inconsistent."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        ok = (
            len(data["train_labels"]) == len(listing.train)
            and len(data["test_labels"]) == len(listing.test)
            and list(data["class_names"]) == listing.class_names
        )
    except Exception as err:  # truncated or foreign file: rebuild it
        logger.warning("ignoring unreadable image-folder cache %s: %s", path, err)
        return None
    return data if ok else None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to path atomically (temp file + os.replace); warn instead of failing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        logger.warning("could not write image-folder cache %s: %s", path, err)
        return
    for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


def load_image_folder(root: str, *, cache_dir: str | None = None) -> Dataset:
    """Load ROOT/{train,test}/<class>/<image> into a Dataset, cached as an .npz."""
    root_path = Path(root).expanduser().resolve()
    listing = _scan_folder(root_path)
    cdir = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir(root_path)
    cache_path = cdir / f"{_cache_prefix(root_path)}{listing.fingerprint[:20]}.npz"
    data = _read_cache(cache_path, listing)
    if data is not None:
        logger.info("loaded image folder %s from cache %s", root_path, cache_path)
    else:
        logger.info("decoding %d images from %s", len(listing.train) + len(listing.test), root)
        train_images = _decode_files(root_path, [p for p, _ in listing.train])
        test_images = _decode_files(root_path, [p for p, _ in listing.test])
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ImageFolderError(
                f"images have different sizes: {root_path / listing.train[0][0]} is "
                f"{train_images.shape[1:]} (HWC) but {root_path / listing.test[0][0]} is "
                f"{test_images.shape[1:]}"
            )
        data = {
            "train_images": train_images,
            "train_labels": np.asarray([y for _, y in listing.train], np.int32),
            "test_images": test_images,
            "test_labels": np.asarray([y for _, y in listing.test], np.int32),
            "class_names": np.asarray(listing.class_names, dtype=str),
        }
        _write_cache(cache_path, data)
    root_str = str(root_path)
    return Dataset(
        train_images=data["train_images"],
        train_labels=data["train_labels"],
        test_images=data["test_images"],
        test_labels=data["test_labels"],
        class_names=listing.class_names,
        name=root_path.name,
        train_paths=[os.path.join(root_str, p) for p, _ in listing.train],
        train_ids=np.asarray([p for p, _ in listing.train]),
    )


# --------------------------------------------------------------------------------------
# digits, dispatch, subsets


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1); stratified 1500 train / 297 test."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=297, stratify=labels, random_state=0
    )
    return Dataset(
        train_images=images[idx_train],
        train_labels=labels[idx_train],
        test_images=images[idx_test],
        test_labels=labels[idx_test],
        class_names=[str(i) for i in range(10)],
        name="digits",
    )


def load(
    source: str,
    *,
    name: str = "",
    root: str = "",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    features: str = "",
    test_features: str = "",
) -> Dataset:
    """Load a dataset from source 'tfds' (name), 'folder' (root), 'digits' or 'features'."""
    if source == "tfds":
        if not name:
            raise ValueError("data source 'tfds' needs a dataset name (e.g. name='cifar10')")
        return load_tfds(name, data_dir=data_dir)
    if source == "folder":
        if not root:
            raise ValueError(
                "data source 'folder' needs root=/path/to/images "
                "(layout ROOT/{train,test}/<class>/<img>)"
            )
        ds = load_image_folder(root, cache_dir=cache_dir)
        return dataclasses.replace(ds, name=name) if name else ds
    if source == "digits":
        return load_digits()
    if source == "features":
        from jaxnoise import features as features_lib  # features.py builds on this module

        if not features:
            raise ValueError("data source 'features' needs data.features=/path/to/file.npz")
        return features_lib.load_features(features, test_features, name=name)
    raise ValueError(
        f"unknown data source {source!r}; expected one of {', '.join(repr(s) for s in SOURCES)}"
    )


def balanced_subset(ds: Dataset, per_class: int, *, seed: int) -> Dataset:
    """Keep `per_class` random training images of every class (test split untouched)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.train_labels == c)
        if len(idx) < per_class:
            raise ValueError(
                f"class {c} ({str(ds.class_names[c])!r}) has {len(idx)} training images, "
                f"fewer than per_class={per_class}"
            )
        picks.append(rng.choice(idx, per_class, replace=False))
    return ds.take(np.sort(np.concatenate(picks)))


def take_train(ds: Dataset, n: int) -> Dataset:
    """Keep the first `n` training samples (test split untouched)."""
    return ds.take(np.arange(min(n, len(ds.train_labels))))


# --------------------------------------------------------------------------------------
# device side


def augment(images: jax.Array, key: jax.Array, *, padding: int = 4, flip: bool = True) -> jax.Array:
    """Per-sample random crop after zero padding and random horizontal flip (B,H,W,C)."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    images = jnp.asarray(images)
    if images.ndim == 2:  # (B, D) features: nothing to crop or flip
        if padding or flip:
            raise ValueError("feature vectors cannot be cropped or flipped (padding=0, flip=False)")
        return images
    b, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    out = images
    if padding > 0:
        p = padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)
        out = jax.vmap(lambda img, o: lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets
        )
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
        out = jnp.where(do_flip[:, None, None, None], out[:, :, ::-1, :], out)
    return out


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Map uint8 images to float32 (x / 255 - mean) / std, per channel; (B, D) features to
    (x - mean) / std, per feature."""
    x = jnp.asarray(images).astype(jnp.float32)
    if x.ndim != 2:
        x = x / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
