"""The assembled DivideMix steps (``jaxnoise.dividemix.step``) against the official ``train()``
and ``warmup()`` of ``Train_cifar.py`` (Li, Socher & Hoi, ICLR 2020), written here in numpy.

A linear head on small feature vectors (no augmentation: both views of a sample are equal) makes
every forward computable by hand: co-guessing (4 softmaxes, sharpened), co-refinement
(``w y + (1 - w) p``, sharpened), MixMatch with ``max(l, 1 - l)`` and one permutation of
``[x1, x2, u1, u2]``, ``Lx + lambda_u * Lu + penalty`` and its gradient, and one torch SGD step
(momentum 0.9, coupled weight decay). The draws (batch indices, ``l``, the permutation) come from
the step's own public draw function with the same keys; their loader semantics are tested on
their own. A BatchNorm head checks the train / eval modes and the order of the running-statistics
moves (net(u1), net(u2), net(x1), net(x2), net(mixed)). Epochs are jaxnoise's (1-based); the
official formulas use its 0-based count, ``epoch - 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special

from configs import default
from jaxnoise import models, network, optim, strong_augment
from jaxnoise.dividemix import step as dms

N, D, C, B = 40, 5, 3, 8  # samples, features, classes, labelled (= unlabelled) batch
T, ALPHA, LAMBDA_MAX, WARM_UP, RAMPUP = 0.5, 4.0, 25.0, 10, 16
WD, LR = 5e-4, 0.02
MEAN = np.linspace(-0.3, 0.3, D).astype(np.float32)
STD = np.linspace(0.8, 1.3, D).astype(np.float32)


def _config(seed: int = 0):
    c = default.get_config("DivideMix")
    c.model, c.seed, c.dividemix.batch_size = "linear", seed, B
    c.data.crop_padding, c.data.flip = 0, False  # feature vectors are not augmented
    # the official lr / 10 from its epoch 150 (0-based): from epoch 151 here
    c.lr, c.momentum, c.weight_decay, c.lr_milestones, c.lr_gamma = LR, 0.9, WD, (151,), 0.1
    return c


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    p_clean = rng.uniform(0.0, 1.0, N).astype(np.float32)
    return x, y, p_clean


def _linear_state(seed: int):
    c = _config(seed)
    graphdef, params, frozen, stats = network.split(network.create(c, C, D), c)
    tx = optim.direction(c)
    return (
        c,
        graphdef,
        tx,
        {"params": params, "frozen": frozen, "stats": stats, "opt_state": tx.init(params)},
    )


def _semi_step(graphdef, tx, c, **options):
    """The semi step of this file's linear problem (its constants), with ``options``."""
    return dms.make_semi_step(
        graphdef,
        tx,
        c,
        C,
        MEAN,
        STD,
        batch_size=B,
        T=T,
        alpha=ALPHA,
        lambda_max=LAMBDA_MAX,
        warm_up=WARM_UP,
        rampup=RAMPUP,
        **options,
    )


@pytest.fixture(scope="module")
def linear():
    """(config, graphdef, tx, state, other state, data, p_clean, the jitted semi step)."""
    c, graphdef, tx, state = _linear_state(0)
    _, _, _, other = _linear_state(1)
    x, y, p_clean = _problem()
    step = _semi_step(graphdef, tx, c)
    data = {"images": jnp.asarray(x), "labels": jnp.asarray(y)}
    return c, graphdef, tx, state, other, data, p_clean, step


def _copy(tree):  # the steps donate their state
    return jax.tree.map(jnp.copy, tree)


def _int(v):
    return jnp.int32(v)


def _call_semi(linear, mask, epoch, s, net=0, step=None):
    c, _, _, state, other, data, p_clean, default_step = linear
    step = step or default_step
    num_iter = int(mask.sum()) // B + 1  # as the official num_iter
    orders = dms.pool_orders(c.seed, _int(epoch), _int(net), jnp.asarray(mask))
    args = (data, jnp.asarray(p_clean), orders, _int(epoch), _int(s), _int(num_iter))
    new, metrics = step(_copy(state), other, *args, _int(net))
    return new, {k: float(v) for k, v in metrics.items()}, num_iter


def _kernel_bias(params):
    leaves = {
        jax.tree_util.keystr(p): np.asarray(v, np.float64)
        for p, v in jax.tree_util.tree_leaves_with_path(params)
    }
    (w,) = [v for k, v in leaves.items() if "kernel" in k]
    (b,) = [v for k, v in leaves.items() if "bias" in k]
    return w, b


def _softmax(h):
    return np.exp(h - special.logsumexp(h, axis=1, keepdims=True))


def _sharpen(p):
    pt = p ** (1.0 / T)
    return pt / pt.sum(1, keepdims=True)


def _semi_reference(w, b, w2, b2, x, y, p_clean, idx_x, idx_u, lam, perm, lambda_u, strong=None):
    """The official train() loop body for a linear net (float64): loss, its parts, dL/dW, dL/db.
    ``strong``: AugDesc-WS, the (deterministic) strong view that MixMatch mixes instead."""
    xs, us = (x[idx_x] - MEAN) / STD, (x[idx_u] - MEAN) / STD  # both views equal
    strong = strong or (lambda a: a)
    xs_t, us_t = (strong(x[idx_x]) - MEAN) / STD, (strong(x[idx_u]) - MEAN) / STD
    pu = (2 * _softmax(us @ w + b) + 2 * _softmax(us @ w2 + b2)) / 4  # co-guessing
    wx = p_clean[idx_x][:, None]
    tx = _sharpen(wx * np.eye(C)[y[idx_x]] + (1 - wx) * _softmax(xs @ w + b))  # co-refinement
    tu = _sharpen(pu)
    inputs, targets = np.concatenate([xs_t, xs_t, us_t, us_t]), np.concatenate([tx, tx, tu, tu])
    mixed_in = lam * inputs + (1 - lam) * inputs[perm]
    mixed_t = lam * targets + (1 - lam) * targets[perm]
    h = mixed_in @ w + b
    p, logp = _softmax(h), h - special.logsumexp(h, axis=1, keepdims=True)
    lx = -np.mean(np.sum(mixed_t[: 2 * B] * logp[: 2 * B], 1))
    lu = np.mean((p[2 * B :] - mixed_t[2 * B :]) ** 2)
    pbar = p.mean(0)
    penalty = np.sum((1 / C) * np.log((1 / C) / pbar))
    # Gradient w.r.t. the logits: soft CE rows, squared-error rows through the softmax, penalty.
    g_logits = np.zeros_like(h)
    g_logits[: 2 * B] = (p[: 2 * B] * mixed_t[: 2 * B].sum(1, keepdims=True) - mixed_t[: 2 * B]) / (
        2 * B
    )
    g_p = np.zeros_like(h)
    g_p[2 * B :] = lambda_u * 2 * (p[2 * B :] - mixed_t[2 * B :]) / (2 * B * C)
    g_p += -(1 / C) / pbar / (4 * B)
    g_logits += p * (g_p - np.sum(g_p * p, 1, keepdims=True))
    loss = lx + lambda_u * lu + penalty
    return loss, lx, lu, penalty, mixed_in.T @ g_logits, g_logits.sum(0)


def test_semi_step_is_the_official_train_body(linear):
    """One DivideMix step: loss (SemiLoss + lambda_u ramp + uniform prior) and one SGD update."""
    c, _, _, state, other, data, p_clean, _ = linear
    x, y = np.asarray(data["images"], np.float64), np.asarray(data["labels"])
    mask = p_clean > 0.5
    epoch, s, net = 12, 2, 1
    new, m, num_iter = _call_semi(linear, mask, epoch, s, net)
    d = dms.semi_draws(c.seed, epoch, s, net, dms.pool_orders(c.seed, epoch, net, mask), B, ALPHA)
    idx_x, idx_u = np.asarray(d.labelled), np.asarray(d.unlabelled)
    assert mask[idx_x].all() and not mask[idx_u].any()
    lambda_u = LAMBDA_MAX * np.clip((epoch - 1 + s / num_iter - WARM_UP) / RAMPUP, 0.0, 1.0)
    assert 0 < lambda_u < LAMBDA_MAX
    w, b = _kernel_bias(state["params"])
    w2, b2 = _kernel_bias(other["params"])
    loss, lx, lu, pen, g_w, g_b = _semi_reference(
        w,
        b,
        w2,
        b2,
        x,
        y,
        p_clean.astype(np.float64),
        idx_x,
        idx_u,
        float(d.lam),
        np.asarray(d.mix_perm),
        lambda_u,
    )
    for name, want in (
        ("loss", loss),
        ("Lx", lx),
        ("Lu", lu),
        ("penalty", pen),
        ("lambda_u", lambda_u),
        ("lr", LR),
    ):
        np.testing.assert_allclose(m[name], want, rtol=1e-5, err_msg=name)
    # torch SGD, first step: buf = grad + wd * param; param -= lr * buf.
    w_new, b_new = _kernel_bias(new["params"])
    np.testing.assert_allclose(w_new - w, -LR * (g_w + WD * w), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(b_new - b, -LR * (g_b + WD * b), rtol=1e-4, atol=1e-8)
    # The reference is sensitive to the wiring: the other network's targets matter.
    other_loss = _semi_reference(
        w, b, w, b, x, y, p_clean, idx_x, idx_u, float(d.lam), np.asarray(d.mix_perm), lambda_u
    )[0]
    assert abs(other_loss - loss) > 1e-4


def _fake_strong(images, key, **kw):
    """A deterministic stand-in for the strong view (feature vectors cannot be AutoAugmented)."""
    del key, kw
    return images[:, ::-1] * 2.0 + 0.25


def test_augdesc_ws_targets_from_weak_views_mixmatch_of_strong_views(linear, monkeypatch):
    """views="augdesc-ws": co-guessing / co-refinement on the weak views, MixMatch (and so the
    gradient) on the strong ones; the same draws as the weak step."""
    monkeypatch.setattr(strong_augment, "strong_augment", _fake_strong)
    c, graphdef, tx, state, other, data, p_clean, _ = linear
    step = _semi_step(graphdef, tx, c, views="augdesc-ws")
    x, y = np.asarray(data["images"], np.float64), np.asarray(data["labels"])
    mask, (epoch, s, net) = p_clean > 0.5, (13, 1, 0)
    new, m, num_iter = _call_semi(linear, mask, epoch, s, net, step=step)
    d = dms.semi_draws(c.seed, epoch, s, net, dms.pool_orders(c.seed, epoch, net, mask), B, ALPHA)
    lambda_u = LAMBDA_MAX * np.clip((epoch - 1 + s / num_iter - WARM_UP) / RAMPUP, 0.0, 1.0)
    (w, b), (w2, b2) = _kernel_bias(state["params"]), _kernel_bias(other["params"])
    args = (
        w,
        b,
        w2,
        b2,
        x,
        y,
        p_clean.astype(np.float64),
        np.asarray(d.labelled),
        np.asarray(d.unlabelled),
        float(d.lam),
        np.asarray(d.mix_perm),
        lambda_u,
    )
    loss, lx, lu, pen, g_w, g_b = _semi_reference(*args, strong=lambda a: a[:, ::-1] * 2 + 0.25)
    for name, want in (("loss", loss), ("Lx", lx), ("Lu", lu), ("penalty", pen)):
        np.testing.assert_allclose(m[name], want, rtol=1e-5, err_msg=name)
    w_new, _ = _kernel_bias(new["params"])
    np.testing.assert_allclose(w_new - w, -LR * (g_w + WD * w), rtol=1e-4, atol=1e-8)
    assert abs(_semi_reference(*args)[0] - loss) > 1e-3  # the strong views matter
    with pytest.raises(ValueError, match="views must be one of"):
        dms.make_semi_step(graphdef, tx, c, C, MEAN, STD, lambda_max=1.0, warm_up=1, views="ss")


def test_warmup_view_strong_with_probability(monkeypatch):
    """The warm-up view: weak at 0, strong at 1 (SAW), per sample strong with probability p."""
    monkeypatch.setattr(strong_augment, "strong_augment", _fake_strong)
    c = _config()
    x = np.random.default_rng(3).normal(size=(4000, D)).astype(np.float32)
    weak, strong = (x - MEAN) / STD, (_fake_strong(x, None) - MEAN) / STD
    key = jax.random.key(5)
    np.testing.assert_allclose(dms._warmup_view(x, key, c, MEAN, STD, 0.0), weak, rtol=1e-6)
    np.testing.assert_allclose(dms._warmup_view(x, key, c, MEAN, STD, 1.0), strong, rtol=1e-6)
    got = np.asarray(dms._warmup_view(x, key, c, MEAN, STD, 0.25))
    is_strong = np.all(np.isclose(got, strong, rtol=1e-6), axis=1)
    assert np.all(is_strong | np.all(np.isclose(got, weak, rtol=1e-6), axis=1))
    assert abs(is_strong.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(x))  # 4 sigma


def test_labelled_batches_of_an_epoch_cover_the_pool_once():
    """As the official shuffled loaders: an epoch's ceil(|L| / B) labelled batches are one pass
    over the labelled pool; unlabelled batches cycle through theirs; the two networks differ."""
    _, _, p_clean = _problem()
    mask = jnp.asarray(p_clean > 0.5)
    n_lab, n_unl = int(mask.sum()), N - int(mask.sum())
    steps = -(-n_lab // B)
    orders = dms.pool_orders(0, 11, 0, mask)
    draws = [dms.semi_draws(0, 11, s, 0, orders, B, ALPHA) for s in range(steps)]
    lab = np.concatenate([np.asarray(d.labelled) for d in draws])
    unl = np.concatenate([np.asarray(d.unlabelled) for d in draws])
    np.testing.assert_array_equal(np.sort(lab[:n_lab]), np.flatnonzero(np.asarray(mask)))
    np.testing.assert_array_equal(lab[n_lab:], lab[: steps * B - n_lab])  # the wrapped tail
    assert len(set(unl[:n_unl].tolist())) == n_unl and not np.asarray(mask)[unl].any()
    other = dms.semi_draws(0, 11, 0, 1, dms.pool_orders(0, 11, 1, mask), B, ALPHA)
    assert not np.array_equal(np.asarray(other.labelled), np.asarray(draws[0].labelled))
    assert 0.5 <= float(draws[0].lam) <= 1.0


def test_semi_step_compiles_once_across_epochs_and_pool_sizes(linear):
    """Epoch, step, num_iter, net and the pools are traced: one compilation for the whole run."""
    _, _, p_clean = _problem()
    step = linear[-1]
    _, m_early, _ = _call_semi(linear, p_clean > 0.5, 12, 0)
    late, m_late, _ = _call_semi(linear, p_clean > 0.3, 160, 3, net=1)
    assert step._cache_size() == 1
    np.testing.assert_allclose([m_early["lr"], m_late["lr"]], [LR, LR / 10], rtol=1e-6)
    assert m_late["lambda_u"] == pytest.approx(LAMBDA_MAX)


def test_empty_pools_give_finite_losses(linear):
    """No labelled sample: the state is left unchanged (the official loop runs no step). No
    unlabelled sample: lambda_u = 0 (the official code raises StopIteration), the step trains."""
    state = linear[3]
    w, b = _kernel_bias(state["params"])
    kept, m, _ = _call_semi(linear, np.zeros(N, bool), 20, 0)
    assert all(np.isfinite(v) for v in m.values()) and m["updated"] == 0.0
    np.testing.assert_array_equal(_kernel_bias(kept["params"])[0], w)
    for a, b_ in zip(jax.tree.leaves(kept["opt_state"]), jax.tree.leaves(state["opt_state"])):
        np.testing.assert_array_equal(a, b_)  # the momentum did not move either
    trained, m, _ = _call_semi(linear, np.ones(N, bool), 20, 0)
    assert all(np.isfinite(v) for v in m.values()) and m["updated"] == 1.0
    assert m["lambda_u"] == 0.0 and m["loss"] == pytest.approx(m["Lx"] + m["penalty"], rel=1e-6)
    assert not np.allclose(_kernel_bias(trained["params"])[1], b)


@pytest.mark.parametrize("penalty", [False, True])
def test_warmup_step_is_ce_plus_negative_entropy(linear, penalty):
    """warmup(): CEloss of the batch, + NegEntropy for asymmetric noise; the last, smaller batch
    of the epoch (no drop_last) through a second step with the full batch's stride."""
    c, graphdef, tx, state, _, data, _, _ = linear
    wb, epoch, net = 16, 3, 1  # 40 samples: two batches of 16, a last one of 8
    full = dms.make_warmup_step(graphdef, tx, c, C, MEAN, STD, penalty=penalty, batch_size=wb)
    tail = dms.make_warmup_step(
        graphdef, tx, c, C, MEAN, STD, penalty=penalty, batch_size=N % wb, stride=wb
    )
    perm = dms.warmup_permutation(c.seed, N, epoch, net)
    w, b = _kernel_bias(state["params"])
    x, y = np.asarray(data["images"], np.float64), np.asarray(data["labels"])
    for fn, s, rows in ((full, 1, slice(16, 32)), (tail, 2, slice(32, 40))):
        _, m = fn(_copy(state), data, perm, _int(epoch), _int(s), _int(net))
        idx = np.asarray(perm)[rows]
        h = ((x[idx] - MEAN) / STD) @ w + b
        logp = h - special.logsumexp(h, axis=1, keepdims=True)
        ce = -np.mean(logp[np.arange(len(idx)), y[idx]])
        neg_ent = np.mean(np.sum(np.exp(logp) * logp, 1)) if penalty else 0.0
        np.testing.assert_allclose(
            [float(m["ce"]), float(m["loss"])], [ce, ce + neg_ent], rtol=1e-5
        )
    other_perm = np.asarray(dms.warmup_permutation(c.seed, N, epoch, 0))
    assert not np.array_equal(other_perm, np.asarray(perm))


# ------------------------------------------------------------------------------------------------
# BatchNorm: train mode for the training net (its running statistics move five times, in the
# official order), eval mode for the other net.


class _BatchNormHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.bn = models.BatchNorm(D, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.out = nnx.Linear(D, C, rngs=rngs)

    def __call__(self, x, *, train: bool = False):
        return self.out(self.bn(x, use_running_average=not train))


def _bn_state(seed: int, tx):
    model = _BatchNormHead(nnx.Rngs(seed))
    graphdef, params, frozen, stats = nnx.split(model, nnx.Param, lambda *_: False, nnx.BatchStat)
    return graphdef, {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
    }


def _np(state):
    """An nnx.State as nested dicts of float64 numpy arrays."""
    return jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(state))


def _bn_forward(p, x, stats=None):
    """The head in numpy: batch statistics (train) unless running ones are given (eval)."""
    mean, var = (x.mean(0), x.var(0)) if stats is None else (stats["mean"], stats["var"])
    z = (x - mean) / np.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
    return z @ p["out"]["kernel"] + p["out"]["bias"]


def test_batchnorm_modes_and_running_statistics_order():
    x, y, p_clean = _problem()
    mask = p_clean > 0.5
    x = x + np.where(mask, 0.0, 3.0)[:, None].astype(np.float32)  # u and x batches differ
    c = _config()
    tx = optim.direction(c)
    graphdef, state = _bn_state(0, tx)
    _, other = _bn_state(1, tx)
    other["stats"] = jax.tree.map(lambda v: v + 0.5, other["stats"])  # eval != train mode
    step = _semi_step(graphdef, tx, c)
    epoch, s, net, num_iter = 30, 1, 0, int(mask.sum()) // B + 1
    data = {"images": jnp.asarray(x), "labels": jnp.asarray(y)}
    orders = dms.pool_orders(c.seed, _int(epoch), _int(net), jnp.asarray(mask))
    new, m = step(
        _copy(state),
        other,
        data,
        jnp.asarray(p_clean),
        orders,
        _int(epoch),
        _int(s),
        _int(num_iter),
        _int(net),
    )
    d = dms.semi_draws(c.seed, epoch, s, net, dms.pool_orders(c.seed, epoch, net, mask), B, ALPHA)
    xs = (x[np.asarray(d.labelled)] - MEAN) / STD
    us = (x[np.asarray(d.unlabelled)] - MEAN) / STD
    lam, perm = float(d.lam), np.asarray(d.mix_perm)
    p, p_other, stats_other = _np(state["params"]), _np(other["params"]), _np(other["stats"])
    pu = (
        2 * _softmax(_bn_forward(p, us)) + 2 * _softmax(_bn_forward(p_other, us, stats_other["bn"]))
    ) / 4
    wx = p_clean[np.asarray(d.labelled)][:, None]
    tx_ = _sharpen(
        wx * np.eye(C)[y[np.asarray(d.labelled)]] + (1 - wx) * _softmax(_bn_forward(p, xs))
    )
    inputs = np.concatenate([xs, xs, us, us])
    targets = np.concatenate([tx_, tx_, _sharpen(pu), _sharpen(pu)])
    mixed, mixed_t = (lam * a + (1 - lam) * a[perm] for a in (inputs, targets))
    h = _bn_forward(p, mixed)
    lx = -np.mean(
        np.sum(mixed_t[: 2 * B] * (h - special.logsumexp(h, 1, keepdims=True))[: 2 * B], 1)
    )
    np.testing.assert_allclose(m["Lx"], lx, rtol=1e-5)
    np.testing.assert_allclose(
        m["Lu"], np.mean((_softmax(h)[2 * B :] - mixed_t[2 * B :]) ** 2), rtol=1e-5
    )

    def running(order):  # torch: running = 0.9 running + 0.1 batch (unbiased variance)
        mean, var = np.zeros(D), np.ones(D)
        for batch in order:
            mean = 0.9 * mean + 0.1 * batch.mean(0)
            var = 0.9 * var + 0.1 * batch.var(0, ddof=1)
        return mean, var

    got = _np(new["stats"])["bn"]
    got_mean, got_var = got["mean"], got["var"]
    want_mean, want_var = running([us, us, xs, xs, mixed])  # net(u1), net(u2), net(x1), ...
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, want_var, rtol=1e-5, atol=1e-6)
    wrong_mean, _ = running([xs, xs, us, us, mixed])
    assert np.abs(wrong_mean - want_mean).max() > 1e-2
