"""``jaxnoise find-issues --labels FILE (--pred-probs | --features | --losses) FILE``: the wrong
labels of a dataset from arrays on disk, without training (:mod:`jaxnoise.label_issues`).

Each FILE is a ``.npy`` file or ``FILE.npz:KEY``: ``--labels`` (N,) integers; one of
``--pred-probs`` (N, K) out-of-sample class probabilities, ``--features`` (N, D) embeddings
(the k nearest other samples vote), ``--losses`` (N,) per-sample losses of your own loop.
Writes a CSV, one row per listed sample, most suspect first: ``index`` (or ``id`` with
``--ids``), ``given_label``, ``predicted_label``, ``label_score``, ``p_noisy``; prints how many
it lists and how many the noise model estimates wrong.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np


def _load(parser, flag: str, spec: str | None):
    """The array a ``--flag FILE[.npz:KEY]`` names, or a one-line refusal."""
    if spec is None:
        return None
    path, _, key = spec.partition(".npz:")
    path = path + ".npz" if key else path
    if not os.path.isfile(path):
        parser.error(f"{flag} {spec}: no such file")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        parser.error(f"{flag} {spec}: not a readable .npy / .npz file ({e})")
    if isinstance(f, np.ndarray):
        return f
    try:
        with f:
            if not key and len(f.files) != 1:
                parser.error(
                    f"{flag} {spec}: the .npz holds {', '.join(f.files)}; name one as {path}:KEY"
                )
            key = key or f.files[0]
            if key not in f.files:
                parser.error(f"{flag} {spec}: no array {key!r} (it holds {', '.join(f.files)})")
            return f[key]
    except (OSError, ValueError) as e:
        parser.error(f"{flag} {spec}: not a readable .npy / .npz file ({e})")


def write_csv(path: str, table: dict, order: np.ndarray) -> None:
    """The listed rows, most suspect first, as CSV (atomically)."""
    from jaxnoise import workdir as workdir_lib

    first = "id" if "id" in table else "index"
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow([first, "given_label", "predicted_label", "label_score", "p_noisy"])
    for i in order.tolist():
        w.writerow(
            [
                table["id"][i] if first == "id" else i,
                int(table["given_label"][i]),
                int(table["predicted_label"][i]),
                f"{table['label_score'][i]:.6g}",
                f"{table['p_noisy'][i]:.6g}",
            ]
        )
    workdir_lib.atomic_write_text(path, text.getvalue())


def make_parser(prog: str):
    """The verb's flags (every refusal one line)."""
    from jaxnoise.report import OneLineParser

    parser = OneLineParser(
        prog=prog,
        description="The wrong labels of a dataset from its labels and its class probabilities, "
        "embeddings or losses (no training).",
    )
    parser.add_argument("--labels", required=True, help="(N,) integers: FILE.npy or FILE.npz:KEY")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred-probs", help="(N, K) out-of-sample class probabilities")
    source.add_argument("--features", help="(N, D) embeddings (k nearest neighbours vote)")
    source.add_argument("--losses", help="(N,) per-sample losses (higher = more suspect)")
    parser.add_argument("--ids", help="(N,) ids to write instead of the row index")
    cut = parser.add_mutually_exclusive_group()
    default = "default: as many as the noise model estimates wrong"
    cut.add_argument("--threshold", type=float, help=f"list p(noisy) > T ({default})")
    cut.add_argument("--count", type=int, help="list the COUNT most suspect")
    parser.add_argument("--model", default="bmm", choices=("bmm", "gmm"), help="the mixture")
    parser.add_argument(
        "--scope",
        default="global",
        choices=("global", "class"),
        help="one mixture, or one per given label",
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours for --features (10)")
    parser.add_argument("--out", default="label_issues.csv", help="the CSV to write")
    return parser


def _options(args, arrays: dict) -> dict:
    """find_label_issues' options from the flags."""
    options = dict(cut="auto", model=args.model, scope=args.scope)
    if args.threshold is not None:
        options.update(cut="threshold", threshold=args.threshold)
    if args.count is not None:
        options.update(cut="count", count=args.count)
    if arrays["features"] is not None:
        options["k"] = args.k
    return options


def run(argv: list[str], prog: str = "jaxnoise find-issues") -> int:
    """Find the label issues and write the CSV; the exit code (2: refused in one line)."""
    import warnings

    parser = make_parser(prog)
    args = parser.parse_args(argv)
    flags = [
        ("labels", "--labels"),
        ("pred_probs", "--pred-probs"),
        ("features", "--features"),
        ("losses", "--losses"),
        ("ids", "--ids"),
    ]
    arrays = {name: _load(parser, flag, getattr(args, name)) for name, flag in flags}
    options = _options(args, arrays)
    from jaxnoise import label_issues

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            given = {k: v for k, v in arrays.items() if v is not None}
            table = label_issues.label_issues_table(**given, **options)
    except ValueError as e:
        parser.error(str(e))
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}")
    ranked = label_issues.rank(table["p_noisy"], table["loss"])  # find_label_issues' order
    order = ranked[table["is_label_issue"][ranked]]
    write_csv(args.out, table, order)
    how = {
        "auto": "as many as the noise model estimates wrong",
        "count": "the most suspect",
        "threshold": f"p(noisy) > {args.threshold}",
    }[options["cut"]]
    how += " per class" if options["cut"] == "auto" and args.scope == "class" else ""
    print(f"label issues: {args.out} ({order.size} of {table['given_label'].size} samples: {how})")
    return 0
