"""Pretrained motion-encoder weights: the synthetic teacher's encoder (pretraining, cache, file format),
loading ``model.motion.weights`` strictly, and a frozen encoder that training leaves bit-identical."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import call_while_another_holds_the_lock
from flax import nnx
from real_checkpoint import tiny_real_config

from jax_instant4d.config import ConfigError, apply_overrides
from jax_instant4d.data import motion_teacher, record, synthetic
from jax_instant4d.model.interop import file_sha256, load_motion_weights
from jax_instant4d.model.motion import MotionEncoder, face_crop
from jax_instant4d.train import motion_weights

# The tiny config's motion encoder, pretrained briefly (the tests check plumbing and invariants, not quality).
TINY_TEACHER = dict(pairs=16, validation_pairs=8, steps=4, batch_pairs=4)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return tiny_real_config(root / "work", root / "data", ["model.motion.weights=", "model.motion.freeze=false"])


@pytest.fixture(scope="module")
def teacher(cfg, tmp_path_factory):
    """(encoder, info, weights file) of a tiny pretraining."""
    settings = motion_teacher.settings_for(cfg, **TINY_TEACHER)
    encoder, info = motion_teacher.pretrain(cfg, settings, backend="cpu")
    path = tmp_path_factory.mktemp("weights") / "motion.safetensors"
    motion_teacher.save(encoder, info, path)
    return encoder, info, path


def _codes(encoder, frames):
    return np.asarray(encoder(face_crop(jnp.asarray(frames), encoder.crop_size))[0])


def test_pairs_use_training_identities_only(cfg):
    spec = synthetic.spec_from_config(cfg)
    settings = motion_teacher.settings_for(cfg, **TINY_TEACHER)
    frames, expr, which = motion_teacher.make_pairs(cfg, settings, "train", backend="cpu")
    assert frames.shape == (16, 2, 64, 64, 3) and expr.shape == (16, 14)
    assert set(which.reshape(-1).tolist()) <= set(spec.identities("train"))
    assert np.all(which[:, 0] != which[:, 1])  # each pair: one expression on two identities
    # the same expression on two identities: different pixels (it is not the same image twice)
    assert np.abs(frames[:, 0].astype(int) - frames[:, 1].astype(int)).mean() > 2
    _, _, held = motion_teacher.make_pairs(cfg, settings, "validation", backend="cpu")
    assert set(held.reshape(-1).tolist()) <= set(spec.identities("test"))


def test_extra_identities_join_the_training_pool_and_never_the_held_out_ones(cfg):
    """``extra_identities`` random identities of the generator join the training pairs (indices past the
    dataset's), rendered as other faces; the held-out pairs stay the dataset's held-out identities."""
    spec = synthetic.spec_from_config(cfg)
    settings = motion_teacher.settings_for(cfg, **{**TINY_TEACHER, "pairs": 64, "extra_identities": 6})
    frames, expr, which = motion_teacher.make_pairs(cfg, settings, "train", backend="cpu")
    pool = set(spec.identities("train")) | set(range(spec.num_identities, spec.num_identities + 6))
    used = set(which.reshape(-1).tolist())
    assert used <= pool and len(used - set(spec.identities("train"))) >= 4
    assert not used & set(spec.identities("test")) and np.all(which[:, 0] != which[:, 1])
    # an extra identity is a face of its own: its frames differ from every dataset identity's at one expression
    extra = np.argwhere(which >= spec.num_identities)[0]
    assert frames[tuple(extra)].std() > 10
    _, _, held = motion_teacher.make_pairs(cfg, settings, "validation", backend="cpu")
    assert set(held.reshape(-1).tolist()) <= set(spec.identities("test"))
    # 0 (the default) leaves the cache name as it was before the setting existed
    plain = motion_teacher.settings_for(cfg)
    old = {k: v for k, v in dataclasses.asdict(plain).items() if k != "extra_identities"}
    want = hashlib.sha1(repr((sorted(old.items()), motion_teacher.TEACHER_VERSION)).encode()).hexdigest()[:10]
    assert plain.key == f"motion_encoder-{want}" and settings.key != plain.key
    said = "data.motion_teacher.extra_identities=-1: must be an integer >= 0"
    with pytest.raises(ConfigError, match=re.escape(said)):
        motion_teacher.settings_for(apply_overrides(cfg, ["data.motion_teacher.extra_identities=-1"]))


def test_pretrain_writes_xnemo_layout_that_loads_exactly(cfg, teacher):
    encoder, info, path = teacher
    for key in ("mae", "baseline_mae", "per_parameter_mae", "same_expression_distance_ratio", "history"):
        assert key in info
    assert set(info["per_parameter_mae"]) == set(record.EXPRESSION_NAMES)
    # the held-out curve: its last point is the trained encoder's read-out before the projection
    assert [h["step"] for h in info["history"]][-1] == TINY_TEACHER["steps"]
    assert info["history"][-1]["heldout_mae"] == pytest.approx(info["before_projection"]["mae"], rel=1e-5)
    assert json.loads(path.with_suffix(".json").read_text())["mae"] == pytest.approx(info["mae"])
    fresh = MotionEncoder(cfg.model, rngs=nnx.Rngs(7))
    fresh.eval()
    sha = load_motion_weights(fresh, path)
    assert sha == file_sha256(path) and len(sha) == 64
    frames = np.random.default_rng(0).uniform(size=(3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(_codes(fresh, frames), _codes(encoder, frames))


def test_load_errors_name_file_and_tensor(cfg, teacher, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, _, path = teacher
    enc = MotionEncoder(cfg.model, rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_motion_weights(enc, tmp_path / "missing.safetensors")
    sd = load_file(str(path))
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "final_proj.bias"}, "final_proj.bias"),
        "unexpected": ({**sd, "extra.weight": np.zeros((2,), np.float32)}, "extra.weight"),
        "shape": ({**sd, "final_proj.bias": np.zeros((3,), np.float32)}, "final_proj.bias"),
    }
    for name, (bad, tensor) in cases.items():
        f = tmp_path / f"{name}.safetensors"
        save_file(bad, str(f))
        with pytest.raises(ValueError, match=rf"{f.name}.*{tensor}|{tensor}.*{f.name}"):
            load_motion_weights(enc, f)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_motion_weights(enc, junk)


def test_freeze_needs_weights(cfg):
    bad = apply_overrides(cfg, ["model.motion.freeze=true", "model.motion.weights="])
    with pytest.raises(ConfigError, match="model.motion.weights"):
        motion_weights.prepare(bad)


def test_pretraining_settings_are_config_keys_whose_defaults_keep_the_cache_name(cfg):
    """``data.motion_teacher.*`` feed the settings (and so the cache file); their defaults are the settings'
    defaults, so a teacher cached before the keys existed keeps its name."""
    import dataclasses

    settings = motion_teacher.settings_for(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(settings) if f.default is not dataclasses.MISSING}
    assert set(cfg.data.motion_teacher) == set(defaults)
    assert settings == dataclasses.replace(settings, **defaults)
    more = apply_overrides(cfg, ["data.motion_teacher.pairs=4096", "data.motion_teacher.learning_rate=0.001"])
    s2 = motion_teacher.settings_for(more)
    assert (s2.pairs, s2.learning_rate, s2.steps) == (4096, 0.001, settings.steps)
    assert motion_teacher.cache_path(more) != motion_teacher.cache_path(cfg)
    assert motion_teacher.settings_for(more, pairs=16).pairs == 16  # explicit overrides come last
    # model.motion keys that do not change the pretrained encoder keep the cache name; an architecture key does not
    # ... nor does a dataset key that adds renders the teacher never reads (the dataset's name changes)
    for same in ("model.motion.oracle=true", "model.motion.freeze=true", "model.motion.weights=teacher",
                 "data.undriven_views=true"):
        assert motion_teacher.cache_path(apply_overrides(cfg, [same])) == motion_teacher.cache_path(cfg), same
    assert motion_teacher.cache_path(apply_overrides(cfg, ["model.motion.bbox_dim=32"])) != \
        motion_teacher.cache_path(cfg)
    for bad, said in (("steps=0", "data.motion_teacher.steps=0: must be an integer >= 1"),
                      ("learning_rate=0.0", "data.motion_teacher.learning_rate=0.0: must be a finite number > 0"),
                      ("invariance=-0.5", "data.motion_teacher.invariance=-0.5: must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            motion_teacher.settings_for(apply_overrides(cfg, [f"data.motion_teacher.{bad}"]))


def test_prepare_records_hash_and_refuses_another_file(cfg, teacher):
    _, _, path = teacher
    run = motion_weights.prepare(apply_overrides(cfg, [f"model.motion.weights={path}", "model.motion.freeze=true"]))
    assert run.model.motion.weights_sha256 == file_sha256(path)
    with pytest.raises(ConfigError, match="weights_sha256"):
        motion_weights.prepare(apply_overrides(cfg, [f"model.motion.weights={path}", "model.motion.weights_sha256="
                                                     + "0" * 64]))


def test_teacher_resolves_to_the_cache(cfg, teacher):
    """``weights=teacher`` names the cache file of the config's default settings; a file placed there is
    used as is (nothing is pretrained)."""
    encoder, info, _ = teacher
    run = apply_overrides(cfg, ["model.motion.weights=teacher", "model.motion.freeze=true"])
    target = motion_teacher.cache_path(run)
    assert target.parent.name == "motion_cache" and target.parent.parent == motion_teacher.Path(cfg.data.data_dir)
    motion_teacher.save(encoder, info, target)
    path, got = motion_teacher.ensure(run)
    assert path == target and got["cached"]
    assert motion_weights.prepare(run).model.motion.weights_sha256 == file_sha256(target)
    other = apply_overrides(run, ["model.motion.code_dim=256"])  # another architecture: another file
    assert motion_teacher.cache_path(other) != target


def test_a_second_process_waits_for_the_teacher_being_pretrained_and_loads_it(cfg, teacher, tmp_path, caplog,
                                                                             monkeypatch):
    """``ensure`` while another process holds the cache entry's lock (pretraining it): it waits, pretrains
    nothing, and returns the file the holder saved (``sweep launch --parallel N`` on a fresh data dir)."""
    encoder, info, _ = teacher
    run = apply_overrides(cfg, [f"data.data_dir={tmp_path}", "model.motion.weights=teacher",
                                "model.motion.freeze=true"])
    target = motion_teacher.cache_path(run)
    pretrained = []
    monkeypatch.setattr(motion_teacher, "pretrain", lambda *a, **k: pretrained.append(a) or (encoder, info))
    path, out = call_while_another_holds_the_lock(target, lambda: motion_teacher.ensure(run, backend="cpu"),
                                                  lambda: motion_teacher.save(encoder, info, target), caplog)
    assert path == target and out["cached"] and out["mae"] == pytest.approx(info["mae"])
    assert pretrained == []


@pytest.fixture(scope="module")
def frozen_trainer(cfg, teacher):
    """(run config, mesh, Trainer) of the real tiny model with the teacher file's encoder frozen and every loss
    of the step on but the networks' (δf, the motion term, the structural term); the dataset made. Built once:
    the two tests below share its compiled initialisation."""
    from jax_instant4d import data
    from jax_instant4d.train.sharding import make_mesh
    from jax_instant4d.train.step import Trainer

    _, _, path = teacher
    run = motion_weights.prepare(apply_overrides(cfg, [f"model.motion.weights={path}", "model.motion.freeze=true",
                                                       "train.loss.delta_f=0.001", "train.loss.motion=0.01",
                                                       "train.loss.ssim=0.25", "train.warmup_steps=0"]))
    data.ensure_dataset(run, progress=False)
    mesh = make_mesh(run.train.mesh)
    return run, mesh, Trainer(run, mesh)


def test_real_model_trains_through_trainer_step_and_its_frozen_encoder_stays_bit_identical(teacher, frozen_trainer):
    """The real Instant4D (tiny sizes) and the real data pipeline through Trainer.step, with frozen
    pretrained motion weights (the paper's setting): the motion encoder's variables equal the file's and its
    outputs do not change, while the rest of the model trains (gradients reach the encoder, Φ and the fusion
    network) and the loss is the weighted sum of its terms, δf's penalty and the structural term included. (The
    real model with a trainable motion encoder goes through training in tests/test_train_real_multihost.py.)"""
    from jax_instant4d import data
    from jax_instant4d.train.setup import LOSS_NAMES
    from jax_instant4d.train.sharding import to_global

    encoder, _, _ = teacher
    run, mesh, trainer = frozen_trainer
    state = trainer.init()
    assert "motion_encoder" in state.frozen and "motion_encoder" not in state.params
    want = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    got = jax.device_get(state.frozen["motion_encoder"])
    for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves_with_path(got),
                              strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))

    def codes(st):
        model = trainer.mdef.merge(st.params, st.frozen, st.rest, jax.random.key(0))
        return np.asarray(model.motion(frames).code)

    frames = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 64, 64, 3)), jnp.float32)
    before_codes = codes(state)
    before_params = jax.device_get(state.params)
    it = data.make_pipeline(run, "train", int(run.train.batch_size))
    w = run.train.loss
    weights = {n: float(w[n]) for n in LOSS_NAMES}
    if not (w.adversarial > 0 and w.adversarial_start >= 0):
        weights["adversarial"] = 0.0
    for i in range(2):
        state, m = trainer.step(state, to_global(next(it), mesh), int(run.model.image_size))
        m = jax.tree.map(np.asarray, jax.device_get(m))
        assert np.isfinite(m["loss"]) and int(m["nonfinite"]) == 0 and int(state.step) == i + 1
        np.testing.assert_allclose(m["loss"], sum(weights[n] * float(m[f"loss_{n}"]) for n in LOSS_NAMES), rtol=1e-6)
        assert m["loss_delta_f"] > 0 and m["loss_l1"] > 0 and m["loss_motion"] > 0 and 5.0 < m["psnr"] < 60.0
        assert 0.0 < m["loss_ssim"] < 2.0
        assert float(m["lr"]) == pytest.approx(float(run.train.learning_rate))
    np.testing.assert_array_equal(codes(state), before_codes)
    after = jax.device_get(state.params)
    assert set(after) == set(before_params)
    for part in ("encoder", "decoder", "fusion"):  # the avatar itself trains: the encoder, Φ and the fusion network
        pairs = zip(jax.tree.leaves(before_params[part]), jax.tree.leaves(after[part]), strict=True)
        assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs), part


def test_motion_loss_is_the_code_distance_of_render_and_target_read_by_the_teacher_file(teacher, frozen_trainer):
    """``train.loss.motion``: the term equals the squared distance between the codes' changes from the source
    view to each driven view, render against target (``motion_relative``, the default), or between the codes of
    each driven render and of its teacher frame (``motion_relative=false``), read by a second path (the
    teacher's encoder object that was saved to the file, fed as ``motion_teacher.encoder_codes`` feeds
    frames); its gradient reaches every render, source view included (and from there the avatar, whose
    render gradients the rasterizer and model tests check), through the frozen encoder's input, never its
    weights; off (0) the forward pass computes no codes. A trainable encoder is an error. Also the structural term
    (``train.loss.ssim``) on the same renders. (The term inside the train step, with
    the avatar's parameters moving: the test above.)"""
    from jax_instant4d import data
    from jax_instant4d.train.forward import forward, loss_terms, motion_code_pair, motion_consistency
    from jax_instant4d.train.loop import check_config
    from jax_instant4d.train.sharding import to_global

    encoder, _, _ = teacher
    run, mesh, trainer = frozen_trainer  # the forward pass below is asked for the codes whatever the weights
    state = trainer.init()
    batch = to_global(next(data.make_pipeline(run, "train", int(run.train.batch_size))), mesh)
    size = int(run.model.image_size)

    def model_of(frozen):
        return trainer.mdef.merge(state.params, frozen, state.rest, jax.random.key(0))

    def term_of_renders(rgb, target, frozen):
        return motion_consistency(*motion_code_pair(model_of(frozen), rgb, target, size))

    with jax.set_mesh(mesh):
        out = jax.jit(lambda f: forward(model_of(f), batch, size, size, mesh, motion_codes=True))(state.frozen)
        off = jax.eval_shape(lambda f: forward(model_of(f), batch, size, size, mesh), state.frozen)  # traced only
        d_rgb, d_target, d_frozen = jax.jit(jax.grad(term_of_renders, argnums=(0, 1, 2)))(
            out.rgb, out.target, state.frozen)
    value = loss_terms(out, batch, {})["motion"]
    absolute = loss_terms(out, batch, {}, motion_relative=False)["motion"]
    assert off.codes is None and float(loss_terms(out._replace(codes=None), batch, {})["motion"]) == 0.0
    b, m = out.rgb.shape[:2]
    # the structural term (train.loss.ssim) on the same renders: 1 - SSIM over all M views, by the evaluation
    # tests' NumPy SSIM; 0 unless asked for
    from test_eval import _np_ssim

    rgb, tgt = (np.asarray(x, np.float64).reshape(b * m, size, size, 3) for x in (out.rgb, out.target))
    np.testing.assert_allclose(float(loss_terms(out, batch, {}, structural=True)["ssim"]),
                               1.0 - np.mean([_np_ssim(rgb[i], tgt[i]) for i in range(b * m)]), atol=2e-5)
    assert float(loss_terms(out, batch, {})["ssim"]) == 0.0
    encoder.eval()

    def read(x):  # [B, M, r, r, 3] -> codes [B, M, D], by the teacher's own encoder object
        return np.asarray(motion_teacher.encoder_codes(encoder, jnp.asarray(x).reshape(b * m, size, size, 3),
                                                       size), np.float64).reshape(b, m, -1)

    c_render, c_target = read(out.rgb), read(out.target)
    want_abs = np.sum(np.square(c_render[:, 1:] - c_target[:, 1:]), axis=-1).mean()
    change = lambda c: c[:, 1:] - c[:, :1]
    want_rel = np.sum(np.square(change(c_render) - change(c_target)), axis=-1).mean()
    assert float(value) > 0.01 and float(absolute) > 0.01 and abs(want_rel - want_abs) > 1e-3 * want_abs
    np.testing.assert_allclose(float(value), want_rel, rtol=1e-4)
    np.testing.assert_allclose(float(absolute), want_abs, rtol=1e-4)
    # the gradient reaches each render (the source view's too: the relative form reads its code), none reaches
    # the targets or the frozen encoder's weights
    d_rgb = np.asarray(d_rgb)
    assert all(np.abs(d_rgb[:, v]).max() > 0 for v in range(m))
    assert not np.any(np.asarray(d_target))
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(d_frozen["motion_encoder"]))
    with pytest.raises(ConfigError, match=r"train\.loss\.motion.*model\.motion\.freeze=true"):
        check_config(apply_overrides(run, ["model.motion.freeze=false"]))
    with pytest.raises(ConfigError, match=r"train\.loss\.motion=-1\.0.*>= 0"):
        check_config(apply_overrides(run, ["train.loss.motion=-1.0"]))


def test_readout_projection_keeps_predictions_and_drops_the_rest(cfg):
    """After the projection the code (less the constant token positions) lies in the span of the read-out's
    weights, and the read-out predicts exactly what it predicted before."""
    model = motion_teacher._Pretrain(motion_teacher._encoder_config(cfg), rngs=nnx.Rngs(3))
    model.eval()
    frames = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 64, 64, 3)), jnp.float32)
    before = np.asarray(model.codes(frames, 64))
    pred_before = np.asarray(model.readout(jnp.asarray(before)))
    motion_teacher.project_to_readout(model)
    after = np.asarray(model.codes(frames, 64))
    np.testing.assert_allclose(np.asarray(model.readout(jnp.asarray(after))), pred_before, rtol=1e-4, atol=1e-4)
    w = np.asarray(model.readout.kernel[...], np.float64)
    pos = model.encoder.token_positions().reshape(-1)
    residual = (after - pos) - (after - pos) @ w @ np.linalg.pinv(w)
    assert np.abs(residual).max() < 1e-3 * np.abs(after - pos).max()
    assert np.abs(before - after).max() > 1e-2  # it did remove something


def test_missing_weights_file_is_a_config_error(cfg, tmp_path):
    run = apply_overrides(cfg, [f"model.motion.weights={tmp_path / 'nope.safetensors'}", "model.motion.freeze=true"])
    with pytest.raises(ConfigError, match="nope.safetensors"):
        motion_weights.prepare(run)


def test_scale_code_centres_and_spreads_the_code(cfg, teacher):
    """After scale_code the code (less the token positions) is centred over the frames it was fitted on and
    varies by about CODE_SPREAD per read-out direction; distances between codes scale uniformly."""
    encoder, _, path = teacher
    settings = motion_teacher.settings_for(cfg, **TINY_TEACHER)
    frames, _, _ = motion_teacher.make_pairs(cfg, settings, "train", backend="cpu")
    enc = MotionEncoder(cfg.model, rngs=nnx.Rngs(0))
    enc.eval()
    load_motion_weights(enc, path)
    flat = frames.reshape(-1, 64, 64, 3).astype(np.float32) / 255.0
    before = _codes(enc, flat)
    got = motion_teacher.scale_code(enc, frames, 64)
    after = _codes(enc, flat) - enc.token_positions().reshape(-1)
    np.testing.assert_allclose(after.mean(0), 0.0, atol=1e-3 * got["spread_after"])
    assert np.sqrt(np.sum(after.var(0))) == pytest.approx(motion_teacher.CODE_SPREAD * np.sqrt(14), rel=1e-3)
    d_before = np.linalg.norm(before[0] - before[1])
    d_after = np.linalg.norm(after[0] - after[1])
    assert d_after == pytest.approx(d_before * got["scale"], rel=1e-3)
