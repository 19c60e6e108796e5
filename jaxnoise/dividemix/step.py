"""The jitted DivideMix steps (Li, Socher & Hoi, ICLR 2020): warm-up and the semi-supervised step.

Both follow the official ``Train_cifar.py`` (``warmup()`` and ``train()``), built from the pure
pieces of ``jaxnoise.dividemix.pieces`` and ``jaxnoise.losses``. A DivideMix epoch has a varying
number of steps (the labelled set changes size every epoch), so the steps do not derive their
position from a step count: ``epoch`` and ``step_in_epoch`` come in as traced int32 scalars
(pass ``jnp.int32`` arrays, not Python ints, so that every epoch runs the same compiled
function), and so does ``net_index`` (0 or 1), which keeps the two networks' draws apart.

Epochs are 1-based as for every method. The official loop counts from 0; its formulas (the
lambda_u ramp ``epoch + batch_idx / num_iter - warm_up``) and the random draws use that count,
``official_epoch(epoch) = epoch - 1``.

Learning rate: one mechanism for every method (``jaxnoise.optim``): the optimizer is a
direction without a rate (``optim.direction``: torch's SGD with coupled weight decay, or Adam),
and the step applies it at ``schedule.lr(config, epoch)`` (the official ``lr = 0.02``, ``/10``
from its epoch 150: ``lr_milestones = (151,)``).

Randomness: every key derives from ``keys.epoch_keys(config.seed, official_epoch(epoch))``
(nothing to checkpoint): the epoch's pool orders from its permutation key folded with
``net_index``; a step's augmentation and MixMatch draws from its step key folded with
``net_index`` and ``step_in_epoch``. With a ``mesh``, every batch (its gathered images, the
views, the mixed batch) is sharded over its ``"data"`` axis (``parallel.constrain_batch``); the
states are replicated.

Where static shapes part from the official loaders: every semi step has exactly B labelled and
B unlabelled samples (the official last labelled batch of an epoch is smaller; here it wraps to
the start of the epoch's shuffle, and both halves of the MixMatch batch keep B rows); a used-up
unlabelled pool restarts in the same order (the official loader reshuffles). Empty pools are
handled instead of skipped or raised (the official code runs no step without labelled samples
and raises StopIteration without unlabelled ones): an empty labelled pool leaves the state
unchanged; an empty unlabelled pool gives ``lambda_u = 0``, its rows (drawn from the labelled
samples) still entering MixMatch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxnoise import choices, losses, network, optim, parallel, strong_augment
from jaxnoise import data as data_lib
from jaxnoise import schedule as lr_schedule
from jaxnoise.dividemix import pieces
from jaxnoise.keys import epoch_keys


def official_epoch(epoch):
    """The official loop's 0-based count of a (1-based) epoch."""
    return epoch - 1


# ------------------------------------------------------------------------------------------------
# Randomness and batches.


def step_key(seed: int, epoch, step_in_epoch, net_index) -> jax.Array:
    """The key of one step of one network: the epoch's step key, folded with net and step."""
    key = jax.random.fold_in(epoch_keys(seed, official_epoch(epoch))[2], net_index)
    return jax.random.fold_in(key, step_in_epoch)


def warmup_permutation(seed: int, n: int, epoch, net_index) -> jax.Array:
    """A warm-up epoch's shuffle of the n samples for one network (the official warm-up loader is
    iterated once per network, each time reshuffled)."""
    key = jax.random.fold_in(epoch_keys(seed, official_epoch(epoch))[0], net_index)
    return jax.random.permutation(key, n)


VIEWS = choices.DIVIDEMIX_VIEWS  # config.dividemix.views


def _augmented(images, key, config: ml_collections.ConfigDict, mean, std, strong: bool = False):
    """One random view, normalised: weak (crop after zero padding, flip; as ``transform_train``)
    or strong (that, then AutoAugment's CIFAR-10 policy: ``strong_augment``, AugDesc-WS)."""
    kw = dict(padding=config.data.crop_padding, flip=config.data.flip)
    x = (
        strong_augment.strong_augment(images, key, **kw)
        if strong
        else data_lib.augment(images, key, **kw)
    )
    return data_lib.normalize(x, mean, std)


def _warmup_view(images, key, config, mean, std, strong_prob: float):
    """The warm-up view: weak, strong (AugDesc's SAW, ``strong_prob = 1``), or per sample strong
    with probability ``strong_prob`` (AugDesc's ``prob_transform``)."""
    if strong_prob <= 0.0:
        return _augmented(images, key, config, mean, std)
    k_weak, k_strong, k_pick = jax.random.split(key, 3)
    strong = _augmented(images, k_strong, config, mean, std, strong=True)
    if strong_prob >= 1.0:
        return strong
    pick = jax.random.bernoulli(k_pick, strong_prob, (images.shape[0],) + (1,) * (images.ndim - 1))
    return jnp.where(pick, strong, _augmented(images, k_weak, config, mean, std))


class SemiDraws(NamedTuple):
    """Every random draw of one DivideMix step."""

    labelled: jax.Array  # (B,) int32 indices of the labelled batch
    unlabelled: jax.Array  # (B,) int32 indices of the unlabelled batch
    labelled_valid: jax.Array  # () bool: the labelled pool is not empty
    unlabelled_valid: jax.Array  # () bool: the unlabelled pool is not empty
    view_keys: jax.Array  # (4,) keys of the augmentations of x1, x2, u1, u2
    strong_keys: jax.Array  # (4,) keys of their strong views (AugDesc-WS; unused otherwise)
    lam: jax.Array  # () float32 MixMatch weight, max(l, 1 - l), l ~ Beta(alpha, alpha)
    mix_perm: jax.Array  # (4B,) int32 MixMatch partner of every row of [x1, x2, u1, u2]


class PoolOrders(NamedTuple):
    """One epoch's shuffles of a division's two pools, for one network (``pool_orders``)."""

    labelled: jax.Array  # (N,) int32: the labelled pool in random order first
    unlabelled: jax.Array  # (N,) int32: the unlabelled pool in random order first
    n_labelled: jax.Array  # () int32 pool size (N when the pool is empty: it draws from all)
    n_unlabelled: jax.Array  # () int32
    labelled_valid: jax.Array  # () bool: the labelled pool is not empty
    unlabelled_valid: jax.Array  # () bool


def _pool_order(key, mask):
    """(order, size, non-empty): one shuffle of ``mask``'s pool, the pool first; an empty pool
    draws from every sample instead (its batches are zero-weighted by the step)."""
    non_empty = jnp.any(mask)
    pool = mask | ~non_empty
    order, _ = pieces.sample_from_pool(key, pool, mask.shape[0])  # (N,) the pool first
    return order, jnp.sum(pool, dtype=jnp.int32), non_empty


@functools.partial(jax.jit, static_argnums=(0,))
def pool_orders(seed: int, epoch, net_index, labelled_mask: jax.Array) -> PoolOrders:
    """The epoch's shuffles of the labelled and unlabelled pools of network ``net_index``, as
    the official loaders (``shuffle=True``, built afresh for each network's ``train()``). Made
    once per network and epoch (an O(N log N) sort), then sliced by every step."""
    k_lab, k_unl = jax.random.split(
        jax.random.fold_in(epoch_keys(seed, official_epoch(epoch))[0], net_index)
    )
    labelled_mask = jnp.asarray(labelled_mask, bool)
    (order_x, n_x, valid_x), (order_u, n_u, valid_u) = (
        _pool_order(k_lab, labelled_mask),
        _pool_order(k_unl, ~labelled_mask),
    )
    return PoolOrders(order_x, order_u, n_x, n_u, valid_x, valid_u)


def semi_draws(
    seed: int, epoch, step_in_epoch, net_index, orders: PoolOrders, batch_size: int, alpha: float
) -> SemiDraws:
    """The draws of one DivideMix step of network ``net_index``.

    The labelled batches of an epoch are consecutive slices of the epoch's shuffle of the
    labelled pool (``orders``), so an epoch of ``ceil(|labelled| / B)`` steps sees every
    labelled sample once; the unlabelled batches slice the unlabelled pool's shuffle, cycling
    through it when it is used up.
    """
    rows = step_in_epoch * batch_size + jnp.arange(batch_size)
    idx_x = orders.labelled[rows % orders.n_labelled]
    idx_u = orders.unlabelled[rows % orders.n_unlabelled]
    k_views, k_mix = jax.random.split(step_key(seed, epoch, step_in_epoch, net_index))
    lam, mix_perm = pieces.mixmatch_draw(k_mix, 4 * batch_size, alpha)
    strong_keys = jax.random.split(jax.random.fold_in(k_views, 1), 4)
    return SemiDraws(
        idx_x,
        idx_u,
        orders.labelled_valid,
        orders.unlabelled_valid,
        jax.random.split(k_views, 4),
        strong_keys,
        lam,
        mix_perm,
    )


# ------------------------------------------------------------------------------------------------
# Warm-up: cross-entropy (+ the confidence penalty for asymmetric noise), one network.


def make_warmup_step(
    graphdef,
    tx,
    config: ml_collections.ConfigDict,
    num_classes: int,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    penalty: bool,
    batch_size: int,
    stride: int | None = None,
    strong_prob: float = 0.0,
    mesh=None,
):
    """The jitted official ``warmup()`` step: ``step(state, data, perm, epoch, step_in_epoch,
    net_index) -> (state, metrics)``.

    ``net.train()``; ``CEloss(net(x), y)`` on an augmented batch (the official warm-up loader has
    batch ``2 * 64 = 128``, not dropping the last smaller batch), plus ``NegEntropy`` when
    ``penalty`` (``noise_mode == 'asym'``); one SGD step. The batch is ``perm[s * stride :
    s * stride + batch_size]`` (``stride`` defaults to ``batch_size``; build a second step with
    ``batch_size = n % stride`` and ``stride`` for the last batch). ``perm``: one shuffle per
    network and epoch (``warmup_permutation``). ``strong_prob``: the probability of a sample's
    view being strong (``_warmup_view``; 0 official, 1 AugDesc-WS's SAW). Metrics: ce,
    penalty, loss (their sum), lr.
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    stride = stride or batch_size

    def step(state, data, perm, epoch, step_in_epoch, net_index):
        key = step_key(config.seed, epoch, step_in_epoch, net_index)
        idx = jax.lax.dynamic_slice_in_dim(perm, step_in_epoch * stride, batch_size)
        images = parallel.constrain_batch(data["images"][idx], mesh)
        x = _warmup_view(images, key, config, mean, std, strong_prob)
        y = parallel.constrain_batch(data["labels"][idx], mesh)

        def loss_fn(params):
            logits, stats = network.apply(
                graphdef, params, state["frozen"], state["stats"], x, True
            )
            if logits.shape[-1] != num_classes:
                raise ValueError(f"the model has {logits.shape[-1]} outputs, not {num_classes}")
            ce = jnp.mean(losses.cross_entropy(logits, y))
            conf = pieces.neg_entropy(logits) if penalty else jnp.zeros((), jnp.float32)
            return ce + conf, (stats, ce, conf)

        (loss, (stats, ce, conf)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        lr = lr_schedule.lr(config, epoch)
        params, opt_state = optim.apply(tx, grads, state["opt_state"], state["params"], lr)
        state = dict(state, params=params, stats=stats, opt_state=opt_state)
        return state, {"ce": ce, "penalty": conf, "loss": loss, "lr": lr}

    return jax.jit(step, donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# The semi-supervised step: co-guessing, co-refinement, MixMatch, one network.


def _co_targets(graphdef, state, other, views, labels_onehot, w_clean, T: float):
    """Targets of the official ``torch.no_grad()`` block: (targets_x, targets_u, batch stats).

    ``net.train()``, ``net2.eval()``; the forwards in the official order ``net(u1)``,
    ``net(u2)``, ``net2(u1)``, ``net2(u2)``, ``net(x1)``, ``net(x2)``. The training network runs in
    train mode (batch statistics), so each of its four forwards moves its BatchNorm running
    statistics, threaded here in that order; the other network's eval forwards change nothing.
    """
    x1, x2, u1, u2 = views
    stats = state["stats"]

    def net(x, stats):
        return network.apply(graphdef, state["params"], state["frozen"], stats, x, True)

    def other_net(x):
        return network.apply(graphdef, other["params"], other["frozen"], other["stats"], x, False)[
            0
        ]

    logits_u1, stats = net(u1, stats)
    logits_u2, stats = net(u2, stats)
    targets_u = pieces.co_guess(logits_u1, logits_u2, other_net(u1), other_net(u2), T)
    logits_x1, stats = net(x1, stats)
    logits_x2, stats = net(x2, stats)
    targets_x = pieces.co_refine(logits_x1, logits_x2, labels_onehot, w_clean, T)
    return targets_x, targets_u, stats


def _state_if(update: jax.Array, new: dict, old: dict) -> dict:
    """``new`` where ``update`` is True, else ``old`` (params, stats and optimizer state)."""
    keys = ("params", "stats", "opt_state")
    kept = jax.tree.map(
        lambda a, b: jnp.where(update, a, b), {k: new[k] for k in keys}, {k: old[k] for k in keys}
    )
    return dict(new, **kept)


def _semi_loss_fn(graphdef, state, stats, mixed_inputs, mixed_targets, weight_u, B: int):
    """``loss(params) -> (Lx + weight_u * Lu + penalty, (new stats, Lx, Lu, penalty))`` of the
    one forward of the mixed batch (train mode; the fifth move of the running statistics)."""

    def loss_fn(params):
        logits, new_stats = network.apply(
            graphdef, params, state["frozen"], stats, mixed_inputs, True
        )
        lx, lu = pieces.semi_losses(
            logits[: 2 * B], mixed_targets[: 2 * B], logits[2 * B :], mixed_targets[2 * B :]
        )
        penalty = losses.class_balance_regularizer(logits)  # uniform prior, all 4B mixed rows
        return lx + weight_u * lu + penalty, (new_stats, lx, lu, penalty)

    return loss_fn


def _semi_views(data, d: SemiDraws, config, mean, std, strong: bool, mesh):
    """(views, trained views) of ``[x1, x2, u1, u2]``: the weak views the targets are made
    from, and the views MixMatch mixes (the same; AugDesc-WS: strong views of the samples)."""
    images_x, images_u = (
        parallel.constrain_batch(data["images"][i], mesh) for i in (d.labelled, d.unlabelled)
    )
    batches = (images_x, images_x, images_u, images_u)  # x1, x2, u1, u2
    views = [_augmented(b, k, config, mean, std) for b, k in zip(batches, d.view_keys)]
    if not strong:  # DivideMix mixes the views it made its targets from
        return views, views
    return views, [
        _augmented(b, k, config, mean, std, strong=True) for b, k in zip(batches, d.strong_keys)
    ]


def make_semi_step(
    graphdef,
    tx,
    config: ml_collections.ConfigDict,
    num_classes: int,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    batch_size: int = 64,
    T: float = 0.5,
    alpha: float = 4.0,
    lambda_max: float,
    warm_up: float,
    rampup: float = 16.0,
    views: str = "weak",
    mesh=None,
):
    """The jitted official ``train()`` step of one network with the other fixed: ``step(state,
    other, data, p_clean, orders, epoch, step_in_epoch, num_iter, net_index) -> (state,
    metrics)``. ``p_clean`` (N,) and the labelled mask behind ``orders`` (``pool_orders``, once
    per network and epoch) come from the *other* network's GMM (co-divide); ``num_iter =
    |labelled| // batch_size + 1`` as the official ramp. B labelled and B unlabelled samples
    (``semi_draws``), two augmented views each; co-guessing and co-refinement
    (``_co_targets``); MixMatch of ``[x1, x2, u1, u2]``; ``Lx + lambda_u(epoch + step /
    num_iter) * Lu + penalty``, the gradient only through the mixed forward; one update at
    ``schedule.lr(config, epoch)``. Empty pools: see the module docstring (no labelled sample:
    ``metrics["updated"] = 0``). ``views="augdesc-ws"`` (Nishi et al., CVPR 2021): MixMatch
    mixes four *strong* views (``strong_augment``), the targets still from the weak ones.
    Metrics: Lx, Lu, penalty, loss, lambda_u (the weight applied), lr, updated.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    B, strong = batch_size, views == "augdesc-ws"

    def step(state, other, data, p_clean, orders, epoch, step_in_epoch, num_iter, net_index):
        d = semi_draws(config.seed, epoch, step_in_epoch, net_index, orders, B, alpha)
        views, trained = _semi_views(data, d, config, mean, std, strong, mesh)
        onehot = jax.nn.one_hot(data["labels"][d.labelled], num_classes, dtype=jnp.float32)
        w_clean = jnp.asarray(p_clean, jnp.float32)[d.labelled]
        targets_x, targets_u, stats = _co_targets(graphdef, state, other, views, onehot, w_clean, T)
        all_targets = jnp.concatenate([targets_x, targets_x, targets_u, targets_u])  # (4B, C)
        trained_x = parallel.constrain_batch(jnp.concatenate(trained), mesh)
        mixed_x = losses.mix(trained_x, d.mix_perm, d.lam)
        mixed_t = losses.mix(all_targets, d.mix_perm, d.lam)
        iters = jnp.asarray(num_iter, jnp.float32)
        progress = official_epoch(epoch).astype(jnp.float32) + step_in_epoch / iters
        weight_u = pieces.lambda_u(progress, warm_up, lambda_max, rampup) * d.unlabelled_valid
        loss_fn = _semi_loss_fn(graphdef, state, stats, mixed_x, mixed_t, weight_u, B)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (stats, lx, lu, pen)), grads = grad_fn(state["params"])
        lr = lr_schedule.lr(config, epoch)
        params, opt_state = optim.apply(tx, grads, state["opt_state"], state["params"], lr)
        new = dict(state, params=params, stats=stats, opt_state=opt_state)
        updated = d.labelled_valid.astype(jnp.float32)
        metrics = dict(Lx=lx, Lu=lu, penalty=pen, loss=loss, lambda_u=weight_u, lr=lr)
        return _state_if(d.labelled_valid, new, state), dict(metrics, updated=updated)

    return jax.jit(step, donate_argnums=(0,))
