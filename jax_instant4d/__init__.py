"""jax_instant4d: instant expressive Gaussian head avatars (JAX / Flax NNX)."""

__version__ = "0.1.0"
