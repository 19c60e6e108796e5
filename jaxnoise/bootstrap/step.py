"""The train step: one optimizer step of a method's phase on a batch gathered on device.

``make_update`` is the step proper on a prepared batch (posteriors, clean predictions, mixing,
the loss of the phase, one optimizer update); ``make_train_step`` wraps it with the batch's
gather, augmentation and random draws, all derived inside the compiled function from the seed
and the state's step count, so a step takes only device arrays and returns
``(state, metrics)``. ``steps=K`` runs K consecutive steps per call (``jax.lax.scan``): the same
steps, equal to K calls up to float32 rounding (XLA fuses the scanned body differently; on
XLA:CPU the parameters differ by ~1e-7 relative after an epoch).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxnoise import data as data_lib
from jaxnoise import losses, mixture, network, optim, parallel
from jaxnoise import schedule as lr_schedule
from jaxnoise.bootstrap import schedule
from jaxnoise.bootstrap.schedule import Phase
from jaxnoise.keys import epoch_keys

# ------------------------------------------------------------------------------------------------
# Randomness: every key derives from (seed, epoch, step) inside jit (jaxnoise.keys).


def make_permutation_fn(seed: int, n: int, mesh=None):
    """Jitted epoch -> permutation of the training set (replicated over the mesh)."""
    out = parallel.replicated(mesh) if mesh is not None else None
    return jax.jit(
        lambda epoch: jax.random.permutation(epoch_keys(seed, epoch)[0], n), out_shardings=out
    )


# ------------------------------------------------------------------------------------------------
# The train step.


class StepDraws(NamedTuple):
    """The random draws of one train step (besides augmentation)."""

    pair: jax.Array  # (B,) int32: sample p is mixed with sample pair[p]
    lam: jax.Array  # () static mixup weight delta ~ Beta(alpha, alpha)
    pair_weight: jax.Array  # () a second Beta(alpha, alpha) draw (the "beta" pair weight)
    key: jax.Array  # key of the dynamic-mixup weight draws (the Beta / Binomial extensions)


def step_draws(key: jax.Array, batch_size: int, alpha: float) -> StepDraws:
    """Every random draw a train step makes after augmentation, from one key."""
    k_pair, k_lam, k_weight, k_dyn = jax.random.split(key, 4)
    return StepDraws(
        pair=losses.mixup_pairs(k_pair, batch_size),
        lam=losses.sample_mixup_lambda(k_lam, alpha),
        pair_weight=losses.sample_mixup_lambda(k_weight, alpha),
        key=k_dyn,
    )


def regularizer_prior(config: ml_collections.ConfigDict, num_classes: int) -> jax.Array:
    """The regulariser's class prior: 1/K per class (K = reg_prior_classes, or the classes)."""
    k = config.bootstrap.reg_prior_classes or num_classes
    return jnp.full((num_classes,), 1.0 / k, jnp.float32)


def mix_inputs(phase: Phase, config: ml_collections.ConfigDict, x, w, draws: StepDraws):
    """(lambda, mixed inputs, pair weight) of the phase's mixup (static, dynamic or none)."""
    if phase.mixup == "static":
        lam = draws.lam
    elif phase.mixup == "dynamic":  # weighted by the clean posteriors 1 - w
        lam = losses.dynamic_mixup_lambda(
            draws.key,
            w,
            draws.pair,
            draw=config.bootstrap.mixup_draw,
            n=config.bootstrap.binomial_n,
        )
    else:
        return jnp.ones((), jnp.float32), x, jnp.ones((), jnp.float32)
    pair_w = {"half": jnp.full((), 0.5, jnp.float32), "beta": draws.pair_weight, "mix": lam}[
        phase.pair_weight
    ]
    return lam, losses.mix(x, draws.pair, lam), pair_w


def phase_loss(
    phase: Phase, logits, y, w, logits_clean, pair, pair_w, temperature, *, num_classes: int
):
    """The phase's data term: CE, mixup CE, or mixup with bootstrapped targets (eq. 8)."""
    if phase.mixup == "none":
        return jnp.mean(losses.cross_entropy(logits, y))
    if phase.bootstrap == "none":
        return losses.mixup_ce_loss(logits, y, pair, pair_w)
    return losses.mixup_bootstrap_loss(
        logits,
        y,
        w,
        logits_clean,
        pair,
        pair_w,
        num_classes=num_classes,
        mode=phase.bootstrap,
        temperature=temperature,
    )


def make_update(graphdef, tx, config: ml_collections.ConfigDict, phase: Phase, num_classes: int):
    """The optimizer step of one phase on a prepared batch (the core of the train step).

    ``update(state, x, y, epoch_rows, draws, temperature, lr) -> (state, loss)``: ``x`` the
    normalised (augmented) inputs, ``y`` their labels, ``epoch_rows`` the batch's rows of the
    per-sample arrays of the last tracking pass (used with ``posterior_source="epoch"``), ``lr``
    the rate of the step's position (``optim.apply``).
    """
    prior = regularizer_prior(config, num_classes)

    def update(state, x, y, epoch_rows, draws: StepDraws, temperature, lr):
        params, frozen, stats = state["params"], state["frozen"], state["stats"]

        def batch_posteriors(p, batch_stats):  # the eval-mode forward of the published code
            logits_eval, _ = network.apply(graphdef, p, frozen, batch_stats, x, False)
            batch_loss = losses.cross_entropy(logits_eval, y)
            w = mixture.posterior_noisy(
                state["mixture"], batch_loss, lookup=config.bootstrap.posterior_lookup, classes=y
            )
            return losses.clip_posteriors(jax.lax.stop_gradient(w))

        from_epoch = phase.posterior_source == "epoch"
        # Clean predictions z (train mode, as the published code) and noisy-posteriors w.
        logits_clean = w = None
        if phase.needs_clean_logits:
            if from_epoch:
                logits_clean = epoch_rows["logits"]
            else:
                logits_clean, stats = network.apply(graphdef, params, frozen, stats, x, True)
                logits_clean = jax.lax.stop_gradient(logits_clean)
        late_w = phase.posteriors_after_mixed and not from_epoch
        if phase.needs_posteriors and not late_w:
            w = (
                losses.clip_posteriors(epoch_rows["p_noisy"])
                if from_epoch
                else batch_posteriors(params, stats)
            )

        lam, x_in, pair_w = mix_inputs(phase, config, x, w, draws)

        def loss_fn(p):
            logits, new_stats = network.apply(graphdef, p, frozen, stats, x_in, True)
            w_ = batch_posteriors(jax.lax.stop_gradient(p), new_stats) if late_w else w
            targets = (y, w_, logits_clean, draws.pair, pair_w, temperature)
            loss = phase_loss(phase, logits, *targets, num_classes=num_classes)
            if phase.regularize:
                reg = losses.class_balance_regularizer(logits, prior=prior)
                loss = loss + config.bootstrap.reg_weight * reg
            return loss, new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        new_params, opt_state = optim.apply(tx, grads, state["opt_state"], params, lr)
        new = dict(state, params=new_params, stats=new_stats, opt_state=opt_state)
        return dict(new, step=state["step"] + 1), loss

    return update


def step_position(count, steps_per_epoch: int):
    """(1-based epoch, 0-based step in the epoch) of train step ``count`` (0-based)."""
    return schedule.epoch_of_step(count, steps_per_epoch), count % steps_per_epoch


def make_train_step(
    graphdef,
    tx,
    config: ml_collections.ConfigDict,
    phase: Phase,
    num_classes: int,
    mean: np.ndarray,
    std: np.ndarray,
    mesh=None,
    batch_size: int | None = None,
    steps: int = 1,
):
    """Build the jitted train step for one phase and batch size (the last batch of an epoch
    may be smaller, see ``config.drop_last``): ``step(state, data, aux, perm) -> (state,
    metrics)``, ``metrics["loss"]`` the summed loss of its ``steps`` optimizer steps.

    The step reads its position from the state's step count (the epoch's keys, its slice of
    ``perm``, the learning rate and the temperature), gathers its batch from the
    device-resident training set, augments, normalises and calls the phase's ``update``.
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    b = config.bootstrap
    B = batch_size or b.batch_size
    update = make_update(graphdef, tx, config, phase, num_classes)
    devices = mesh.size if mesh is not None else 1

    def one_step(state, data, aux, perm):
        n = data["images"].shape[0]
        spe = len(epoch_batch_sizes(n, b.batch_size, b.drop_last, devices))
        epoch, s = step_position(state["step"], spe)
        key = jax.random.fold_in(epoch_keys(config.seed, epoch)[2], s)
        k_aug, k_draws = jax.random.split(key)
        idx = jax.lax.dynamic_slice_in_dim(perm, s * b.batch_size, B)
        # On a mesh: a local masked gather + all-reduce of the batch, then split over devices.
        x = parallel.constrain_batch(data["images"][idx], mesh)
        y = parallel.constrain_batch(data["labels"][idx], mesh)
        x = data_lib.augment(x, k_aug, padding=config.data.crop_padding, flip=config.data.flip)
        x = data_lib.normalize(x, mean, std)
        rows = None
        if phase.posterior_source == "epoch":
            rows = {k: parallel.constrain_batch(aux[k][idx], mesh) for k in ("p_noisy", "logits")}
        draws = step_draws(k_draws, B, b.mixup_alpha)
        at = (schedule.temperature(config, epoch), lr_schedule.lr(config, epoch))
        state, loss = update(state, x, y, rows, draws, *at)
        return state, {"loss": loss}

    def step(state, data, aux, perm):
        if steps == 1:
            return one_step(state, data, aux, perm)

        def body(st, _):
            return one_step(st, data, aux, perm)

        state, metrics = jax.lax.scan(body, state, length=steps)
        return state, jax.tree.map(jnp.sum, metrics)

    return jax.jit(step, donate_argnums=(0,))


def epoch_batch_sizes(n: int, batch_size: int, drop_last: bool, num_devices: int = 1) -> list[int]:
    """Batch size of every step of an epoch over n samples.

    Full batches, then (unless ``drop_last``) the remaining samples as one smaller batch, as a
    PyTorch DataLoader does; on several devices it is rounded down to a multiple of their count
    (at most num_devices - 1 samples of a shuffled epoch are left out).
    """
    sizes = [batch_size] * (n // batch_size)
    tail = 0 if drop_last else (n % batch_size) // num_devices * num_devices
    return sizes + [tail] * (tail > 0)
