"""Checks of the training stand-ins themselves (``tests/fakes.py``): the batch contract, the pipeline's
process split and restore, and that the fake model's outputs have the real model's types."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from fakes import (
    EXPR,
    RES,
    FakeInstant4D,
    K,
    fake_example,
    make_fake_data_factory,
    tiny_config,
)
from flax import nnx

from jax_instant4d import render
from jax_instant4d.model.avatar import Avatar, Motion
from jax_instant4d.train.sharding import make_mesh

# --------------------------------------------------------------------------------------------------
# sanity checks of the stand-ins themselves
# --------------------------------------------------------------------------------------------------


def test_fake_example_follows_the_batch_contract():
    ex = fake_example(3)
    assert ex["source"].shape == (RES, RES, 3) and ex["source"].dtype == np.float32
    assert ex["target"].shape == (K, RES, RES, 3) and ex["driving"].shape == (K, RES, RES, 3)
    assert ex["target_w2c"].shape == (K, 4, 4) and ex["target_intrinsics"].shape == (K, 4)
    assert ex["target_eyes"].shape == (K, RES, RES) and ex["expression"].shape == (K, EXPR)
    assert ex["time"].dtype == np.int32 and ex["view"].shape == (K,)
    assert 0.0 <= ex["target"].min() and ex["target"].max() <= 1.0
    np.testing.assert_array_equal(fake_example(3)["target"], ex["target"])  # deterministic
    assert not np.array_equal(fake_example(4)["target"], ex["target"])


def test_fake_pipeline_splits_processes_and_restores():
    cfg = tiny_config("/tmp/unused")
    f = make_fake_data_factory()
    whole = next(f(cfg, "train", 4, 0, 1))["clip"]
    p0 = next(f(cfg, "train", 2, 0, 2))["clip"]
    p1 = next(f(cfg, "train", 2, 1, 2))["clip"]
    assert sorted(np.concatenate([p0, p1]).tolist()) == sorted(whole.tolist())
    it = f(cfg, "train", 2, 0, 1)
    next(it)
    saved = it.get_state()
    expected = next(it)["clip"]
    it2 = f(cfg, "train", 2, 0, 1)
    it2.set_state(saved)
    np.testing.assert_array_equal(next(it2)["clip"], expected)


def test_fake_model_returns_the_real_types():
    with jax.set_mesh(make_mesh((1, 1, 1), jax.devices()[:1])):  # its kernel annotation needs a mesh
        model = FakeInstant4D(tiny_config("/tmp/unused"), rngs=nnx.Rngs(0))
    src = jnp.asarray(np.stack([fake_example(i)["source"] for i in range(2)]))
    avatar = model.encode(src)
    z = model.motion(src)
    assert type(avatar) is Avatar and type(z) is Motion and type(avatar.z_src) is Motion
    assert avatar.f.shape[:2] == avatar.visible.shape == avatar.base.opacities.shape
    cam = render.orbit_camera(jnp.zeros((2, K)), jnp.zeros((2, K)), size=RES)
    zk = jax.tree.map(lambda x: jnp.repeat(x[:, None], K, axis=1), z)
    rgb, _, _, aux = model.animate(avatar, zk, cam, RES, RES)
    assert rgb.shape == (2, K, RES, RES, 3) and set(aux) >= {"delta", "overflow"}
