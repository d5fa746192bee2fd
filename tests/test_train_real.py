"""The real model in the training machinery: ``Instant4D`` (tiny sizes) through ``Trainer.step``, a model
without δf refused, and the sharded render (``render(mesh=...)``, ``shard_map`` over 4 host devices)
against the unsharded one."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fakes import FakeInstant4D, fake_example, global_batch, tiny_config
from real_checkpoint import tiny_real_config

from jax_instant4d import render
from jax_instant4d.train.setup import LOSS_NAMES
from jax_instant4d.train.sharding import make_mesh, to_global
from jax_instant4d.train.step import Trainer


def _real_batch(cfg, batch_size: int) -> dict[str, np.ndarray]:
    """The stand-in batch contract at the real config's resolution and targets per example."""
    res, k = int(cfg.data.resolution), int(cfg.data.targets_per_example)
    rows = [fake_example(i, res, k) for i in range(batch_size)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def test_real_model_trains_through_trainer_step(tmp_path):
    cfg = tiny_real_config(tmp_path / "run", tmp_path / "data", ["train.mesh=(1,1,1)", "train.warmup_steps=0"])
    trainer = Trainer(cfg, make_mesh((1, 1, 1), jax.devices()[:1]))
    state = trainer.init()
    before = jax.tree.map(np.asarray, jax.device_get(state.params))
    batch = to_global(_real_batch(cfg, int(cfg.train.batch_size)), trainer.mesh)
    state, m = trainer.step(state, batch, int(cfg.data.resolution))
    m = jax.tree.map(np.asarray, jax.device_get(m))
    after = jax.tree.map(np.asarray, jax.device_get(state.params))
    assert np.isfinite(m["loss"]) and int(m["nonfinite"]) == 0 and int(state.step) == 1
    # the loss is the weighted sum of its terms (the real model returns δf: its penalty is positive)
    w = cfg.train.loss
    weights = {n: float(w[n]) for n in LOSS_NAMES}
    weights["adversarial"] = 0.0 if not (w.adversarial > 0 and w.adversarial_start >= 0) else weights["adversarial"]
    total = sum(weights[n] * float(m[f"loss_{n}"]) for n in LOSS_NAMES)
    np.testing.assert_allclose(m["loss"], total, rtol=1e-6)
    assert m["loss_delta_f"] > 0 and m["loss_l1"] > 0 and 5.0 < m["psnr"] < 60.0
    assert float(m["lr"]) == pytest.approx(float(cfg.train.learning_rate))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)]
    assert any(changed) and set(before) == set(after)
    for part in ("encoder", "decoder", "fusion"):  # gradients reach the encoder, Φ and the fusion network
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[part]),
                                                          jax.tree.leaves(after[part]), strict=True)), part


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
