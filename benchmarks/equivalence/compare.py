"""Equivalence of jaxnoise with the published code, on the same weights, images and draws.

    pip install torch     # not a jaxnoise dependency; only this harness needs it
    python benchmarks/equivalence/compare.py --orig-dir /path/to/LabelNoiseCorrection \
        [--data ../shared/data/cifar10-jpeg.tar.gz] [--write-fixtures]

``--orig-dir`` is a checkout of PaulAlbert31/LabelNoiseCorrection (imported, never copied).
The harness builds the original ``PreResNet.ResNet18`` at a small width, copies its weights into
jaxnoise's ``PreActResNet18``, and compares, on real CIFAR-10 images:

1. logits in eval and train mode, and the BatchNorm running statistics after a train forward;
2. the tracking pass + beta mixture: the original's ``track_training_loss`` (its percentile
   clipping, ``BetaMixture1D`` fit and lookup table) against jaxnoise's eval pass and
   ``mixture.fit``, on the model's own losses and on a realistic bimodal loss array;
3. one and three optimizer steps of ``train_CrossEntropy``, ``train_mixUp``,
   ``train_mixUp_HardBootBeta``, ``train_mixUp_SoftBootBeta``, ``train_mixUp_Beta`` and
   ``train_mixUp_SoftHardBetaDouble`` against jaxnoise's jitted ``make_update`` of the same
   phase (``jaxnoise.bootstrap.step``, the core of its train step), with the same lambda and
   permutations, each code's
   posteriors from its own fit of the same tracked losses.

It writes benchmarks/results/equivalence.md (or ``--out``), and with ``--write-fixtures`` the
original's outputs (numbers only) to tests/fixtures/equivalence_w2.npz for
tests/test_equivalence.py. A section of the existing page headed ``## 4.`` (measured with the
options below, by hand) is kept when the page is rewritten.

Float32 rounding studies: ``--width 8 --row-seed K`` permutes the rows of every step batch (the
same order for both codes, the mixup pairs renumbered with them, so the mathematics is
unchanged and only the order of the float32 sums moves), ``--kinds``/``--step-counts`` pick
step kinds and step counts, ``--logit-widths`` with no value skips the further logit widths.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tarfile
import time
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import git_commit  # noqa: E402
from benchmarks.equivalence import original as orig_lib  # noqa: E402
from configs import default  # noqa: E402
from jaxnoise import data as data_lib  # noqa: E402
from jaxnoise import losses, mixture, models, network, optim  # noqa: E402
from jaxnoise.bootstrap import schedule, step  # noqa: E402

SHARED_TAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.tar.gz")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "equivalence_w2.npz")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "equivalence.md")
MEAN, STD = data_lib.PUBLISHED_MEAN, data_lib.PUBLISHED_STD

# Step kinds: (jaxnoise method, epoch whose phase is compared, the original's train function).
STEP_KINDS = {
    "CE": ("CE", 1, "train_CrossEntropy"),
    "M": ("M", 1, "train_mixUp"),
    "M-DYR-H": ("M-DYR-H", 200, "train_mixUp_HardBootBeta"),
    "M-DYR-S": ("M-DYR-S", 200, "train_mixUp_SoftBootBeta"),
    "MD-DYR-SH dynamic mixup": ("MD-DYR-SH", 108, "train_mixUp_Beta"),
    "MD-DYR-SH": ("MD-DYR-SH", 141, "train_mixUp_SoftHardBetaDouble"),
}
NUM_CLASSES, BATCH, STEPS = 10, 16, 3


def load_images(tar_path: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` training JPEGs (by name) of each class, uint8 NHWC, labels."""
    from PIL import Image

    names: dict[str, list[str]] = {}
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers() if m.name.endswith(".jpg")}
        for name in members:
            parts = name.split("/")
            if parts[0] == "train":
                names.setdefault(parts[1], []).append(name)
        classes = sorted(names)
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name in sorted(names[cls])[:per_class]:
                with tar.extractfile(members[name]) as f:
                    images.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB")))
                labels.append(label)
    order = np.random.default_rng(0).permutation(len(labels))  # classes interleaved
    return np.stack(images)[order], np.asarray(labels, np.int64)[order]


def permute_rows(n_steps: int, draws: list[dict], seed: int) -> tuple[np.ndarray, list[dict]]:
    """Row order of the step batches for ``seed`` (0: as given) and the draws with the pairs
    renumbered, so that every row is mixed with the same image as before."""
    if seed == 0:
        return np.arange(n_steps * BATCH), draws
    rng, order, out = np.random.default_rng(seed), [], []
    for s, d in enumerate(draws[:n_steps]):
        r = rng.permutation(BATCH)  # new row i holds old row r[i]
        order.append(s * BATCH + r)
        out.append({**d, "pair": np.argsort(r)[d["pair"][r]]})  # old pair[r[i]], renumbered
    return np.concatenate(order), out


def jax_config(method: str, width: int):
    """jaxnoise's published config for ``method`` at ``width``, without augmentation."""
    c = default.get_config()
    c.method, c.width, c.bootstrap.batch_size, c.lr = method, width, BATCH, 0.1
    c.data.crop_padding, c.data.flip = 0, False  # both codes get the same (unaugmented) batch
    return c


def jax_model(width: int, state: dict[str, np.ndarray]) -> models.PreActResNet18:
    model = models.PreActResNet18(NUM_CLASSES, width=width, rngs=nnx.Rngs(0))
    models.load_torch_state(model, state)
    return model


def jax_logits(model, images: np.ndarray, train_mode: bool):
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = data_lib.normalize(jnp.asarray(images), MEAN, STD)

    @jax.jit
    def f(params, stats, x):
        m = nnx.merge(graphdef, params, stats, copy=True)
        return m(x, train=train_mode), nnx.state(m, nnx.BatchStat)

    return f(params, stats, x)


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def flat_jax_state(graphdef, *states) -> dict[str, np.ndarray]:
    """jaxnoise params + batch stats under the original's state_dict names and layouts."""
    return models.torch_state(nnx.merge(graphdef, *states))


def update_distance(after_j, after_t, before) -> tuple[float, float, str]:
    """||jax - torch|| / ||torch - before|| over all tensors, and its max over single tensors
    (with that tensor's name)."""
    d2 = u2 = 0.0
    worst, worst_key = 0.0, ""
    for k, t in after_t.items():
        upd = t.astype(np.float64) - before[k]
        d = after_j[k].astype(np.float64) - t
        d2, u2 = d2 + float(np.sum(d * d)), u2 + float(np.sum(upd * upd))
        if np.any(upd) and np.linalg.norm(d) / np.linalg.norm(upd) > worst:
            worst, worst_key = float(np.linalg.norm(d) / np.linalg.norm(upd)), k
    return float(np.sqrt(d2 / u2)), worst, worst_key


def bmm_state_of(bmm, lo, hi) -> dict[str, np.ndarray]:
    return {
        "alphas": np.asarray(bmm.alphas),
        "betas": np.asarray(bmm.betas),
        "weights": np.asarray(bmm.weight),
        "lookup": np.asarray(bmm.lookup),
        "lo": np.float64(lo),
        "hi": np.float64(hi),
    }


class LogitsModel(torch.nn.Module):
    """A stand-in network whose outputs are given per-sample logits (indexed by the input)."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = torch.from_numpy(logits.astype(np.float32))

    def forward(self, idx):
        return self.logits[idx.long()]


def original_track(utils, net, loader):
    """The original's tracking pass + BMM fit: (losses, bmm, lo, hi)."""
    args = SimpleNamespace()
    with contextlib.redirect_stdout(io.StringIO()):
        out = utils.track_training_loss(args, net, "cpu", loader, 1, 0, 0, 0)
    losses_np, _, _, bmm, hi, lo = out
    return losses_np, bmm, float(lo), float(hi)


def compare_fit(utils, loss_array: np.ndarray, labels: np.ndarray) -> dict:
    """Original BMM (via its tracking pass on a stand-in net) vs jaxnoise's on one loss array."""
    n = len(loss_array)
    # logits with exactly these per-sample CE losses: target logit a, others 0.
    c = NUM_CLASSES
    a = np.log((c - 1) / np.expm1(np.maximum(loss_array, 1e-6)))
    logits = np.zeros((n, c), np.float64)
    logits[np.arange(n), labels] = a
    idx = torch.arange(n)
    loader = orig_lib.Loader(
        [(idx[i : i + 1000], torch.from_numpy(labels[i : i + 1000])) for i in range(0, n, 1000)]
    )
    tracked, bmm, lo, hi = original_track(utils, LogitsModel(logits), loader)
    state = mixture.fit("bmm", jnp.asarray(tracked, jnp.float32), max_iters=10, noisy="initial")
    return {
        "n": n,
        "orig": bmm_state_of(bmm, lo, hi),
        "jax": {
            k: np.asarray(getattr(state, k))
            for k in ("alphas", "betas", "weights", "lookup", "lo", "hi")
        },
        "tracked": tracked,
    }


def run_original_steps(utils, kind: str, net, batches, bmm, lo, hi, draws, epoch):
    """Run the original train function of ``kind`` over ``batches``; returns the mean loss."""
    fn = getattr(utils, STEP_KINDS[kind][2])
    args = SimpleNamespace(batch_size=BATCH, log_interval=10**9)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = orig_lib.Loader(batches)
    max_t, min_t = torch.tensor([hi]), torch.tensor([lo])
    lams = [d["lam"] for d in draws] if kind in ("M", "M-DYR-H", "M-DYR-S") else []
    if kind == "MD-DYR-SH dynamic mixup":
        lams = [d["pair_weight"] for d in draws]
    perms = [d["pair"] for d in draws] if kind != "CE" else []
    with orig_lib.given_draws(lams, perms), contextlib.redirect_stdout(io.StringIO()):
        if kind == "CE":
            out = fn(args, net, "cpu", loader, opt, epoch)
        elif kind == "M":
            out = fn(args, net, "cpu", loader, opt, epoch, 32)
        elif kind in ("M-DYR-H", "M-DYR-S"):
            out = fn(args, net, "cpu", loader, opt, epoch, 32, bmm, max_t, min_t, 1.0, NUM_CLASSES)
        elif kind == "MD-DYR-SH dynamic mixup":
            out = fn(args, net, "cpu", loader, opt, epoch, 32, bmm, max_t, min_t)
        else:  # soft-to-hard: temperature index k = epoch - 111 of linspace(1, 0.001, 89)
            out = fn(
                args,
                net,
                "cpu",
                loader,
                opt,
                epoch,
                bmm,
                max_t,
                min_t,
                1,
                epoch - 111,
                89,
                1.0,
                NUM_CLASSES,
            )
    return float(out[0][0])


def run_jax_steps(kind, width, state0, images, labels, mix_state, draws, epoch):
    """jaxnoise's jitted update of the same phase over the same batches; (params+stats, losses)."""
    method = STEP_KINDS[kind][0]
    c = jax_config(method, width)
    phase = schedule.phase_for_epoch(c, epoch)
    model = jax_model(width, state0)
    graphdef, params, frozen, stats = network.split(model, c)
    tx = optim.direction(c)
    state = {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
        "mixture": mix_state,
        "step": jnp.zeros((), jnp.int32),
    }
    update = jax.jit(step.make_update(graphdef, tx, c, phase, NUM_CLASSES))
    temperature = np.float32(schedule.temperature_for_epoch(c, epoch))
    lr = np.float32(c.lr)  # every step, as the original's SGD(lr=0.1) here
    step_losses = []
    for s, d in enumerate(draws):
        sl = slice(s * BATCH, (s + 1) * BATCH)
        x = data_lib.normalize(jnp.asarray(images[sl]), MEAN, STD)
        dr = step.StepDraws(
            pair=jnp.asarray(d["pair"], jnp.int32),
            lam=jnp.float32(d["lam"]),
            pair_weight=jnp.float32(d["pair_weight"]),
            key=jax.random.key(s),
        )
        state, loss = update(
            state, x, jnp.asarray(labels[sl], jnp.int32), None, dr, temperature, lr
        )
        step_losses.append(float(loss))
    after = flat_jax_state(graphdef, state["params"], frozen, state["stats"])
    return after, step_losses, phase, float(temperature)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orig-dir", required=True, help="checkout of LabelNoiseCorrection")
    ap.add_argument("--data", default=SHARED_TAR, help="CIFAR-10 JPEG tar (../shared/data)")
    ap.add_argument("--width", type=int, default=2, help="base width of the compared network")
    ap.add_argument(
        "--logit-widths",
        type=int,
        nargs="*",
        default=[16, 64],
        help="further widths whose logits are compared (64 = the published net)",
    )
    ap.add_argument(
        "--row-seed",
        type=int,
        default=0,
        help="permute the rows of every step batch with this seed (0: as given)",
    )
    ap.add_argument(
        "--kinds",
        nargs="+",
        choices=list(STEP_KINDS),
        default=list(STEP_KINDS),
        metavar="KIND",
        help="step kinds compared (default: all)",
    )
    ap.add_argument(
        "--step-counts",
        type=int,
        nargs="+",
        choices=range(1, STEPS + 1),
        default=[1, STEPS],
        metavar="N",
        help="steps per comparison (default: 1 3)",
    )
    ap.add_argument("--out", default=RESULTS, help="the page written")
    ap.add_argument("--write-fixtures", action="store_true", help=f"write {FIXTURE}")
    args = ap.parse_args(argv)
    defaults = (args.width, args.row_seed, args.kinds, args.step_counts) == (
        2,
        0,
        list(STEP_KINDS),
        [1, STEPS],
    )
    if args.write_fixtures and not defaults:
        sys.exit(
            "error: --write-fixtures needs the default --width, --row-seed, --kinds and "
            "--step-counts (the fixture is what tests/test_equivalence.py reads)"
        )
    for path, what in ((args.orig_dir, "--orig-dir"), (args.data, "--data")):
        if not os.path.exists(path):
            sys.exit(f"error: {what} {path!r} does not exist")
    PreResNet, utils = orig_lib.import_original(args.orig_dir)
    torch.set_num_threads(1)  # tiny tensors; OpenMP threads beside XLA's only contend
    torch.manual_seed(0)
    t0 = time.time()
    images, true_labels = load_images(args.data, per_class=5)
    n = BATCH * STEPS  # 48 images: the tracked set and the three step batches
    images, true_labels = images[:n], true_labels[:n]
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(n) < 0.4, rng.integers(0, NUM_CLASSES, n), true_labels)
    x_t = orig_lib.to_torch_images(images, MEAN, STD)
    lines: list[str] = []
    fx: dict[str, np.ndarray] = {"images": images, "labels": labels}

    # 1. Logits and BatchNorm statistics.
    lines += [
        "## 1. Network: logits and BatchNorm running statistics",
        "",
        "| width | eval-mode logits (max rel. diff) | train-mode logits | running stats "
        "after "
        "one train forward |",
        "|---|---|---|---|",
    ]
    nets = {}
    for width in sorted({args.width, *args.logit_widths}):
        net = orig_lib.original_resnet18(PreResNet, width)
        net.train()
        with torch.no_grad():  # non-trivial running statistics before the comparison
            for _ in range(3):
                net(torch.randn(32, 3, 32, 32))
        state0 = orig_lib.state_numpy(net)
        nets[width] = (net, state0)
        model = jax_model(width, state0)
        net.eval()
        with torch.no_grad():
            eval_t = net(x_t).numpy()
        eval_j, _ = jax_logits(model, images, train_mode=False)
        net.train()
        with torch.no_grad():
            train_t = net(x_t).numpy()
        stats_t = orig_lib.state_numpy(net)
        train_j, stats_j = jax_logits(model, images, train_mode=True)
        nnx.update(model, stats_j)
        flat_after = flat_jax_state(*nnx.split(model))
        stat_keys = [k for k in stats_t if "running" in k]
        stats_rel = max(rel(flat_after[k], stats_t[k]) for k in stat_keys)
        lines.append(
            f"| {width} | {rel(eval_j, eval_t):.2e} | {rel(train_j, train_t):.2e} | "
            f"{stats_rel:.2e} |"
        )
        if width == args.width:
            keys = sorted(state0)
            fx["keys"] = np.asarray(keys)
            fx.update({f"init/{k}": v for k, v in state0.items()})
            fx.update(logits_eval=eval_t, logits_train=train_t)
            fx.update({f"stats_after_train/{k}": stats_t[k] for k in stat_keys})
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state0.items()}, strict=False)
    # The same weights in today's pytorch-cifar block (identity shortcut from the raw input).
    net, state0 = nets[args.width]
    wrong = models.PreActResNet18(NUM_CLASSES, width=args.width, shortcut="input", rngs=nnx.Rngs(0))
    models.load_torch_state(wrong, state0)
    eval_wrong, _ = jax_logits(wrong, images, train_mode=False)
    lines += [
        "",
        f'With `shortcut="input"` (the identity shortcut adding the raw input, as '
        f"pytorch-cifar and jaxnoise before this fix) the eval-mode logits at width "
        f"{args.width} differ by {rel(eval_wrong, fx['logits_eval']):.2e} (relative).",
        "",
    ]

    # 2. Tracking pass + BMM.
    net.eval()
    loader = orig_lib.Loader(
        [(x_t[i : i + BATCH], torch.from_numpy(labels[i : i + BATCH])) for i in range(0, n, BATCH)]
    )
    tracked_t, bmm, lo, hi = original_track(utils, net, loader)
    model = jax_model(args.width, state0)
    eval_j, _ = jax_logits(model, images, train_mode=False)
    tracked_j = np.asarray(losses.cross_entropy(eval_j, jnp.asarray(labels)))
    mix_j = mixture.fit("bmm", jnp.asarray(tracked_j), max_iters=10, noisy="initial")
    fx.update(
        tracked_losses=tracked_t, **{f"bmm/{k}": v for k, v in bmm_state_of(bmm, lo, hi).items()}
    )
    rng_l = np.random.default_rng(2)
    n_big, noisy = 50_000, rng_l.random(50_000) < 0.5
    realistic = np.where(noisy, rng_l.gamma(9.0, 0.3, n_big), rng_l.gamma(1.2, 0.25, n_big))
    big = compare_fit(utils, realistic, rng_l.integers(0, NUM_CLASSES, n_big))
    lines += [
        "## 2. Tracking pass and beta mixture",
        "",
        "| losses | per-sample loss (max rel.) | alpha, beta (max rel.) | weights | "
        "lookup table (max abs.) | peak bin (orig / jax) |",
        "|---|---|---|---|---|---|",
    ]
    for name, o, j, tl in (
        (
            f"the width-{args.width} model's, {n} real images",
            bmm_state_of(bmm, lo, hi),
            {k: np.asarray(getattr(mix_j, k)) for k in ("alphas", "betas", "weights", "lookup")},
            rel(tracked_j, tracked_t),
        ),
        ("bimodal (gamma) losses, 50,000", big["orig"], big["jax"], 0.0),
    ):
        ab = max(rel(j["alphas"], o["alphas"]), rel(j["betas"], o["betas"]))
        lines.append(
            f"| {name} | {tl:.2e} | {ab:.2e} | {rel(j['weights'], o['weights']):.2e} | "
            f"{np.max(np.abs(j['lookup'] - o['lookup'])):.2e} | "
            f"{int(np.argmax(o['lookup']))} / {int(np.argmax(j['lookup']))} |"
        )
    lines.append("")

    # 3. Optimizer steps.
    # Given draws: mixing weights far from 0.5 (a Beta(32, 32) draw is within ~0.1 of it), so
    # that a wrong pair weight (e.g. 0.5 instead of lambda) shows clearly.
    draw_rng = np.random.default_rng(3)
    draws = [
        {"lam": lam, "pair_weight": pw, "pair": draw_rng.permutation(BATCH)}
        for lam, pw in zip((0.3, 0.75, 0.6), (0.7, 0.35, 0.8))
    ]
    fx["draws/lam"] = np.asarray([d["lam"] for d in draws], np.float32)
    fx["draws/pair_weight"] = np.asarray([d["pair_weight"] for d in draws], np.float32)
    fx["draws/pair"] = np.stack([d["pair"] for d in draws]).astype(np.int32)
    lines += [
        "## 3. Optimizer steps",
        "",
        f"Batch {BATCH} real images, lr 0.1, momentum 0.9, weight decay 1e-4, regulariser 1, "
        f"given mixing weights lambda = {[d['lam'] for d in draws]} (and Beta-draw pair "
        f"weights {[d['pair_weight'] for d in draws]} in the dynamic-mixup epochs), chosen "
        "far from 0.5 so that a wrong pair weight shows. "
        "Update distance: ||jaxnoise - original|| / ||original update|| over all "
        "parameters and BatchNorm statistics, and the largest such ratio of a single "
        "tensor (a tensor whose gradient nearly cancels, such as the stem BN scale, has an "
        "update of ~1e-5 and a float32 rounding error that is a larger part of it).",
        "",
        "| step kind (original function) | jaxnoise phase | steps | mean loss (rel. diff) | "
        "update distance to the original (float32) | to the original in float64 | "
        "float32 floor: original float32 vs float64 | to float64 / floor | "
        "worst single tensor (vs float32) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows, draws = permute_rows(STEPS, draws, args.row_seed)
    x_s, images_s, labels_s = x_t[rows], images[rows], labels[rows]
    for kind in args.kinds:
        _, epoch, fn_name = STEP_KINDS[kind]
        for n_steps in args.step_counts:
            after_t, loss_t = {}, {}
            for dtype in (torch.float32, torch.float64):  # float64: the exact reference
                net_k = orig_lib.original_resnet18(PreResNet, args.width)
                net_k.load_state_dict(
                    {k: torch.from_numpy(v) for k, v in state0.items()}, strict=False
                )
                net_k.train().to(dtype)
                batches = [
                    (
                        x_s[s * BATCH : (s + 1) * BATCH].to(dtype),
                        torch.from_numpy(labels_s[s * BATCH : (s + 1) * BATCH]),
                    )
                    for s in range(n_steps)
                ]
                loss_t[dtype] = run_original_steps(
                    utils, kind, net_k, batches, bmm, lo, hi, draws[:n_steps], epoch
                )
                after_t[dtype] = {
                    k: v.astype(np.float64) for k, v in orig_lib.state_numpy(net_k).items()
                }
            exact, f32 = after_t[torch.float64], after_t[torch.float32]
            after_j, losses_j, phase, temp = run_jax_steps(
                kind, args.width, state0, images_s, labels_s, mix_j, draws[:n_steps], epoch
            )
            vs_f32, worst, worst_key = update_distance(after_j, f32, state0)
            vs_exact = update_distance(after_j, exact, state0)[0]
            floor = update_distance(f32, exact, state0)[0]
            loss_f32 = loss_t[torch.float32]
            lines.append(
                f"| {kind} (`{fn_name}`) | {phase.name}"
                f"{f', T={temp:.4f}' if phase.bootstrap == 'soft' else ''} | {n_steps} | "
                f"{abs(np.mean(losses_j) - loss_f32) / abs(loss_f32):.1e} | "
                f"{vs_f32:.1e} | {vs_exact:.1e} | {floor:.1e} | {vs_exact / floor:.2g} | "
                f"{worst:.1e} (`{worst_key}`) |"
            )
            pre = f"step/{kind}/{n_steps}/"
            fx[pre + "loss"] = np.float64(loss_f32)
            fx[pre + "float32_floor"] = np.float64(floor)
            # The exact (float64) update of every tensor (in the order of "keys"), each scaled
            # to [-1, 1] and stored in float16, all in one flat array.
            deltas = [exact[k] - state0[k] for k in keys]
            scales = np.asarray([max(float(np.max(np.abs(d))), 1e-30) for d in deltas])
            fx[pre + "scale"] = scales
            fx[pre + "delta"] = np.concatenate(
                [(d / sc).ravel() for d, sc in zip(deltas, scales)]
            ).astype(np.float16)
            print(lines[-1], flush=True)

    lines += [
        "",
        "Reading the table: in float32 a few steps of this tiny network are "
        f"ill-conditioned (a width-{args.width} net, 16 images per BatchNorm batch, 40% "
        "random labels): "
        "the original's own float32 run is as far from its float64 run (`float32 floor`) "
        "as jaxnoise is. jaxnoise (float32) is as close to the exact original (float64) as "
        "the original's float32 run is, which is what float32 rounding allows.",
        "",
        "Posteriors come from the 100-bin lookup table, which is discontinuous: once "
        "the parameters differ by float32 rounding, a batch loss near a bin edge can land "
        "in the neighbouring bin on one side only, and that sample's weight then differs "
        "by the step between bins. One step is free of this; over three steps it can show "
        "in the methods that use posteriors, most in MD-DYR-SH, whose posteriors also "
        "set the input mixing weights.",
        "",
    ]
    header = [
        "# Equivalence with the published code (PaulAlbert31/LabelNoiseCorrection)",
        "",
        f"Command: `python benchmarks/equivalence/compare.py --orig-dir ORIG --data TAR"
        f"{command_options(args)}` (torch {torch.__version__}, "
        f"jax {jax.__version__}, {platform.machine()} CPU, jaxnoise {git_commit()}, "
        f"{time.time() - t0:.0f} s). Real CIFAR-10 images (the first 5 training JPEGs of each "
        "class from ../shared/data, 48 used), 40% of their labels redrawn at random; the "
        "original network built at the widths below from its own modules, its weights copied "
        "into jaxnoise's; no augmentation on either side (the same batch goes to both).",
        "",
    ]
    write_files(args.out, header + lines, FIXTURE if args.write_fixtures else None, fx)
    return 0


def command_options(args) -> str:
    """The options of this run that differ from the defaults, as typed."""
    out = []
    if args.width != 2:
        out.append(f"--width {args.width}")
    if args.logit_widths != [16, 64]:
        out.append(" ".join(["--logit-widths", *map(str, args.logit_widths)]))
    if args.row_seed:
        out.append(f"--row-seed {args.row_seed}")
    if args.kinds != list(STEP_KINDS):
        out.append(" ".join(["--kinds", *(f'"{k}"' if " " in k else k for k in args.kinds)]))
    if args.step_counts != [1, STEPS]:
        out.append(" ".join(["--step-counts", *map(str, args.step_counts)]))
    if args.write_fixtures:
        out.append("--write-fixtures")
    return "".join(" " + o for o in out)


def write_files(results: str, lines: list[str], fixture: str | None, fx: dict) -> None:
    """The results page (keeping its hand-measured ``## 4.`` section), and (``fixture`` given) the
    original's outputs as the test fixture."""
    kept = ""
    if os.path.exists(results):
        with open(results) as f:
            old = f.read()
        if "\n## 4." in old:
            kept = "\n" + old[old.index("\n## 4.") + 1 :]
    with open(results, "w") as f:
        f.write("\n".join(lines) + "\n" + kept)
    print(f"wrote {results}")
    if fixture:
        os.makedirs(os.path.dirname(fixture), exist_ok=True)
        np.savez_compressed(fixture, **fx)
        print(f"wrote {fixture} ({os.path.getsize(fixture) / 1024:.0f} KiB)")


if __name__ == "__main__":
    raise SystemExit(main())
