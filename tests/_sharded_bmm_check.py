"""Helper for tests/test_mixture.py::test_sharded_fit_matches_single_device.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu. Fits the BMM
and GMM on one device and on the same losses sharded over an 8-device 1-D mesh
(``jax.make_mesh((8,), ('data',))``, ``P('data')``); checks that the parameters agree
(rtol 1e-5) and that the exact and lookup posteriors agree (rtol 1e-5, atol 1e-6). Every
check runs; failures are printed one per line and the exit code is 1. Prints OK otherwise.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np


def main() -> int:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxnoise import mixture

    assert jax.device_count() == 8, jax.devices()
    n = 8 * 2048
    r = np.random.default_rng(0)
    k = int(0.7 * n)
    losses = np.concatenate([r.gamma(1.0, 0.3, k), np.clip(r.normal(2.3, 0.4, n - k), 0, None)])
    losses = r.permutation(losses).astype(np.float32)

    mesh = jax.make_mesh((8,), ("data",))
    sharded = jax.device_put(losses, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    single = jax.device_put(losses, jax.devices()[0])

    failures: list[str] = []

    def check(label, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - report every failing check
            msg = str(e).strip().replace("\n", " | ")
            failures.append(f"{label}: {type(e).__name__}: {msg[:600]}")

    def close(a, b, rtol, atol):
        np.testing.assert_allclose(
            np.asarray(b, np.float64), np.asarray(a, np.float64), rtol=rtol, atol=atol
        )

    def posterior_pair(s1, s8, lookup):
        p1 = mixture.posterior_noisy(s1, single, lookup=lookup)
        p8 = mixture.posterior_noisy(s8, sharded, lookup=lookup)
        assert np.shape(p8) == (n,)
        close(p1, p8, 1e-5, 1e-6)

    for fit, names in (
        (mixture.fit_bmm, ("alphas", "betas", "weights", "lo", "hi")),
        (mixture.fit_gmm, ("means", "variances", "weights", "lo", "hi")),
    ):
        fname = fit.__name__
        s1 = fit(single)
        s8 = fit(sharded)
        for name in names:
            check(f"{fname}.{name}", close, getattr(s1, name), getattr(s8, name), 1e-5, 0)
        check(f"{fname}.lookup", close, s1.lookup, s8.lookup, 1e-5, 1e-6)
        check(
            f"{fname}.noisy_component",
            np.testing.assert_equal,
            int(s8.noisy_component),
            int(s1.noisy_component),
        )
        for lookup in (False, True):
            check(
                f"{fname} posterior_noisy(sharded losses, lookup={lookup})",
                posterior_pair,
                s1,
                s8,
                lookup,
            )

    if failures:
        print("\n".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(2)
