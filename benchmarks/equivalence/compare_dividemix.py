"""Equivalence of jaxnoise's DivideMix steps with the official code, on the same weights and draws.

    pip install torch     # not a jaxnoise dependency; only this harness needs it
    git clone https://github.com/LiJunnan1992/DivideMix /path/to/DivideMix
    python benchmarks/equivalence/compare_dividemix.py --orig-dir /path/to/DivideMix \
        [--data ../shared/data/cifar10-jpeg.tar.gz] [--write-fixtures]

``--orig-dir`` is a checkout of LiJunnan1992/DivideMix (read, never copied): its ``PreResNet.py``
is imported, and the definitions of ``train``, ``warmup``, ``eval_train``, ``SemiLoss``,
``NegEntropy`` and ``linear_rampup`` are taken from ``Train_cifar.py`` with ``ast``
(``benchmarks/equivalence/original_dividemix.py``). The harness builds two official
``PreResNet.ResNet18`` at width 2, copies their weights into jaxnoise's ``PreActResNet18``, and
compares, on real CIFAR-10 images:

1. one and three steps of the official semi-supervised epoch ``train(epoch, net, net2, ...)``
   (net trained, net2 fixed) against jaxnoise's jitted ``dividemix.step.make_semi_step``: the
   same labelled / unlabelled batches, clean probabilities ``w_x``, augmented views, MixMatch
   ``l`` and permutation, all drawn by jaxnoise (``pool_orders``, ``semi_draws``, the step's own
   ``_augmented`` views) and given to the official loop (stand-in loaders, ``np.random.beta`` and
   ``torch.randperm`` patched); Lx, Lu, penalty, loss, lambda_u, and the parameters and
   BatchNorm running statistics after the step(s);
2. one and three steps of the official ``warmup()`` (CE; CE + NegEntropy for asymmetric noise)
   against ``make_warmup_step`` on the same views;
3. ``eval_train``'s min-max normalisation and GMM on 50,000 given losses against
   ``dividemix.loop.make_divide`` (sklearn seeded: its k-means start is random).

The official epochs count from 0, jaxnoise's from 1: the compared official epoch ``e``
(``SEMI_EPOCH``, ``WARMUP_EPOCH``) is jaxnoise's epoch ``e + 1`` (``jax_epoch``), whose steps
draw with and ramp by ``official_epoch = e``.

It writes benchmarks/results/equivalence_dividemix.md, and with ``--write-fixtures`` the official
outputs (numbers only) to tests/fixtures/dividemix_w2.npz for tests/test_dividemix_equivalence.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from scipy import special  # noqa: E402

from benchmarks.common import git_commit  # noqa: E402
from benchmarks.equivalence import compare as arazo  # noqa: E402
from benchmarks.equivalence import original as orig_lib  # noqa: E402
from benchmarks.equivalence import original_dividemix as dm_lib  # noqa: E402
from configs import cifar10_dividemix  # noqa: E402
from jaxnoise import data as data_lib  # noqa: E402
from jaxnoise import models, network, optim  # noqa: E402
from jaxnoise.dividemix import loop as dividemix_loop  # noqa: E402
from jaxnoise.dividemix import step as dms  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "dividemix_w2.npz")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "equivalence_dividemix.md")
MEAN, STD = data_lib.PUBLISHED_MEAN, data_lib.PUBLISHED_STD  # Train_cifar's transform_train's
WIDTH, C, B, N, STEPS, SEED = 2, 10, 8, 48, 3, 0
SEMI_EPOCH, WARMUP_EPOCH, NET = 18, 3, 0  # lambda_u = 25 (18 + s / 4 - 10) / 16: mid-ramp
# (official, 0-based epochs: the fixture's constants and the official loop's argument)
WARM_UP, RAMPUP, LAMBDA_U, T, ALPHA, LR = 10, 16.0, 25.0, 0.5, 4.0, 0.02
GMM_N, GMM_SEED, GMM_STORED = 50_000, 0, 500  # posteriors of 500 of the 50,000 are stored
# Updates stored in the fixture (float16, ~21 KB each); the losses of every step are stored.
STORED_UPDATES = {("semi/", 1), ("semi/", STEPS), ("warmup/sym/", STEPS), ("warmup/asym/", STEPS)}
SEMI_NAMES = {"Lx": "Lx", "Lu": "Lu", "penalty": "penalty", "loss": "loss", "lambda_u": "lamb"}
WARMUP_NAMES = {"ce": "loss", "penalty": "penalty", "loss": "L"}


NOTES = [
    "## Reading the tables",
    "",
    "No discrepancy: every compared quantity of jaxnoise (float32) is within float32 rounding "
    "of the official code run in float64, the exact reference. How far the official float32 "
    "run is from that reference (`float32 floor`) depends on torch's CPU kernels, that is on "
    "the machine: three steps of a width-2 network with 8- to 32-sample BatchNorm batches can "
    "amplify their rounding (a BatchNorm scale whose update nearly cancels is the worst "
    "tensor). The fixture therefore stores the float64 run's losses and updates (the float32 "
    "run's losses beside them), and the test compares with the float64 run.",
    "",
    "What is compared is the arithmetic of a step given its draws. The draws themselves are "
    "jaxnoise's (its pool shuffles, the step's view keys, l and permutation), handed to the "
    "official loop; the loaders' randomness (torch's DataLoader shuffles, torchvision's "
    "crops) cannot be matched draw for draw and is not compared. Where jaxnoise's loader "
    "semantics part from the official ones (full last labelled batch, an unlabelled pool "
    "restarting in the same order) is documented in `jaxnoise/dividemix/step.py`; these "
    "batches are full and no pool wraps.",
    "",
    "Division: sklearn's k-means start is random (seeded here) and jaxnoise's deterministic; "
    "both reach the same fit, p_clean within 2e-4 (one of the 50,000 samples, at p_clean "
    "0.5, falls on the other side of the threshold).",
    "",
    "tests/test_dividemix_equivalence.py (no torch) checks, from tests/fixtures/"
    "dividemix_w2.npz: jaxnoise's draws equal the stored ones; losses within 1e-5 (relative) "
    "of the official float64 run; updates after 1 and 3 steps within 2e-3 of the update, "
    "separately over the parameters and over the BatchNorm running statistics (the stored "
    "float16 updates carry ~1.5e-4 of rounding); the division's p_clean within 2e-3. It "
    "takes ~130 s on two shared CPU cores (80 s of CPU), nearly all of it XLA compiling the "
    "three jitted steps (marked slow).",
    "",
    "Mutations checked by hand (patched into jaxnoise.dividemix.pieces / .step in memory, "
    "then the test run; distances after 1 / 3 steps against the tolerance 2e-3):",
    "",
    "| mutation | what fails |",
    "|---|---|",
    "| co-refinement with 1 - w instead of w | losses (Lx 5% off); parameters 0.44 / 0.45 |",
    "| lambda_u ramped over 17 epochs, not 16 | lambda_u (6% off), Lx of steps 2-3 (1e-4); "
    "parameters 2.3e-3 / 2.7e-2 |",
    "| uniform-prior penalty sign flipped | penalty (negated), Lx of steps 2-3 (2e-4); "
    "parameters 0.25 / 0.34 |",
    "| running statistics moved by x1, x2 before u1, u2 | statistics 8.3e-3 / 5.5e-3 "
    "(parameters unchanged: 2.0e-4) |",
    "| warm-up (asym) without NegEntropy | penalty (0), CE of steps 2-3 (2.8e-3 off) |",
    "",
    "One step of lambda_u off by 6% moves the parameters only by about the tolerance (the "
    "unlabelled term is small at this mid-ramp weight); the stored lambda_u catches it.",
    "",
]


def jax_config(seed: int = SEED):
    c = cifar10_dividemix.get_config()  # crop padding 4 + flip, lr 0.02, momentum 0.9, wd 5e-4
    c.width, c.seed, c.dividemix.batch_size = WIDTH, seed, B
    return c


def jax_epoch(official: int) -> jax.Array:
    """jaxnoise's (1-based) epoch of an official (0-based) epoch, as the steps take it."""
    return jnp.int32(official + 1)


def jax_net(c, state: dict[str, np.ndarray], tx) -> tuple:
    """(graphdef, train state) of jaxnoise's PreActResNet18 holding the official weights."""
    model = models.PreActResNet18(C, width=WIDTH, rngs=nnx.Rngs(0))
    models.load_torch_state(model, state)
    graphdef, params, frozen, stats = network.split(model, c)
    return graphdef, {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
    }


def flat(graphdef, state) -> dict[str, np.ndarray]:
    return models.torch_state(nnx.merge(graphdef, state["params"], state["frozen"], state["stats"]))


def i32(v):
    return jnp.int32(v)


def semi_draws(c, mask, images) -> list[dict]:
    """jaxnoise's draws of the compared semi steps and the step's own four views of each."""
    orders = dms.pool_orders(c.seed, jax_epoch(SEMI_EPOCH), i32(NET), jnp.asarray(mask))
    out = []
    for s in range(STEPS):
        d = dms.semi_draws(c.seed, jax_epoch(SEMI_EPOCH), i32(s), i32(NET), orders, B, ALPHA)
        views = [
            np.asarray(dms._augmented(images[np.asarray(idx)], key, c, MEAN, STD))
            for idx, key in zip((d.labelled, d.labelled, d.unlabelled, d.unlabelled), d.view_keys)
        ]
        out.append(
            {
                "labelled": np.asarray(d.labelled),
                "unlabelled": np.asarray(d.unlabelled),
                "lam": np.float32(d.lam),
                "mix_perm": np.asarray(d.mix_perm),
                "view_keys": np.asarray(jax.random.key_data(d.view_keys)),
                "views": views,
            }
        )
    return out


def warmup_draws(c, images) -> tuple[np.ndarray, list[np.ndarray]]:
    """The warm-up epoch's shuffle and the step's own augmented batch of each compared step."""
    perm = np.asarray(dms.warmup_permutation(c.seed, N, jax_epoch(WARMUP_EPOCH), i32(NET)))
    views = []
    for s in range(STEPS):
        key = dms.step_key(c.seed, jax_epoch(WARMUP_EPOCH), i32(s), i32(NET))
        idx = perm[s * 2 * B : (s + 1) * 2 * B]
        views.append(np.asarray(dms._augmented(images[idx], key, c, MEAN, STD)))
    return perm, views


def run_jax_semi(c, init1, init2, data, p_clean, mask, steps: int):
    """jaxnoise's jitted semi step of net 1 (net 2 fixed): (state after, metrics per step)."""
    tx = optim.direction(c)
    graphdef, state = jax_net(c, init1, tx)
    _, other = jax_net(c, init2, tx)
    step = dms.make_semi_step(
        graphdef,
        tx,
        c,
        C,
        MEAN,
        STD,
        batch_size=B,
        T=T,
        alpha=ALPHA,
        lambda_max=LAMBDA_U,
        warm_up=WARM_UP,
        rampup=RAMPUP,
    )
    orders = dms.pool_orders(c.seed, jax_epoch(SEMI_EPOCH), i32(NET), jnp.asarray(mask))
    num_iter = int(mask.sum()) // B + 1  # the official (len(labelled) // batch_size) + 1
    metrics = []
    for s in range(steps):
        state, m = step(
            state,
            other,
            data,
            jnp.asarray(p_clean),
            orders,
            jax_epoch(SEMI_EPOCH),
            i32(s),
            i32(num_iter),
            i32(NET),
        )
        metrics.append({k: float(v) for k, v in m.items()})
    return flat(graphdef, state), metrics


def run_jax_warmup(c, init1, data, perm, penalty: bool, steps: int):
    tx = optim.direction(c)
    graphdef, state = jax_net(c, init1, tx)
    step = dms.make_warmup_step(graphdef, tx, c, C, MEAN, STD, penalty=penalty, batch_size=2 * B)
    metrics = []
    for s in range(steps):
        state, m = step(state, data, jnp.asarray(perm), jax_epoch(WARMUP_EPOCH), i32(s), i32(NET))
        metrics.append({k: float(v) for k, v in m.items()})
    return flat(graphdef, state), metrics


def official_net(PreResNet, state: dict[str, np.ndarray], dtype):
    net = orig_lib.original_resnet18(PreResNet, WIDTH, C)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    return net.to(dtype)


def run_official_semi(ns, PreResNet, init1, init2, labels, p_clean, n_lab, draws, dtype):
    """The official ``train()`` of net (net2 fixed) over the given draws: (state, records)."""
    net, net2 = official_net(PreResNet, init1, dtype), official_net(PreResNet, init2, dtype)
    lab, unl = [], []
    for d in draws:
        x1, x2, u1, u2 = (dm_lib.nchw(v, dtype) for v in d["views"])
        idx = d["labelled"]
        lab.append(
            (
                x1,
                x2,
                torch.from_numpy(labels[idx].astype(np.int64)),
                torch.from_numpy(p_clean[idx].astype(np.float32)),
            )
        )
        unl.append((u1, u2))
    records = dm_lib.run_train(
        ns,
        SEMI_EPOCH,
        net,
        net2,
        LR,
        lab,
        unl,
        n_lab,
        [float(d["lam"]) for d in draws],
        [d["mix_perm"].copy() for d in draws],
    )
    return orig_lib.state_numpy(net), records


def run_official_warmup(ns, PreResNet, init1, labels, perm, views, dtype):
    net = official_net(PreResNet, init1, dtype)
    batches = []
    for s, v in enumerate(views):
        idx = perm[s * 2 * B : (s + 1) * 2 * B]
        batches.append(
            (dm_lib.nchw(v, dtype), torch.from_numpy(labels[idx].astype(np.int64)), None)
        )
    records = dm_lib.run_warmup(ns, WARMUP_EPOCH, net, LR, batches, N)
    return orig_lib.state_numpy(net), records


def store_update(fx: dict, prefix: str, exact: dict, before: dict, keys) -> float:
    """The exact (float64) update of every tensor, each scaled to [-1, 1], as float16; returns
    the storage error ||stored - exact|| / ||exact||."""
    deltas = [exact[k].astype(np.float64) - before[k] for k in keys]
    scales = np.asarray([max(float(np.max(np.abs(d))), 1e-30) for d in deltas])
    q = np.concatenate([(d / s).ravel() for d, s in zip(deltas, scales)]).astype(np.float16)
    fx[prefix + "scale"], fx[prefix + "delta"] = scales, q
    stored = np.concatenate(
        [
            (q_k * s)
            for q_k, s in zip(
                np.split(q.astype(np.float64), np.cumsum([d.size for d in deltas])[:-1]), scales
            )
        ]
    )
    full = np.concatenate([d.ravel() for d in deltas])
    return float(np.linalg.norm(stored - full) / np.linalg.norm(full))


def compare_case(name, run_official, run_jax, names, before, keys, fx, prefix) -> list[str]:
    """One compared case, 1 and STEPS steps: table rows; the official numbers into ``fx``."""
    rows = []
    for steps in (1, STEPS):
        after_t, rec_t = {}, {}
        for dtype in (torch.float32, torch.float64):
            after_t[dtype], rec_t[dtype] = run_official(steps, dtype)
        after_j, rec_j = run_jax(steps)
        f32, exact = after_t[torch.float32], after_t[torch.float64]
        vs_f32, worst, worst_key = arazo.update_distance(after_j, f32, before)
        vs_exact = arazo.update_distance(after_j, exact, before)[0]
        floor = arazo.update_distance(f32, exact, before)[0]
        diffs = {}
        for ours, theirs in names.items():
            j = np.asarray([r[ours] for r in rec_j])
            o = {
                dt: np.asarray([r.get(theirs, 0.0) for r in rec_t[dt]])  # sym: no penalty
                for dt in (torch.float32, torch.float64)
            }
            diffs[ours] = [
                float(np.max(np.abs(j - o[dt]) / np.maximum(np.abs(o[dt]), 1e-30)))
                for dt in (torch.float32, torch.float64)
            ]
            if steps == STEPS:
                fx[f"{prefix}{ours}"] = o[torch.float64]
                fx[f"{prefix}{ours}_float32"] = o[torch.float32]
        loss_cols = " | ".join(f"{diffs[k][0]:.1e} ({diffs[k][1]:.1e})" for k in names)
        rows.append(
            f"| {name} | {steps} | {loss_cols} | {vs_f32:.1e} | {vs_exact:.1e} | "
            f"{floor:.1e} | {worst:.1e} (`{worst_key}`) |"
        )
        stats = [k for k in keys if "running" in k]
        fx[f"{prefix}{steps}/float32_floor"] = np.float64(floor)
        fx[f"{prefix}{steps}/float32_floor_stats"] = np.float64(
            arazo.update_distance({k: f32[k] for k in stats}, {k: exact[k] for k in stats}, before)[
                0
            ]
        )
        fx[f"{prefix}{steps}/vs_exact"] = np.float64(vs_exact)
        if (prefix, steps) in STORED_UPDATES:
            err = store_update(fx, f"{prefix}{steps}/", exact, before, keys)
            rows[-1] += f" {err:.1e} |"
        else:
            rows[-1] += " (not stored) |"
        print(rows[-1], flush=True)
    return rows


def gmm_losses(n: int = GMM_N) -> tuple[np.ndarray, np.ndarray]:
    """A realistic bimodal loss array, deterministic (quantiles, no generator): 60% clean
    (exponential, mean 0.3), 40% noisy (normal 2.4 +- 0.6, >= 0.05), interleaved; labels."""
    n_clean = int(0.6 * n)
    u_c = (np.arange(n_clean) + 0.5) / n_clean
    u_n = (np.arange(n - n_clean) + 0.5) / (n - n_clean)
    losses = np.concatenate(
        [-0.3 * np.log1p(-u_c), np.maximum(2.4 + 0.6 * special.ndtri(u_n), 0.05)]
    )
    order = np.argsort((np.arange(n) * 7919) % n, kind="stable")  # a fixed interleaving
    return losses[order].astype(np.float32), (np.arange(n) % C).astype(np.int64)


def compare_gmm(ns, fx) -> list[str]:
    losses, labels = gmm_losses()
    prob, normalised, gmm = dm_lib.run_eval_train(ns, losses, labels, GMM_SEED)
    # the raw losses eval_train normalised: the official CE of the stand-in model's logits
    logits = dm_lib.LossModel(losses, labels, C).logits
    ce = ns["CE"](logits, torch.from_numpy(labels)).numpy()
    divide = dividemix_loop.make_divide(False)
    _, x_j, p_j, g_j = divide(jnp.asarray(ce), None)
    p_j = np.asarray(p_j, np.float64)
    sel = np.linspace(0, GMM_N - 1, GMM_STORED).astype(np.int64)
    fx.update(
        {
            "gmm/index": sel,
            "gmm/prob": prob[sel],
            "gmm/normalised": normalised[sel],
            "gmm/means": gmm.means_.ravel(),
            "gmm/variances": gmm.covariances_.ravel(),
            "gmm/weights": gmm.weights_,
            "gmm/n_iter": np.int64(gmm.n_iter_),
        }
    )
    err = np.abs(p_j - prob)
    o_order, j_order = np.argsort(gmm.means_.ravel()), np.argsort(np.asarray(g_j.means))
    params = max(
        arazo.rel(np.asarray(getattr(g_j, ours))[j_order], np.ravel(getattr(gmm, theirs))[o_order])
        for ours, theirs in (
            ("means", "means_"),
            ("variances", "covariances_"),
            ("weights", "weights_"),
        )
    )
    labelled = (prob > 0.5) != (p_j > 0.5)
    return [
        "## 3. Division: `eval_train`'s normalisation and GMM",
        "",
        f"{GMM_N:,} given per-sample losses (60% exponential, 40% normal; the stand-in "
        "model's logits give these CE losses), the official `eval_train` with "
        f"`np.random.seed({GMM_SEED})` before its `GaussianMixture(n_components=2, "
        "max_iter=10, tol=1e-2, reg_covar=5e-4)` (random k-means start) against "
        "`dividemix.loop.make_divide(False)` (float32, deterministic k-means start).",
        "",
        "| normalised losses (max abs.) | means, variances, weights (max rel.) | "
        "p_clean (max abs.) | p_clean (mean abs.) | "
        "samples labelled differently at 0.5 | GMM iterations (official) |",
        "|---|---|---|---|---|---|",
        f"| {np.max(np.abs(np.asarray(x_j) - normalised)):.1e} | {params:.1e} | "
        f"{np.max(err):.1e} | "
        f"{np.mean(err):.1e} | {int(labelled.sum())} | {gmm.n_iter_} |",
        "",
    ]


def setup_data(data_path: str, PreResNet):
    """48 real CIFAR-10 images, 40% of their labels redrawn, p_clean (24 labelled), both nets."""
    images, true_labels = arazo.load_images(data_path, per_class=5)
    images, true_labels = images[:N], true_labels[:N]
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(N) < 0.4, rng.integers(0, C, N), true_labels).astype(np.int32)
    rng = np.random.default_rng(4)
    mask = np.zeros(N, bool)
    mask[rng.permutation(N)[: N // 2]] = True  # both pools hold 3 batches of 8
    p_clean = np.where(mask, rng.uniform(0.55, 0.99, N), rng.uniform(0.01, 0.45, N))
    x_t = orig_lib.to_torch_images(images, MEAN, STD)
    inits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = orig_lib.original_resnet18(PreResNet, WIDTH, C).train()
        with torch.no_grad():  # non-trivial running statistics (net2 is used in eval mode)
            for s in range(3):
                net(x_t[s * 16 : (s + 1) * 16])
        # float16-representable values (the fixture stores them in float16, exactly)
        inits.append(
            {
                k: v.astype(np.float16).astype(np.float32)
                for k, v in orig_lib.state_numpy(net).items()
            }
        )
    return images, labels, p_clean.astype(np.float32), mask, inits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orig-dir", required=True, help="checkout of LiJunnan1992/DivideMix")
    ap.add_argument("--data", default=arazo.SHARED_TAR, help="CIFAR-10 JPEG tar (../shared/data)")
    ap.add_argument("--write-fixtures", action="store_true", help=f"write {FIXTURE}")
    ap.add_argument(
        "--orig-commit",
        default="",
        help="the official commit, when --orig-dir is not a git checkout (e.g. a git archive)",
    )
    args = ap.parse_args(argv)
    for path, what in ((args.orig_dir, "--orig-dir"), (args.data, "--data")):
        if not os.path.exists(path):
            sys.exit(f"error: {what} {path!r} does not exist")
    torch.set_num_threads(1)
    t0 = time.time()
    PreResNet = dm_lib.import_preresnet(args.orig_dir)
    ns = dm_lib.load_train_cifar(
        args.orig_dir,
        dm_lib.official_args(batch_size=B, lambda_u=LAMBDA_U, T=T, alpha=ALPHA, num_class=C),
        warm_up=WARM_UP,
    )
    images, labels, p_clean, mask, (init1, init2) = setup_data(args.data, PreResNet)
    c = jax_config()
    data = {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}
    keys = sorted(init1)
    fx = {
        "images": images,
        "labels": labels,
        "p_clean": p_clean,
        "keys": np.asarray(keys),
        "constants": np.asarray([WIDTH, C, B, N, STEPS, SEED, SEMI_EPOCH, WARMUP_EPOCH, NET]),
    }
    # one flat float16 array per network (its values are float16-representable: exact)
    fx["shapes"] = np.asarray([list(init1[k].shape) + [-1] * (4 - init1[k].ndim) for k in keys])
    fx["init1"] = np.concatenate([init1[k].ravel() for k in keys]).astype(np.float16)
    fx["init2"] = np.concatenate([init2[k].ravel() for k in keys]).astype(np.float16)
    draws = semi_draws(c, mask, images)
    for k in ("labelled", "unlabelled", "lam", "mix_perm", "view_keys"):
        fx[f"semi/draws/{k}"] = np.stack([d[k] for d in draws])
    fx["semi/draws/view_sums"] = np.asarray(
        [[v.astype(np.float64).sum() for v in d["views"]] for d in draws]
    )
    perm, wviews = warmup_draws(c, images)
    fx["warmup/perm"] = perm
    fx["warmup/view_sums"] = np.asarray([v.astype(np.float64).sum() for v in wviews])
    head = (
        "| case | steps | " + "{} | update distance to the official (float32) | to the "
        "official in float64 | float32 floor: official float32 vs float64 | worst single "
        "tensor (vs float32) | float16 storage error of the stored update |"
    )
    lines = [
        "## 1. The semi-supervised step: `train()` against `make_semi_step`",
        "",
        f"B = {B} labelled + {B} unlabelled (24 of the 48 samples labelled, p_clean "
        f"(w_x) in [0.55, 0.99]), official epoch {SEMI_EPOCH} (jaxnoise's {SEMI_EPOCH + 1}) "
        f"of warm-up {WARM_UP}, ramp-up "
        f"{RAMPUP:g}, lambda_u {LAMBDA_U:g} (mid-ramp: 12.5 at the first step), T {T}, "
        f"alpha {ALPHA:g}, lr {LR}, momentum 0.9, wd 5e-4; jaxnoise's draws: l = "
        f"{[round(float(d['lam']), 4) for d in draws]}. Loss columns: max relative "
        "difference over the steps to the official float32 run (and to its float64 "
        "run, the exact reference).",
        "",
        head.format(" | ".join(SEMI_NAMES)),
        "|---|---|" + "---|" * (len(SEMI_NAMES) + 5),
    ]
    lines += compare_case(
        "semi (net trained, net2 fixed)",
        lambda steps, dtype: run_official_semi(
            ns, PreResNet, init1, init2, labels, p_clean, int(mask.sum()), draws[:steps], dtype
        ),
        lambda steps: run_jax_semi(c, init1, init2, data, p_clean, mask, steps),
        SEMI_NAMES,
        init1,
        keys,
        fx,
        "semi/",
    )
    lines += [
        "",
        "## 2. Warm-up: `warmup()` against `make_warmup_step`",
        "",
        f"Batch {2 * B} (the official warm-up batch is 2 x batch_size), official epoch "
        f"{WARMUP_EPOCH} (jaxnoise's {WARMUP_EPOCH + 1}), lr {LR}; `noise_mode` sym (CE) and "
        "asym (CE + NegEntropy).",
        "",
        head.format(" | ".join(WARMUP_NAMES)),
        "|---|---|" + "---|" * (len(WARMUP_NAMES) + 5),
    ]
    for mode in ("sym", "asym"):
        ns["args"].noise_mode = mode
        lines += compare_case(
            f"warm-up ({mode})",
            lambda steps, dtype: run_official_warmup(
                ns, PreResNet, init1, labels, perm, wviews[:steps], dtype
            ),
            lambda steps, mode=mode: run_jax_warmup(c, init1, data, perm, mode == "asym", steps),
            WARMUP_NAMES,
            init1,
            keys,
            fx,
            f"warmup/{mode}/",
        )
    lines += [""] + compare_gmm(ns, fx) + NOTES[:3] + floor_note(fx) + NOTES[3:]
    write_outputs(args, lines, fx, t0)
    return 0


def floor_note(fx: dict) -> list[str]:
    """This run's three-step semi float32 floor (and jaxnoise's distance to the float64 run)
    beside the ones the fixture stores."""
    if not os.path.exists(FIXTURE):
        return []
    with np.load(FIXTURE) as f:
        stored = [float(f[f"semi/3/{k}"]) for k in ("float32_floor", "vs_exact")]
    now = [float(fx[f"semi/3/{k}"]) for k in ("float32_floor", "vs_exact")]
    return [
        "",
        f"After three semi steps the official float32 run is {now[0]:.1e} from its "
        f"float64 run here and was {stored[0]:.1e} where the fixture was written (same "
        f"torch, same draws); jaxnoise's distance to the float64 run, which the test reads, "
        f"is {now[1]:.1e} here and {stored[1]:.1e} in the fixture.",
    ]


def write_outputs(args, lines, fx, t0) -> None:
    import subprocess

    def git(*cmd):
        return subprocess.run(
            ["git", "-C", args.orig_dir, *cmd], capture_output=True, text=True
        ).stdout.strip()

    # only the checkout's own commit (not that of a repository the folder happens to be in)
    top = git("rev-parse", "--show-toplevel")
    own = top and os.path.realpath(top) == os.path.realpath(args.orig_dir)
    orig_commit = git("rev-parse", "HEAD") if own else ""
    header = [
        "# Equivalence of the DivideMix steps with the official code (LiJunnan1992/DivideMix)",
        "",
        f"Command: `python benchmarks/equivalence/compare_dividemix.py --orig-dir ORIG"
        f"{' --write-fixtures' if args.write_fixtures else ''}"
        f"{' --orig-commit ' + args.orig_commit if args.orig_commit else ''}` (official "
        f"{orig_commit or args.orig_commit or '(commit unknown)'}; torch "
        f"{torch.__version__}, jax {jax.__version__}, {platform.machine()} CPU, jaxnoise "
        f"{git_commit()}, {time.time() - t0:.0f} s). {N} real CIFAR-10 images (the first 5 "
        "training JPEGs of each class from ../shared/data), 40% of their labels redrawn at "
        "random; two official `PreResNet.ResNet18` at width 2 (seeds 0 and 1, running "
        "statistics from three train-mode forwards), their weights copied into jaxnoise's. "
        "Every draw is jaxnoise's and given to the official loop: the four augmented views "
        "(crop padding 4 + flip, `dividemix.step._augmented` with the step's view keys), "
        "MixMatch l and permutation. Update distance: ||jaxnoise - official|| / ||official "
        "update|| over all parameters and BatchNorm running statistics.",
        "",
    ]
    arazo.write_files(RESULTS, header + lines, FIXTURE if args.write_fixtures else None, fx)


if __name__ == "__main__":
    raise SystemExit(main())
