"""The DivideMix epoch loop (Li, Socher & Hoi, ICLR 2020) on the run kit: two networks, co-divide.

One epoch, as the official ``Train_cifar.py`` (epochs 1-based; the official loop's epoch
``e`` is epoch ``e + 1`` here)::

    epoch <= warm_up: warm-up net1, then net2 (cross-entropy on the whole set, batch 2B)
    else:             divide: each network's per-sample CE (eval mode, no augmentation),
                      min-max normalised (at noise >= 0.9 the mean over the last
                      ``dividemix.loss_history`` epochs) -> GMM -> p_clean, labelled = p_clean > tau
                      net1 trains on net2's division with net2 fixed, then net2 on net1's
                      division with the updated net1 fixed (ceil(|labelled| / B) steps each)
    test:             the sum of both networks' logits

The steps are ``jaxnoise.dividemix.step``'s (one compiled semi step for every pool size); the
set-up, checkpoints, metrics, stop policy and outputs are the run kit's. The checkpointed tree:
``state = {"net1", "net2"}`` (params, batch stats, optimizer state each) and ``aux`` (the loss
histories of the 90% setting); a resumed run gives exactly the metrics of an uninterrupted one.
A stop in the middle of an epoch is not saved: the resumed run redoes that epoch from its start.

``metrics.jsonl``, one line per epoch: ``test_acc`` / ``test_loss`` of the summed logits,
``best_acc``, ``lr``, ``train_loss`` (the two networks' mean step loss: warm-up CE, or
``Lx + lambda_u Lu + penalty``); ``nets.netK``: network K's training (``Lx``, ``Lu``, ``loss``
means over its steps, ``steps``, ``labelled`` = the size of the *other* network's labelled set
it trained on); ``division.netK`` (semi epochs): the division network K made at the epoch's
start (its ``auroc`` of ``1 - p_clean`` against the known noise mask, ``labelled``, and the
labelled set's ``labelled_precision`` = clean among labelled and ``labelled_recall`` = labelled
among clean); ``auroc``, ``auroc_loss``, ``precision``, ``recall`` of the two divisions combined
(``p_noisy = 1 - (p_clean1 + p_clean2) / 2``, NaN in warm-up epochs); ``seconds``.

The run's outputs (``per_sample.npz``, ``label_issues.csv``) come from a division pass of the
final networks: ``loss`` the mean of the two networks' CE, ``p_noisy = 1 - (p_clean1 +
p_clean2) / 2``, ``prediction`` / ``logits`` of the summed logits.

Where this parts from the official code (besides the steps' own): the GMM runs in float32 with a
deterministic k-means start (``mixture.fit_gmm``); the loss history is used at ``noise >= 0.9``
(official: ``r == 0.9``); the networks are initialised from seeds ``seed`` and ``seed + 1`` and
every draw derives from ``config.seed`` (nothing to checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnoise import eta, losses, mixture, network, optim, parallel, runkit, signals
from jaxnoise import forward as forward_lib
from jaxnoise import metrics as metrics_lib
from jaxnoise import schedule as lr_schedule
from jaxnoise.dividemix import config as dm_config
from jaxnoise.dividemix import step
from jaxnoise.progress import Progress, log

NETS = ("net1", "net2")


class _Stopped(Exception):
    """A stop (SIGTERM / SIGINT) was requested in the middle of an epoch."""


@dataclasses.dataclass
class Pieces:
    """What the loop builds once: the graph, the optimizer, the compiled functions, and the
    resolved hyperparameters (lambda_u, p_threshold, loss-history length; 0: none)."""

    graphdef: Any
    tx: Any
    warmup: Any  # full warm-up batches (2B)
    warmup_last: Any  # the last, smaller warm-up batch (None when 2B divides N)
    semi: Any
    forward: Any
    divide: Any  # jitted (losses, history) -> (history, fitted losses, p_clean, gmm)
    hyper: dict
    labelled: list | None = None  # |labelled| of the latest division of each network (ETA)


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
        gmm = mixture.fit_gmm(
            x,
            normalize="none",
            init="kmeans",
            tol=1e-2,
            reg_covar=5e-4,
            max_iters=10,
            noisy="max_mean",
        )
        return history, x, 1.0 - mixture.posterior_noisy(gmm, x), gmm

    return divide


def _i32(v) -> jax.Array:
    return jnp.asarray(v, jnp.int32)


def _semi_step(graphdef, tx, c, num_classes: int, mean_std: tuple, lambda_u: float, mesh):
    """The compiled semi-supervised (MixMatch) step of the config's DivideMix block."""
    d = c.dividemix
    return step.make_semi_step(
        graphdef,
        tx,
        c,
        num_classes,
        *mean_std,
        batch_size=d.batch_size,
        T=d.sharpen_temperature,
        alpha=d.mixmatch_alpha,
        lambda_max=lambda_u,
        warm_up=d.warm_up,
        rampup=d.lambda_u_rampup,
        views=d.views,
        mesh=mesh,
    )


def build(c, ds, mean_std: tuple, mesh=None) -> tuple[Pieces, dict]:
    """The pieces and the fresh tree (both networks, the loss histories) of a config on a
    dataset, placed on the mesh (default: one device)."""
    mesh, d = mesh or parallel.make_mesh(1), c.dividemix
    n, B = ds.train_images.shape[0], d.batch_size
    hyper = {
        "lambda_u": dm_config.lambda_u(c),
        "p_threshold": dm_config.p_threshold(c),
        "loss_history": dm_config.loss_history(c),
    }
    tx = optim.direction(c)
    nets = {}
    for k, name in enumerate(NETS):  # seeds seed and seed + 1
        model = network.create(c, ds.num_classes, ds.image_shape[-1], seed=c.seed + k)
        graphdef, params, frozen, stats = network.split(model, c)
        nets[name] = dict(params=params, frozen=frozen, stats=stats, opt_state=tx.init(params))
    common = dict(
        penalty=c.noise_kind == "asymmetric",
        stride=2 * B,
        mesh=mesh,
        strong_prob=float(d.warmup_strong),
    )

    def warm(batch_size):
        return step.make_warmup_step(
            graphdef, tx, c, ds.num_classes, *mean_std, batch_size=batch_size, **common
        )

    pieces = Pieces(
        graphdef,
        tx,
        warm(2 * B) if n >= 2 * B else None,
        warm(n % (2 * B)) if n % (2 * B) else None,
        _semi_step(graphdef, tx, c, ds.num_classes, mean_std, hyper["lambda_u"], mesh),
        forward_lib.make_forward(graphdef, c, *mean_std, mesh),
        make_divide(hyper["loss_history"] > 0),
        hyper,
    )
    history = {}
    if hyper["loss_history"]:  # each network's ring buffer of its last normalised losses
        fresh = signals.init("mean_k", n, hyper["loss_history"])
        history = {
            name: fresh._replace(
                buffer=parallel.zeros_like_sharded(mesh, fresh.buffer.shape, jnp.float32),
                count=parallel.put_replicated(mesh, fresh.count),
            )
            for name in NETS
        }
    return pieces, {"state": parallel.put_replicated(mesh, nets), "aux": {"loss_history": history}}


# ------------------------------------------------------------------------------------------------
# The run's remaining time (an estimate: the semi-supervised epochs' steps depend on the
# labelled sets, known only at each division).


def _show(bar: Progress, done: int, pending, every: int) -> None:
    """Advance the bar to ``done`` steps every ``every`` steps and at its end, once they have
    run (so its times, and the run's ETA, are the steps' and not their dispatch)."""
    if done % every == 0 or done == bar.total:
        jax.block_until_ready(pending)
        bar.update(done - bar.n)


def _warm_steps(run: runkit.Run) -> int:
    """Warm-up steps of one epoch, both networks: ceil(N / 2B) each."""
    return 2 * -(-run.data["labels"].shape[0] // (2 * run.config.dividemix.batch_size))


def _semi_steps(run: runkit.Run, p: Pieces) -> tuple[int, str]:
    """Semi steps of one epoch (both networks), from the latest division's labelled sets or,
    before the first, from (1 - noise) N each; and what the size is from."""
    n, B = run.data["labels"].shape[0], run.config.dividemix.batch_size
    if p.labelled:
        return eta.dividemix_semi_steps(p.labelled, B), "labelled " + "/".join(
            map(str, p.labelled)
        ) + f" of {n} as in the latest division"
    guess = max(1, round((1.0 - run.config.noise) * n))
    return eta.dividemix_semi_steps([guess, guess], B), (
        f"labelled ~{guess} of {n} each, (1 - noise) N until the first division"
    )


def _later(run: runkit.Run, p: Pieces, epoch: int, rest: dict) -> dict:
    """The run's work after a bar: ``rest`` of this epoch, then the epochs after it."""
    c = run.config
    later = eta.dividemix_work(
        epoch + 1, c.epochs, c.dividemix.warm_up, _warm_steps(run), _semi_steps(run, p)[0]
    )
    return eta.add_work(rest, later)


def projector(run: runkit.Run, p: Pieces):
    """The whole run's projected time after the first epoch of this process, and again after
    its first semi-supervised epoch (once semi steps and a division were timed)."""
    c = run.config

    def projection(epoch: int, first: int) -> str | None:
        if epoch not in (first, max(first, c.dividemix.warm_up + 1)):
            return None
        warm, (semi, source) = _warm_steps(run), _semi_steps(run, p)
        left = eta.dividemix_work(epoch + 1, c.epochs, c.dividemix.warm_up, warm, semi)
        return eta.dividemix_projection(
            run.clock,
            c.epochs,
            c.dividemix.warm_up,
            warm,
            semi,
            source,
            left,
            runkit.faster_hint(c),
        )

    return projection


# ------------------------------------------------------------------------------------------------
# One epoch.


def warmup_epoch(run: runkit.Run, p: Pieces, nets: dict, epoch: int) -> tuple[dict, dict]:
    """Cross-entropy on the whole (noisy) set, net1 then net2, batch 2B (the last smaller)."""
    c, n = run.config, run.data["labels"].shape[0]
    stride = 2 * c.dividemix.batch_size
    calls = [p.warmup] * (n // stride) + ([p.warmup_last] if p.warmup_last else [])
    out = {}
    for k, name in enumerate(NETS):
        perm = step.warmup_permutation(c.seed, n, _i32(epoch), _i32(k))
        state, total = nets[name], jnp.zeros((), jnp.float32)
        bar = Progress(
            len(calls),
            f"epoch {epoch}/{c.epochs} warm-up {name}",
            items_per_step=stride,
            log_every_seconds=c.log_every_seconds,
            run=run.clock,
            unit="warmup",
            estimated=True,
            later=_later(run, p, epoch, {"warmup": len(calls) * (1 - k), "eval": 1}),
        )
        for s, warm_step in enumerate(calls):
            state, m = warm_step(state, run.data, perm, _i32(epoch), _i32(s), _i32(k))
            total = total + m["loss"]
            _show(bar, s + 1, total, c.log_every_steps)
            if runkit.stop_agreed(run, False):
                raise _Stopped
        bar.close()
        nets = dict(nets, **{name: state})
        out[name] = {"loss": float(total) / len(calls), "steps": len(calls)}
    return nets, out


def divide(
    run: runkit.Run, p: Pieces, nets: dict, loss_history: dict, epoch: int
) -> tuple[dict, dict]:
    """Each network's division: its per-sample CE (eval mode, no augmentation), the fitted
    (normalised) losses, p_clean and the labelled mask, and its logits."""
    out, new_history = {}, {}
    for name in NETS:
        loss, logits = p.forward(nets[name], run.data["images"], run.data["labels"])
        if not bool(jnp.all(jnp.isfinite(loss))):
            raise run.diverged(f"non-finite per-sample losses of {name} before epoch {epoch}")
        hist, x, p_clean, gmm = p.divide(loss, loss_history.get(name))
        if hist is not None:  # kept in its placement (sharded by sample): no recompile
            new_history[name] = runkit.placed_like(hist, loss_history[name])
        if not bool(gmm.valid):
            runkit.warn_degenerate(
                epoch,
                f"{name}'s GMM fit",
                "EM gave no usable two-component model",
                "p_clean is 0.5 for its division",
            )
        out[name] = {
            "loss": loss,
            "fit_loss": x,
            "p_clean": p_clean,
            "logits": logits,
            "labelled": p_clean > p.hyper["p_threshold"],
        }
    return new_history, out


def train_net(run: runkit.Run, p: Pieces, nets: dict, k: int, division: dict, epoch: int):
    """Network k's semi-supervised epoch on the other network's division, that one fixed."""
    c, B = run.config, run.config.dividemix.batch_size
    name, other = NETS[k], NETS[1 - k]
    n_lab = int(jnp.sum(division["labelled"]))
    steps, num_iter = -(-n_lab // B), n_lab // B + 1
    state, sums = nets[name], {"Lx": 0.0, "Lu": 0.0, "loss": 0.0}
    bar = Progress(
        steps,
        f"epoch {epoch}/{c.epochs} {name}",
        items_per_step=4 * B,
        log_every_seconds=c.log_every_seconds,
        run=run.clock,
        unit="semi",
        later=_later(run, p, epoch, {"semi": steps * (1 - k), "eval": 1}),
        estimated=True,
    )
    orders = step.pool_orders(c.seed, _i32(epoch), _i32(k), division["labelled"])
    for s in range(steps):
        state, m = p.semi(
            state,
            nets[other],
            run.data,
            division["p_clean"],
            orders,
            _i32(epoch),
            _i32(s),
            _i32(num_iter),
            _i32(k),
        )
        sums = {key: sums[key] + m[key] for key in sums}
        _show(bar, s + 1, m["loss"], c.log_every_steps)
        if runkit.stop_agreed(run, False):
            raise _Stopped
    bar.close()
    means = {key: float(v) / max(steps, 1) for key, v in sums.items()}
    return dict(nets, **{name: state}), {**means, "labelled": n_lab, "steps": steps}


def evaluate(run: runkit.Run, p: Pieces, nets: dict) -> dict:
    """Test loss and accuracy of the summed logits of both networks (none without a test
    set)."""
    if not run.has_test:
        return {}
    images, labels = run.test
    logits = sum(p.forward(nets[name], images, labels)[1] for name in NETS)
    return {
        "test_loss": float(jnp.mean(losses.cross_entropy(logits, labels))),
        "test_acc": forward_lib.accuracy(logits, labels),
    }


# ------------------------------------------------------------------------------------------------
# Metrics and the run.


def combined(divisions: dict) -> dict:
    """Both networks' division as one: mean raw CE, p(noisy) = 1 - mean p_clean, summed logits."""
    d1, d2 = divisions["net1"], divisions["net2"]
    return {
        "loss": (d1["loss"] + d2["loss"]) / 2,
        "p_noisy": 1.0 - (d1["p_clean"] + d2["p_clean"]) / 2,
        "logits": d1["logits"] + d2["logits"],
    }


def division_metrics(run: runkit.Run, divisions: dict | None) -> dict:
    """Per network: division AUROC (1 - p_clean vs the noise mask), |labelled|, and the labelled
    set's precision (clean among labelled) and recall (labelled among clean); and the combined
    detection metrics (``metrics.detection_metrics`` of ``combined``)."""
    if divisions is None:  # warm-up: no division
        return {"auroc": float("nan")}
    out, clean = {}, ~run.mask
    for name, d in divisions.items():
        lab = d["labelled"]
        tp = jnp.sum(lab & clean)
        out[name] = {
            "auroc": float(metrics_lib.auroc(1.0 - d["p_clean"], run.mask)),
            "labelled": int(jnp.sum(lab)),
            "labelled_precision": float(tp / jnp.maximum(jnp.sum(lab), 1)),
            "labelled_recall": float(tp / jnp.maximum(jnp.sum(clean), 1)),
        }
    both = combined(divisions)
    det = metrics_lib.detection_metrics(both["p_noisy"], both["loss"], run.mask)
    return {**{k: float(v) for k, v in jax.device_get(det).items()}, "division": out}


def describer(run: runkit.Run):
    """The epoch's log line."""

    def describe(r: dict) -> str:
        labelled = "/".join(str(d["labelled"]) for d in r.get("division", {}).values())
        detection = runkit.detection_text(run, r, auroc="division") if labelled else ""
        return (
            f"epoch {r['epoch']} ({r['phase']}): train loss {r['train_loss']:.4f}  "
            f"{runkit.accuracy_text(r)}"
            f"{f'  {detection}' if detection else ''}"
            f"{f'  labelled {labelled}' if labelled else ''}  "
            f"[{sum(r['seconds'].values()):.1f}s]"
        )

    return describe


def make_epoch(run: runkit.Run, p: Pieces):
    """The epoch function of ``runkit.run_epochs``: warm-up, or divide + train both networks;
    then the test."""

    def epoch_fn(tree, epoch: int, first: int, partial: dict):
        nets, history = tree["state"], tree["aux"]["loss_history"]
        t0, divisions, w0 = time.time(), None, eta.work_clock()  # work: compiling left out
        try:
            if epoch <= run.config.dividemix.warm_up:
                nets, trained = warmup_epoch(run, p, nets, epoch)
                phase, t_divide = "warmup", 0.0
            else:
                history, divisions = divide(run, p, nets, history, epoch)
                t_divide = time.time() - t0
                run.clock.add("divide", 1, eta.work_clock() - w0)
                p.labelled = [int(jnp.sum(divisions[name]["labelled"])) for name in NETS]
                nets, m1 = train_net(run, p, nets, 0, divisions["net2"], epoch)
                nets, m2 = train_net(run, p, nets, 1, divisions["net1"], epoch)
                trained, phase = {"net1": m1, "net2": m2}, "semi"
        except _Stopped:
            return runkit.Stopped(tree)  # not saved: the epoch is redone from its start
        if not np.all(np.isfinite([trained[name]["loss"] for name in NETS])):
            raise run.diverged(f"non-finite training loss in epoch {epoch}")
        t_train, t0, w0 = time.time() - t0 - t_divide, time.time(), eta.work_clock()
        test = evaluate(run, p, nets)
        seconds = {"divide": t_divide, "train": t_train, "eval": time.time() - t0}
        run.clock.add("eval", 1, eta.work_clock() - w0)
        train_loss = float(np.mean([trained[name]["loss"] for name in NETS]))
        r = {
            "epoch": epoch,
            "phase": phase,
            "lr": lr_schedule.lr_for_epoch(run.config, epoch),
            "train_loss": train_loss,
            **test,
            **division_metrics(run, divisions),
            "nets": trained,
            "seconds": seconds,
        }
        return runkit.Epoch({"state": nets, "aux": {"loss_history": history}}, r, describer(run))

    return epoch_fn


def train(run: runkit.Run, *, stop_after_epoch: int | None = None) -> dict:
    """Train DivideMix in the run's workdir (resuming at its newest checkpoint); the summary of
    ``runkit.finish``."""
    pieces, fresh = build(run.config, run.ds, run.mean_std, run.mesh)
    run.clock = eta.RunClock(
        priors=eta.dividemix_priors(run.ds.train_images.shape[0], run.ds.test_images.shape[0])
    )
    h, d = pieces.hyper, run.config.dividemix
    auto_human = d.p_threshold == -1 and run.config.noise_kind == "human"
    why = " (-1 with human labels: the paper's value below 90% noise)" if auto_human else ""
    log(
        f"DivideMix: lambda_u {h['lambda_u']:g}, p_threshold {h['p_threshold']:g}{why}, loss "
        f"history {h['loss_history'] or 'off'}, warm-up epochs 1..{d.warm_up} of "
        f"{run.config.epochs}"
    )
    tree, meta = runkit.restore(run, fresh)
    tree, interrupted = runkit.run_epochs(
        run,
        tree,
        meta,
        make_epoch(run, pieces),
        stop_after_epoch=stop_after_epoch,
        projection=projector(run, pieces),
    )

    def outputs(t: dict) -> dict:  # the division the final networks make
        epoch = run.history[-1]["epoch"] + 1 if run.history else 1
        return combined(divide(run, pieces, t["state"], t["aux"]["loss_history"], epoch)[1])

    return runkit.finish(run, tree, outputs, interrupted)
