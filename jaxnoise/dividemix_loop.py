"""The DivideMix loop (Li, Socher & Hoi, ICLR 2020): two networks, co-divide, MixMatch.

One epoch, as the official ``Train_cifar.py`` (epochs 0-based, ``0 .. config.epochs`` inclusive:
``config.epochs = 300`` is the official ``num_epochs = 300``, 301 epochs):

    epoch < warm_up:  warm-up net1, then net2 (cross-entropy on the whole set, batch 2B)
    else:             divide: each network's per-sample CE (eval mode, no augmentation),
                      min-max normalised (at noise >= 0.9 the mean over the last
                      ``dividemix_loss_history`` epochs) -> GMM -> p_clean, labelled = p_clean > tau
                      net1 trains on net2's division with net2 fixed, then net2 on net1's
                      division with the updated net1 fixed (ceil(|labelled| / B) steps each)
    test:             the sum of both networks' logits

The steps are ``jaxnoise.dividemix_step``'s (one compiled semi step for every pool size); the
data loading, evaluation pass, checkpointer, workdir files and the report are ``train.py``'s.
Checkpoints are taken at every epoch end (orbax step = epochs done), holding both networks
(``state = {"net1", "net2"}``: params, batch stats, optimizer state each), the loss histories
of the 90% setting (``aux``) and the noisy labels; a resumed run gives exactly the metrics of an
uninterrupted one. A SIGTERM / SIGINT in the middle of an epoch stops at the next step without
saving: the resumed run redoes that epoch from its start.

``metrics.jsonl``, one line per epoch: ``test_acc`` / ``test_loss`` of the summed logits,
``best_acc``, ``lr``, ``train_loss`` (the two networks' mean step loss: warm-up CE, or
``Lx + lambda_u Lu + penalty``); ``nets.netK``: network K's training (``Lx``, ``Lu``, ``loss``
means over its steps, ``steps``, ``labelled`` = the size of the *other* network's labelled set
it trained on); ``division.netK`` (semi epochs): the division network K made at the epoch's
start (its ``auroc`` of ``1 - p_clean`` against the known noise mask, ``labelled``, and the
labelled set's ``labelled_precision`` = clean among labelled and ``labelled_recall`` = labelled
among clean); ``auroc``, ``auroc_loss``, ``precision``, ``recall`` of the two divisions combined
(``p_noisy = 1 - (p_clean1 + p_clean2) / 2``, NaN in warm-up epochs); ``seconds``.

``per_sample.npz`` (and so ``label_issues.csv``) comes from a division pass of the final
networks: ``loss`` the mean of the two networks' CE, ``p_noisy = 1 - (p_clean1 + p_clean2) / 2``,
``prediction`` / ``logits`` of the summed logits.

Where this parts from the official code (besides the steps' own, ``jaxnoise.dividemix_step``):
the GMM runs in float32 with a deterministic k-means start (``mixture.fit_gmm``); the loss
history is used at ``noise >= 0.9`` (official: ``r == 0.9``); the networks are initialised
from seeds ``seed`` and ``seed + 1`` and every draw derives from ``config.seed`` (nothing to
checkpoint); the devices of one process (``mesh.num_devices``; the per-sample arrays sharded over
the ``("data",)`` mesh, both networks replicated, each batch sharded), not several processes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import config as config_lib
from jaxnoise import data as data_lib
from jaxnoise import dividemix_step as dms
from jaxnoise import eta, losses, mixture, parallel, signals, train
from jaxnoise import metrics as metrics_lib
from jaxnoise import workdir as workdir_lib
from jaxnoise.progress import Progress, log

NETS = ("net1", "net2")


class _Stopped(Exception):
    """A stop (SIGTERM / SIGINT) was requested in the middle of an epoch."""


class Pieces(NamedTuple):
    """The compiled functions of a run (built once per config and dataset shape)."""

    graphdef: Any
    tx: Any
    warmup: Any  # full warm-up batches (2B)
    warmup_last: Any  # the last, smaller warm-up batch (None when 2B divides N)
    semi: Any
    eval_chunk: Any
    divide: Any  # jitted (losses, history) -> (history, fitted losses, p_clean, gmm)


@dataclasses.dataclass
class DivideMixRun:
    """What a DivideMix run sets up once, and its progress (duck-types ``train.Run`` for
    ``train.restore`` and ``train.finish``)."""

    config: ml_collections.ConfigDict
    workdir: str
    guard: ckpt_lib.PreemptionGuard
    ds: data_lib.Dataset
    noisy_labels: np.ndarray
    noise_mask: np.ndarray
    data: dict  # device-resident training images and noisy labels
    mask: jax.Array  # the noise mask on device
    test: tuple  # (images, labels) on device
    pieces: Pieces
    mesh: Any
    manager: ckpt_lib.Checkpointer
    hyper: dict  # resolved lambda_u, p_threshold, loss-history length (0: none)
    metrics_path: str = ""
    history: list = dataclasses.field(default_factory=list)
    best_acc: float = 0.0
    saved_at: str | None = None
    steps_per_epoch: int = 1  # checkpoints are at epoch ends only
    clock: eta.RunClock = dataclasses.field(default_factory=eta.RunClock)  # the run's ETA
    labelled: list | None = None  # |labelled| of the latest division of each network

    @property
    def last_good(self) -> str:
        if self.saved_at is None:
            return "no checkpoint has been saved yet"
        return f"the checkpoint at {self.saved_at} in {self.manager.directory} is kept"

    def diverged(self, what: str) -> FloatingPointError:
        return FloatingPointError(f"{what}: training diverged; {self.last_good}")


# ------------------------------------------------------------------------------------------------
# Set-up.


def hyperparameters(config: ml_collections.ConfigDict) -> dict:
    """lambda_u and p_threshold (resolved from the paper's table where -1), history length."""
    history = config.dividemix_loss_history
    return {"lambda_u": config_lib.dividemix_lambda_u(config),
            "p_threshold": config_lib.dividemix_p_threshold(config),
            "loss_history": history if config.noise >= config_lib.DIVIDEMIX_HISTORY_NOISE else 0}


def make_divide(history_used: bool):
    """The co-divide fit of one network: min-max normalised losses (their mean over the last
    epochs when ``history_used``), the official GMM, ``p_clean`` of the smaller-mean component.

    The normalisation is done here and the fit told ``normalize="none"``: on one epoch's losses
    that is ``fit_gmm(losses, normalize="minmax")`` exactly; on the averaged losses it is the
    official fit of the average as it is (no second normalisation)."""

    @jax.jit
    def divide(loss, history):
        x = mixture.minmax_normalize(loss, jnp.min(loss), jnp.max(loss))
        if history_used:
            history, x = signals.update(history, x, kind="mean_k")
        gmm = mixture.fit_gmm(x, normalize="none", init="kmeans", tol=1e-2, reg_covar=5e-4,
                              max_iters=10, noisy="max_mean")  # fmt: skip
        return history, x, 1.0 - mixture.posterior_noisy(gmm, x), gmm

    return divide


_PIECES: dict = {}  # (config, dataset shape, stats) -> Pieces: compiled once per process


def build_pieces(config, ds: data_lib.Dataset, mean_std: tuple, hyper: dict,
                 mesh=None) -> Pieces:  # fmt: skip
    """The graph definition, optimizer and jitted steps (cached across runs of one config)."""
    n, B = ds.train_images.shape[0], config.dividemix_batch
    key = (config.to_json_best_effort(sort_keys=True), ds.train_images.shape, ds.num_classes,
           np.asarray(mean_std).tobytes(), json.dumps(hyper, sort_keys=True),
           None if mesh is None else tuple(mesh.devices.flat))  # fmt: skip
    if key in _PIECES:
        return _PIECES[key]
    graphdef = train.split_model(train.create_model(config, ds), config)[0]
    tx = dms.create_optimizer(config)
    common = dict(penalty=config.noise_kind == "asymmetric", stride=2 * B, mesh=mesh,
                  strong_prob=float(config.dividemix_warmup_strong))  # fmt: skip
    warm = functools.partial(dms.make_warmup_step, graphdef, tx, config, ds.num_classes,
                             *mean_std, **common)  # fmt: skip
    semi = dms.make_semi_step(
        graphdef, tx, config, ds.num_classes, *mean_std, batch_size=B,
        T=config.sharpen_temperature, alpha=config.mixmatch_alpha,
        lambda_max=hyper["lambda_u"], warm_up=config.dividemix_warm_up,
        rampup=config.lambda_u_rampup, views=config.dividemix_views, mesh=mesh,
    )  # fmt: skip
    pieces = Pieces(graphdef, tx, warm(batch_size=2 * B) if n >= 2 * B else None,
                    warm(batch_size=n % (2 * B)) if n % (2 * B) else None, semi,
                    train.make_eval_chunk(graphdef, config, *mean_std, mesh),
                    make_divide(hyper["loss_history"] > 0))  # fmt: skip
    _PIECES[key] = pieces
    return pieces


def init_nets(config, ds: data_lib.Dataset, tx) -> dict:
    """Both networks' states (params, frozen, batch stats, optimizer), seeds seed and seed + 1."""
    nets = {}
    for k, name in enumerate(NETS):
        c = config.copy_and_resolve_references()
        c.seed = config.seed + k
        _, params, frozen, stats = train.split_model(train.create_model(c, ds), c)
        nets[name] = {"params": params, "frozen": frozen, "stats": stats,
                      "opt_state": tx.init(params)}  # fmt: skip
    return nets


def init_history(hyper: dict, n: int, mesh) -> dict:
    """Each network's ring buffer of its last normalised losses (empty below 90% noise), the
    buffer sharded over the mesh by sample."""
    if not hyper["loss_history"]:
        return {}
    fresh = signals.init("mean_k", n, hyper["loss_history"])
    state = fresh._replace(buffer=parallel.zeros_like_sharded(mesh, fresh.buffer.shape,
                                                              jnp.float32),
                           count=parallel.put_replicated(mesh, fresh.count))  # fmt: skip
    return {name: state for name in NETS}


def _placed_like(tree, like):
    """``tree`` (restored) with the shardings of ``like`` (fresh): a fresh and a restored run
    call the compiled functions with the same input placements (no recompile on resume)."""
    return jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), tree, like)


def setup(config, workdir: str, fresh: bool, guard) -> tuple[DivideMixRun, dict, dict, Any]:
    """Data on the device, both networks, the compiled pieces, the restored checkpoint."""
    mesh = parallel.make_mesh(config.mesh.num_devices)
    os.makedirs(workdir, exist_ok=True)
    resolved = train._config_fingerprint(config)
    ckpt_lib.check_workdir_config(workdir, resolved, fresh=fresh)
    ds, noisy, mask = train.load_noisy_data(config, mesh)
    workdir_lib.check_same_dataset(workdir, ds)
    mean_std = data_lib.normalization_stats(ds, config.data.normalization)
    hyper = hyperparameters(config)
    pieces = build_pieces(config, ds, mean_std, hyper, mesh)
    data = {"images": parallel.put_samples(mesh, ds.train_images),
            "labels": parallel.put_samples(mesh, noisy.astype(np.int32))}  # fmt: skip
    test = parallel.put_replicated(mesh, (ds.test_images, ds.test_labels.astype(np.int32)))
    run = DivideMixRun(config, workdir, guard, ds, noisy, mask, data,
                       parallel.put_samples(mesh, mask), test, pieces, mesh,
                       ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints), hyper,
                       metrics_path=os.path.join(workdir, "metrics.jsonl"),
                       clock=eta.RunClock(priors=eta.dividemix_priors(
                           ds.train_images.shape[0], ds.test_images.shape[0])))  # fmt: skip
    log(f"DivideMix: lambda_u {hyper['lambda_u']:g}, p_threshold {hyper['p_threshold']:g}, "
        f"loss history {hyper['loss_history'] or 'off'}, epochs 0..{config.epochs}, "
        f"devices: {mesh.size}")
    fresh_tree = (parallel.put_replicated(mesh, init_nets(config, ds, pieces.tx)),
                  {"loss_history": init_history(hyper, ds.train_images.shape[0], mesh)})
    nets, aux, meta = train.restore(run, *fresh_tree)
    nets, aux = _placed_like((nets, aux), fresh_tree)
    workdir_lib.write_run_info(workdir, resolved, ds, config)
    ckpt_lib.atomic_write_text(run.metrics_path,
                               "".join(json.dumps(r) + "\n" for r in run.history))  # fmt: skip
    return run, nets, aux["loss_history"], meta


# ------------------------------------------------------------------------------------------------
# One epoch.


def _i32(v) -> jax.Array:
    return jnp.asarray(v, jnp.int32)


def _show(bar: Progress, done: int, pending, every: int) -> None:
    """Advance the bar to ``done`` steps every ``every`` steps and at its end, once they have
    run (so its times, and the run's ETA, are the steps' and not their dispatch)."""
    if done % every == 0 or done == bar.total:
        jax.block_until_ready(pending)
        bar.update(done - bar.n)


def _warm_steps(run: DivideMixRun) -> int:
    """Warm-up steps of one epoch, both networks: ceil(N / 2B) each."""
    return 2 * -(-run.data["labels"].shape[0] // (2 * run.config.dividemix_batch))


def _semi_steps(run: DivideMixRun) -> tuple[int, str]:
    """Semi steps of one epoch (both networks), from the latest division's labelled sets or,
    before the first, from (1 - noise) N each; and what the size is from."""
    n, B = run.data["labels"].shape[0], run.config.dividemix_batch
    if run.labelled:
        return eta.dividemix_semi_steps(run.labelled, B), "labelled " + "/".join(
            map(str, run.labelled)) + f" of {n} as in the latest division"
    guess = max(1, round((1.0 - run.config.noise) * n))
    return eta.dividemix_semi_steps([guess, guess], B), (
        f"labelled ~{guess} of {n} each, (1 - noise) N until the first division")


def _later(run: DivideMixRun, epoch: int, rest: dict) -> dict:
    """The run's work after a bar: ``rest`` of this epoch, then the epochs after it."""
    c = run.config
    later = eta.dividemix_work(epoch + 1, c.epochs, c.dividemix_warm_up, _warm_steps(run),
                               _semi_steps(run)[0])  # fmt: skip
    return eta.add_work(rest, later)


def projection(run: DivideMixRun, epoch: int) -> str:
    """The projected time of the whole run, after ``epoch`` (an estimate: see ``_semi_steps``)."""
    c, warm, (semi, source) = run.config, _warm_steps(run), _semi_steps(run)
    left = eta.dividemix_work(epoch + 1, c.epochs, c.dividemix_warm_up, warm, semi)
    return eta.dividemix_projection(run.clock, c.epochs, c.dividemix_warm_up, warm, semi, source,
                                    left, train.faster_hint(c))  # fmt: skip


def warmup_epoch(run: DivideMixRun, nets: dict, epoch: int) -> tuple[dict, dict]:
    """Cross-entropy on the whole (noisy) set, net1 then net2, batch 2B (the last smaller)."""
    c, p, n = run.config, run.pieces, run.data["labels"].shape[0]
    stride = 2 * c.dividemix_batch
    calls = [p.warmup] * (n // stride) + ([p.warmup_last] if p.warmup_last else [])
    out = {}
    for k, name in enumerate(NETS):
        perm = dms.warmup_permutation(c.seed, n, _i32(epoch), _i32(k))
        state, total = nets[name], jnp.zeros((), jnp.float32)
        bar = Progress(len(calls), f"epoch {epoch}/{c.epochs} warm-up {name}",
                       items_per_step=stride, log_every_seconds=c.log_every_seconds,
                       run=run.clock, unit="warmup", estimated=True,
                       later=_later(run, epoch, {"warmup": len(calls) * (1 - k), "eval": 1}))
        for s, step in enumerate(calls):
            state, m = step(state, run.data, perm, _i32(epoch), _i32(s), _i32(k))
            total = total + m["loss"]
            _show(bar, s + 1, total, c.log_every_steps)
            if run.guard.stop_requested:
                raise _Stopped
        bar.close()
        nets = dict(nets, **{name: state})
        out[name] = {"loss": float(total) / len(calls), "steps": len(calls)}
    return nets, out


def divide(run: DivideMixRun, nets: dict, loss_history: dict, epoch: int) -> tuple[dict, dict]:
    """Each network's division: its per-sample CE (eval mode, no augmentation), the fitted
    (normalised) losses, p_clean and the labelled mask, and its logits."""
    c, out, new_history = run.config, {}, {}
    for name in NETS:
        loss, logits = train.forward_all(run.pieces.eval_chunk, nets[name], run.data["images"],
                                         run.data["labels"], c.eval_batch_size, epoch=epoch,
                                         mesh=run.mesh)  # fmt: skip
        if not bool(jnp.all(jnp.isfinite(loss))):
            raise run.diverged(f"non-finite per-sample losses of {name} before epoch {epoch}")
        hist, x, p_clean, gmm = run.pieces.divide(loss, loss_history.get(name))
        if hist is not None:  # kept in its placement (sharded by sample): no recompile
            new_history[name] = _placed_like(hist, loss_history[name])
        if not bool(gmm.valid):
            log(f"warning: epoch {epoch}: {name}'s GMM fit was degenerate (p_clean = 0.5)")
        out[name] = {"loss": loss, "fit_loss": x, "p_clean": p_clean, "logits": logits,
                     "labelled": p_clean > run.hyper["p_threshold"]}  # fmt: skip
    return new_history, out


def train_net(run: DivideMixRun, nets: dict, k: int, division: dict, epoch: int):
    """Network k's semi-supervised epoch on the other network's division, that one fixed."""
    c, B = run.config, run.config.dividemix_batch
    name, other = NETS[k], NETS[1 - k]
    n_lab = int(jnp.sum(division["labelled"]))
    steps, num_iter = -(-n_lab // B), n_lab // B + 1
    state, sums = nets[name], {"Lx": 0.0, "Lu": 0.0, "loss": 0.0}
    bar = Progress(steps, f"epoch {epoch}/{c.epochs} {name}", items_per_step=4 * B,
                   log_every_seconds=c.log_every_seconds, run=run.clock, unit="semi",
                   later=_later(run, epoch, {"semi": steps * (1 - k), "eval": 1}),
                   estimated=True)  # fmt: skip
    orders = dms.pool_orders(c.seed, _i32(epoch), _i32(k), division["labelled"])
    for s in range(steps):
        state, m = run.pieces.semi(state, nets[other], run.data, division["p_clean"], orders,
                                   _i32(epoch), _i32(s), _i32(num_iter), _i32(k))  # fmt: skip
        sums = {key: sums[key] + m[key] for key in sums}
        _show(bar, s + 1, m["loss"], c.log_every_steps)
        if run.guard.stop_requested:
            raise _Stopped
    bar.close()
    means = {key: float(v) / max(steps, 1) for key, v in sums.items()}
    return dict(nets, **{name: state}), {**means, "labelled": n_lab, "steps": steps}


def semi_epoch(run: DivideMixRun, nets: dict, divisions: dict, epoch: int):
    """net1 on net2's division (net2 fixed), then net2 on net1's (the updated net1 fixed)."""
    nets, m1 = train_net(run, nets, 0, divisions["net2"], epoch)
    nets, m2 = train_net(run, nets, 1, divisions["net1"], epoch)
    return nets, {"net1": m1, "net2": m2}


def evaluate(run: DivideMixRun, nets: dict) -> dict:
    """Test loss and accuracy of the summed logits of both networks."""
    images, labels = run.test
    logits = sum(train.forward_all(run.pieces.eval_chunk, nets[name], images, labels,
                                   run.config.eval_batch_size, mesh=run.mesh)[1]
                 for name in NETS)  # fmt: skip
    return {"test_loss": float(jnp.mean(losses.cross_entropy(logits, labels))),
            "test_acc": 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == labels))}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Metrics, checkpoints, the end of the run.


def combined(divisions: dict) -> dict:
    """Both networks' division as one: mean raw CE, p(noisy) = 1 - mean p_clean, summed logits."""
    d1, d2 = divisions["net1"], divisions["net2"]
    return {"track_loss": (d1["loss"] + d2["loss"]) / 2,
            "p_noisy": 1.0 - (d1["p_clean"] + d2["p_clean"]) / 2,
            "logits": d1["logits"] + d2["logits"]}  # fmt: skip


def division_metrics(run: DivideMixRun, divisions: dict | None) -> dict:
    """Per network: division AUROC (1 - p_clean vs the noise mask), |labelled|, and the labelled
    set's precision (clean among labelled) and recall (labelled among clean); and the combined
    detection metrics (``metrics.detection_metrics`` of ``combined``)."""
    if divisions is None:  # warm-up: no division
        return {"auroc": float("nan")}
    out, clean = {}, ~run.mask
    for name, d in divisions.items():
        lab = d["labelled"]
        tp = jnp.sum(lab & clean)
        out[name] = {"auroc": float(metrics_lib.auroc(1.0 - d["p_clean"], run.mask)),
                     "labelled": int(jnp.sum(lab)),
                     "labelled_precision": float(tp / jnp.maximum(jnp.sum(lab), 1)),
                     "labelled_recall": float(tp / jnp.maximum(jnp.sum(clean), 1))}  # fmt: skip
    both = combined(divisions)
    det = metrics_lib.detection_metrics(both["p_noisy"], both["track_loss"], run.mask)
    return {**{k: float(v) for k, v in jax.device_get(det).items()}, "division": out}


def record(run: DivideMixRun, epoch: int, phase: str, trained: dict, division: dict,
           test: dict, seconds: dict) -> dict:  # fmt: skip
    """The epoch's metrics: appended to the history and metrics.jsonl, and logged."""
    run.best_acc = max(run.best_acc, test["test_acc"])
    train_loss = float(np.mean([trained[name]["loss"] for name in NETS]))
    r = {"epoch": epoch, "phase": phase, "lr": float(dms.lr_for_epoch(run.config, epoch)),
         "train_loss": train_loss, **test, "best_acc": run.best_acc, **division,
         "nets": trained, "seconds": seconds}  # fmt: skip
    run.history.append(r)
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(r) + "\n")
    labelled = "/".join(str(d["labelled"]) for d in division.get("division", {}).values())
    log(f"epoch {epoch} ({phase}): train loss {train_loss:.4f}  test acc {test['test_acc']:.2f}%"
        f" (best {run.best_acc:.2f}%)  division AUROC {division['auroc']:.4f}"
        f"{f'  labelled {labelled}' if labelled else ''}  [{sum(seconds.values()):.1f}s]")
    return r


def save(run: DivideMixRun, nets: dict, loss_history: dict, epoch: int) -> None:
    """Checkpoint both networks at the end of ``epoch`` (orbax step = epochs done)."""
    run.manager.save(epoch + 1, {"state": nets, "aux": {"loss_history": loss_history},
                                 "labels": run.data["labels"]},
                     {"epoch": epoch, "step_in_epoch": 0, "history": run.history,
                      "best_acc": run.best_acc})  # fmt: skip
    run.saved_at = f"the end of epoch {epoch}"


def run_epoch(run: DivideMixRun, nets: dict, loss_history: dict, epoch: int):
    """One epoch: warm-up, or divide + train both networks; then the test. Returns the
    networks, the loss history and the epoch's record."""
    t0, w0 = time.time(), eta.work_clock()  # work_clock: the ETA's times, compiling left out
    divisions = None
    if epoch < run.config.dividemix_warm_up:
        nets, trained = warmup_epoch(run, nets, epoch)
        phase, t_divide = "warmup", 0.0
    else:
        loss_history, divisions = divide(run, nets, loss_history, epoch)
        t_divide = time.time() - t0
        run.clock.add("divide", 1, eta.work_clock() - w0)
        run.labelled = [int(jnp.sum(divisions[name]["labelled"])) for name in NETS]
        nets, trained = semi_epoch(run, nets, divisions, epoch)
        phase = "semi"
    if not np.all(np.isfinite([trained[name]["loss"] for name in NETS])):
        raise run.diverged(f"non-finite training loss in epoch {epoch}")
    t_train, t0, w0 = time.time() - t0 - t_divide, time.time(), eta.work_clock()
    test = evaluate(run, nets)
    seconds = {"divide": t_divide, "train": t_train, "eval": time.time() - t0}
    r = record(run, epoch, phase, trained, division_metrics(run, divisions), test, seconds)
    run.clock.add("eval", 1, eta.work_clock() - w0)
    return nets, loss_history, r


def train_dividemix(config: ml_collections.ConfigDict, workdir: str, *, fresh: bool = False,
                    stop_after_epoch: int | None = None, guard) -> dict:  # fmt: skip
    """Train DivideMix in ``workdir`` (resuming at the last finished epoch); the summary of
    ``train.finish``. ``stop_after_epoch`` (0-based) ends this call after that epoch."""
    run, nets, loss_history, meta = setup(config, workdir, fresh, guard)
    interrupted, start = False, meta["epoch"] + 1 if meta else 0
    try:
        for epoch in range(start, config.epochs + 1):
            try:
                nets, loss_history, _ = run_epoch(run, nets, loss_history, epoch)
            except _Stopped:
                interrupted = True
                log(f"{guard.signal_name} during epoch {epoch}: not saved; {run.last_good}; "
                    "re-run the same command to redo that epoch")  # fmt: skip
                break
            save(run, nets, loss_history, epoch)
            if epoch in (start, max(start, config.dividemix_warm_up)):  # again once semi steps ran
                log(projection(run, epoch))
            if epoch < config.epochs and guard.stop_requested:
                interrupted = True
                log(f"{guard.signal_name}: saved the checkpoint of epoch {epoch}")
                break
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        run.manager.wait()
    last = None
    if not interrupted:  # per_sample.npz: the division the final networks make
        last = combined(divide(run, nets, loss_history, config.epochs + 1)[1])
    return train.finish(run, last, interrupted)
