"""Two-component noise models of the per-sample loss: beta (BMM) and Gaussian (GMM) mixtures.

Everything runs on the accelerator, jit-compiled and vectorised over samples, in float32, using
only reductions over the sample axis — so a loss array sharded over devices (or hosts) is fitted
as one global model with no gather. One module per idea, each importing only those before it:
``state`` (the fitted states, the initial parameters, ``initial_state``, ``summary``),
``normalize`` (raw losses to the unit interval, the EM observations, masked fits),
``densities`` (the weighted log-densities, ``density``, ``log_likelihood``), ``posterior``
(``posterior_noisy``, the lookup table), ``bmm`` and ``gmm`` (EM), ``per_class`` (``fit``,
``fit_per_class``). This face hands on their public names.
"""

from jaxnoise.mixture.bmm import fit_bmm
from jaxnoise.mixture.densities import (
    bmm_log_weighted,
    density,
    gmm_log_weighted,
    log_likelihood,
    log_weighted,
)
from jaxnoise.mixture.gmm import Init, fit_gmm
from jaxnoise.mixture.normalize import (
    MIN_SAMPLES,
    Normalize,
    in_fitted_range,
    loss_scale,
    minmax_normalize,
    normalize_losses,
)
from jaxnoise.mixture.per_class import fit, fit_per_class
from jaxnoise.mixture.posterior import posterior_noisy
from jaxnoise.mixture.state import (
    LOOKUP_RESOLUTION,
    BMMState,
    GMMState,
    MixtureState,
    Noisy,
    Pair,
    initial_state,
    is_per_class,
    summary,
)
from jaxnoise.percentiles import multi_sum, order_statistics, percentiles

__all__ = [
    "LOOKUP_RESOLUTION", "MIN_SAMPLES", "BMMState", "GMMState", "Init", "MixtureState", "Noisy",
    "Normalize", "Pair", "bmm_log_weighted", "density", "fit", "fit_bmm", "fit_gmm",
    "fit_per_class", "gmm_log_weighted", "in_fitted_range", "initial_state",
    "is_per_class", "log_likelihood", "log_weighted", "loss_scale", "minmax_normalize",
    "multi_sum", "normalize_losses", "order_statistics", "percentiles", "posterior_noisy",
    "summary",
]  # fmt: skip
