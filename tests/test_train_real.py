"""The training machinery's contract with the model: a model without δf refused, and the sharded render
(``render(mesh=...)``, ``shard_map`` over 4 host devices) against the unsharded one. The real ``Instant4D``
goes through ``Trainer.step`` in tests/test_motion_teacher.py (frozen pretrained motion weights, the real
pipeline) and through whole training runs in tests/test_train_real_multihost.py."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fakes import FakeInstant4D, global_batch, tiny_config

from jax_instant4d import render
from jax_instant4d.train.sharding import make_mesh, to_global
from jax_instant4d.train.step import Trainer


class _NoDelta(FakeInstant4D):
    """A model that forgot to return δf."""

    def animate(self, *args, **kwargs):
        rgb, alpha, depth, aux = super().animate(*args, **kwargs)
        return rgb, alpha, depth, {k: v for k, v in aux.items() if k != "delta"}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_model_without_delta_f_is_an_error(tmp_path):
    records, log = _Records(), logging.getLogger("jax_instant4d.train.setup")
    level = log.level
    log.addHandler(records)
    log.setLevel(logging.INFO)
    try:
        trainer = Trainer(tiny_config(tmp_path), make_mesh((1, 1, 1), jax.devices()[:1]), _NoDelta)
    finally:
        log.removeHandler(records)
        log.setLevel(level)
    # the trainer's notes go through logging
    assert any("LPIPS loss off" in m for m in records.messages), records.messages
    state = trainer.init()
    with pytest.raises(ValueError, match=r"_NoDelta\.animate returned no 'delta'"):
        trainer.step(state, to_global(global_batch(0, 8), trainer.mesh), 16)


def test_sharded_render_matches_one_device():
    """``render(mesh=...)`` splits the batch over 4 devices (``shard_map``): each device rasterizes its
    own image with the native CPU kernel, and the images equal the unsharded render's."""
    assert len(jax.devices()) >= 4  # conftest: four host CPU devices
    b, n, size = 4, 200, 24
    k = jax.random.split(jax.random.key(0), 5)
    means = jax.random.uniform(k[0], (b, n, 3), minval=-0.4, maxval=0.4)
    scales = jax.random.uniform(k[1], (b, n, 3), minval=0.02, maxval=0.08)
    quats = jax.random.normal(k[2], (b, n, 4))
    quats = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    opac = jax.random.uniform(k[3], (b, n), minval=0.3, maxval=0.9)
    colors = jax.random.uniform(k[4], (b, n, 3))
    cam = render.orbit_camera(jnp.linspace(-0.4, 0.4, b), jnp.zeros(b), size=size)
    mesh = make_mesh((4, 1, 1), jax.devices()[:4])

    def go(mesh_or_none):
        fn = jax.jit(lambda *a: render.render(*a, cam, size, size, 0.0, backend="cpu", mesh=mesh_or_none))
        return jax.device_get(fn(means, scales, quats, opac, colors))

    with jax.set_mesh(mesh):
        sharded = go(mesh)
    single = go(None)
    assert float(np.max(single.alpha)) > 0.5  # the scene is in view
    assert not np.array_equal(single.rgb[0], single.rgb[1])  # the cameras differ
    for name in ("rgb", "alpha", "depth"):
        np.testing.assert_array_equal(getattr(sharded, name), getattr(single, name), err_msg=name)
