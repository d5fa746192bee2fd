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


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """A real Instant4D work directory (checkpoint 0, initial parameters) and its tiny dataset.

    Returns ``(workdir, cfg)``; see ``tests/real_checkpoint.py``. Shared by the animate, eval and export
    tests (about 20 s to create)."""
    from real_checkpoint import ensure_data, tiny_real_config, write_checkpoint

    root = tmp_path_factory.mktemp("real_run")
    cfg = tiny_real_config(root / "run", root / "data")
    ensure_data(cfg)
    return write_checkpoint(cfg), cfg
