"""One assembled train step of M-DYR-H and of MD-DYR-SH against eq. 8 written here in numpy.

A linear head on small feature vectors makes the network's output computable by hand
(h = x W + b); the batch posteriors come from the stored beta mixture (scipy's beta pdf), the
targets from eq. 8, the pair weights and mixing as each method's published code does. A step
that takes its posterior from the wrong losses, the wrong component, the wrong pair or the wrong
weight gives another loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from configs import features_m_dyr_h
from jaxnoise import data as data_lib
from jaxnoise import mixture
from jaxnoise.bootstrap import loop as bootstrap_loop
from jaxnoise.bootstrap import schedule as bootstrap_schedule
from jaxnoise.bootstrap import step as step_lib

N, D, C, B = 64, 6, 4, 16


def _setup(method: str, epoch: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    ds = data_lib.Dataset(x, y, x[:8], y[:8], [str(i) for i in range(C)], "toy")
    c = features_m_dyr_h.get_config()
    c.model, c.method, c.bootstrap.batch_size = "linear", method, B
    c.bootstrap.posterior_lookup = False  # the exact posterior, written below with scipy
    c.epochs, c.lr_milestones, c.bootstrap.start_epoch = 10, (5,), 2
    b = c.bootstrap
    b.dynamic_start_epoch, b.soft_to_hard_start_epoch, b.temperature_epochs = 2, 3, 4
    pieces, tree = bootstrap_loop.build(c, ds, ds.mean_std())
    graphdef, tx, state = pieces.graphdef, pieces.tx, tree["state"]
    # A mixture fitted to bimodal losses on the scale of this head's cross-entropy.
    fit_losses = np.concatenate([rng.gamma(4.0, 0.25, 300), rng.gamma(9.0, 0.35, 200)])
    state["mixture"] = mixture.fit_bmm(jnp.asarray(fit_losses, jnp.float32))
    return c, graphdef, tx, state, x[:B], y[:B], bootstrap_schedule.phase_for_epoch(c, epoch)


def _linear(state):
    leaves = {
        jax.tree_util.keystr(p): np.asarray(v, np.float64)
        for p, v in jax.tree_util.tree_leaves_with_path(state["params"])
    }
    (w,) = [v for k, v in leaves.items() if "kernel" in k]
    (b,) = [v for k, v in leaves.items() if "bias" in k]
    return w, b


def _log_softmax(h):
    return h - special.logsumexp(h, axis=1, keepdims=True)


def _posterior(m, losses):
    """p(noisy | loss) of the stored BMM, from the paper's eqs. 4-6 and its normalisation."""
    lo, hi = float(m.lo), float(m.hi)
    u = (losses - lo) / (hi - lo + 1e-6)
    u = np.where(u >= 1.0, 1.0 - 1e-3, np.where(u <= 0.0, 1e-3, u))
    a, bb, pi = (np.asarray(v, np.float64) for v in (m.alphas, m.betas, m.weights))
    lik = [pi[k] * stats.beta.pdf(u, a[k], bb[k]) for k in range(2)]
    k = int(m.noisy_component)
    return np.clip(lik[k] / (lik[0] + lik[1] + 1e-12), 1e-4, 1.0 - 1e-4)


def _reference(method, state, x, y, pair, lam, temperature, reg_weight):
    """Eq. 8 (+ the class-balance regulariser) for one batch, in float64."""
    w_, b_ = _linear(state)
    x = x.astype(np.float64)
    h_clean = x @ w_ + b_
    ce = -_log_softmax(h_clean)[np.arange(B), y]
    w = _posterior(state["mixture"], ce)  # batch posteriors from the clean batch's losses
    onehot = np.eye(C)[y]
    if method == "M-DYR-H":
        z = np.eye(C)[np.argmax(h_clean, 1)]  # hard bootstrapping
        lam_p = np.full(B, lam)  # static mixup; the pair weighted by delta
        weight_p = lam_p
    else:
        e = np.exp((h_clean - h_clean.max(1, keepdims=True)) / temperature)
        z = e / e.sum(1, keepdims=True)  # soft bootstrapping at temperature T
        lam_p = (1 - w) / ((1 - w) + (1 - w[pair]))  # dynamic mixup from the clean posteriors
        weight_p = np.full(B, 0.5)  # the original weights the two targets by 0.5
    t = (1 - w)[:, None] * onehot + w[:, None] * z
    x_mix = lam_p[:, None] * x + (1 - lam_p[:, None]) * x[pair]
    h = x_mix @ w_ + b_
    logp = _log_softmax(h)
    loss = np.mean(-(weight_p * (t * logp).sum(1) + (1 - weight_p) * (t[pair] * logp).sum(1)))
    p = np.exp(logp).mean(0)
    return loss + reg_weight * np.sum((1 / C) * np.log((1 / C) / p))


@pytest.mark.parametrize(("method", "epoch"), [("M-DYR-H", 3), ("MD-DYR-SH", 5)])
def test_assembled_step_loss_is_eq_8(method, epoch):
    c, graphdef, tx, state, x, y, phase = _setup(method, epoch)
    assert phase.bootstrap == ("hard" if method == "M-DYR-H" else "soft")
    rng = np.random.default_rng(1)
    pair = rng.permutation(B).astype(np.int32)
    lam = np.float32(0.37)
    temperature = np.float32(bootstrap_schedule.temperature_for_epoch(c, epoch))
    draws = step_lib.StepDraws(
        pair=jnp.asarray(pair),
        lam=jnp.asarray(lam),
        pair_weight=jnp.float32(0.5),
        key=jax.random.key(0),
    )
    update = jax.jit(step_lib.make_update(graphdef, tx, c, phase, C))
    want = _reference(
        method, state, x, y, pair, float(lam), float(temperature), c.bootstrap.reg_weight
    )
    _, loss = update(state, jnp.asarray(x), jnp.asarray(y), None, draws, temperature, c.lr)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    # The reference is sensitive to the wiring: the complement posterior gives another loss.
    m = state["mixture"]
    flipped = dict(state, mixture=m.replace(noisy_component=1 - m.noisy_component))
    assert (
        abs(
            _reference(
                method, flipped, x, y, pair, float(lam), float(temperature), c.bootstrap.reg_weight
            )
            - want
        )
        > 1e-3
    )
