"""Which training labels are wrong: jaxnoise's list against cleanlab's ``find_label_issues``.

python benchmarks/bench_detection.py                   # quickstart + reduced CIFAR-10 (~20 min)
python benchmarks/bench_detection.py --parts quickstart

Each setting trains once through ``jaxnoise.loops.train_and_evaluate`` (50% symmetric noise;
M-DYR-H, and on CIFAR-10 also plain cross-entropy; the workdirs under ``--workdir-root`` are
kept, so a re-run resumes instead of retraining) and reads the last epoch's ``per_sample.npz``.
From that one run:

- jaxnoise: the samples with p(noisy) > 0.5 (the BMM posterior that trains the next epoch);
- cleanlab: ``cleanlab.filter.find_label_issues`` on the softmax of the same tracking pass's
  logits (in-sample probabilities of the same model), and its self-confidence ranking;
- the naive baseline: the model's prediction disagrees with the given label.

On the quickstart, cleanlab is also given what its documentation asks for: out-of-sample
probabilities from K-fold cross-validation (K plain cross-entropy models, each trained on the
other folds with the quickstart schedule). cleanlab is a benchmark-only dependency
(``pip install cleanlab``), never a jaxnoise one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tarfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import bootstrap_state, git_commit  # noqa: E402
from configs import cifar10_m_dyr_h, quickstart  # noqa: E402
from jaxnoise import inputs, loops  # noqa: E402

PARTS = ("quickstart", "cifar10", "cifar10_ce")
MARKER = "<!-- interpretation: kept when the numbers are regenerated -->"
CIFAR_TAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def quickstart_config():
    """The quickstart as shipped: digits, small CNN, M-DYR-H, 50% symmetric noise, 60 epochs."""
    return quickstart.get_config()


def cifar_config(root: str, method: str = "M-DYR-H"):
    """Reduced CIFAR-10: 500 images per class, small CNN, 50% noise, 18 epochs."""
    c = cifar10_m_dyr_h.get_config()
    c.method = method
    c.data.source = "folder"
    c.data.name = "cifar10"
    c.data.root = root
    c.data.subset_per_class = 500
    c.noise = 0.5
    c.model = "small_cnn"
    c.width = 32
    c.epochs = 18
    c.lr_milestones = (14,)
    c.bootstrap.start_epoch = 8
    c.eval_batch_size = 1000
    return c


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    from scipy.stats import rankdata

    pos = positives.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def scores(flagged: np.ndarray, noise_mask: np.ndarray, ranking: np.ndarray | None) -> dict:
    """Precision, recall, F1, number flagged (and AUROC of a ranking) against the true mask."""
    tp = int(np.sum(flagged & noise_mask))
    n = int(flagged.sum())
    p = tp / n if n else float("nan")
    r = tp / int(noise_mask.sum())
    f1 = 2 * p * r / (p + r) if n and (p + r) > 0 else float("nan")
    out = {"flagged": n, "precision": p, "recall": r, "f1": f1}
    out["auroc"] = auroc(ranking, noise_mask) if ranking is not None else float("nan")
    return out


def cleanlab_rows(labels: np.ndarray, probs: np.ndarray, mask: np.ndarray, tag: str) -> dict:
    """cleanlab's find_label_issues (default prune_by_noise_rate) and its self-confidence rank."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: cleanlab's default multiprocessing forks, which does not mix with JAX's threads.
    issues = find_label_issues(labels=labels, pred_probs=probs, n_jobs=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return {f"cleanlab find_label_issues ({tag})": scores(issues, mask, -quality)}


def cross_val_probs(config, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold softmax probabilities of plain cross-entropy models (cleanlab's recipe)."""
    import jax.numpy as jnp

    from jaxnoise import forward
    from jaxnoise.bootstrap import schedule
    from jaxnoise.bootstrap import step as step_lib

    c = config.copy_and_resolve_references()
    c.method = "CE"
    ds = inputs.load_data(c)
    noisy, mask = inputs.inject_noise(c, ds)
    n = len(noisy)
    order = np.random.default_rng(c.seed).permutation(n)
    probs = np.zeros((n, ds.num_classes), np.float64)
    for f in range(folds):
        held = np.sort(order[f::folds])
        keep = np.setdiff1d(np.arange(n), held)
        sub = dataclasses.replace(
            ds, train_images=ds.train_images[keep], train_labels=noisy[keep], train_paths=None
        )
        cf = c.copy_and_resolve_references()
        cf.seed = c.seed + f + 1  # each fold's model: its own init, shuffling and augmentation
        cf.bootstrap.drop_last = True  # full batches (the steps' position comes from the count)
        graphdef, tx, state, aux = bootstrap_state(cf, sub)
        mean, std = sub.mean_std()
        data = {"images": jnp.asarray(sub.train_images), "labels": jnp.asarray(noisy[keep])}
        phase = schedule.phase_for_epoch(cf, 1)
        step = step_lib.make_train_step(graphdef, tx, cf, phase, ds.num_classes, mean, std)
        permutation = step_lib.make_permutation_fn(cf.seed, len(keep))
        for epoch in range(1, cf.epochs + 1):  # lr and positions come from the step count
            perm = permutation(np.int32(epoch))
            for _ in range(len(keep) // cf.bootstrap.batch_size):
                state, _ = step(state, data, aux, perm)
        forward_fn = forward.make_forward(graphdef, cf, mean, std)
        _, logits = forward_fn(state, jnp.asarray(ds.train_images[held]), jnp.asarray(noisy[held]))
        probs[held] = softmax(np.asarray(logits))
        print(f"  fold {f + 1}/{folds} done", flush=True)
    return probs, noisy, mask


def evaluate(name: str, config, workdir: str, cv_folds: int) -> dict:
    """Train (or resume) one setting and compare the lists; returns a result record."""
    t = time.time()
    summary = loops.train_and_evaluate(config, workdir)
    seconds = time.time() - t
    d = np.load(os.path.join(workdir, "per_sample.npz"))
    if "logits" not in d:
        raise SystemExit(f"{workdir}/per_sample.npz has no logits: re-run with a newer jaxnoise")
    labels, mask = d["noisy_label"].astype(np.int64), d["noise_mask"].astype(bool)
    probs = softmax(d["logits"])
    rows = {
        "jaxnoise p(noisy) > 0.5": scores(d["p_noisy"] > 0.5, mask, d["p_noisy"]),
        "prediction != given label": scores(d["prediction"] != labels, mask, None),
    }
    rows.update(cleanlab_rows(labels, probs, mask, "same model's probabilities"))
    cv_seconds = None
    if cv_folds:
        t = time.time()
        cv_probs, cv_labels, cv_mask = cross_val_probs(config, cv_folds)
        assert np.array_equal(cv_labels, labels) and np.array_equal(cv_mask, mask)
        rows.update(cleanlab_rows(labels, cv_probs, mask, f"{cv_folds}-fold CE probabilities"))
        cv_seconds = time.time() - t
    return {
        "name": name,
        "n_train": int(len(labels)),
        "noisy_fraction": float(mask.mean()),
        "best_acc": summary["best_acc"],
        "last_acc": summary["last_acc"],
        "epochs": int(config.epochs),
        "method": config.method,
        "train_seconds": seconds,
        "cv_seconds": cv_seconds,
        "rows": rows,
    }


def ensure_cifar(root: str) -> str | None:
    """Extract the shared CIFAR-10 JPEGs to ``root`` once; None if the archive is absent."""
    if os.path.isdir(os.path.join(root, "train")):
        return root
    if not os.path.exists(CIFAR_TAR):
        return None
    os.makedirs(root, exist_ok=True)
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(root, filter="data")
    return root


def markdown(results: list[dict], commands: list[str]) -> str:
    """The results page."""
    commit = git_commit()
    lines = [
        "# Label-issue detection: jaxnoise vs cleanlab",
        "",
        f"{os.cpu_count()}-core CPU, jaxnoise commit {commit}. Commands:",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['name']}",
            "",
            f"{r['n_train']} training samples, {r['noisy_fraction']:.1%} of the labels wrong; "
            f"{r['method']}, {r['epochs']} epochs: test accuracy best {r['best_acc']:.2f}%, last "
            f"{r['last_acc']:.2f}%; training {r['train_seconds']:.0f} s"
            + (f", cross-validation {r['cv_seconds']:.0f} s." if r["cv_seconds"] else "."),
            "",
            "| method | flagged | precision | recall | F1 | AUROC of its ranking |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for m, s in r["rows"].items():
            a = "—" if np.isnan(s["auroc"]) else f"{s['auroc']:.4f}"
            lines.append(
                f"| {m} | {s['flagged']} | {s['precision']:.4f} | {s['recall']:.4f} | "
                f"{s['f1']:.4f} | {a} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the requested settings and print (and optionally write) the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated settings")
    p.add_argument("--workdir-root", default="/tmp/jaxnoise_bench_detection")
    p.add_argument(
        "--cifar-root",
        default="/tmp/jaxnoise_cifar10",
        help="CIFAR-10 image folder (extracted from ../shared/data if missing)",
    )
    p.add_argument("--cv-folds", type=int, default=4, help="quickstart cross-validation folds")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "detection.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    results = []
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    for part in parts:
        wd = os.path.join(args.workdir_root, part)
        if part == "quickstart":
            print("quickstart ...", flush=True)
            results.append(
                evaluate(
                    "Quickstart: digits, 50% symmetric noise",
                    quickstart_config(),
                    wd,
                    args.cv_folds,
                )
            )
        elif part in ("cifar10", "cifar10_ce"):
            root = ensure_cifar(args.cifar_root)
            if root is None:
                print(f"skipping {part}: {CIFAR_TAR} not found", flush=True)
                continue
            print(f"{part} ...", flush=True)
            method = "CE" if part == "cifar10_ce" else "M-DYR-H"
            name = (
                "CIFAR-10 (JPEG folder), 500 images per class, 50% symmetric noise, small CNN, "
                + method
            )
            results.append(evaluate(name, cifar_config(root, method), wd, 0))
        else:
            raise SystemExit(f"unknown part {part!r}; allowed: {', '.join(PARTS)}")
        with open(os.path.join(wd, "detection.json"), "w") as f:
            json.dump(results[-1], f, indent=2)
    cmd = "python benchmarks/bench_detection.py"
    if tuple(parts) != PARTS:
        cmd += f" --parts {','.join(parts)}"
    text = markdown(results, [cmd])
    print(text)
    if not args.no_write:
        kept = ""
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = f.read()
            if MARKER in old:
                kept = old[old.index(MARKER) :]
        with open(args.out, "w") as f:
            f.write(text + ("\n" + kept if kept else ""))


if __name__ == "__main__":
    main()
