"""The quickstart (digits, 50% symmetric noise) for CE, M and M-DYR-H: accuracy, AUROC, the
label-issue list (its default cut: as many as the noise model estimates wrong), seconds; the
README's quickstart table comes from this page.

python benchmarks/bench_quickstart.py      # writes benchmarks/results/quickstart.md
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402
from configs import quickstart  # noqa: E402
from jaxnoise import loops  # noqa: E402


def main() -> None:
    """Run the three methods and write the table."""
    rows = []
    for method, source in (
        ("CE", "batch"),
        ("M", "batch"),
        ("M-DYR-H", "batch"),
        ("M-DYR-H", "epoch"),
    ):
        c = quickstart.get_config()
        c.method = method
        c.bootstrap.posterior_source = source
        wd = tempfile.mkdtemp(prefix=f"qs_{method}_")
        t = time.time()
        s = loops.train_and_evaluate(c, wd)
        name = method if source == "batch" else f"{method} (posterior_source=epoch)"
        seconds = time.time() - t
        with open(os.path.join(wd, "label_issues_summary.json")) as f:
            li = json.load(f)
        flagged = (
            f"{li['num_flagged']:,} of {li['num_train']:,} ({li['precision']:.3f} / "
            f"{li['recall']:.3f})"
        )
        rows.append((name, s["best_acc"], s["last_acc"], s["auroc"], flagged, seconds))
        shutil.rmtree(wd)
    commit = git_commit()
    lines = [
        "# Quickstart: digits, 50% symmetric noise",
        "",
        "Command: `python benchmarks/bench_quickstart.py` (each row is "
        "`python main.py --config configs/quickstart.py --config.method=METHOD`), "
        f"{os.cpu_count()}-core CPU, jaxnoise commit {commit}.",
        "",
        "| method | best test acc (%) | last test acc (%) | noise AUROC (last epoch) "
        "| flagged (precision / recall) | seconds |",
        "|---|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {m} | {b:.2f} | {last:.2f} | {a:.4f} | {fl} | {sec:.0f} |"
        for m, b, last, a, fl, sec in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "benchmarks", "results", "quickstart.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
