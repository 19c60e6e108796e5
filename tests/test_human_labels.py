"""Human label sets aligned by identity (jaxnoise/labels/human.py), through the real loaders.

Each synthetic dataset encodes every image's original CIFAR position in its pixels, so a label
that lands on the wrong image is seen directly; the expected labels are computed here from that
position, never by the code under test.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxnoise import data, noise
from jaxnoise import labels as labels_lib

N, C = 40, 10
RNG = np.random.default_rng(0)
CLEAN = RNG.integers(0, C, N)  # clean labels in the original CIFAR order
HUMAN = np.where(RNG.random(N) < 0.4, (CLEAN + 1 + RNG.integers(0, C - 1, N)) % C, CLEAN)
TFDS_ORDER = RNG.permutation(N)  # tfds stores record j = original position TFDS_ORDER[j]


def _image(pos: int) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[0, 0, 0], img[0, 0, 1] = pos % 256, pos // 256
    return img


def _positions(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def _records(split, with_sets: bool):
    out = []
    for pos in TFDS_ORDER:
        r = {"image": _image(int(pos)), "label": int(CLEAN[pos]), "id": f"{split}_{pos:05d}"}
        if with_sets:
            r.update(
                worse_label=int(HUMAN[pos]),
                aggre_label=int(CLEAN[pos]),
                random_label1=int(HUMAN[pos]),
                random_label2=0,
                random_label3=0,
            )
        out.append(r)
    return out


def _mock(with_sets: bool = False):
    def as_data_source(self, split, *args, **kwargs):
        if isinstance(split, (list, tuple)):
            return [_records(s, with_sets) for s in split]
        return _records(split, with_sets)

    return tfds.testing.mock_data(
        as_data_source_fn=as_data_source, policy=tfds.testing.MockPolicy.USE_CODE
    )


@pytest.fixture(scope="module")
def cifar10():
    with _mock():
        return data.load_tfds("cifar10")


def test_tfds_loader_keeps_the_record_ids(cifar10) -> None:
    pos = _positions(cifar10.train_images)
    np.testing.assert_array_equal(pos, TFDS_ORDER)  # the records come in tfds order
    assert cifar10.train_ids.tolist() == [f"train_{p:05d}" for p in pos]
    np.testing.assert_array_equal(cifar10.train_labels, CLEAN[pos])


def test_cifar_order_file_lands_on_the_right_images(cifar10, tmp_path) -> None:
    path = tmp_path / "human.npz"
    np.savez(path, clean_label=CLEAN, worse_label=HUMAN)  # the CIFAR-N release's layout
    for order in ("cifar", "auto"):  # auto: a file with clean_label on tfds CIFAR is the release
        ds = labels_lib.resolve(
            cifar10, label_file=str(path), label_key="worse_label", label_order=order
        )
        got = ds.label_sets[labels_lib.KEY]
        np.testing.assert_array_equal(got, HUMAN[_positions(ds.train_images)])
    # By position (the old behaviour) most labels would land on other images:
    assert np.mean(HUMAN != HUMAN[TFDS_ORDER]) > 0.2


def test_wrong_order_is_caught_by_the_clean_labels(cifar10, tmp_path) -> None:
    path = tmp_path / "human.npz"
    np.savez(path, clean_label=CLEAN, worse_label=HUMAN)
    with pytest.raises(ValueError, match=r"clean_label disagrees .* on \d+ of 40 samples"):
        labels_lib.resolve(
            cifar10, label_file=str(path), label_key="worse_label", label_order="dataset"
        )


def test_ambiguous_order_is_refused(cifar10, tmp_path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, HUMAN)
    with pytest.raises(ValueError, match=r"pass config\.label_order='cifar'"):
        labels_lib.resolve(cifar10, label_file=str(path), label_key="", label_order="auto")
    ds = labels_lib.resolve(cifar10, label_file=str(path), label_key="", label_order="cifar")
    np.testing.assert_array_equal(ds.label_sets["human"], HUMAN[TFDS_ORDER])


def test_multi_array_file_without_key_is_refused_with_its_keys(cifar10, tmp_path) -> None:
    path = tmp_path / "human.npz"
    np.savez(path, clean_label=CLEAN, worse_label=HUMAN, aggre_label=CLEAN)
    with pytest.raises(ValueError, match=r"aggre_label.*label_key|label_key.*aggre_label"):
        labels_lib.resolve(cifar10, label_file=str(path), label_key="", label_order="cifar")


def test_cifar10_n_source_carries_the_label_sets(tmp_path) -> None:
    with _mock(with_sets=True):
        ds = data.load_tfds("cifar10_n")
    pos = _positions(ds.train_images)
    np.testing.assert_array_equal(ds.label_sets["worse_label"], HUMAN[pos])
    np.testing.assert_array_equal(ds.train_labels, CLEAN[pos])  # clean kept as ground truth
    out = labels_lib.resolve(ds, label_file="", label_key="worse_label")
    np.testing.assert_array_equal(out.label_sets["human"], HUMAN[pos])
    with pytest.raises(ValueError, match=r"label_key = 'noisy_label'.*has: aggre_label"):
        labels_lib.resolve(ds, label_file="", label_key="noisy_label")
    # ... and the subset keeps the label sets and ids with their images
    sub = data.balanced_subset(out, 1, seed=0)
    pos = _positions(sub.train_images)
    np.testing.assert_array_equal(sub.label_sets["human"], HUMAN[pos])
    assert sub.train_ids.tolist() == [f"train_{p:05d}" for p in pos]


def _folder(tmp_path):
    root = tmp_path / "img"
    for pos in range(N):
        d = root / "train" / str(CLEAN[pos])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(pos)).save(d / f"{pos:04d}.png")
    (root / "test" / "0").mkdir(parents=True)
    Image.fromarray(_image(0)).save(root / "test" / "0" / "x.png")
    return root


def test_csv_in_shuffled_order_maps_by_path(tmp_path) -> None:
    root = _folder(tmp_path)
    ds = data.load_image_folder(str(root), cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for pos in RNG.permutation(N):
            w.writerow([f"train/{CLEAN[pos]}/{pos:04d}.png", HUMAN[pos]])
    out = labels_lib.resolve(ds, label_file=str(path), label_key="")
    np.testing.assert_array_equal(out.label_sets["human"], HUMAN[_positions(ds.train_images)])
    # A file without paths is refused on a folder (its order would be a guess) ...
    np.save(tmp_path / "plain.npy", HUMAN)
    with pytest.raises(ValueError, match="has no path column"):
        labels_lib.resolve(ds, label_file=str(tmp_path / "plain.npy"), label_key="")
    # ... and a CSV missing a sample names it.
    rows = list(csv.reader(open(path)))
    with open(tmp_path / "short.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[:-1])
    with pytest.raises(ValueError, match=r"1 of 40 training samples are not in its id column"):
        labels_lib.resolve(ds, label_file=str(tmp_path / "short.csv"), label_key="")


def _write_unnamed(path, values) -> str:
    """One unnamed label set: .npy, .npz (one positional array) or one integer per line."""
    if path.suffix == ".npy":
        np.save(path, values)
    elif path.suffix == ".npz":
        np.savez(path, values)
    else:
        path.write_text("".join(f"{int(v)}\n" for v in values))
    return str(path)


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "txt"])
def test_file_in_dataset_order_gives_the_noisy_labels(tmp_path, fmt) -> None:
    """A file of one label per sample in dataset order (embeddings: the user's own row order)
    becomes exactly the noisy labels; a wrong length or a label outside the classes is refused,
    naming it (ported from test_noise.py, when noise.from_human also read files)."""
    n, rng = 1000, np.random.default_rng(16)
    clean = rng.integers(0, C, n).astype(np.int32)
    human = np.where(rng.random(n) < 0.3, rng.integers(0, C, n), clean)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    ds = data.Dataset(x, clean, x[:10], clean[:10], [str(c) for c in range(C)], "emb")
    path = _write_unnamed(tmp_path / f"human.{fmt}", human)
    out = labels_lib.resolve(ds, label_file=path, label_key="")  # auto: dataset order
    noisy, mask = noise.apply(
        "human", ds.train_labels, num_classes=C, human_labels=out.label_sets[labels_lib.KEY]
    )
    np.testing.assert_array_equal(noisy, human)
    np.testing.assert_array_equal(mask, human != clean)
    short = _write_unnamed(tmp_path / f"short.{fmt}", human[:999])
    with pytest.raises(ValueError, match=r"short\.\w+' has shape \(999,\), expected \(1000,\)"):
        labels_lib.resolve(ds, label_file=short, label_key="", label_order="dataset")
    for value in (77, -4):
        bad = human.copy()
        bad[10] = value
        path = _write_unnamed(tmp_path / f"bad{value}.{fmt}", bad)
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, {C}\), got .*{value}"):
            labels_lib.resolve(ds, label_file=path, label_key="")


def test_label_issues_csv_carries_the_sample_ids(tmp_path) -> None:
    """A few epochs end to end on embeddings with their own ids: label_issues.csv names them."""
    from configs import features_m_dyr_h
    from jaxnoise import loops, report

    rng = np.random.default_rng(1)
    n, d = 200, 8
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, d)) + 2.0 * y[:, None]).astype(np.float32)
    ids = np.asarray([f"sample-{i:03d}" for i in range(n)])
    np.savez(
        tmp_path / "emb.npz",
        train_features=x,
        train_labels=y,
        test_features=x[:50],
        test_labels=y[:50],
        train_ids=ids,
    )
    flipped = np.where(rng.random(n) < 0.3, 1 - y, y)
    with open(tmp_path / "human.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i in rng.permutation(n):
            w.writerow([ids[i], flipped[i]])
    c = features_m_dyr_h.get_config()
    c.data.features = str(tmp_path / "emb.npz")
    c.noise_kind, c.label_file = "human", str(tmp_path / "human.csv")
    c.method, c.epochs, c.lr_milestones, c.bootstrap.batch_size, c.lr = "CE", 3, (), 50, 0.05
    c.mlp_hidden = (16,)
    wd = tmp_path / "wd"
    loops.train_and_evaluate(c, str(wd))
    info = json.load(open(wd / "dataset.json"))
    assert info["train_ids"] == ids.tolist()
    with np.load(wd / "per_sample.npz") as ps:
        np.testing.assert_array_equal(ps["noisy_label"], flipped)
    if not (wd / "label_issues.csv").exists():
        report.write_report(str(wd))
    rows = list(csv.DictReader(open(wd / "label_issues.csv")))
    assert rows and all(r["id"] == ids[int(r["index"])] for r in rows)
