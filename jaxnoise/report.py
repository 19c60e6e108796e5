"""A run's report: figures and the list of training labels the noise model calls wrong.

    jaxnoise report WORKDIR [--threshold T | --count N] [--out DIR]

reads what training wrote to WORKDIR (``config.json``, ``dataset.json``, ``metrics.jsonl``,
``per_sample.npz``) and writes, into the output directory,

- ``figures/loss_histogram.png``: last epoch's losses with the BMM and GMM fits (paper Fig. 2),
- ``figures/loss_quantiles.png``: clean/noisy loss quantiles over epochs (Fig. 1; known noise),
- ``figures/accuracy_auroc.png``: test accuracy and detection AUROC over epochs,
- ``figures/posterior_vs_loss.png``: p(noisy) against the loss with the posterior curves,
- ``label_issues.csv``: the training samples the noise model calls wrong, most suspect first
  (p(noisy) descending, then the loss descending, then the index): by default as many as the
  noise model estimates wrong (the cut ``auto``), else those with p(noisy) > ``--threshold``
  or the ``--count`` most suspect,
- ``label_issues_summary.json``: the cut, counts, the largest p(noisy) and the estimated number
  of wrong labels, and precision/recall of the list when the noise is known (some label known
  wrong).

The estimate (``est_wrong``) is the sum of p(noisy) over the training samples, rounded: the
expected number of wrong labels under the fitted mixture, which at an EM fixed point is its
noisy component's weight times N (up to the clipped 5%/95% tails). A run whose mixtures are fitted
per class (``bootstrap.mixture_scope = "class"``) is cut per class: each given label's own
estimate of its wrong labels, the most suspect of that class.

The end of a training run writes this report into the workdir itself. The command line never
writes over a run's files: once the workdir holds its report (``label_issues.csv``), the output
goes beside it, to ``WORKDIR/report-threshold-T/`` (or ``--out DIR``).

The BMM and GMM are refitted on the saved last-epoch losses; the fits are deterministic, so the
refit of the run's own model is the run's last fit exactly.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any

import numpy as np

from jaxnoise import label_issues as issues_lib
from jaxnoise import metrics, mixture, plots
from jaxnoise import workdir as workdir_lib

REQUIRED = ("config.json", "metrics.jsonl", "per_sample.npz")
PER_SAMPLE_KEYS = ("loss", "p_noisy", "prediction", "noisy_label", "true_label", "noise_mask")
CUTS = ("auto", "threshold", "count")


class WorkdirError(FileNotFoundError):
    """The workdir does not hold a (finished epoch of a) training run."""


def load_workdir(workdir: str) -> dict[str, Any]:
    """Read a run's config, dataset info, per-epoch metrics and last-epoch per-sample arrays."""
    if not os.path.isdir(workdir):
        raise WorkdirError(f"{workdir!r} is not a directory")
    missing = [f for f in REQUIRED if not os.path.exists(os.path.join(workdir, f))]
    newest = newest_checkpoint(workdir) if missing else None
    if missing and newest is not None:
        raise WorkdirError(
            f"{workdir!r} lacks {', '.join(missing)} but holds checkpoint {newest}: its outputs "
            "were not written (the run was stopped or killed before them); re-run the training "
            "command, which rebuilds them from the checkpoint"
        )
    if missing:
        raise WorkdirError(
            f"{workdir!r} lacks {', '.join(missing)}: it does not hold a run with at least one "
            "finished epoch (train first: jaxnoise train --config CONFIG --workdir WORKDIR, or "
            "python main.py ... in a clone)"
        )
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    by_epoch: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                by_epoch[int(r["epoch"])] = r  # a resumed epoch's later line wins
    records = [by_epoch[e] for e in sorted(by_epoch)]
    with np.load(os.path.join(workdir, "per_sample.npz")) as d:
        arrays = {k: d[k] for k in d.files}
    checkpoint = _check_made_from_newest(workdir, arrays)
    absent = [k for k in PER_SAMPLE_KEYS if k not in arrays]
    if absent:
        raise WorkdirError(f"{workdir}/per_sample.npz lacks {', '.join(absent)}")
    n = arrays["loss"].shape[0]
    ds_path = os.path.join(workdir, "dataset.json")
    if os.path.exists(ds_path):
        with open(ds_path) as f:
            dataset = json.load(f)
    else:  # runs from before dataset.json existed
        num_classes = int(max(arrays["noisy_label"].max(), arrays["prediction"].max())) + 1
        dataset = {
            "name": config.get("data", {}).get("name", ""),
            "class_names": [str(i) for i in range(num_classes)],
            "num_train": n,
            "noise_known": config.get("noise_kind", "symmetric") != "none",
            "train_paths": None,
        }
    return {
        "config": config,
        "dataset": dataset,
        "records": records,
        "per_sample": arrays,
        "checkpoint": checkpoint,
    }


def newest_checkpoint(workdir: str) -> int | None:
    """The newest committed checkpoint of a workdir (its orbax step), or None."""
    folder = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return max(steps) if steps else None


def _check_made_from_newest(workdir: str, arrays: dict) -> int | None:
    """The checkpoint per_sample.npz was made from; WorkdirError when the workdir holds a newer
    one (the outputs are stale: the training command rebuilds them), or when the arrays do not
    say (written by a jaxnoise from before outputs recorded their checkpoint: they may be those
    of a stop, older than the newest checkpoint). Without checkpoints there is nothing to
    compare with, and the arrays are taken as they are."""
    made = int(arrays.pop("checkpoint")) if "checkpoint" in arrays else None
    newest = newest_checkpoint(workdir)
    if newest is None or made == newest:
        return made
    if made is None:
        raise WorkdirError(
            f"{workdir!r}: its per_sample.npz does not record the checkpoint it was made from "
            f"(written by an older jaxnoise, perhaps at a stop) and its newest checkpoint is "
            f"{newest}: re-run the training command, which rebuilds the outputs from it"
        )
    raise WorkdirError(
        f"{workdir!r}: its per_sample.npz was made from checkpoint {made}, but its newest "
        f"checkpoint is {newest} (a run stopped or killed before it wrote its outputs): "
        "re-run the training command, which makes them from the newest checkpoint"
    )


# ------------------------------------------------------------------------------------------------
# Noise models refitted on the saved losses.


def noise_model(config: dict) -> dict[str, Any]:
    """The run's own noise model, from its config.json: ``model``, ``lookup``, ``em_iters``,
    ``noisy`` (the bootstrap methods' block; DivideMix's co-divide GMM; a flat config.json of
    jaxnoise before the per-method blocks)."""
    if "dividemix" in config:
        return {"model": "gmm", "lookup": False, "em_iters": 10, "noisy": "max_mean"}
    b = config.get("bootstrap", config)
    return {
        "model": b.get("noise_model", "bmm"),
        "lookup": bool(b.get("posterior_lookup", True)),
        "em_iters": int(b.get("em_iters", 10)),
        "noisy": b.get("noisy_component", "initial"),
    }


def refit_mixtures(losses: np.ndarray, config: dict) -> dict[str, Any]:
    """BMM and GMM fitted to the losses with the run's EM iterations and noisy-component rule."""
    own = noise_model(config)
    kw = dict(max_iters=own["em_iters"], noisy=own["noisy"])
    losses = np.asarray(losses, np.float32)
    return {"bmm": mixture.fit_bmm(losses, **kw), "gmm": mixture.fit_gmm(losses, **kw)}


def mixture_log_likelihood(state: Any, losses: np.ndarray) -> float:
    """Mean log-likelihood per fitted sample (5th-95th loss percentile), on the normalised axis.

    ``mixture.log_likelihood``: both models are densities over the same normalised losses ``x``
    (the EM observations), so their values are directly comparable: higher fits better. NaN
    for an invalid (degenerate) fit.
    """
    return float(mixture.log_likelihood(state, np.asarray(losses, np.float32)))


def posterior_curves(states: dict[str, Any], config: dict, losses: np.ndarray) -> dict:
    """p(noisy | loss) over a loss grid for each model; the run's own model as it trained."""
    grid = np.linspace(float(np.min(losses)), float(np.max(losses)), 500).astype(np.float32)
    own, lookup = noise_model(config)["model"], noise_model(config)["lookup"]
    curves = {}
    for name, st in states.items():
        if name == own and lookup:
            y = np.asarray(mixture.posterior_noisy(st, grid, lookup=True))
            style = dict(color="black", lw=1.8, drawstyle="steps-post")
            curves[f"{name.upper()}: 100-bin lookup (as trained)"] = (grid, y, style)
        y = np.asarray(mixture.posterior_noisy(st, grid, lookup=False))
        style = dict(
            color="0.35" if name == "bmm" else "tab:green",
            lw=1.3,
            ls=":" if name == "bmm" else "--",
        )
        curves[f"{name.upper()}: exact posterior"] = (grid, y, style)
    return curves


# ------------------------------------------------------------------------------------------------
# Label issues.


def per_class_cut(config: dict) -> bool:
    """Whether the run fitted its mixtures per class (its list is then cut per class)."""
    return config.get("bootstrap", config).get("mixture_scope", "global") == "class"


def estimated_wrong(p_noisy: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The noise model's count of wrong labels, the sum of p(noisy) rounded: () int64, or per
    class (C,) when ``labels`` (N,) are given (the class of each sample's given label)."""
    p = np.asarray(p_noisy, np.float64)
    if labels is None:
        return np.int64(np.rint(p.sum()))
    return np.rint(np.bincount(labels, weights=p)).astype(np.int64)


def flagged(
    per_sample: dict[str, np.ndarray],
    *,
    cut: str = "auto",
    threshold: float = 0.5,
    count: int | None = None,
    per_class: bool = False,
) -> np.ndarray:
    """Indices of the listed samples, most suspect first (``jaxnoise.label_issues.rank``:
    p(noisy) descending, then the loss descending, then the index), under the cut: ``auto``
    (the :func:`estimated_wrong` most suspect; per class with ``per_class``), ``threshold``
    (p(noisy) > threshold) or ``count`` (the ``count`` most suspect)."""
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {', '.join(CUTS)}, got {cut!r}")
    p = np.asarray(per_sample["p_noisy"], np.float32)
    loss = np.asarray(per_sample["loss"], np.float32)
    if cut == "auto" and per_class:
        labels = np.asarray(per_sample["noisy_label"], np.int64)
        return issues_lib.top_per_class(p, loss, labels, estimated_wrong(p, labels))
    order = issues_lib.rank(p, loss)
    if cut == "threshold":
        return order[p[order] > threshold]
    return order[: int(count if cut == "count" else estimated_wrong(p))]


def label_issues(
    per_sample: dict[str, np.ndarray],
    dataset: dict[str, Any],
    *,
    threshold: float = 0.5,
    cut: str = "threshold",
    count: int | None = None,
    per_class: bool = False,
) -> list[dict[str, Any]]:
    """Rows of the listed samples (:func:`flagged`), most suspect first."""
    p = np.asarray(per_sample["p_noisy"], np.float64)
    loss = np.asarray(per_sample["loss"], np.float64)
    order = flagged(per_sample, cut=cut, threshold=threshold, count=count, per_class=per_class)
    names = list(dataset.get("class_names") or [])
    paths = dataset.get("train_paths")
    ids = dataset.get("train_ids")
    rows = []
    for i in order:
        given, pred = int(per_sample["noisy_label"][i]), int(per_sample["prediction"][i])
        row: dict[str, Any] = {"index": int(i)}
        if ids:
            row["id"] = ids[i]
        if paths:
            row["path"] = paths[i]
        row.update(
            given_label=given,
            given_class=names[given] if given < len(names) else str(given),
            predicted_label=pred,
            predicted_class=names[pred] if pred < len(names) else str(pred),
            p_noisy=float(p[i]),
            loss=float(loss[i]),
        )
        rows.append(row)
    return rows


def write_label_issues(
    path: str, rows: list[dict[str, Any]], *, with_path: bool, with_id: bool = False
) -> str:
    """Write the rows as CSV (header even when empty); returns the path."""
    cols = [
        "index",
        *(["id"] if with_id else []),
        *(["path"] if with_path else []),
        "given_label",
        "given_class",
        "predicted_label",
        "predicted_class",
        "p_noisy",
        "loss",
    ]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "p_noisy": f"{r['p_noisy']:.6g}", "loss": f"{r['loss']:.6g}"})
    workdir_lib.atomic_write_text(path, text.getvalue())
    return path


def list_quality(flagged_index: np.ndarray, noise_mask: np.ndarray) -> dict[str, float | None]:
    """Precision, recall and F1 of a list of flagged indices against the true noise mask."""
    noise_mask = np.asarray(noise_mask, bool)
    tp = int(noise_mask[np.asarray(flagged_index, np.int64)].sum())
    n, pos = len(flagged_index), int(noise_mask.sum())
    precision = tp / n if n else None
    recall = tp / pos if pos else None
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp}


# ------------------------------------------------------------------------------------------------
# The report.


def default_out_dir(workdir: str, threshold: float | None = None, count: int | None = None) -> str:
    """Where the command line writes: the workdir until it holds its report, then beside it
    (``report-threshold-T``, ``report-count-N`` or ``report-auto``)."""
    if not os.path.exists(os.path.join(workdir, "label_issues.csv")):
        return workdir
    if threshold is not None:
        return os.path.join(workdir, f"report-threshold-{threshold:g}")
    return os.path.join(workdir, "report-auto" if count is None else f"report-count-{count}")


def write_figures(fig_dir: str, run: dict[str, Any], mask: np.ndarray | None) -> dict[str, str]:
    """The run's figures (loss histogram with the fitted mixtures, accuracy / AUROC per epoch,
    posterior vs loss, loss quantiles of clean and noisy samples) as {name: png path}."""
    config, dataset, records, ps = run["config"], run["dataset"], run["records"], run["per_sample"]
    known = mask is not None
    os.makedirs(fig_dir, exist_ok=True)
    states = refit_mixtures(ps["loss"], config)
    valid = {k: s for k, s in states.items() if bool(s.valid)}
    figures = {
        "loss_histogram": plots.loss_histogram(
            os.path.join(fig_dir, "loss_histogram.png"),
            ps["loss"],
            noise_mask=mask,
            mixtures={k: mixture.summary(s) for k, s in valid.items()},
            title=f"{dataset.get('name') or 'run'}: per-sample loss, epoch "
            f"{records[-1]['epoch'] if records else '?'}",
        ),
        "accuracy_auroc": plots.accuracy_and_auroc(
            os.path.join(fig_dir, "accuracy_auroc.png"), records, noise_known=known
        ),
        "posterior_vs_loss": plots.posterior_vs_loss(
            os.path.join(fig_dir, "posterior_vs_loss.png"),
            ps["loss"],
            ps["p_noisy"],
            noise_mask=mask,
            curves=posterior_curves(valid, config, ps["loss"]),
        ),
    }
    if known and records and all("loss_quantiles_clean" in r for r in records):
        figures["loss_quantiles"] = plots.loss_quantiles_over_epochs(
            os.path.join(fig_dir, "loss_quantiles.png"), records
        )
    return figures


def write_report(
    workdir: str,
    *,
    threshold: float | None = None,
    count: int | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Write the figures, label_issues.csv and label_issues_summary.json into out_dir (default
    the workdir); return a summary dict. The list's cut: ``threshold`` (p(noisy) > it),
    ``count`` (that many), or neither (``auto``: as many as the noise model estimates wrong)."""
    if threshold is not None and count is not None:
        raise ValueError("give a threshold or a count, not both")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if count is not None and not (isinstance(count, (int, np.integer)) and count >= 0):
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    cut = "threshold" if threshold is not None else "count" if count is not None else "auto"
    run = load_workdir(workdir)
    dataset, ps = run["dataset"], run["per_sample"]
    known = bool(dataset.get("noise_known", True)) and metrics.noise_known(ps["noise_mask"])
    mask = np.asarray(ps["noise_mask"], bool) if known else None
    out_dir = workdir if out_dir is None else out_dir
    figures = write_figures(os.path.join(out_dir, "figures"), run, mask)

    per_class = per_class_cut(run["config"])
    rows = label_issues(ps, dataset, threshold=threshold, cut=cut, count=count, per_class=per_class)
    csv_path = write_label_issues(
        os.path.join(out_dir, "label_issues.csv"),
        rows,
        with_path=bool(dataset.get("train_paths")),
        with_id=bool(dataset.get("train_ids")),
    )
    summary: dict[str, Any] = {
        "checkpoint": run["checkpoint"],  # the checkpoint the per-sample arrays were made from
        "cut": cut,
        **({"threshold": threshold} if cut == "threshold" else {}),
        **({"count": count} if cut == "count" else {}),
        "per_class": per_class and cut == "auto",
        "num_train": int(ps["loss"].shape[0]),
        "num_flagged": len(rows),
        "noise_known": known,
    }
    p_noisy = np.asarray(ps["p_noisy"], np.float64)
    summary["max_p_noisy"] = float(p_noisy.max()) if p_noisy.size else float("nan")
    summary["est_noisy"] = float(p_noisy.sum())  # the noise model's expected count of wrong labels
    summary["est_wrong"] = int(estimated_wrong(p_noisy))
    if known:
        summary.update(list_quality(np.array([r["index"] for r in rows], np.int64), mask))
        summary["num_noisy"] = int(mask.sum())
    summary_path = os.path.join(out_dir, "label_issues_summary.json")
    workdir_lib.atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return {
        **summary,
        "nothing_flagged": nothing_flagged(summary),
        "figures": figures,
        "label_issues_csv": csv_path,
        "summary_json": summary_path,
    }


def nothing_flagged(summary: dict[str, Any]) -> str | None:
    """One line when the list is empty (None when it lists some): a threshold above every
    p(noisy) while the noise model estimates wrong labels, or a model that estimates none."""
    if summary["num_flagged"]:
        return None
    if summary["cut"] == "threshold" and summary["est_wrong"] > 0:
        return (
            f"warning: no sample has p(noisy) > {summary['threshold']:g} (the largest is "
            f"{summary['max_p_noisy']:.3f}), but the noise model estimates "
            f"{summary['est_wrong']} of {summary['num_train']} labels wrong: without "
            "--threshold the list holds that many, the most suspect first"
        )
    if summary["cut"] == "auto":
        return (
            f"the noise model estimates no wrong label among the {summary['num_train']} "
            "(--count N lists the N most suspect anyway)"
        )
    return None


def describe_cut(out: dict[str, Any]) -> str:
    """How the list was cut, for the line that names label_issues.csv."""
    if out["cut"] == "threshold":
        return f"samples with p(noisy) > {out['threshold']:g}"
    if out["cut"] == "count":
        return "samples, the most suspect"
    per = " per class" if out.get("per_class") else ""
    return f"samples: as many as the noise model estimates wrong{per}"


class OneLineParser(argparse.ArgumentParser):
    """argparse with every refusal as one line on stderr (exit code 2)."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} ({self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None, prog: str = "python -m jaxnoise.report") -> int:
    """CLI: write the report of a workdir and print where it went (``jaxnoise report``)."""
    parser = OneLineParser(
        prog=prog,
        description="Figures and the label-issue list (label_issues.csv) of a jaxnoise run.",
    )
    parser.add_argument("workdir", help="a training run's --workdir")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="list the samples with p(noisy) > this (e.g. 0.5); default: as many "
        "as the noise model estimates wrong, the most suspect first",
    )
    cut.add_argument("--count", type=int, default=None, help="list the COUNT most suspect samples")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: the workdir until it holds its report, then "
        "WORKDIR/report-auto, report-threshold-T or report-count-N; a run's own files are "
        "never rewritten)",
    )
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.count is not None and args.count < 0:
        parser.error(f"--count must be >= 0, got {args.count}")
    try:
        out_dir = args.out or default_out_dir(args.workdir, args.threshold, args.count)
        out = write_report(
            args.workdir, threshold=args.threshold, count=args.count, out_dir=out_dir
        )
    except WorkdirError as e:
        parser.error(str(e))
    for path in out["figures"].values():
        print(f"figure: {path}")
    print(
        f"label issues: {out['label_issues_csv']} ({out['num_flagged']} of {out['num_train']} "
        f"{describe_cut(out)})"
    )
    if out["nothing_flagged"]:
        print(out["nothing_flagged"])
    if out["noise_known"]:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
        print(
            f"against the known noise ({out['num_noisy']} wrong labels): precision "
            f"{fmt(out['precision'])}  recall {fmt(out['recall'])}  F1 {fmt(out['f1'])}"
        )
    else:
        print("the true noise is unknown for this run: no precision/recall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
