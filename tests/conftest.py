"""Shared test set-up: four host CPU devices (for shard_map / mesh tests) and small helpers."""

import jax
import numpy as np
import pytest

# Must run before any JAX backend is initialised: every test process sees 4 CPU devices.
jax.config.update("jax_num_cpu_devices", 4)


def has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
