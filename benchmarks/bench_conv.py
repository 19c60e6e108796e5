"""Time one jitted forward+backward step of PreActResNet18 on CPU under several XLA:CPU flag sets.

The step is the cross-entropy train-mode step of the CIFAR experiments: merge params and batch
stats, forward with batch statistics, softmax cross-entropy, gradients w.r.t. all params, return the
new BatchStat (no optimizer update). Every flag set runs in its own subprocess, because XLA reads
XLA_FLAGS once per process. Prints compile time, median seconds per step, and the loss and gradient
norm (to show whether a flag changes the numbers).

    python benchmarks/bench_conv.py                       # full width, batch 128, all configs
    python benchmarks/bench_conv.py --width 16 --batch 32 --steps 2 --configs default xnnpack

Reference point: PyTorch (CPU, 2 threads) takes about 3.85 s for the same step at full width and
batch 128.

Findings with jax 0.10.2 on a 2-core x86 machine (timings there are noisy when other jobs run;
compare min s/step of runs made back to back):
- the default XLA:CPU pipeline already runs convolutions as YNNPACK custom fusions (`__ynn_fusion`
  in the optimized HLO, see `--xla_dump_to`); default was ~3.6-3.8 s/step on a quiet machine;
- the xnnpack / onednn flags below leave the optimized HLO unchanged in this jaxlib build (same
  loss and gradient norm to the last bit), so any difference between them is noise;
- `ynn_conv_dot` also sends dots to YNNPACK: slightly different numbers, and slower (~4.9 s);
- `--xla_cpu_use_thunk_runtime=false` is accepted but ignored ("no longer supported").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> XLA_FLAGS. All of these parse with jax 0.10.2 (an unknown flag aborts the process).
CONFIGS: dict[str, str] = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "xnn_conv_dot": "--xla_cpu_experimental_xnn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "ynn_conv_dot": "--xla_cpu_experimental_ynn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "onednn_graph": "--xla_cpu_use_onednn=true",
    "onednn_conv_fusion": "--xla_cpu_experimental_onednn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "classic_runtime": "--xla_cpu_use_thunk_runtime=false",  # ignored: "no longer supported"
}


def worker(batch: int, width: int, steps: int) -> dict[str, float]:
    """Build the model, compile the step, time `steps` steps; return the measurements."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxnoise.models import PreActResNet18

    model = PreActResNet18(10, width=width, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, 32, 32, 3), jnp.float32)  # (B, 32, 32, 3)
    y = jax.random.randint(ky, (batch,), 0, 10)

    @jax.jit
    def step(params, stats, x, y):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, stats, copy=True)
            logits = m(x, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_stats

    t0 = time.perf_counter()
    compiled = step.lower(params, stats, x, y).compile()
    compile_s = time.perf_counter() - t0
    loss, grads, _ = jax.block_until_ready(compiled(params, stats, x, y))  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, stats, x, y))
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "compile_s": compile_s,
        "step_s": times[len(times) // 2],
        "min_step_s": times[0],
        "loss": float(loss),
        "grad_norm": float(optax.global_norm(grads)),
    }


def main() -> None:
    """Run every requested config in a subprocess and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", help="optional JSON file for the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.batch, args.width, args.steps)))
        return

    print(
        f"PreActResNet18 width {args.width}, batch {args.batch}, 32x32x3, fwd+bwd, "
        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}"
    )
    print(f"{'config':<20} {'compile s':>9} {'s/step':>8} {'min s':>7} {'loss':>10} {'|grad|':>10}")
    results = {}
    for name in args.configs:
        flags = (os.environ.get("XLA_FLAGS", "") + " " + CONFIGS[name]).strip()
        env = dict(os.environ, XLA_FLAGS=flags)  # a blank XLA_FLAGS is read as a file name
        if not flags:
            del env["XLA_FLAGS"]
        cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch)]
        cmd += ["--width", str(args.width), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<20} failed: {err[:100]}")
            results[name] = {"error": err}
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = dict(r, xla_flags=CONFIGS[name])
        print(
            f"{name:<20} {r['compile_s']:>9.1f} {r['step_s']:>8.2f} {r['min_step_s']:>7.2f} "
            f"{r['loss']:>10.6f} {r['grad_norm']:>10.6f}",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
