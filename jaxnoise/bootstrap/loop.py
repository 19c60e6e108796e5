"""The bootstrap methods' epoch loop (CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH) on the run kit.

One epoch, as the published code (epochs 1-based)::

    train steps of the epoch's phase (jit) -> tracking pass (per-sample loss, eval mode)
    -> loss signal -> mixture fit (jit, on device) -> p(noisy) for the next epoch -> test

One train step serves every method: the config's method and the epoch select a static
``Phase`` (``schedule.phase_for_epoch``), and each distinct phase compiles once. Nothing
per-sample crosses to the host inside an epoch; at the end of an epoch a handful of scalars do.
A stop in the middle of an epoch saves that exact step (the running loss sum with it), and the
resumed run gives exactly the metrics of an uninterrupted one.

The checkpointed tree: ``state`` (params, frozen params, batch statistics, optimizer state, the
fitted mixture, the step count) and ``aux`` (the last tracking pass: ``loss``, ``p_noisy``,
``logits``, and the accumulated loss signal), from which the run's outputs are made.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnoise import eta, mixture, network, optim, parallel, runkit, signals
from jaxnoise import forward as forward_lib
from jaxnoise import keys as keys_lib
from jaxnoise import metrics as metrics_lib
from jaxnoise import schedule as lr_schedule
from jaxnoise.bootstrap import schedule, step
from jaxnoise.progress import Progress, log


@dataclasses.dataclass
class Pieces:
    """What the loop builds once: the network's graph, the optimizer, the compiled functions."""

    graphdef: Any
    tx: Any
    batch_sizes: list[int]
    forward: Any  # per-sample eval pass (jaxnoise.forward)
    fit_signal: Any
    fit_mixture: Any
    permutation: Any
    steps: dict = dataclasses.field(default_factory=dict)  # (phase, batch, k) -> compiled step

    def step_for(self, run: runkit.Run, phase: schedule.Phase, batch: int, k: int = 1):
        """The compiled train step of a phase, batch size and steps per call (built once)."""
        if (phase, batch, k) not in self.steps:
            log(
                f"compiling the {phase.name} train step (batch {batch}"
                f"{f', {k} steps per call' if k > 1 else ''}; first call)"
            )
            self.steps[(phase, batch, k)] = step.make_train_step(
                self.graphdef,
                self.tx,
                run.config,
                phase,
                run.ds.num_classes,
                *run.mean_std,
                run.mesh,
                batch,
                steps=k,
            )
        return self.steps[(phase, batch, k)]


def make_fit_fns(config, num_classes: int):
    """(fit_signal, fit_mixture): the per-epoch loss signal and the mixture fitted to it (jit).

    ``fit_signal(signal_state, track_loss) -> (signal_state, loss_to_fit)`` (``loss_signal``);
    ``fit_mixture(loss, labels) -> state``: one global mixture, or one per given class
    (``mixture_scope="class"``, a batched state).
    """
    b = config.bootstrap
    update = jax.jit(
        functools.partial(signals.update, kind=b.loss_signal, momentum=b.signal_momentum)
    )

    def fit_signal(signal_state, track_loss):
        if b.loss_signal == "epoch":
            return None, track_loss
        return update(signal_state, track_loss)

    opts = dict(max_iters=b.em_iters, noisy=b.noisy_component)

    def fit_mixture(loss, labels):
        if b.mixture_scope == "class":
            return mixture.fit_per_class(b.noise_model, loss, labels, num_classes, **opts)
        return mixture.fit(b.noise_model, loss, **opts)

    return fit_signal, fit_mixture


def build(c, ds, mean_std: tuple, mesh=None) -> tuple[Pieces, dict]:
    """The pieces and the fresh tree (``state``, ``aux``) of a config on a dataset, placed on the
    mesh (default: one device)."""
    mesh = mesh or parallel.make_mesh(1)
    graphdef, params, frozen, stats = network.split(
        network.create(c, ds.num_classes, ds.image_shape[-1]), c
    )
    n, k = ds.train_images.shape[0], ds.num_classes
    tx = optim.direction(c)
    state = {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
        "mixture": mixture.initial_state(
            c.bootstrap.noise_model, k if c.bootstrap.mixture_scope == "class" else 0
        ),
        "step": jnp.zeros((), jnp.int32),
    }
    aux = {
        "loss": parallel.zeros_like_sharded(mesh, (n,), jnp.float32),
        "p_noisy": parallel.zeros_like_sharded(mesh, (n,), jnp.float32, 0.5),
        "logits": parallel.zeros_like_sharded(mesh, (n, k), jnp.float32),
    }
    if c.bootstrap.loss_signal != "epoch":  # the accumulated loss the mixture fits
        fresh = signals.init(c.bootstrap.loss_signal, n, c.bootstrap.signal_k)
        aux["signal"] = signals.SignalState(
            buffer=parallel.zeros_like_sharded(mesh, fresh.buffer.shape, jnp.float32),
            count=parallel.put_replicated(mesh, fresh.count),
        )
    sizes = step.epoch_batch_sizes(n, c.bootstrap.batch_size, c.bootstrap.drop_last, mesh.size)
    pieces = Pieces(
        graphdef,
        tx,
        sizes,
        forward_lib.make_forward(graphdef, c, *mean_std, mesh),
        *make_fit_fns(c, k),
        step.make_permutation_fn(c.seed, n, mesh),
    )
    return pieces, {"state": parallel.put_replicated(mesh, state), "aux": aux}


def _calls(config, sizes: list[int], first: int) -> list[tuple[int, int]]:
    """The epoch's train-step calls from step ``first``: (start step, steps in the call), with
    ``config.bootstrap.steps_per_call`` full batches per call where they fit."""
    k, out, s = config.bootstrap.steps_per_call, [], first
    while s < len(sizes):
        n = k if s + k <= len(sizes) and len(set(sizes[s : s + k])) == 1 else 1
        out.append((s, n))
        s += n
    return out


def train_epoch(run: runkit.Run, p: Pieces, state, aux, epoch: int, first: int, loss_sum: float):
    """Train steps ``first..`` of an epoch. Returns (state, summed loss, steps done): fewer
    than the epoch's steps when a stop was requested, acted on at the next step boundary.
    Nothing returns to the host except at log points."""
    c, spe = run.config, run.steps_per_epoch
    phase = schedule.phase_for_epoch(c, epoch)
    with jax.transfer_guard("allow"):  # host <-> device only at the epoch's start and log points
        perm = p.permutation(np.int32(epoch))
        total = parallel.put_replicated(run.mesh, np.float32(loss_sum))
    later = eta.add_work({"track": 1, "eval": 1}, eta.bootstrap_work(c.epochs - epoch, spe))
    bar = Progress(
        spe,
        f"epoch {epoch}/{c.epochs} {phase.name}",
        initial=first,
        items_per_step=c.bootstrap.batch_size,
        log_every_seconds=c.log_every_seconds,
        run=run.clock,
        later=later,
    )
    t0, done, pending = time.time(), first, None
    for s, k in _calls(c, p.batch_sizes, first):
        state, metrics = p.step_for(run, phase, p.batch_sizes[s], k)(state, run.data, aux, perm)
        total = total + metrics["loss"]
        if pending is not None and jax.process_count() == 1:
            jax.block_until_ready(pending)  # at most one call in flight: a stop acts at once
        pending, done = metrics["loss"], s + k
        sync = done // c.log_every_steps > s // c.log_every_steps or done == spe
        if sync:
            with jax.transfer_guard("allow"):
                running = float(total) / done
            if not np.isfinite(running):
                raise run.diverged(
                    f"non-finite training loss ({running}) after step {done}/{spe} of epoch {epoch}"
                )
            bar.update(
                done - bar.n,
                loss=running,
                images_per_s=sum(p.batch_sizes[first:done]) / (time.time() - t0),
            )
        if done < spe and runkit.stop_agreed(run, sync):
            break
    bar.close()
    return state, total, done


def track_and_fit(run: runkit.Run, p: Pieces, state, aux, epoch: int):
    """The tracking pass (per-sample losses), the loss signal and the mixture fitted to it;
    returns the state with the new mixture, the next epoch's aux, the fit's extras, seconds."""
    c, labels = run.config, run.data["labels"]
    t0 = time.time()
    key = keys_lib.epoch_keys(c.seed, epoch)[1] if c.bootstrap.track_augment else None
    track_loss, track_logits = p.forward(state, run.data["images"], labels, key)
    n_bad = int(jnp.sum(~jnp.isfinite(track_loss)))
    if n_bad:  # the noise model cannot be fitted to a diverged model's losses
        raise run.diverged(
            f"{n_bad} of {track_loss.shape[0]} per-sample losses of the "
            f"tracking pass after epoch {epoch} are NaN or infinite"
        )
    t_track, t0 = time.time() - t0, time.time()
    signal_state, fit_loss = p.fit_signal(aux.get("signal"), track_loss)
    mix_state = p.fit_mixture(fit_loss, labels)
    # The posterior the next epoch trains with (the lookup table by default).
    p_noisy = mixture.posterior_noisy(
        mix_state, fit_loss, lookup=c.bootstrap.posterior_lookup, classes=labels
    )
    jax.block_until_ready(p_noisy)
    t_fit = time.time() - t0
    aux = {"loss": track_loss, "p_noisy": p_noisy, "logits": track_logits}
    if signal_state is not None:
        aux["signal"] = signal_state
    extras = {
        "fit_loss": fit_loss,
        "p_exact": mixture.posterior_noisy(mix_state, fit_loss, classes=labels),
    }
    return dict(state, mixture=mix_state), aux, extras, {"track": t_track, "fit": t_fit}


def evaluate(run: runkit.Run, p: Pieces, state) -> dict:
    """Test loss and accuracy (none without a test set)."""
    if not run.has_test:
        return {}
    images, labels = run.test
    loss, logits = p.forward(state, images, labels)
    return {"test_loss": float(jnp.mean(loss)), "test_acc": forward_lib.accuracy(logits, labels)}


def _degenerate_reason(fit_loss: jax.Array, valid) -> str:
    if isinstance(valid, list):  # mixture_scope="class"
        bad = [c for c, v in enumerate(valid) if not v]
        return f"classes {bad} (fewer than {mixture.MIN_SAMPLES} samples, or equal losses)"
    p5, p95 = (float(v) for v in mixture.percentiles(fit_loss, (5.0, 95.0)))
    if p95 <= p5 + 1e-5:
        return f"the 5th and 95th loss percentiles coincide ({p5:.6g}): the losses are ~all equal"
    return "EM ended with non-finite or non-positive parameters"


def epoch_record(
    run: runkit.Run,
    epoch: int,
    train_loss: float,
    aux: dict,
    extras: dict,
    mix_state,
    test: dict,
    seconds: dict,
    images: int,
) -> dict:
    """The epoch's metrics (one line of metrics.jsonl)."""
    c = run.config
    det = jax.device_get(
        metrics_lib.detection_metrics(aux["p_noisy"], extras["fit_loss"], run.mask)
    )
    det["auroc_exact"] = metrics_lib.auroc(extras["p_exact"], run.mask)
    quant = jax.device_get(metrics_lib.loss_quantiles(aux["loss"], run.mask))
    r = {
        "epoch": epoch,
        "phase": schedule.phase_for_epoch(c, epoch).name,
        "lr": lr_schedule.lr_for_epoch(c, epoch),
        "temperature": float(np.float32(schedule.temperature_for_epoch(c, epoch))),
        "train_loss": train_loss,
        **test,
        **{k: float(v) for k, v in det.items()},
        "loss_quantiles_clean": [float(v) for v in quant["clean"]],
        "loss_quantiles_noisy": [float(v) for v in quant["noisy"]],
        "mixture": mixture.summary(mix_state),
        "seconds": seconds,
        "images_per_s": images / max(seconds["train"], 1e-9),
    }
    valid = r["mixture"]["valid"]
    if not np.all(valid):
        where = "in those classes" if isinstance(valid, list) else "every"
        runkit.warn_degenerate(
            epoch,
            f"the {c.bootstrap.noise_model} fit",
            _degenerate_reason(extras["fit_loss"], valid),
            f"{where} p(noisy) is 0.5 for the next epoch (no sample is favoured)",
        )
    return r


def describer(run: runkit.Run):
    """The epoch's log line."""

    def describe(r: dict) -> str:
        s = r["seconds"]
        return (
            f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}  "
            f"{runkit.accuracy_text(r)}  "
            f"{runkit.detection_text(run, r)}  [{s['train']:.1f}s train, "
            f"{s['track']:.1f}s track, {s['fit'] * 1e3:.0f}ms fit]"
        )

    return describe


def make_epoch(run: runkit.Run, p: Pieces):
    """The epoch function of ``runkit.run_epochs``."""

    def epoch_fn(tree, epoch: int, first: int, partial: dict):
        state, aux, spe = tree["state"], tree["aux"], run.steps_per_epoch
        t0 = time.time()
        state, total, done = train_epoch(
            run, p, state, aux, epoch, first, partial.get("loss_sum", 0.0)
        )
        if done < spe:  # stopped: saved at this exact step
            return runkit.Stopped({"state": state, "aux": aux}, done, {"loss_sum": float(total)})
        t_train, images = time.time() - t0, sum(p.batch_sizes[first:done])
        train_loss = float(total) / spe
        if not np.isfinite(train_loss):
            raise run.diverged(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        w_track = eta.work_clock()  # the passes' times for the ETA, compiling left out
        state, aux, extras, seconds = track_and_fit(run, p, state, aux, epoch)
        t0, w_eval = time.time(), eta.work_clock()
        test = evaluate(run, p, state)
        seconds = {"train": t_train, **seconds, "eval": time.time() - t0}
        run.clock.add("track", 1, w_eval - w_track)
        run.clock.add("eval", 1, eta.work_clock() - w_eval)
        r = epoch_record(
            run, epoch, train_loss, aux, extras, state["mixture"], test, seconds, images
        )
        return runkit.Epoch({"state": state, "aux": aux}, r, describer(run))

    return epoch_fn


def outputs(tree: dict) -> dict:
    """The run's per-sample outputs: the last tracking pass, as checkpointed."""
    return {k: tree["aux"][k] for k in ("loss", "p_noisy", "logits")}


def train(run: runkit.Run, *, stop_after_epoch: int | None = None) -> dict:
    """Train a bootstrap method in the run's workdir (resuming from its newest checkpoint);
    the summary of ``runkit.finish``."""
    pieces, fresh = build(run.config, run.ds, run.mean_std, run.mesh)
    run.steps_per_epoch = len(pieces.batch_sizes)
    tree, meta = runkit.restore(run, fresh)
    tree, interrupted = runkit.run_epochs(
        run,
        tree,
        meta,
        make_epoch(run, pieces),
        stop_after_epoch=stop_after_epoch,
        projection=projector(run),
    )
    return runkit.finish(run, tree, outputs, interrupted)


def projector(run: runkit.Run):
    """The whole run's projected time, after the first epoch trained in this process."""
    c, spe = run.config, run.steps_per_epoch

    def projection(epoch: int, first: int) -> str | None:
        if epoch != first:
            return None
        return eta.bootstrap_projection(
            run.clock,
            c.epochs,
            spe,
            eta.bootstrap_work(c.epochs - epoch, spe),
            runkit.faster_hint(c),
        )

    return projection
