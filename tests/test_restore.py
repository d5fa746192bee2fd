"""The params-only restore (``jax_instant4d.restore``, ``inference.load_trained``) against the full train
state restore of the trainer: the same arrays, bit for bit, without building optimisers, the
discriminator or loss networks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jax_instant4d.model.split import ModelDef
from jax_instant4d.restore import CheckpointError, restore_model_variables
from jax_instant4d.train.checkpoint import Checkpointer
from jax_instant4d.train.sharding import make_mesh, to_global
from jax_instant4d.train.step import Trainer


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _assert_bitwise_equal(got, want):
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A stand-in model trained two steps with a frozen part and an EMA, checkpointed, and the state the
    trainer restores from that checkpoint."""
    from fakes import FakeInstant4D, global_batch, tiny_config

    tmp = tmp_path_factory.mktemp("restore")
    cfg = tiny_config(tmp, frozen=("motion_encoder",), ema_decay=0.5)
    cfg.train.loss.adversarial_start = 1  # the discriminator is trained too: more to leave out
    trainer = Trainer(cfg, make_mesh((1, 1, 1), jax.devices()[:1]), FakeInstant4D)
    state = trainer.init()
    for step in range(2):
        state, _ = trainer.step(state, to_global(global_batch(step, 8), trainer.mesh), 16)
    ckpt = Checkpointer(tmp / "checkpoints", async_save=False)
    try:
        ckpt.save(2, state, None, cfg, force=True)
        ckpt.wait()
        restored, _ = ckpt.restore(2, trainer.abstract_state)
    finally:
        ckpt.close()
    return cfg, tmp / "checkpoints", jax.device_get(restored)


def _abstract(cfg):
    from fakes import FakeInstant4D

    with jax.set_mesh(make_mesh((1, 1, 1), jax.devices()[:1])):  # its kernel annotation needs a mesh
        mdef = ModelDef(nnx.eval_shape(lambda: FakeInstant4D(cfg, rngs=nnx.Rngs(0))))
    params, _, rest = mdef.abstract()
    return params, rest


def test_params_only_restore_is_bit_identical_to_the_full_restore(fake_run):
    cfg, folder, full = fake_run
    params, rest = _abstract(cfg)
    got, got_rest, used_ema = restore_model_variables(folder, 2, params, rest, ema=False)
    assert not used_ema and "motion_encoder" in got  # trainable and frozen parameters together
    _assert_bitwise_equal(got, _merge(full.params, full.frozen))
    _assert_bitwise_equal(got_rest, full.rest)
    ema, _, used_ema = restore_model_variables(folder, 2, params, rest)
    assert used_ema
    _assert_bitwise_equal(ema, _merge(full.ema, full.frozen))
    # after two steps the EMA differs from the parameters: the right group was read
    assert not np.array_equal(np.asarray(ema["head"]["kernel"]), np.asarray(got["head"]["kernel"]))


def test_params_only_restore_names_a_mismatch(fake_run):
    cfg, folder, _ = fake_run
    params, rest = _abstract(cfg)
    params["head"]["kernel"] = jax.ShapeDtypeStruct((8, 4), params["head"]["kernel"].dtype)
    with pytest.raises(CheckpointError, match=r"does not match .*head/kernel is shape \(8, 3\) .* \(8, 4\)"):
        restore_model_variables(folder, 2, params, rest)


def test_load_trained_matches_the_trainer_restore(real_run):
    """The real model of a work directory: ``load_trained`` (params only) gives the variables the whole
    train state's restore gives."""
    from jax_instant4d.inference import load_trained

    workdir, cfg = real_run
    trained = load_trained(workdir)
    trainer = Trainer(cfg, make_mesh((-1, 1, 1)))
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        state, _ = ckpt.restore(trained.step, trainer.abstract_state)
    finally:
        ckpt.close()
    state = jax.device_get(state)
    mdef = ModelDef(trained.model)
    params, _, rest = mdef.split(trained.model)
    _assert_bitwise_equal(params, _merge(state.params, state.frozen))
    _assert_bitwise_equal(rest, state.rest)
