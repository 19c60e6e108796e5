"""Speed and memory of training a head on features: one epoch's train steps, tracking pass, fit.

    python benchmarks/bench_features.py --n 50000 --d 1600 --model linear     # one setting
    python benchmarks/bench_features.py --collect                              # the table

Each setting runs in its own process (so that peak memory is its own): a full jaxnoise run
(``loops.train_and_evaluate``) of M-DYR-H for 3 epochs (bootstrapping from epoch 2, so the
timed epoch 3 runs the most expensive train step) on synthetic Gaussian class clusters (10
classes, 50% symmetric noise) handed to the run in memory instead of read from a file. Times are
those the run logs in ``metrics.jsonl`` for epoch 3 (everything compiled): the train steps, the
per-sample tracking pass over the training set, the mixture fit, the test evaluation. Peak host
memory is the process's maximum resident set size; peak device memory is the device's
``peak_bytes_in_use`` where the backend reports it (GPU/TPU; not on CPU, where the device
memory *is* the host memory). Results go to benchmarks/results/features.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "features")


def synthetic(n: int, d: int, k: int = 10, n_test: int = 10000, seed: int = 0):
    """Gaussian class clusters as a features Dataset (float32 (n, d))."""
    import numpy as np

    from jaxnoise import data

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.3, (k, d)).astype(np.float32)

    def make(m):
        y = rng.integers(0, k, m).astype(np.int32)
        x = rng.standard_normal((m, d), dtype=np.float32)
        x += centers[y]
        return x, y

    (xtr, ytr), (xte, yte) = make(n), make(n_test)
    return data.Dataset(xtr, ytr, xte, yte, [str(i) for i in range(k)], "synthetic")


def run_one(args) -> dict:
    """One setting: a 3-epoch M-DYR-H run; epoch 3's seconds and the peak memory."""
    import jax

    from configs import default
    from jaxnoise import inputs, loops

    ds = synthetic(args.n, args.d)
    c = default.get_config()
    c.data.source, c.data.features = "features", __file__  # any existing file; not read
    c.data.crop_padding, c.data.flip, c.bootstrap.track_augment = 0, False, False
    c.data.normalization = "dataset"
    c.model, c.mlp_hidden = args.model, tuple(args.hidden)
    c.method, c.noise, c.lr = "M-DYR-H", 0.5, 0.001
    c.epochs, c.lr_milestones, c.bootstrap.start_epoch = 3, (1,), 2
    inputs.load_data = lambda config: ds  # the synthetic arrays, in memory
    with tempfile.TemporaryDirectory() as wd:
        t = time.time()
        s = loops.train_and_evaluate(c, wd)
        wall = time.time() - t
    r = s["history"][-1]
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return {
        "n": args.n,
        "d": args.d,
        "model": args.model + (f" {tuple(args.hidden)}" if args.model == "mlp" else ""),
        "device": f"{dev.platform} ({dev.device_kind})",
        "train_s": r["seconds"]["train"],
        "track_s": r["seconds"]["track"],
        "fit_s": r["seconds"]["fit"],
        "eval_s": r["seconds"]["eval"],
        "samples_per_s": r["images_per_s"],
        "run_wall_s": wall,
        "peak_host_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_device_gib": (stats or {}).get("peak_bytes_in_use", float("nan")) / 2**30,
        "feature_gib": args.n * args.d * 4 / 2**30,
        "command": "python benchmarks/bench_features.py " + " ".join(sys.argv[1:]),
    }


def collect(note: str = "") -> None:
    """benchmarks/results/features.md from features.jsonl (with an optional note on conditions)."""
    rows = [json.loads(x) for x in open(OUT + ".jsonl") if x.strip()]
    lines = [
        "# Heads on features: epoch time and memory",
        "",
        "Command: `python benchmarks/bench_features.py --n N --d D --model M [--hidden H]` per "
        "row (its own process), then `python benchmarks/bench_features.py --collect`.  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; jaxnoise commit {git_commit()}.",
        "",
        "M-DYR-H (the most expensive step: batch posteriors, clean forward, mixup, "
        "bootstrapping), batch 128, epoch 3 of a 3-epoch run, 50% symmetric noise on synthetic "
        "10-class Gaussian clusters. `train`: every train step of the epoch; `track`: the "
        "per-sample loss pass over all N training samples; `fit`: the BMM fit and posteriors; "
        "`eval`: 10,000 test samples. Host memory: peak RSS of the process (the float32 features "
        "alone are `features GiB`); device memory: `peak_bytes_in_use` (not reported on CPU).",
        "",
        *([note, ""] if note else []),
        "| N | D | head | device | train s | track s | fit s | eval s | epoch s | samples/s "
        "| features GiB | peak host GiB | peak device GiB |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        epoch = r["train_s"] + r["track_s"] + r["fit_s"] + r["eval_s"]
        dev = "–" if r["peak_device_gib"] != r["peak_device_gib"] else f"{r['peak_device_gib']:.2f}"
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['model']} | {r['device']} | {r['train_s']:.2f} "
            f"| {r['track_s']:.2f} | {r['fit_s']:.3f} | {r['eval_s']:.2f} | {epoch:.2f} "
            f"| {r['samples_per_s']:,.0f} | {r['feature_gib']:.2f} | {r['peak_host_gib']:.2f} "
            f"| {dev} |"
        )
    with open(OUT + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Run one setting (appending to features.jsonl) or collect the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--d", type=int, default=1600)
    ap.add_argument("--model", default="linear", choices=["linear", "mlp"])
    ap.add_argument("--hidden", type=int, nargs="*", default=[512])
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--note", default="", help="with --collect: how the rows were measured")
    args = ap.parse_args()
    if args.collect:
        collect(args.note)
        return
    rec = run_one(args)
    print(json.dumps(rec))
    with open(OUT + ".jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
