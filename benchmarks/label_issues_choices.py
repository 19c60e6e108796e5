"""The measurements behind jaxnoise.label_issues' defaults (EM iterations, model; the kNN search).

    python benchmarks/label_issues_choices.py --part fits     # F1 of the default list by model
    python benchmarks/label_issues_choices.py --part search   # IVF recall / time vs exact, CIFAR

``fits``: on the pred_probs of every quality row of ``bench_label_issues.py`` (the same cached
cross-validated probabilities), the F1 of ``find_label_issues`` for the beta (BMM) and Gaussian
(GMM) mixtures, global and per class, at 10 to 300 EM iterations, beside cleanlab's F1 and the
F1 of the ranking cut at the true number of wrong labels (the best any count can do).
``search``: on the CIFAR-10 k-means features (50,000 x 1,600), the exact search's time and the
IVF search's time and recall@10 for nprobe = 8, 16, 32 (nlist = sqrt(N) = 224).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_label_issues as bench  # noqa: E402

FITS = [("bmm", "global", it) for it in (10, 30, 100, 300)] + [
    ("gmm", "global", 10),
    ("gmm", "global", 100),
    ("bmm", "class", 10),
    ("bmm", "class", 100),
]


def fits() -> None:
    """F1 of the default list per (model, scope, iterations), on every quality row."""
    from cleanlab import filter as cl_filter

    from jaxnoise import label_issues as li

    names = " | ".join(f"{m} {s} {it}" for m, s, it in FITS)
    print(f"| row | wrong | cleanlab | {names} | ranking cut at the truth |")
    print("|---|---:|---:|" + "---:|" * (len(FITS) + 1))
    for row in bench.QUALITY_ROWS:
        x, y, clean = bench.digits_row() if row == "digits" else bench.cifar_row(row)
        truth = y != clean
        pp = bench.cached_pred_probs(row, x, y)
        cells = [bench.scores(cl_filter.find_label_issues(y, pp), truth)["f1"]]
        for model, scope, iters in FITS:
            flagged = li.find_label_issues(
                y, pred_probs=pp, model=model, scope=scope, max_iters=iters
            )
            cells.append(bench.scores(flagged, truth)["f1"])
        order = li.find_label_issues(y, pred_probs=pp, cut="none")
        cells.append(bench.scores(order[: truth.sum()], truth)["f1"])
        print(f"| {row} | {truth.mean():.1%} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def search() -> None:
    """Exact against IVF neighbours on the CIFAR-10 features."""
    from jaxnoise import knn

    x, _ = bench.cifar_features()
    t = time.perf_counter()
    exact, _ = knn.exact_neighbors(x, 10)
    print(f"| exact | {time.perf_counter() - t:.0f} | 1.000 |")
    for nprobe in (8, 16, 32):
        t = time.perf_counter()
        approx, _ = knn.ivf_neighbors(x, 10, nprobe=nprobe)
        seconds = time.perf_counter() - t
        print(f"| IVF nprobe {nprobe} | {seconds:.0f} | {knn.recall_at_k(approx, exact):.3f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("fits", "search"), required=True)
    warnings.simplefilter("ignore")
    {"fits": fits, "search": search}[ap.parse_args().part]()
