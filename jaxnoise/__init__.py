"""jaxnoise: unsupervised label-noise modeling and loss correction in JAX/Flax."""

__version__ = "0.1.0"
