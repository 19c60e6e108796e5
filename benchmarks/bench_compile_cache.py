"""A resumed run's time to its first train step, without and with the persistent compilation
cache (config.compilation_cache, jaxnoise/compile_cache.py), measured in one run.

    python benchmarks/bench_compile_cache.py                    # the quickstart
    python benchmarks/bench_compile_cache.py --folder /work/cifar10_jpeg --subset 400
    python benchmarks/bench_compile_cache.py --rounds 3 --no-write

Per case: a first run (`python main.py ...`, an empty cache folder) is stopped by SIGTERM once
its first train step has run, which saves a mid-epoch checkpoint; then resumes of that workdir
alternate, in rounds, between ``--config.compilation_cache=none`` and the cache folder the first
run filled, each stopped by SIGTERM after its second step (which saves again: the next resume
starts a few steps later, with the same compiled step; an epoch must have more steps than all
the runs take together, or one would run into the epoch's end). Each time is from the start of
the process (`python main.py`, imports included) to the progress line of its first train step
(`log_every_steps=1`: the line comes once that step has run); the start-up is that less one
step's own time (the second step's), i.e. until the first step began to run. The table gives
every round, the medians and their ratios, and the machine's load average around each run.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "compile_cache.md")
CLEAN_ENV = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


MIN_COMPILE: list[str] = []  # --min-compile, for the children (CLEAN_ENV[1])


def child_run(args: list[str], timeout: float) -> dict:
    """Start main.py with ``args``; at its second train-step line send SIGTERM. Returns the
    seconds from the start to its first step's line, the second step's own time, the load
    average before, and where it resumed."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if MIN_COMPILE:
        env[CLEAN_ENV[1]] = MIN_COMPILE[0]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()

    def read():  # each line with the time it arrived; None at the end
        for x in proc.stdout:
            lines.put((time.monotonic(), x))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    out, steps, at = [], [], "the start"
    while len(steps) < 2:
        try:
            item = lines.get(timeout=max(1.0, t0 + timeout - time.monotonic()))
        except queue.Empty:
            item = None
        if item is None:
            proc.kill()
            raise RuntimeError("no second step:\n" + "".join(out[-40:]))
        t, line = item
        out.append(line)
        if "resumed from" in line:
            at = line.rsplit(" at ", 1)[-1].strip()
        if ": step " in line:
            steps.append(t - t0)
    proc.send_signal(signal.SIGTERM)  # stops at the next step and saves that position
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    if rc != 128 + signal.SIGTERM:
        raise RuntimeError(
            f"exit {rc} after SIGTERM (at the end of an epoch? use a larger "
            "--subset):\n" + "".join(out[-40:])
        )
    return {"first_step": steps[0], "step": steps[1] - steps[0], "load": load, "at": at}


def cache_size(path: str) -> tuple[int, float]:
    """(entries, MiB) of a jax cache folder."""
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith("-cache")]
    return len(files), sum(os.path.getsize(f) for f in files) / 2**20


def measure(name: str, flags: list[str], rounds: int, timeout: float) -> dict:
    """The first run, then ``rounds`` x (resume without cache, resume with it), alternating."""
    tmp = tempfile.mkdtemp(prefix="bench_cc_")
    cache, wd = os.path.join(tmp, "xla"), os.path.join(tmp, "wd")
    base = [
        *flags,
        "--workdir",
        wd,
        "--config.log_every_steps=1",
        "--config.log_every_seconds=1e-9",
    ]
    try:
        cold = child_run([*base, f"--config.compilation_cache={cache}"], timeout)
        print(f"{name}: first run (empty cache) {cold['first_step']:.1f}s", flush=True)
        rows = []
        for r in range(rounds):
            order = ("none", "cache") if r % 2 == 0 else ("cache", "none")
            row = {}
            for mode in order:
                setting = cache if mode == "cache" else "none"
                row[mode] = child_run([*base, f"--config.compilation_cache={setting}"], timeout)
                print(
                    f"{name}: round {r + 1} {mode}: {row[mode]['first_step']:.1f}s "
                    f"(load {row[mode]['load']:.1f})",
                    flush=True,
                )
            rows.append(row)
        return {"name": name, "flags": flags, "cold": cold, "rows": rows, "size": cache_size(cache)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(res: dict) -> list[str]:
    """The markdown of one case."""
    col = {mode: [r[mode]["first_step"] for r in res["rows"]] for mode in ("none", "cache")}
    start = {
        mode: [r[mode]["first_step"] - r[mode]["step"] for r in res["rows"]]
        for mode in ("none", "cache")
    }
    med = {k: statistics.median(v) for k, v in col.items()}
    med_start = {k: statistics.median(v) for k, v in start.items()}
    cmd = " ".join(
        [
            "python main.py",
            *res["flags"],
            "--workdir WD --config.log_every_steps=1",
            "--config.log_every_seconds=1e-9",
        ]
    )
    out = [
        f"### {res['name']}",
        "",
        f"`{cmd} --config.compilation_cache=none|<cache>`",
        "",
        "| resume | to the first step, without cache (s) | with cache (s) | start-up without "
        "(s) | start-up with (s) | one step (s, without / with) | load avg (without / with) "
        "| resumed at (without / with) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for i, r in enumerate(res["rows"]):
        a, b = r["none"], r["cache"]
        out.append(
            f"| round {i + 1} | {a['first_step']:.1f} | {b['first_step']:.1f} | "
            f"{start['none'][i]:.1f} | {start['cache'][i]:.1f} | {a['step']:.1f} / "
            f"{b['step']:.1f} | {a['load']:.1f} / {b['load']:.1f} | {a['at']} / "
            f"{b['at']} |"
        )
    out += [
        f"| **median** | **{med['none']:.1f}** | **{med['cache']:.1f}** | "
        f"**{med_start['none']:.1f}** | **{med_start['cache']:.1f}** | | | |",
        "",
        f"Ratio (median without / median with): **{med['none'] / med['cache']:.2f}x** to "
        f"the first step, **{med_start['none'] / med_start['cache']:.2f}x** for the start-up "
        "(to the first step less one step's own time, the second step's). The first run "
        f"(empty cache, writing it) reached its first step in {res['cold']['first_step']:.1f}"
        f" s; the cache then held {res['size'][0]} entries, {res['size'][1]:.1f} MiB.",
        "",
    ]
    print(
        f"{res['name']}: median without {med['none']:.1f}s, with {med['cache']:.1f}s: "
        f"{med['none'] / med['cache']:.2f}x; start-up {med_start['none']:.1f}s / "
        f"{med_start['cache']:.1f}s: {med_start['none'] / med_start['cache']:.2f}x"
    )
    return out


def main() -> None:
    """Measure the cases and write benchmarks/results/compile_cache.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--folder", default="", help="CIFAR-10 image folder for a second case")
    p.add_argument(
        "--subset",
        type=int,
        default=400,
        help="data.subset_per_class of that "
        "case (enough steps per epoch that the resumes never reach its end)",
    )
    p.add_argument("--width", type=int, default=64, help="model width of that case")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to a first step")
    p.add_argument(
        "--min-compile",
        default="",
        help="cache only programs compiled in at "
        "least this many seconds (default: compile_cache.MIN_COMPILE_SECONDS)",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    MIN_COMPILE[:] = [a.min_compile] if a.min_compile else []
    load0 = os.getloadavg()
    cases = [("quickstart (digits, small CNN, M-DYR-H)", ["--config", "configs/quickstart.py"])]
    if a.folder:
        arrays = os.path.join(tempfile.gettempdir(), "bench_cc_arrays")  # decoded once, kept
        cases.append(
            (
                f"CIFAR-10 JPEG folder, PreAct ResNet-18 width {a.width}, M-DYR-H, "
                f"{a.subset} images per class",
                [
                    "--config",
                    "configs/cifar10_m_dyr_h.py",
                    "--config.data.source=folder",
                    f"--config.data.root={a.folder}",
                    f"--config.data.cache_dir={arrays}",
                    f"--config.data.subset_per_class={a.subset}",
                    f"--config.width={a.width}",
                ],
            )
        )
    results = [measure(name, flags, a.rounds, a.timeout) for name, flags in cases]
    import jax

    lines = [
        "# Time to a resumed run's first train step, without and with the compilation cache",
        "",
        f"Command: `python benchmarks/bench_compile_cache.py --rounds {a.rounds}"
        f"{f' --folder {a.folder} --subset {a.subset} --width {a.width}' if a.folder else ''}"
        f"{f' --min-compile {a.min_compile}' if a.min_compile else ''}`"
        "  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"on {jax.default_backend()}; jaxnoise commit {git_commit()}. Load average (1 min) "
        f"at the start {load0[0]:.1f}, at the end {os.getloadavg()[0]:.1f}; per run in the "
        "tables (the machine is shared, so only times within one table compare).",
        "",
        "Each time: from `python main.py` starting (imports, data, model, checkpoint "
        "restore, compiling or loading the train step) to its first train step done; "
        "the start-up leaves that step's own time out. "
        "Resumes alternate between `compilation_cache=none` and the filled cache.",
        "",
    ]
    for res in results:
        lines += table(res)
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        with open(RESULTS, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
