"""Data-parallel overheads: train-step throughput and the global mixture fit on 1/2/4/8 devices.

    python benchmarks/bench_scaling.py            # writes benchmarks/results/scaling.md

Each device count runs in its own subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=D. On this 2-core CPU the forced devices share
the same two cores, so the numbers measure the cost of partitioning (collectives, resharding),
not a speed-up. The mixture fit runs on a loss array sharded over the D devices, for N up to
10 million samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402


def worker(num_devices: int, sizes: list[int], steps: int) -> dict:
    """Measure in this process (devices already forced by the parent)."""
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np

    from benchmarks.bench_step import fake_cifar
    from benchmarks.common import bootstrap_state
    from configs import default
    from jaxnoise import mixture, parallel
    from jaxnoise.bootstrap import schedule
    from jaxnoise.bootstrap import step as step_lib

    mesh = parallel.make_mesh(num_devices)
    ds = fake_cifar(2048)
    c = default.get_config()
    c.width = 16
    graphdef, tx, state, aux = bootstrap_state(c, ds, mesh)
    mean, std = ds.mean_std()
    phase = schedule.phase_for_epoch(c, c.epochs)  # M-DYR-H with bootstrapping
    step = step_lib.make_train_step(graphdef, tx, c, phase, 10, mean, std, mesh)
    data = {
        "images": parallel.put_samples(mesh, ds.train_images),
        "labels": parallel.put_samples(mesh, ds.train_labels),
    }
    losses = parallel.put_samples(mesh, np.random.default_rng(0).gamma(1.0, 1.0, 2048))
    state["mixture"] = mixture.fit_bmm(losses)
    perm = step_lib.make_permutation_fn(0, 2048, mesh)(np.int32(1))
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        state, metrics = step(state, data, aux, perm)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times[2:]))
    fits = {}
    rng = np.random.default_rng(1)
    for n in sizes:
        n = n - n % num_devices
        host = rng.gamma(1.0, 0.5, n).astype(np.float32)
        dev = parallel.put_samples(mesh, host)

        def fit(v):
            st = mixture.fit_bmm(v)
            return mixture.posterior_noisy(st, v)

        jax.block_until_ready(fit(dev))
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(fit(dev))
            ts.append(time.perf_counter() - t)
        fits[n] = float(np.median(ts))
    return {"devices": num_devices, "step_s": step_s, "images_per_s": 128 / step_s, "fit_s": fits}


def main() -> None:
    """Spawn one worker per device count and write the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.sizes, args.steps)), flush=True)
        return
    results = []
    for d in args.devices:
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={d}",
            JAX_PLATFORMS="cpu",
            PYTHONPATH=ROOT,
        )
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            str(d),
            "--steps",
            str(args.steps),
            "--sizes",
            *map(str, args.sizes),
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode or not line:
            raise RuntimeError(f"worker for {d} devices failed:\n{r.stderr[-3000:]}")
        res = json.loads(line[-1][7:])
        results.append(res)
        fits = ", ".join(f"N={int(n):,}: {s * 1e3:.0f} ms" for n, s in res["fit_s"].items())
        print(
            f"{d} devices: {res['step_s']:.3f} s/step ({res['images_per_s']:.0f} img/s); "
            f"BMM fit + posteriors {fits}",
            flush=True,
        )
    import jax

    commit = git_commit()
    base = results[0]
    sizes = list(base["fit_s"])
    lines = [
        "# Data-parallel overheads on forced CPU devices",
        "",
        f"Command: `python benchmarks/bench_scaling.py --steps {args.steps}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared by all forced "
        f"devices; jax {jax.__version__}; jaxnoise commit {commit}. M-DYR-H train step "
        "(batch posteriors), PreAct ResNet-18 width 16, global batch 128; the BMM fit + "
        "posteriors of a loss array sharded over the devices.",
        "",
        "| devices | s/step | images/s | step cost vs 1 device | "
        + " | ".join(f"fit N={int(n) // 1_000_000}M (ms)" for n in sizes)
        + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(sizes),
    ]
    for r in results:
        fits = list(r["fit_s"].values())
        lines.append(
            f"| {r['devices']} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
            f"{r['step_s'] / base['step_s']:.2f}x | "
            + " | ".join(f"{s * 1e3:.0f}" for s in fits)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(os.path.join(ROOT, "benchmarks", "results", "scaling.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
