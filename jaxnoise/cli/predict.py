"""``jaxnoise predict WORKDIR --inputs PATH [--out FILE]``: a trained run's model on new data.

The inputs: a .npy or .npz file (uint8 (M, H, W, C) images like the run's training images, or
float (M, D) features), or a folder of image files (also in subfolders). Writes a CSV with one
row per input: ``index`` (or ``file``, the image's path in the folder), ``predicted_label``,
``predicted_class`` and ``probability`` (the predicted class's softmax probability). See
:mod:`jaxnoise.inference` for the same from Python.
"""

from __future__ import annotations

import csv
import io

import numpy as np


def write_csv(path: str, out: dict, class_names: list[str], names: list[str] | None) -> None:
    """The predictions as CSV (atomically): one row per input."""
    from jaxnoise import workdir as workdir_lib

    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["file" if names else "index", "predicted_label", "predicted_class", "probability"])
    top = out["probs"][np.arange(len(out["prediction"])), out["prediction"]]
    for i, (label, p) in enumerate(zip(out["prediction"].tolist(), top.tolist())):
        w.writerow([names[i] if names else i, label, class_names[label], f"{p:.6g}"])
    workdir_lib.atomic_write_text(path, text.getvalue())


def run(argv: list[str], prog: str = "jaxnoise predict") -> int:
    """Predict the inputs with a run's newest checkpoint and write the CSV; the exit code (2:
    refused in one line, before anything is computed)."""
    from jaxnoise import inference
    from jaxnoise.report import OneLineParser

    parser = OneLineParser(
        prog=prog,
        description="The model of a trained run's newest "
        "checkpoint on new data: one CSV row per input.",
    )
    parser.add_argument("workdir", help="a training run's --workdir")
    parser.add_argument(
        "--inputs",
        required=True,
        help="a .npy / .npz file (uint8 images (M, H, W, C) like the training "
        "images, or float features (M, D)) or a folder of images",
    )
    parser.add_argument(
        "--out", default="predictions.csv", help="the CSV to write (default predictions.csv)"
    )
    args = parser.parse_args(argv)
    try:
        loaded = inference.load_run(args.workdir)
        x, names = inference.read_inputs(args.inputs, loaded)
        x = inference.check_inputs(loaded, x)
    except inference.PredictError as e:
        parser.error(str(e))
    out = loaded.predict(x)
    write_csv(args.out, out, loaded.class_names, names)
    print(
        f"predictions: {args.out} ({len(x)} inputs; the model of checkpoint "
        f"{loaded.checkpoint}, {loaded.position}, of {args.workdir})"
    )
    return 0
