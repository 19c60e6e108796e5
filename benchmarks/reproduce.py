"""Reproduce the published CIFAR-10 tables: named protocols of (method, noise) cells.

    python benchmarks/reproduce.py --protocol reduced --root runs/reproduce     # all cells
    python benchmarks/reproduce.py --protocol reduced --cells M-DYR-H@0.8 CE@0.8
    python benchmarks/reproduce.py --protocol reduced --collect-only           # table only

Every cell is a normal jaxnoise run in its own workdir under --root, so an interrupted
reproduction resumes where it stopped (run the same command again), and cells can run in the
background. The table (best and last test accuracy, noise-detection AUROC after warm-up and at
the end, minutes per run) goes to benchmarks/results/reproduce_<protocol>.{md,json}.

Protocols:
- ``paper``: the published settings (PreAct ResNet-18, full CIFAR-10, 300 epochs with mixup /
  120 without); for GPU users.
- ``reduced``: the same schedules scaled down in proportion so that a cell runs in about 20
  minutes on a 2-core CPU: a width-8 PreAct ResNet-18 on a class-balanced 10,000-image subset
  of the real CIFAR-10 training images (../shared/data JPEGs), all schedule epochs divided by
  10, the full 10,000-image test set.
- ``features``: a head on frozen k-means features of all 50,000 training images, the published
  schedules (``FEATURES``; configs/features_m_dyr_h.py is its M-DYR-H cell on your own
  embeddings). With ``--label-file F [--label-key K] [--label-order O]`` its cells are the
  methods on those human labels instead of synthetic noise (``HUMAN_LABEL_CELLS``; workdirs
  under ``<root>/features_human_<K or F's name>``), e.g.

      python benchmarks/reproduce.py --protocol features --label-file labels.csv \
          --label-key worse --cells M-DYR-H@human
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402

SHARED_TAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.tar.gz")

# (method, noise, overrides): the published rows. Keys are "METHOD@noise[/variant]"; overrides
# name config fields by their path ("bootstrap.noise_model", as on the command line).
CELLS = {
    **{f"{m}@{r}": (m, r, {}) for m in ("CE", "M", "M-DYR-H") for r in (0.0, 0.5, 0.8)},
    "M-DYR-H@0.8/gmm": (
        "M-DYR-H",
        0.8,
        {"bootstrap.noise_model": "gmm", "bootstrap.noisy_component": "max_mean"},
    ),
    "MD-DYR-SH@0.9": ("MD-DYR-SH", 0.9, {}),
    "MD-DYR-SH@0.9/beta": ("MD-DYR-SH", 0.9, {"bootstrap.mixup_draw": "beta"}),
    "MD-DYR-SH@0.9/binomial": ("MD-DYR-SH", 0.9, {"bootstrap.mixup_draw": "binomial"}),
}
# The reduced protocol (chosen by measurement: benchmarks/results/reproduce_reduced.md).
REDUCED = {"width": 8, "subset_per_class": 1000, "schedule_divisor": 10}
# The features protocol: the published schedules on frozen k-means features of all 50,000
# training images (chosen by measurement: benchmarks/results/features_notes.md).
FEATURES = {
    "kmeans_centroids": 400,
    "kmeans_patches": 400_000,
    "kmeans_iters": 20,
    "kmeans_eps": 10.0,
    "model": "mlp",
    "mlp_hidden": (128,),
    "lr": 0.02,
}
# ... with its extra cells: 80% noise drawn over the *other* classes only.
EXCLUSIVE = {"noise_kind": "symmetric_exclusive"}
FEATURE_CELLS = {
    **CELLS,
    **{f"{m}@0.8/exclusive": (m, 0.8, EXCLUSIVE) for m in ("CE", "M", "M-DYR-H")},
    # DivideMix (issue 16) with its CIFAR-10 lambda_u at 80% and 90% (configs/cifar10_dividemix.py)
    "DivideMix@0.8": ("DivideMix", 0.8, {"dividemix.lambda_u": 25.0}),
    "DivideMix@0.9": ("DivideMix", 0.9, {"dividemix.lambda_u": 50.0}),
}


# The noise-model options for instance-dependent noise (mixture_scope, loss_signal), on the
# features protocol with asymmetric 40% noise; every cell takes its posteriors from the tracking
# pass (posterior_source="epoch", which the accumulated signals need), so only the option varies.
_ASYM = {"noise_kind": "asymmetric", "bootstrap.posterior_source": "epoch"}
_CLASS, _EMA = {"bootstrap.mixture_scope": "class"}, {"bootstrap.loss_signal": "ema"}
HUMAN_NOISE_CELLS = {
    "M-DYR-H@asym0.4/global": ("M-DYR-H", 0.4, _ASYM),
    "M-DYR-H@asym0.4/class": ("M-DYR-H", 0.4, {**_ASYM, **_CLASS}),
    "M-DYR-H@asym0.4/ema": ("M-DYR-H", 0.4, {**_ASYM, **_EMA}),
    "M-DYR-H@asym0.4/class+ema": ("M-DYR-H", 0.4, {**_ASYM, **_CLASS, **_EMA}),
}
# The features protocol on real human labels (--label-file): one cell per method.
HUMAN_LABEL_CELLS = {
    **{f"{m}@human": (m, 0.0, {}) for m in ("CE", "M", "M-DYR-H", "MD-DYR-SH")},
    "M-DYR-H@human/class": ("M-DYR-H", 0.0, _CLASS),
}
PROTOCOLS = ("reduced", "paper", "features", "human_noise")


def cells_for(protocol: str, labels: dict | None = None) -> dict:
    """The cells of a protocol (with human labels from a file: ``HUMAN_LABEL_CELLS``)."""
    if labels:
        return HUMAN_LABEL_CELLS
    return {"features": FEATURE_CELLS, "human_noise": HUMAN_NOISE_CELLS}.get(protocol, CELLS)


def labels_tag(labels: dict) -> str:
    """A file-name-safe name of a label set: the key, else the label file's stem."""
    name = labels["label_key"] or os.path.splitext(os.path.basename(labels["label_file"]))[0]
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


CONFIG_FILE = {
    "CE": "cifar10_ce",
    "M": "cifar10_m",
    "M-DYR-H": "cifar10_m_dyr_h",
    "M-DYR-S": "cifar10_m_dyr_s",
    "MD-DYR-SH": "cifar10_md_dyr_sh",
    "DivideMix": "cifar10_dividemix",
}


def scale_schedule(c, factor: int) -> None:
    """Divide every epoch count of a bootstrap method's schedule by ``factor`` (rounded, kept
    consistent)."""

    def s(e: int) -> int:
        return max(1, round(e / factor))

    c.epochs = s(c.epochs)
    c.lr_milestones = tuple(sorted({min(s(m), c.epochs - 1) for m in c.lr_milestones}))
    b = c.bootstrap
    if b.start_epoch:  # 0 (the published configs): lr_milestones[0] + 6, as the original
        b.start_epoch = max(2, s(b.start_epoch))
    b.dynamic_start_epoch = max(2, s(b.dynamic_start_epoch))
    b.soft_to_hard_start_epoch = max(b.dynamic_start_epoch + 1, s(b.soft_to_hard_start_epoch))
    b.temperature_epochs = max(1, s(b.temperature_epochs))


def set_field(c, path: str, value) -> None:
    """Set the config field at ``path`` ("noise", "bootstrap.noise_model", ...)."""
    *blocks, name = path.split(".")
    for block in blocks:
        c = c[block]
    setattr(c, name, value)


def cifar_folder(extract_to: str) -> str:
    """Extract the shared CIFAR-10 JPEGs once and return the image-folder root."""
    root = os.path.join(extract_to, "cifar10-jpeg")
    if not os.path.isdir(os.path.join(root, "train")):
        if not os.path.exists(SHARED_TAR):
            raise FileNotFoundError(f"{SHARED_TAR} not found: the reduced protocol needs it")
        os.makedirs(root, exist_ok=True)
        with tarfile.open(SHARED_TAR) as t:
            t.extractall(root, filter="data")
        # The tarball may hold a top-level folder: find the one with train/ and test/.
        for dirpath, dirnames, _ in os.walk(root):
            if "train" in dirnames and "test" in dirnames:
                return dirpath
    for dirpath, dirnames, _ in os.walk(root):
        if "train" in dirnames and "test" in dirnames:
            return dirpath
    raise FileNotFoundError(f"no train/ and test/ folders under {root}")


def make_config(
    protocol: str, cell: str, data_root: str | None, cache_dir: str = "", labels: dict | None = None
):
    """The full config of one cell under a protocol; ``labels`` (``label_file``, ``label_key``,
    ``label_order``): the features protocol on those human labels."""
    import importlib

    method, noise, over = cells_for(protocol, labels)[cell]
    c = importlib.import_module(f"configs.{CONFIG_FILE[method]}").get_config()
    c.noise = float(noise)
    for k, v in over.items():
        set_field(c, k, v)
    if protocol == "reduced":
        c.data.source = "folder"
        c.data.root = data_root
        c.data.subset_per_class = REDUCED["subset_per_class"]
        c.width = REDUCED["width"]
        scale_schedule(c, REDUCED["schedule_divisor"])
    elif protocol in ("features", "human_noise"):  # published schedules; a head on k-means features
        c.data.source, c.data.root = "folder", data_root
        c.data.cache_dir = cache_dir
        c.data.extractor = "kmeans"
        c.data.kmeans_centroids = FEATURES["kmeans_centroids"]
        c.data.kmeans_patches = FEATURES["kmeans_patches"]
        c.data.kmeans_iters = FEATURES["kmeans_iters"]
        c.data.kmeans_eps = FEATURES["kmeans_eps"]
        c.data.crop_padding, c.data.flip = 0, False  # no augmentation
        if "bootstrap" in c:  # nor of the tracking pass (DivideMix's division never augments)
            c.bootstrap.track_augment = False
        c.data.normalization = "dataset"  # per-feature standardisation (Coates et al.)
        c.model, c.mlp_hidden, c.lr = FEATURES["model"], FEATURES["mlp_hidden"], FEATURES["lr"]
    elif protocol != "paper":
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    if labels:
        c.noise_kind, c.noise = "human", 0.0
        c.label_file, c.label_key = labels["label_file"], labels["label_key"]
        c.label_order = labels["label_order"]
    return c


def command_for(cell: str) -> str:
    """The exact full-scale command of a published row (README table)."""
    method, noise, over = {**FEATURE_CELLS, **HUMAN_NOISE_CELLS, **HUMAN_LABEL_CELLS}[cell]
    extra = "".join(f" --config.{k}={v}" for k, v in over.items())
    return f"python main.py --config configs/{CONFIG_FILE[method]}.py --config.noise={noise}{extra}"


def summarize(cell: str, config, history: list[dict], minutes: float) -> dict:
    """One record of the results table."""
    method, noise, _ = {**FEATURE_CELLS, **HUMAN_NOISE_CELLS, **HUMAN_LABEL_CELLS}[cell]
    from jaxnoise.bootstrap.schedule import bootstrap_start_epoch

    if method == "DivideMix":  # its first division, made at the start of the first epoch after
        warm = config.dividemix.warm_up + 1  # the warm-up (epochs 1..warm_up)
        mixture, draw = "gmm (co-divide)", "none"
    else:  # the fit the method's correction starts from: the epoch before bootstrapping
        # (M-DYR-H/S; the same epoch for CE and M) or before dynamic mixup (MD-DYR-SH)
        b = config.bootstrap
        start = b.dynamic_start_epoch if method == "MD-DYR-SH" else bootstrap_start_epoch(config)
        warm, mixture, draw = max(1, start - 1), b.noise_model, b.mixup_draw
    by_epoch = {r["epoch"]: r for r in history}
    return {
        "cell": cell,
        "method": method,
        "noise": noise,
        "mixture": mixture,
        "mixup_draw": draw,
        "noise_kind": config.noise_kind,
        "epochs": config.epochs,
        "epochs_done": history[-1]["epoch"] if history else 0,
        "best_acc": max(r["test_acc"] for r in history) if history else None,
        "last_acc": history[-1]["test_acc"] if history else None,
        "auroc_warmup": by_epoch.get(warm, {}).get("auroc"),
        "auroc_loss_warmup": by_epoch.get(warm, {}).get("auroc_loss"),
        "auroc_final": history[-1].get("auroc") if history else None,  # DivideMix's warm-up
        "auroc_loss_final": history[-1].get("auroc_loss") if history else None,  # has neither
        "minutes": minutes,
    }


def protocol_dir(protocol: str, labels: dict | None) -> str:
    """The folder of a protocol's cells under --root: features_human_<tag> with human labels."""
    return f"{protocol}_human_{labels_tag(labels)}" if labels else protocol


def cell_dir(root: str, protocol: str, cell: str) -> str:
    """The workdir of one cell, e.g. <root>/reduced/MD-DYR-SH_0.9_beta."""
    return os.path.join(root, protocol, cell.replace("@", "_").replace("/", "_"))


def run_cell(
    protocol: str, cell: str, root: str, data_root: str | None, labels: dict | None = None
) -> dict:
    """Run (or resume, or just read) one cell's workdir and summarise it."""
    from jaxnoise import loops

    c = make_config(protocol, cell, data_root, os.path.join(root, "cache"), labels)
    wd = cell_dir(root, protocol_dir(protocol, labels), cell)
    timing = os.path.join(wd, "minutes.json")
    spent = json.load(open(timing))["minutes"] if os.path.exists(timing) else 0.0
    t = time.time()
    try:
        s = loops.train_and_evaluate(c, wd)
    finally:  # also when stopped by SIGTERM/SIGINT (a SIGKILLed run's time is lost)
        spent += (time.time() - t) / 60.0
        os.makedirs(wd, exist_ok=True)
        with open(timing, "w") as f:
            json.dump({"minutes": spent}, f)
    return summarize(cell, c, s["history"], spent)


def read_cell(
    protocol: str, cell: str, root: str, data_root: str | None, labels: dict | None = None
) -> dict | None:
    """Summarise a cell from its workdir without training (None if it has not started)."""
    c = make_config(protocol, cell, data_root, os.path.join(root, "cache"), labels)
    wd = cell_dir(root, protocol_dir(protocol, labels), cell)
    path = os.path.join(wd, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    history = [json.loads(x) for x in open(path) if x.strip()]
    timing = os.path.join(wd, "minutes.json")
    minutes = json.load(open(timing))["minutes"] if os.path.exists(timing) else float("nan")
    return summarize(cell, c, history, minutes)


def write_table(protocol: str, records: list[dict], command: str) -> None:
    """benchmarks/results/reproduce_<protocol>.{md,json}."""
    commit = git_commit()
    out = os.path.join(ROOT, "benchmarks", "results", f"reproduce_{protocol}")
    meta = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commit": commit,
    }
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)

    def fmt(v, spec):
        return "–" if v is None or v != v else format(v, spec)  # None or NaN (0% noise)

    protocol_lines = []
    if protocol.startswith("reduced"):
        protocol_lines = [
            f"Protocol: width-{REDUCED['width']} PreAct ResNet-18, "
            f"{REDUCED['subset_per_class']:,} training images per class (class-balanced "
            "subset of the ../shared CIFAR-10 JPEGs), every schedule epoch divided by "
            f"{REDUCED['schedule_divisor']}, the full 10,000-image test set. Why, and what "
            "the numbers mean: `reproduce_reduced_notes.md`.",
            "",
        ]
    if protocol.startswith(("features", "human_noise")):
        f = FEATURES
        head = f"{f['model']} head" + (f" {f['mlp_hidden']}" if f["model"] == "mlp" else "")
        protocol_lines = [
            f"Protocol: {head} (lr {f['lr']}) on frozen k-means features "
            f"({f['kmeans_centroids']} centroids, {4 * f['kmeans_centroids']:,} features, "
            "computed once and cached) of all 50,000 training images of the ../shared CIFAR-10 "
            "JPEGs, the published schedules (300 epochs with mixup, 120 without), no "
            "augmentation, the full 10,000-image test set. Why, and what the numbers mean: "
            "`features_notes.md`.",
            "",
        ]
    lines = [
        f"# Reproduction, protocol `{protocol}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {meta['machine']}; jaxnoise commit {commit}.",
        "",
        *protocol_lines,
        "AUROC: noise detection by the fitted mixture's posterior as used in training (the "
        "lookup table); `loss` AUROC: by the raw per-sample loss.",
        "",
        "| cell | method | noise | mixture | draw | epochs done | best acc | last acc "
        "| AUROC after warm-up | loss AUROC after warm-up | AUROC final | loss AUROC final "
        "| minutes |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['cell']} | {r['method']} | {r['noise']} | {r['mixture']} | {r['mixup_draw']} "
            f"| {r['epochs_done']}/{r['epochs']} | {fmt(r['best_acc'], '.2f')} "
            f"| {fmt(r['last_acc'], '.2f')} | {fmt(r['auroc_warmup'], '.4f')} "
            f"| {fmt(r['auroc_loss_warmup'], '.4f')} | {fmt(r['auroc_final'], '.4f')} "
            f"| {fmt(r['auroc_loss_final'], '.4f')} | {fmt(r['minutes'], '.1f')} |"
        )
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Run the requested cells (resuming), then write the table of every started cell."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", default="reduced", choices=PROTOCOLS)
    ap.add_argument("--cells", nargs="*", default=None)
    ap.add_argument("--root", default=os.path.join(ROOT, "runs", "reproduce"))
    ap.add_argument("--data-dir", default="/tmp/jaxnoise_data")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument(
        "--results-suffix",
        default="",
        help="write benchmarks/results/reproduce_<protocol><suffix>.{md,json}",
    )
    ap.add_argument(
        "--label-file",
        default="",
        help="--protocol features on these human labels (config.label_file): cells "
        "CE@human, M@human, ... instead of synthetic noise",
    )
    ap.add_argument("--label-key", default="", help="config.label_key (e.g. worse_label, worse)")
    ap.add_argument("--label-order", default="auto", help="config.label_order (default auto)")
    args = ap.parse_args()
    labels = None
    if args.label_file:
        if args.protocol != "features":
            ap.error("--label-file goes with --protocol features")
        labels = {
            "label_file": os.path.abspath(args.label_file),
            "label_key": args.label_key,
            "label_order": args.label_order,
        }
        args.results_suffix = args.results_suffix or f"_human_{labels_tag(labels)}"
    elif args.label_key or args.label_order != "auto":
        ap.error("--label-key / --label-order need --label-file")
    cells = cells_for(args.protocol, labels)
    args.cells = list(cells) if args.cells is None else args.cells
    unknown = [c for c in args.cells if c not in cells]
    if unknown:
        raise SystemExit(f"unknown cells {unknown}; known: {', '.join(cells)}")
    data_root = cifar_folder(args.data_dir) if args.protocol != "paper" else None
    if not args.collect_only:
        for cell in args.cells:
            print(f"=== {cell}", flush=True)
            run_cell(args.protocol, cell, args.root, data_root, labels)
    records = [
        r for cell in cells if (r := read_cell(args.protocol, cell, args.root, data_root, labels))
    ]
    command = " ".join(["python", "benchmarks/reproduce.py", *sys.argv[1:]])
    write_table(args.protocol + args.results_suffix, records, command)


if __name__ == "__main__":
    main()
