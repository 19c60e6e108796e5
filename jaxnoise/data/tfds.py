"""tensorflow-datasets as a source: loading a prepared dataset, and refusing in seconds to prepare
one that cannot be prepared here.

A tfds dataset (e.g. ``cifar10``) is read with ``tfds.data_source`` (ArrayRecord files, random
access). We prefer it over ``tfds.load`` because reading needs no TensorFlow at run time: records
are parsed with protobuf and images decoded with Pillow, and TensorFlow is not a jaxnoise
dependency. *Building* a dataset (``download_and_prepare``) needs network access and, for most
image datasets, TensorFlow (to encode the images); before tfds tries, a TCP probe of the download
host and a check for TensorFlow raise :class:`DatasetUnavailable` naming what is missing and the
offline alternatives (``folder``, ``digits``). Only when TensorFlow is importable and the
data-source path fails (e.g. data prepared earlier as TFRecord) does it fall back to ``tfds.load``.
Records carrying CIFAR-N label sets (``cifar10_n``, ``cifar100_n``) keep them in
``Dataset.label_sets``, and their ``id`` in ``Dataset.train_ids``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxnoise.data.dataset import Dataset

logger = logging.getLogger(__name__)

_TFDS_CHUNK = 1024
_OFFLINE_HINT = (
    "Offline alternatives: --config.data.source=folder --config.data.root=/path/to/images "
    "(class-per-folder layout ROOT/{train,test}/<class>/<img>) or --config.data.source=digits."
)


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
TFDS_LABEL_SETS = (
    "worse_label",
    "aggre_label",
    "random_label1",
    "random_label2",
    "random_label3",
    "noise_label",
)


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
    return Dataset(
        xtr, ytr, xte, yte, _label_names(info, [ytr, yte]), name, train_ids=ids, label_sets=sets
    )


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
    return Dataset(
        xtr,
        ytr,
        xte,
        yte,
        _label_names(info, [ytr, yte]),
        name,
        train_ids=ids,
        label_sets=label_sets,
    )
