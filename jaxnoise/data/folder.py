"""Image folders as a source: ``ROOT/{train,test}/<class>/<image>``, decoded with Pillow once.

The decoded arrays are cached as an uncompressed ``.npz`` (:mod:`jaxnoise.data.cache`) keyed by a
fingerprint of the file list (names, sizes, modification times): adding, removing or touching an
image rebuilds it. The layout is checked before any image is opened, and every problem (a missing
split, an empty class, an unreadable image, two sizes) raises :class:`ImageFolderError` naming the
path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxnoise.data import cache
from jaxnoise.data.dataset import Dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_CACHE_VERSION = "1"


class ImageFolderError(ValueError):
    """An image folder is missing, malformed, or holds an unreadable image."""


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


def list_images(folder: str) -> list[str]:
    """The image files below ``folder`` (its subfolders too; hidden ones skipped), as sorted
    paths relative to it; ImageFolderError when it is not a folder."""
    if not os.path.isdir(folder):
        raise ImageFolderError(f"image folder {folder} does not exist or is not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        out += [
            os.path.normpath(os.path.join(rel, f))
            for f in filenames
            if f[0] != "." and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return sorted(out)


def decode_images(root: str, relpaths: Sequence[str]) -> np.ndarray:
    """Decode image files as a training image folder's are: (N, H, W, C) uint8, C=1 iff every
    image is grayscale; ImageFolderError naming an unreadable image or a second size."""
    return _decode_files(Path(root), relpaths)


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


def load_image_folder(root: str, *, cache_dir: str | None = None) -> Dataset:
    """Load ROOT/{train,test}/<class>/<image> into a Dataset, cached as an .npz."""
    root_path = Path(root).expanduser().resolve()
    listing = _scan_folder(root_path)
    cdir = Path(cache_dir).expanduser() if cache_dir else cache.default_dir(root_path)
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
        cache.write_npz(cache_path, data)
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
