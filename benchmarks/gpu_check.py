"""The first measurement to take when a GPU is at hand (about 8 minutes on one GPU).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json   # any CPU, < 2 minutes

Measures, on whatever device jax sees, with synthetic CIFAR-sized pixels (the cost does not
depend on them):

1. the full-width (width 64) PreAct ResNet-18 train step at batch 128 of CE, M and M-DYR-H
   (its bootstrapping phase), median seconds per step after compilation, per compute dtype
   that jaxnoise has (float32 and bfloat16, ``config.compute_dtype``);
2. the tracking pass (eval forward + per-sample loss) over 50,000 images;
3. the BMM fit at 50,000 and 5,000,000 losses;
4. three full epochs of M-DYR-H on 50,000 images through ``loops.train_and_evaluate`` (train
   steps, tracking pass, fit, test evaluation, checkpoints), and from them the projected time of
   the published 300-epoch run.

Everything goes to one JSON file; the summary is printed. ``--smoke`` shrinks every size (a
width-4 small CNN, 512 images, 1 epoch, bfloat16 for M-DYR-H only) so the script itself is
tested on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import bootstrap_state, git_commit  # noqa: E402
from configs import default  # noqa: E402
from jaxnoise import data as data_lib  # noqa: E402
from jaxnoise import forward, inputs, keys, loops, mixture  # noqa: E402
from jaxnoise.bootstrap import schedule, step  # noqa: E402

FULL = {
    "arch": ("preact_resnet18", 64),
    "n": 50_000,
    "test": 10_000,
    "fit_sizes": (50_000, 5_000_000),
    "epochs": 3,
    "step_reps": 20,
}
# --smoke checks the script, not the network: a small CNN compiles in seconds, not minutes.
SMOKE = {
    "arch": ("small_cnn", 4),
    "n": 512,
    "test": 128,
    "fit_sizes": (5_000, 50_000),
    "epochs": 1,
    "step_reps": 1,
}
METHODS = ("CE", "M", "M-DYR-H")


def synthetic(n: int, n_test: int) -> data_lib.Dataset:
    """Random uint8 CIFAR-shaped images with random labels."""
    rng = np.random.default_rng(0)
    return data_lib.Dataset(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n),
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n_test),
        [str(i) for i in range(10)],
        "synthetic",
    )


def config_for(method: str, arch: tuple[str, int], dtype: str):
    c = default.get_config()
    c.method, (c.model, c.width) = method, arch
    c.compute_dtype = dtype
    return c


def step_cases(smoke: bool) -> list[tuple[str, str]]:
    """(method, compute dtype) pairs to time: all of them, or for --smoke float32 and one bf16."""
    if smoke:
        return [(m, "float32") for m in METHODS] + [("M-DYR-H", "bfloat16")]
    return [(m, d) for d in ("float32", "bfloat16") for m in METHODS]


def time_steps(ds: data_lib.Dataset, arch: tuple[str, int], reps: int, cases) -> dict:
    """Median seconds per train step (batch 128) per (method, compute dtype)."""
    out = {}
    data = {"images": jnp.asarray(ds.train_images), "labels": jnp.asarray(ds.train_labels)}
    perm = jnp.arange(ds.train_images.shape[0])
    for method, dtype in cases:
        c = config_for(method, arch, dtype)
        graphdef, tx, state, aux = bootstrap_state(c, ds)
        phase = schedule.phase_for_epoch(c, c.epochs)  # the method's full (last) phase
        fn = step.make_train_step(graphdef, tx, c, phase, 10, *ds.mean_std())
        times = []
        for r in range(reps + 2):  # two warm-up calls (compilation) are dropped
            t = time.perf_counter()
            state, m = fn(state, data, aux, perm)
            jax.block_until_ready(m["loss"])
            if r >= 2:
                times.append(time.perf_counter() - t)
        out[f"{method}/{dtype}"] = float(np.median(times))
        print(f"  step {method} {dtype}: {out[f'{method}/{dtype}'] * 1e3:.1f} ms", flush=True)
    return out


def time_tracking(ds: data_lib.Dataset, arch: tuple[str, int]) -> float:
    """Seconds of the tracking pass over the whole training set (compiled first)."""
    c = config_for("M-DYR-H", arch, "float32")
    graphdef, _, state, _ = bootstrap_state(c, ds)
    fwd = forward.make_forward(graphdef, c, *ds.mean_std())
    images, labels = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    key = keys.epoch_keys(c.seed, 0)[1]  # augmented, as the published tracking pass
    for _ in range(2):  # the first pass compiles
        t = time.perf_counter()
        loss, _ = fwd(state, images, labels, key)
        jax.block_until_ready(loss)
    return time.perf_counter() - t


def time_fits(sizes) -> dict:
    """Seconds of one BMM fit (compiled first) per number of losses."""
    out = {}
    for n in sizes:
        losses = jnp.asarray(np.random.default_rng(1).gamma(1.0, 1.0, n), jnp.float32)
        jax.block_until_ready(mixture.fit_bmm(losses).alphas)
        t = time.perf_counter()
        jax.block_until_ready(mixture.fit_bmm(losses).alphas)
        out[str(n)] = time.perf_counter() - t
    return out


def time_epochs(ds: data_lib.Dataset, arch: tuple[str, int], epochs: int) -> dict:
    """Seconds of whole M-DYR-H epochs (bootstrapping from the second) through the real loop."""
    c = config_for("M-DYR-H", arch, "float32")
    c.data.source, c.epochs = "digits", max(epochs, 2)  # the data is swapped in below
    c.lr_milestones, c.bootstrap.start_epoch = (1,), 2
    c.log_every_seconds = 0.0
    load = inputs.load_data
    inputs.load_data = lambda config: ds  # synthetic pixels instead of a dataset download
    try:
        with tempfile.TemporaryDirectory() as wd:
            t = time.time()
            s = loops.train_and_evaluate(c, wd, stop_after_epoch=epochs)
            total = time.time() - t
    finally:
        inputs.load_data = load
    per_epoch = [r["seconds"] for r in s["history"]]
    return {"total_s": total, "epochs": per_epoch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check of the script)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_check.json"))
    args = ap.parse_args()
    size = SMOKE if args.smoke else FULL
    t0 = time.time()
    device = jax.devices()[0]
    print(f"gpu_check on {device.platform} ({device.device_kind}), sizes: {size}", flush=True)
    ds = synthetic(size["n"], size["test"])
    result = {
        "device": f"{device.platform} {device.device_kind}",
        "count": jax.device_count(),
        "jax": jax.__version__,
        "commit": git_commit(),
        "smoke": args.smoke,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "sizes": size,
    }
    result["step_s"] = time_steps(ds, size["arch"], size["step_reps"], step_cases(args.smoke))
    result["tracking_pass_s"] = time_tracking(ds, size["arch"])
    print(f"  tracking pass over {size['n']}: {result['tracking_pass_s']:.2f} s", flush=True)
    result["bmm_fit_s"] = time_fits(size["fit_sizes"])
    print(f"  BMM fits: {result['bmm_fit_s']}", flush=True)
    result["epochs"] = time_epochs(ds, size["arch"], size["epochs"])
    last = result["epochs"]["epochs"][-1]  # the last epoch: bootstrapping, compiled (not smoke)
    per_epoch = sum(last.values())
    result["projected_300_epochs_min"] = 300 * per_epoch / 60 * (50_000 / size["n"])
    result["wall_s"] = time.time() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    what = (
        "(smoke: one mixup epoch, with its compilation)"
        if args.smoke
        else "(bootstrapping, compiled)"
    )
    print(
        f"last M-DYR-H epoch {what}: {per_epoch:.1f} s -> projected 300 epochs on 50,000 "
        f"images: {result['projected_300_epochs_min']:.1f} min; written {args.out} "
        f"({result['wall_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()
