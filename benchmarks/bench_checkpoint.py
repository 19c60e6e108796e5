"""Cost of the checkpoint checksums per save, at full width (PreAct ResNet-18, width 64).

    python benchmarks/bench_checkpoint.py                 # writes benchmarks/results/checkpoint.md
    python benchmarks/bench_checkpoint.py --rounds 3 --no-write

The checkpointed tree is the real one of a CIFAR-10 run (``bootstrap.loop.build``: params,
SGD momentum, batch statistics, mixture state, step; the per-sample arrays and labels of
N = 50,000 samples). Timed in interleaved rounds, medians: the checksums alone
(``checkpoint.array_checksums`` of the saved copies, as ``save`` computes them), the ``save``
call (the blocking part: device copies, checksums, orbax's transfer to host), ``save`` until the
checkpoint is committed (``wait``), both again without the checksums, the restore (which
verifies the checksums), and one CE train step of batch 128.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.bench_step import fake_cifar, run_step  # noqa: E402
from benchmarks.common import bootstrap_state, git_commit  # noqa: E402
from configs import default  # noqa: E402
from jaxnoise import checkpoint as ckpt_lib  # noqa: E402
from jaxnoise.bootstrap import schedule as bootstrap_schedule  # noqa: E402
from jaxnoise.bootstrap import step as step_lib  # noqa: E402

CIFAR_N = 50_000


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all this process's threads) of ``fn()``, until ready."""
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - t, time.process_time() - c


def save_unchecked(ck: ckpt_lib.Checkpointer, step: int, tree: dict) -> tuple:
    """(wall, CPU) of the ``save`` call and of it until committed, without the checksums (for
    comparison; such a checkpoint would fail verification: its own workdir, never restored)."""
    real = ckpt_lib.array_checksums
    ckpt_lib.array_checksums = lambda items: {k: {} for k in items}
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        ck.save(step, tree, {})
        call = time.perf_counter() - t0, time.process_time() - c0
        ck.wait()
        return call, (time.perf_counter() - t0, time.process_time() - c0)
    finally:
        ckpt_lib.array_checksums = real


def main() -> None:
    """Measure and print (and by default write) the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    c = default.get_config()
    c.width, c.method = args.width, "CE"
    ds = fake_cifar(CIFAR_N)
    graphdef, tx, state, aux = bootstrap_state(c, ds)
    labels = jnp.asarray(ds.train_labels)
    tree = {"state": state, "aux": aux, "labels": labels}
    stored = {k: ckpt_lib._item(k, v) for k, v in tree.items()}
    params = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
    nbytes = ckpt_lib.tree_nbytes(tree)
    mean, std = ds.mean_std()
    phase = bootstrap_schedule.phase_for_epoch(c, c.epochs)
    data = {"images": jnp.asarray(ds.train_images), "labels": labels}
    own = jax.tree_util.tree_map(jnp.copy, (state, aux))  # the step donates its state
    step = [
        step_lib.make_train_step(graphdef, tx, c, phase, 10, mean, std),
        own[0],
        data,
        own[1],
        jnp.arange(CIFAR_N),
    ]
    workdir = tempfile.mkdtemp(prefix="bench-checkpoint-")
    ck = ckpt_lib.Checkpointer(workdir, keep=2)
    plain = ckpt_lib.Checkpointer(os.path.join(workdir, "unchecked"), keep=2)
    names = ("checksums", "save", "commit", "save_unchecked", "commit_unchecked", "restore", "step")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    try:
        for r in range(args.rounds + 1):  # round 0 compiles and warms up
            t = {"checksums": timed(lambda: ckpt_lib.array_checksums(stored))}
            t0, c0 = time.perf_counter(), time.process_time()
            ck.save(r + 1, tree, {"epoch": r})
            t["save"] = time.perf_counter() - t0, time.process_time() - c0
            ck.wait()
            t["commit"] = time.perf_counter() - t0, time.process_time() - c0
            t["restore"] = timed(lambda: ckpt_lib.Checkpointer(workdir).restore_latest(tree))
            t["save_unchecked"], t["commit_unchecked"] = save_unchecked(plain, r + 1, tree)
            t["step"] = timed(lambda r=r: run_step(step, r))
            if r:
                for k, v in t.items():
                    times[k].append(v)
            print(
                f"round {r}: "
                + "  ".join(f"{k} {w:.3f}s ({c:.3f}s CPU)" for k, (w, c) in t.items()),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir)
    med = {k: np.median(np.array(v), axis=0) for k, v in times.items()}  # (wall, CPU)
    rows = [
        ("checksums of the saved copies", med["checksums"]),
        ("`save` call", med["save"]),
        ("`save` until committed", med["commit"]),
        ("`save` call without checksums", med["save_unchecked"]),
        ("`save` until committed, without checksums", med["commit_unchecked"]),
        ("restore (verifies)", med["restore"]),
        ("one CE train step, batch 128", med["step"]),
    ]
    lines = ["| what | wall s | CPU s | checksums' CPU as a share |", "|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {w:.3f} | {c:.3f} | {med['checksums'][1] / c:.1%} |" for name, (w, c) in rows
    ]
    steps = -(-CIFAR_N // 128)
    text = (
        "# Checkpoint checksums: cost per save\n\n"
        f"Command: `python benchmarks/bench_checkpoint.py --rounds {args.rounds}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (load "
        f"average {os.getloadavg()[0]:.1f}: wall times are inflated, CPU times, summed over "
        f"threads, less so), jax {jax.__version__} on {jax.devices()[0].platform}; jaxnoise "
        f"commit {git_commit()}. Medians of {args.rounds} interleaved rounds after a warm-up.\n\n"
        f"PreAct ResNet-18 width {args.width}: {params / 1e6:.2f}M parameters; the checkpointed "
        f"tree (state with momentum and batch statistics, per-sample arrays and labels of "
        f"N = {CIFAR_N:,}) is {nbytes / 2**20:.1f} MiB.\n\n" + "\n".join(lines) + "\n\n"
        f"A CIFAR-10 epoch is {steps} such steps: the checksums of one save cost "
        f"{med['checksums'][1] / (steps * med['step'][1]):.4%} of its CPU time "
        f"({med['checksums'][0] / (steps * med['step'][0]):.4%} of its wall time).\n"
    )
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "results", "checkpoint.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
