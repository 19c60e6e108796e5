"""Tests for ``jaxnoise.signals`` against plain numpy loops written here (float64).

(S1) "epoch": the signal is this epoch's losses, unchanged.
(S2) "ema": s_1 = l_1, s_t = m s_(t-1) + (1 - m) l_t.
(S3) "mean_k": the mean of the last min(t, k) epochs' losses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnoise import signals

N = 257  # odd, one jit shape
EPOCHS = 8


@pytest.fixture(scope="module")
def history() -> np.ndarray:
    """(EPOCHS, N) per-sample losses, drifting down over epochs like training losses."""
    r = np.random.default_rng(0)
    base = r.gamma(1.0, 0.5, N)
    return np.stack([base * 0.8**t + r.gamma(1.0, 0.1, N) for t in range(EPOCHS)]).astype(
        np.float32
    )


def _ref_ema(hist: np.ndarray, m: float) -> np.ndarray:
    """(S2) one signal per epoch."""
    out, s = [], None
    for loss in np.asarray(hist, np.float64):
        s = loss.copy() if s is None else m * s + (1 - m) * loss
        out.append(s)
    return np.stack(out)


def _ref_mean_k(hist: np.ndarray, k: int) -> np.ndarray:
    """(S3) one signal per epoch."""
    h = np.asarray(hist, np.float64)
    return np.stack([h[max(0, t + 1 - k) : t + 1].mean(0) for t in range(len(h))])


def _run(kind: str, hist: np.ndarray, *, k: int = 5, momentum: float = 0.9):
    """Signals of every epoch, updating eagerly one epoch at a time."""
    state, out = signals.init(kind, N, k=k), []
    for loss in hist:
        state, sig = signals.update(state, jnp.asarray(loss), kind=kind, momentum=momentum)
        out.append(np.asarray(sig))
    assert int(state.count) == len(hist)
    return np.stack(out), state


def test_epoch_is_identity(history):
    """(S1): the signal is the losses themselves; the state stays trivial."""
    state = signals.init("epoch", N)
    for t, loss in enumerate(history):
        x = jnp.asarray(loss)
        state, sig = signals.update(state, x, kind="epoch")
        assert sig is x
        assert int(state.count) == t + 1 and state.buffer.size == 0


@pytest.mark.parametrize("momentum", [0.9, 0.5, 0.0])
def test_ema_matches_numpy(history, momentum):
    """(S2) over 8 epochs, incl. the bias-free first epoch (signal == l_1 exactly)."""
    got, state = _run("ema", history, momentum=momentum)
    want = _ref_ema(history, momentum)
    np.testing.assert_array_equal(got[0], history[0])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state.buffer), want[-1], rtol=2e-6)
    assert state.buffer.shape == (N,)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_mean_k_matches_numpy(history, k):
    """(S3) over 8 epochs: warm start (fewer than k epochs: their mean), then a full window."""
    got, state = _run("mean_k", history, k=k)
    want = _ref_mean_k(history, k)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[0], history[0])
    assert state.buffer.shape == (N, k)
    if k == 1:
        np.testing.assert_array_equal(got, history)


def test_jit_scan_matches_eager(history):
    """All kinds inside one jitted lax.scan over epochs (state as the carry) == numpy."""

    @functools.partial(jax.jit, static_argnames=("kind", "k"))
    def run(hist, kind, k):
        step = functools.partial(signals.update, kind=kind, momentum=0.9)
        return jax.lax.scan(step, signals.init(kind, N, k=k), hist)

    h = jnp.asarray(history)
    for kind, k, want in (
        ("epoch", 5, np.asarray(history, np.float64)),
        ("ema", 5, _ref_ema(history, 0.9)),
        ("mean_k", 3, _ref_mean_k(history, 3)),
        ("mean_k", 5, _ref_mean_k(history, 5)),
    ):
        state, sig = run(h, kind, k)
        assert int(state.count) == EPOCHS
        np.testing.assert_allclose(np.asarray(sig), want, rtol=2e-6, atol=1e-7)


def test_traced_momentum_under_jit(history):
    """A traced momentum is accepted (it cannot be checked) and used."""
    f = jax.jit(lambda s, x, m: signals.update(s, x, kind="ema", momentum=m))
    s, _ = f(signals.init("ema", N), history[0], 0.5)
    _, sig = f(s, history[1], 0.5)
    np.testing.assert_allclose(np.asarray(sig), _ref_ema(history[:2], 0.5)[1], rtol=1e-6)


def test_nonfinite_losses_propagate(history):
    """A NaN loss stays in that sample's EMA; in mean_k it leaves with the window."""
    h = history.copy()
    h[1, 0] = np.nan
    ema, _ = _run("ema", h)
    assert np.isnan(ema[1:, 0]).all() and np.isfinite(ema[:, 1:]).all()
    mk, _ = _run("mean_k", h, k=3)
    assert np.isnan(mk[1:4, 0]).all() and np.isfinite(mk[4:, 0]).all()
    assert np.isfinite(mk[:, 1:]).all() and np.isfinite(mk[0]).all()
    np.testing.assert_allclose(mk[4:, 0], _ref_mean_k(h, 3)[4:, 0], rtol=1e-6)


def test_bad_arguments_refused(history):
    """One-line ValueErrors naming the config field."""
    with pytest.raises(ValueError, match="loss_signal"):
        signals.init("median", N)
    with pytest.raises(ValueError, match="loss_signal"):
        signals.update(signals.init("ema", N), history[0], kind="median")
    for k in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="signal_k"):
            signals.init("mean_k", N, k=k)
    for m in (1.0, -0.1, 1.5, float("nan"), None):
        with pytest.raises(ValueError, match="signal_momentum"):
            signals.update(signals.init("ema", N), history[0], kind="ema", momentum=m)
    with pytest.raises(ValueError, match="buffer shape"):  # a state of another kind or size
        signals.update(signals.init("ema", N), history[0], kind="mean_k")
    with pytest.raises(ValueError, match="buffer shape"):
        signals.update(signals.init("mean_k", N + 1), history[0], kind="mean_k")
    assert signals.init("mean_k", N, k=np.int64(3)).buffer.shape == (N, 3)
