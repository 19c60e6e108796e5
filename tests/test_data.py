"""Tests for jaxnoise.data: loaders (folder, digits, tfds offline), subsets, augmentation."""

from __future__ import annotations

import re
import tarfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxnoise import data
from jaxnoise.data import Dataset, ImageFolderError, folder
from jaxnoise.data import tfds as tfds_source

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------------------
# helpers


def _write(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a PNG (2-D -> grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(
    root: Path,
    classes=("dog", "cat"),
    n_train: int = 3,
    n_test: int = 2,
    size: tuple[int, int] = (8, 8),
    gray: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a tiny class-per-folder PNG dataset; return {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    shape = size if gray else (*size, 3)
    for split, n in (("train", n_train), ("test", n_test)):
        for cname in classes:
            for i in range(n):
                rel = f"{split}/{cname}/{i:03d}.png"
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                _write(root / rel, arr)
                written[rel] = arr
    return written


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any image decoding fail the test."""

    def boom(*args, **kwargs):
        raise AssertionError("images were decoded")

    monkeypatch.setattr(folder, "_decode_files", boom)


# --------------------------------------------------------------------------------------
# image folder: happy paths


def test_folder_loads_pixels_labels_and_paths(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    written = make_folder(root)
    ds = data.load_image_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert ds.class_names == ["cat", "dog"]  # sorted folder names
    assert ds.num_classes == 2 and ds.name == "imgs"
    assert ds.train_images.shape == (6, 8, 8, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (4, 8, 8, 3) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1])
    assert ds.image_shape == (8, 8, 3)
    assert ds.train_paths is not None and len(ds.train_paths) == 6
    for img, label, path in zip(ds.train_images, ds.train_labels, ds.train_paths, strict=True):
        rel = Path(path).relative_to(root.resolve()).as_posix()
        np.testing.assert_array_equal(img, written[rel])
        assert rel.split("/")[1] == ds.class_names[label]
    tests = sorted(k for k in written if k.startswith("test/"))
    np.testing.assert_array_equal(ds.test_images, np.stack([written[k] for k in tests]))


def test_folder_grayscale_keeps_one_channel(tmp_path: Path) -> None:
    written = make_folder(tmp_path, gray=True)
    ds = data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert ds.train_images.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(ds.train_images[0, ..., 0], written["train/cat/000.png"])


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path: Path) -> None:
    written = make_folder(tmp_path)
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _write(tmp_path / "train/cat/000.png", g)
    ds = data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert ds.train_images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(ds.train_images[0], np.repeat(g[..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds.train_images[1], written["train/cat/001.png"])


def test_folder_test_classes_may_be_a_subset(tmp_path: Path) -> None:
    make_folder(tmp_path, classes=("a", "b", "c"))
    for f in (tmp_path / "test" / "b").iterdir():
        f.unlink()
    (tmp_path / "test" / "b").rmdir()
    ds = data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.test_labels, [0, 0, 2, 2])


def test_folder_ignores_hidden_and_non_image_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "train" / ".trash").mkdir()
    ds = data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert ds.class_names == ["cat", "dog"] and len(ds.train_labels) == 6


# --------------------------------------------------------------------------------------
# image folder: cache


def test_folder_second_load_comes_from_cache(tmp_path, monkeypatch, caplog) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    make_folder(root)
    first = data.load_image_folder(str(root), cache_dir=str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind
    _forbid_decoding(monkeypatch)
    with caplog.at_level("INFO", logger="jaxnoise.data"):
        second = data.load_image_folder(str(root), cache_dir=str(cache))
    assert "from cache" in caplog.text
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert second.class_names == first.class_names
    assert second.train_paths == first.train_paths


def test_folder_cache_invalidated_when_files_change(tmp_path, monkeypatch) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    make_folder(root)
    data.load_image_folder(str(root), cache_dir=str(cache))
    new = np.full((8, 8, 3), 7, np.uint8)
    _write(root / "train/dog/999.png", new)
    calls = []
    real_decode = folder._decode_files
    monkeypatch.setattr(folder, "_decode_files", lambda *a: calls.append(1) or real_decode(*a))
    ds = data.load_image_folder(str(root), cache_dir=str(cache))
    assert calls and len(ds.train_labels) == 7
    np.testing.assert_array_equal(ds.train_images[-1], new)
    assert len(list(cache.glob("*.npz"))) == 1  # the stale cache was replaced


def test_folder_default_cache_dir_is_inside_root(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path)
    data.load_image_folder(str(tmp_path))
    assert len(list((tmp_path / ".jaxnoise_cache").glob("*.npz"))) == 1
    _forbid_decoding(monkeypatch)
    ds = data.load_image_folder(str(tmp_path))  # the cache folder is not taken as data
    assert ds.class_names == ["cat", "dog"]


def test_folder_corrupt_cache_is_rebuilt(tmp_path) -> None:
    make_folder(tmp_path)
    cache = tmp_path / "cache"
    data.load_image_folder(str(tmp_path), cache_dir=str(cache))
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(b"truncated")
    ds = data.load_image_folder(str(tmp_path), cache_dir=str(cache))
    assert ds.train_images.shape == (6, 8, 8, 3)


# --------------------------------------------------------------------------------------
# image folder: errors


def _raises_naming(path: Path):
    """pytest.raises(ImageFolderError) whose message names `path`."""
    return pytest.raises(ImageFolderError, match=re.escape(str(path.resolve())))


def test_folder_error_root_missing(tmp_path) -> None:
    missing = tmp_path / "nope"
    with _raises_naming(missing):
        data.load_image_folder(str(missing))


def test_folder_error_no_train_subfolder(tmp_path) -> None:
    (tmp_path / "test" / "a").mkdir(parents=True)
    with _raises_naming(tmp_path / "train"):
        data.load_image_folder(str(tmp_path))


def test_folder_error_no_class_folders(tmp_path, monkeypatch) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    _forbid_decoding(monkeypatch)
    with pytest.raises(ImageFolderError, match="no class folders") as info:
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert str((tmp_path / "train").resolve()) in str(info.value)


def test_folder_error_empty_class_folder(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    _forbid_decoding(monkeypatch)  # the layout is checked before any decoding
    with _raises_naming(tmp_path / "train" / "emu"):
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_folder_error_unknown_test_class(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path)
    _write(tmp_path / "test" / "emu" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _forbid_decoding(monkeypatch)
    with _raises_naming(tmp_path / "test" / "emu"):
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_folder_error_mixed_sizes_names_both_files(tmp_path) -> None:
    make_folder(tmp_path)
    odd = tmp_path / "train" / "dog" / "001.png"
    _write(odd, np.zeros((8, 9, 3), np.uint8))
    with _raises_naming(odd) as info:
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert str((tmp_path / "train" / "cat" / "000.png").resolve()) in str(info.value)
    assert "9x8" in str(info.value)


def test_folder_error_size_differs_between_train_and_test(tmp_path) -> None:
    make_folder(tmp_path, n_test=0)
    make_folder(tmp_path / "other", n_train=0, size=(4, 4))
    (tmp_path / "other" / "test").rename(tmp_path / "test")
    with pytest.raises(ImageFolderError, match="different sizes"):
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_folder_error_corrupt_image_is_named(tmp_path) -> None:
    make_folder(tmp_path)
    bad = tmp_path / "test" / "dog" / "000.png"
    bad.write_bytes(b"\x89PNG not really")
    with _raises_naming(bad):
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_folder_error_truncated_image_is_named(tmp_path) -> None:
    make_folder(tmp_path, size=(16, 16))
    bad = tmp_path / "train" / "cat" / "002.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with _raises_naming(bad):
        data.load_image_folder(str(tmp_path), cache_dir=str(tmp_path / "c"))


# --------------------------------------------------------------------------------------
# digits, load(), subsets, statistics


def test_digits_shapes_and_split() -> None:
    ds = data.load_digits()
    assert ds.train_images.shape == (1500, 8, 8, 1) and ds.test_images.shape == (297, 8, 8, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    assert ds.class_names == [str(i) for i in range(10)] and ds.name == "digits"
    # stratified: every class has about 297/1797 of its images in test
    test_counts = np.bincount(ds.test_labels, minlength=10)
    all_counts = test_counts + np.bincount(ds.train_labels, minlength=10)
    np.testing.assert_allclose(test_counts, all_counts * 297 / 1797, atol=1)
    # deterministic, and values are x*255/16 rounded
    again = data.load_digits()
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    np.testing.assert_array_equal(ds.test_labels, again.test_labels)
    allowed = np.round(np.arange(17) * 255 / 16).astype(np.uint8)
    assert np.isin(ds.train_images, allowed).all()


def test_load_dispatch(tmp_path) -> None:
    assert data.load("digits").name == "digits"
    make_folder(tmp_path / "f")
    ds = data.load("folder", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert ds.train_images.shape == (6, 8, 8, 3)
    with pytest.raises(ValueError, match=r"'nope'.*'tfds', 'folder', 'digits'"):
        data.load("nope")
    with pytest.raises(ValueError, match="root"):
        data.load("folder")
    with pytest.raises(ValueError, match="name"):
        data.load("tfds")


def _toy(n_per_class=(5, 7, 6), with_paths: bool = True) -> Dataset:
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(n_per_class)])
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 2, 2, 1), np.uint8
    )
    paths = [f"img{i}.png" for i in range(len(labels))] if with_paths else None
    return Dataset(images, labels, images[:3], labels[:3], ["a", "b", "c"], "toy", paths)


def test_balanced_subset_counts_and_alignment() -> None:
    ds = _toy()
    sub = data.balanced_subset(ds, 4, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.train_labels), [4, 4, 4])
    # rows stay aligned: image value == original index == path number
    idx = sub.train_images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(ds.train_labels[idx], sub.train_labels)
    assert sub.train_paths == [f"img{i}.png" for i in idx]
    assert sub.test_images is ds.test_images and sub.test_labels is ds.test_labels
    again = data.balanced_subset(ds, 4, seed=0)
    np.testing.assert_array_equal(again.train_images, sub.train_images)
    others = [data.balanced_subset(ds, 4, seed=s).train_images for s in range(1, 6)]
    assert any(not np.array_equal(o, sub.train_images) for o in others)
    assert data.balanced_subset(_toy(with_paths=False), 2, seed=0).train_paths is None
    with pytest.raises(ValueError, match="class 0"):
        data.balanced_subset(ds, 6, seed=0)


def test_mean_std_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 5, 4, 3), dtype=np.uint8)
    ds = Dataset(x, np.zeros(20, np.int32), x[:2], np.zeros(2, np.int32), ["a"], "t")
    mean, std = ds.mean_std()
    assert mean.dtype == np.float32 and mean.shape == (3,)
    np.testing.assert_allclose(mean, (x / 255.0).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, (x / 255.0).std(axis=(0, 1, 2)), rtol=1e-5)


def test_dataset_validates_shapes() -> None:
    x = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match="train_labels"):
        Dataset(x, np.zeros(2, np.int32), x, np.zeros(3, np.int32), ["a"], "t")
    with pytest.raises(ValueError, match="train_paths"):
        Dataset(x, np.zeros(3, np.int32), x, np.zeros(3, np.int32), ["a"], "t", ["p"])


# --------------------------------------------------------------------------------------
# augment / normalize


def _images(b=16, h=6, w=5, c=2, seed=0) -> np.ndarray:
    """Images whose pixels are all distinct (ignoring zero), so windows are unique."""
    rng = np.random.default_rng(seed)
    return (
        rng.permutation(np.arange(1, b * h * w * c + 1) % 255 + 1)
        .astype(np.uint8)
        .reshape(b, h, w, c)
    )


def test_augment_identity_without_padding_and_flip() -> None:
    x = _images()
    out = data.augment(x, jax.random.key(0), padding=0, flip=False)
    np.testing.assert_array_equal(np.asarray(out), x)


def test_augment_is_a_window_of_the_zero_padded_image() -> None:
    x = _images(b=64)
    p = 2
    for flip in (False, True):
        out = np.asarray(data.augment(x, jax.random.key(3), padding=p, flip=flip))
        assert out.shape == x.shape and out.dtype == np.uint8
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        h, w = x.shape[1:3]
        offsets, flips = set(), 0
        for b in range(len(x)):
            found = [
                (i, j, f)
                for i in range(2 * p + 1)
                for j in range(2 * p + 1)
                for f in ((False, True) if flip else (False,))
                if np.array_equal(out[b], padded[b, i : i + h, j : j + w][:, :: -1 if f else 1])
            ]
            assert found, f"sample {b} is not a (flipped) window of its padded image"
            offsets.add(found[0][:2])
            flips += found[0][2]
        assert len(offsets) > 5  # offsets are per sample
        if flip:
            assert 0 < flips < len(x)  # flips are per sample


def test_augment_flips_about_half() -> None:
    x = _images(b=2000, h=2, w=3, c=1)
    out = np.asarray(data.augment(x, jax.random.key(1), padding=0, flip=True))
    flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped ^ same)
    assert 0.45 < flipped.mean() < 0.55


def test_augment_jits_and_depends_on_key() -> None:
    x = _images()
    f = jax.jit(data.augment, static_argnames=("padding", "flip"))
    a = f(x, jax.random.key(0), padding=4, flip=True)
    np.testing.assert_array_equal(a, data.augment(x, jax.random.key(0)))
    assert not np.array_equal(a, f(x, jax.random.key(1), padding=4, flip=True))
    with pytest.raises(ValueError, match="padding"):
        data.augment(x, jax.random.key(0), padding=-1)


def test_normalize_matches_numpy() -> None:
    x = _images(c=3)
    mean = np.array([0.1, 0.5, 0.9], np.float32)
    std = np.array([0.2, 0.3, 0.25], np.float32)
    out = data.normalize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(np.asarray(out), (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# tfds (offline: no network, no TensorFlow)


class JaxnoiseTinyImages(tfds.core.GeneratorBasedBuilder):
    """A tiny grayscale dataset that tfds can build without TensorFlow or network.

    Images are given as PIL images, so tfds encodes them with Pillow (numpy arrays would
    need TensorFlow's PNG encoder), and the ArrayRecord writer needs no TensorFlow.
    """

    VERSION = tfds.core.Version("1.0.0")
    SIZES = {"train": 7, "test": 4}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=["zero", "one", "two"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self.SIZES}

    def _generate_examples(self, split):
        for i, (img, label) in enumerate(zip(*tiny_examples(split), strict=True)):
            yield i, {"image": Image.fromarray(img[..., 0], mode="L"), "label": int(label)}


def tiny_examples(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The examples JaxnoiseTinyImages writes for `split`."""
    n = JaxnoiseTinyImages.SIZES[split]
    rng = np.random.default_rng(len(split))
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), np.arange(n) % 3


class JaxnoiseOfflineFail(tfds.core.GeneratorBasedBuilder):
    """A dataset whose download always fails, as without network."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        raise ConnectionError("simulated: no network")

    def _generate_examples(self):
        yield from ()


def _sorted_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    """(image bytes, label) pairs in a canonical order."""
    return sorted((img.tobytes(), int(y)) for img, y in zip(images, labels, strict=True))


def test_tfds_real_build_and_read_without_tensorflow(tmp_path) -> None:
    ds = data.load_tfds("jaxnoise_tiny_images", data_dir=str(tmp_path))
    # ArrayRecord files were written, and read back through tfds.data_source
    assert list(tmp_path.glob("jaxnoise_tiny_images/1.0.0/*train.array_record*"))
    for split in ("train", "test"):
        # tfds shuffles examples when it writes them: compare in a canonical order
        got = _sorted_pairs(getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels"))
        assert got == _sorted_pairs(*tiny_examples(split))
    assert ds.train_labels.dtype == np.int32 and ds.train_images.dtype == np.uint8
    assert ds.class_names == ["zero", "one", "two"] and ds.name == "jaxnoise_tiny_images"
    # prepared data is read with download=False too
    again = data.load_tfds("jaxnoise_tiny_images", data_dir=str(tmp_path), download=False)
    np.testing.assert_array_equal(again.test_images, ds.test_images)


@pytest.mark.parametrize(("name", "shape"), [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_mock_data(name, shape) -> None:
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load_tfds(name)
    assert ds.train_images.shape == (5, *shape) and ds.test_images.shape == (5, *shape)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    # Without metadata files, the label names come from the builder's code, where
    # cifar10/mnist declare only ClassLabel(num_classes=10): names '0'..'9'.
    assert ds.class_names == [str(i) for i in range(10)]
    assert ((ds.train_labels >= 0) & (ds.train_labels < 10)).all()


def test_tfds_mock_data_through_load() -> None:
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("tfds", name="cifar10")
    assert ds.train_images.shape == (3, 32, 32, 3) and ds.name == "cifar10"


def test_tfds_download_failure_names_offline_alternatives(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tfds_source, "_tf_importable", lambda: False)
    with pytest.raises(RuntimeError) as info:
        data.load_tfds("jaxnoise_offline_fail", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "failed" in msg and "ConnectionError: simulated: no network" in msg
    assert "--config.data.source=folder --config.data.root=" in msg
    assert "--config.data.source=digits" in msg
    assert isinstance(info.value.__cause__, ConnectionError)


def test_tfds_not_prepared_and_no_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tfds_source, "_tf_importable", lambda: False)
    with pytest.raises(RuntimeError, match="--config.data.source=digits"):
        data.load_tfds("jaxnoise_tiny_images", data_dir=str(tmp_path), download=False)


def test_tfds_unknown_name_is_a_value_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        data.load_tfds("jaxnoise_no_such_dataset", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------
# real CIFAR-10 JPEGs from ../shared/data (skipped when absent)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """CIFAR-10 JPEG tarball extracted into a session tmp dir."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"../shared/data/cifar10-jpeg.tar.gz not found: {CIFAR_TARBALL} is absent")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(CIFAR_TARBALL) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.mark.slow
def test_folder_on_real_cifar10(cifar_root, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    ds = data.load_image_folder(str(cifar_root), cache_dir=str(cache))
    t1 = time.perf_counter()
    assert ds.train_images.shape == (50000, 32, 32, 3)
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert ds.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    mean, std = ds.mean_std()
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=1e-3)
    np.testing.assert_allclose(std, [0.2452, 0.2428, 0.2606], atol=1e-3)
    _forbid_decoding(monkeypatch)
    t2 = time.perf_counter()
    cached = data.load_image_folder(str(cifar_root), cache_dir=str(cache))
    t3 = time.perf_counter()
    print(f"\nCIFAR-10 folder: first load {t1 - t0:.2f} s, cached load {t3 - t2:.2f} s")
    np.testing.assert_array_equal(cached.train_images[::997], ds.train_images[::997])
    np.testing.assert_array_equal(cached.train_labels, ds.train_labels)


# --------------------------------------------------------------------------------------
# preparing a real tfds builder (cifar10) from fake downloaded files, and the fast failures


def write_fake_cifar10_download(root: Path, per_file: int = 3) -> dict[str, list]:
    """The extracted cifar-10-binary.tar.gz layout with `per_file` random images per batch
    file; returns {split: [(image, label), ...]}."""
    rng = np.random.default_rng(10)
    base = root / "cifar-10-batches-bin"
    base.mkdir(parents=True)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (base / "batches.meta.txt").write_text("\n".join(names) + "\n")
    written: dict[str, list] = {"train": [], "test": []}
    files = [(f"data_batch_{i}.bin", "train") for i in range(1, 6)] + [("test_batch.bin", "test")]
    for fname, split in files:
        chunks = []
        for _ in range(per_file):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            label = int(rng.integers(0, 10))
            chunks.append(bytes([label]) + img.transpose(2, 0, 1).tobytes())  # CHW on disk
            written[split].append((img, label))
        (base / fname).write_bytes(b"".join(chunks))
    return written


def test_tfds_cifar10_prepared_from_fake_download_and_read(tmp_path, monkeypatch) -> None:
    """The real tfds cifar10 builder prepares from (fake) downloaded files, as tfds' own
    DatasetBuilderTestCase does by patching download_and_extract; jaxnoise then reads the
    freshly written ArrayRecord files. Needs TensorFlow: pip install -e '.[prepare]'."""
    pytest.importorskip("tensorflow", reason="preparing cifar10 needs the prepare extra")
    from unittest import mock

    written = write_fake_cifar10_download(tmp_path / "download")
    monkeypatch.setattr(tfds_source, "_unreachable_hosts", lambda urls: [])  # offline test machine
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        return_value=str(tmp_path / "download"),
    ):
        ds = data.load_tfds("cifar10", data_dir=str(tmp_path / "tfds"))
    assert list((tmp_path / "tfds").glob("cifar10/*/cifar10-train.array_record*"))
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"]  # from batches.meta.txt
    for split, n in (("train", 15), ("test", 3)):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert _sorted_pairs(images, labels) == sorted(
            (img.tobytes(), y) for img, y in written[split]
        )
    # prepared: read again without any download
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        side_effect=AssertionError("downloaded again"),
    ):
        again = data.load_tfds("cifar10", data_dir=str(tmp_path / "tfds"), download=False)
    np.testing.assert_array_equal(again.train_images, ds.train_images)


def _no_prepare(*args, **kwargs):
    raise AssertionError("download_and_prepare was called")


def test_tfds_offline_fails_fast_with_a_blocked_network(tmp_path, monkeypatch) -> None:
    """No network: a probe of the download host fails at once and nothing is downloaded (tfds
    itself would retry for minutes); the error is one line naming the host and the fixes."""
    import socket

    def blocked(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(tfds_source, "_tf_importable", lambda: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _no_prepare)
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load_tfds("cifar10", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert "www.cs.toronto.edu (OSError: network blocked by the test)" in msg
    assert "TensorFlow, which is not installed" not in msg
    assert "pip install -e '.[prepare]'" in msg and "--config.data.source=digits" in msg


def test_tfds_without_tensorflow_fails_fast(tmp_path, monkeypatch) -> None:
    """Network up but no TensorFlow: refused before anything is downloaded, naming the extra."""
    monkeypatch.setattr(tfds_source, "_unreachable_hosts", lambda urls: [])
    monkeypatch.setattr(tfds_source, "_tf_importable", lambda: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _no_prepare)
    with pytest.raises(data.DatasetUnavailable, match=r"needs TensorFlow, which is not installed"):
        data.load_tfds("cifar100", data_dir=str(tmp_path))


def test_unreachable_hosts_lists_each_host_once(monkeypatch) -> None:
    import socket

    tried = []

    def fake(address, timeout):
        tried.append(address)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", fake)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    bad = tfds_source._unreachable_hosts(
        ["https://a.example/x.tgz", "https://a.example/y", "http://b.example:8080/z"]
    )
    assert tried == [("a.example", 443), ("b.example", 8080)]
    assert bad == [
        "a.example (ConnectionRefusedError: refused)",
        "b.example (ConnectionRefusedError: refused)",
    ]
    monkeypatch.setenv("https_proxy", "http://proxy:3128")  # the proxy downloads: no probe
    assert tfds_source._unreachable_hosts(["https://a.example/x.tgz"]) == []
