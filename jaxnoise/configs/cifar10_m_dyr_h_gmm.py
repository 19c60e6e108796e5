"""CIFAR-10, M-DYR-H with a Gaussian mixture noise model (the published comparison)."""

from jaxnoise.configs import default


def get_config():
    """M-DYR-H with GMM (noisy component: the larger mean)."""
    c = default.get_config()
    c.bootstrap.noise_model = "gmm"
    c.bootstrap.noisy_component = "max_mean"
    return c
