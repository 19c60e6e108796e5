"""Images/s of one train step per algorithm (PreAct ResNet-18, batch 128, 32x32x3), vs CE.

    python benchmarks/bench_step.py                      # width 16 (1/4) and 64, writes results
    python benchmarks/bench_step.py --widths 16 --rounds 3 --no-write

Each algorithm's step is the real jaxnoise step of its bootstrapping phase (the most expensive
phase of the method), compiled once; the algorithms are timed in interleaved rounds (so machine
noise hits all alike) and reported as the median seconds per step and the cost relative to CE,
measured in one run.

DivideMix has no step of the same size: its epoch is two division passes (an eval forward of
every sample per network) and, per network, ceil(|labelled| / 64) semi-supervised steps of 64
labelled + 64 unlabelled samples (six forwards of 64 for the targets, one forward and backward
of the 256 mixed rows). Its row is therefore an *epoch* on CIFAR-10 (N = 50,000), built from
the median times of its real compiled semi step and eval chunk measured in the same rounds,
against an M-DYR-H epoch (ceil(N / 128) steps + its tracking pass), at a few labelled fractions.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import bootstrap_state, git_commit  # noqa: E402
from configs import default  # noqa: E402
from jaxnoise import data as data_lib  # noqa: E402
from jaxnoise import mixture  # noqa: E402
from jaxnoise.bootstrap import schedule, step  # noqa: E402
from jaxnoise.dividemix import loop as dividemix_loop  # noqa: E402
from jaxnoise.dividemix import step as dividemix_step  # noqa: E402

CIFAR_N = 50_000
LABELLED_FRACTIONS = (0.2, 0.5, 0.8)

ALGOS = {
    "CE": dict(method="CE"),
    "M": dict(method="M"),
    "M-DYR-H (batch)": dict(method="M-DYR-H"),
    "M-DYR-H (epoch)": dict(method="M-DYR-H", posterior_source="epoch"),
    "M-DYR-S (batch)": dict(method="M-DYR-S"),
    "MD-DYR-SH (batch)": dict(method="MD-DYR-SH"),
    "MD-DYR-SH (epoch)": dict(method="MD-DYR-SH", posterior_source="epoch"),
}


def fake_cifar(n: int = 1024) -> data_lib.Dataset:
    """Random CIFAR-shaped data (the step's cost does not depend on the pixels)."""
    rng = np.random.default_rng(0)
    return data_lib.Dataset(
        train_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n).astype(np.int32),
        test_images=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 10).astype(np.int32),
        class_names=[str(i) for i in range(10)],
        name="fake",
    )


def build(width: int, ds: data_lib.Dataset):
    """One compiled step (and its inputs) per algorithm."""
    steps = {}
    for name, over in ALGOS.items():
        c = default.get_config()
        c.width = width
        c.method = over["method"]
        c.bootstrap.posterior_source = over.get("posterior_source", "batch")
        graphdef, tx, state, aux = bootstrap_state(c, ds)
        losses = jnp.asarray(np.random.default_rng(1).gamma(1.0, 1.0, len(ds.train_labels)))
        state["mixture"] = mixture.fit(c.bootstrap.noise_model, losses)
        aux["p_noisy"] = mixture.posterior_noisy(state["mixture"], losses)
        phase = schedule.phase_for_epoch(c, c.epochs)  # the method's final (full) phase
        mean, std = ds.mean_std()
        fn = step.make_train_step(graphdef, tx, c, phase, 10, mean, std)
        data = {"images": jnp.asarray(ds.train_images), "labels": jnp.asarray(ds.train_labels)}
        perm = jnp.arange(len(ds.train_labels))
        steps[name] = [fn, state, data, aux, perm]
    return steps


def run_step(entry, i: int) -> float:
    """Time one step (blocking)."""
    fn, state, data, aux, perm = entry
    t = time.perf_counter()
    state, metrics = fn(state, data, aux, perm)
    jax.block_until_ready(metrics["loss"])
    entry[1] = state
    return time.perf_counter() - t


def build_dividemix(width: int, ds: data_lib.Dataset) -> dict:
    """DivideMix's compiled semi step and forward pass (``dividemix.loop.build``, on one device),
    its inputs, and one eval chunk (``eval_batch_size`` samples) for the forward."""
    from configs import cifar10_dividemix

    c = cifar10_dividemix.get_config()
    c.width, c.noise = width, 0.5
    pieces, tree = dividemix_loop.build(c, ds, ds.mean_std())
    n = len(ds.train_labels)
    data = {"images": jnp.asarray(ds.train_images), "labels": jnp.asarray(ds.train_labels)}
    labelled = jnp.arange(n) % 2 == 0
    i32 = jnp.int32
    epoch = i32(21)  # a semi-supervised epoch (1-based; the official loop's epoch 20)
    orders = dividemix_step.pool_orders(c.seed, epoch, i32(0), labelled)
    args = (data, jnp.full((n,), 0.9, jnp.float32), orders, epoch)
    idx = np.arange(c.eval_batch_size) % n  # one chunk: the forward runs it in one piece
    chunk = (data["images"][idx], data["labels"][idx])
    return {"pieces": pieces, "nets": tree["state"], "args": args, "chunk": chunk, "config": c}


def run_dividemix(entry: dict, i: int) -> tuple[float, float]:
    """(seconds of one semi step, seconds of one eval chunk of eval_batch_size samples)."""
    p, nets = entry["pieces"], entry["nets"]
    i32 = jnp.int32
    t = time.perf_counter()
    state, metrics = p.semi(
        nets["net1"], nets["net2"], *entry["args"], i32(i % 4), i32(400), i32(0)
    )
    jax.block_until_ready(metrics["loss"])
    semi = time.perf_counter() - t
    entry["nets"] = dict(nets, net1=state)
    t = time.perf_counter()
    loss, _ = p.forward(state, *entry["chunk"])
    jax.block_until_ready(loss)
    return semi, time.perf_counter() - t


def dividemix_lines(width: int, med: dict, semi: float, chunk: float, eval_batch: int) -> list:
    """The epoch table: DivideMix at a few labelled fractions against M-DYR-H (batch)."""
    per_sample = chunk / eval_batch
    mdyrh = -(-CIFAR_N // 128) * med["M-DYR-H (batch)"] + CIFAR_N * per_sample
    lines = [
        "",
        f"DivideMix, width {width}: semi step (64 + 64 samples) {semi:.3f} s, eval "
        f"{per_sample * 1e3:.3f} ms/sample; M-DYR-H (batch) epoch on N = {CIFAR_N:,}: "
        f"{mdyrh / 60:.1f} min (its steps + tracking pass).",
        "",
        "| DivideMix epoch, labelled fraction | min/epoch | vs M-DYR-H epoch |",
        "|---|---:|---:|",
    ]
    for f in LABELLED_FRACTIONS:
        dm = 2 * CIFAR_N * per_sample + 2 * -(-int(f * CIFAR_N) // 64) * semi
        lines.append(f"| {f:.0%} | {dm / 60:.1f} | {dm / mdyrh:.2f}x |")
        print(
            f"width {width:3d}  DivideMix epoch at {f:.0%} labelled: {dm / mdyrh:.2f}x M-DYR-H",
            flush=True,
        )
    return lines


def main() -> None:
    """Measure and print (and by default write) the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ds = fake_cifar()
    sections = []
    for width in args.widths:
        rounds = args.rounds if width <= 16 else max(2, args.rounds // 2)
        steps, dm = build(width, ds), build_dividemix(width, ds)
        for i in range(2):  # compile + warm up
            for entry in steps.values():
                run_step(entry, i)
            run_dividemix(dm, i)
        times, dm_times = {name: [] for name in steps}, []
        for r in range(rounds):
            for name, entry in steps.items():
                times[name].append(run_step(entry, 2 + r))
            dm_times.append(run_dividemix(dm, 2 + r))
        med = {name: float(np.median(t)) for name, t in times.items()}
        semi, chunk = (float(np.median(t)) for t in zip(*dm_times))
        lines = [
            f"### width {width} ({'full' if width == 64 else f'1/{64 // width}'}), batch 128",
            "",
            "| algorithm | s/step | images/s | cost vs CE |",
            "|---|---:|---:|---:|",
        ]
        for name, s in med.items():
            lines.append(f"| {name} | {s:.3f} | {128 / s:.0f} | {s / med['CE']:.2f}x |")
            print(
                f"width {width:3d}  {name:20s} {s:.3f} s/step  {128 / s:7.0f} img/s  "
                f"{s / med['CE']:.2f}x CE",
                flush=True,
            )
        lines += dividemix_lines(width, med, semi, chunk, dm["config"].eval_batch_size)
        sections.append("\n".join(lines))
    commit = git_commit()
    text = (
        "# Train-step cost per algorithm\n\n"
        f"Command: `python benchmarks/bench_step.py --rounds {args.rounds}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jaxnoise "
        f"commit {commit}. Median over interleaved rounds, one run. Each algorithm's step is its "
        "bootstrapping phase (the most expensive one).\n\n" + "\n\n".join(sections) + "\n"
    )
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "results", "step.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
