"""Triplane encoder, motion encoder and their PyTorch mirrors (jax_instant4d/model/{encoder,motion}.py,
jax_instant4d/export/torch_encoder.py).

Concrete models are built abstractly (``nnx.eval_shape``) and filled with NumPy random values: eager
random initialisation compiles one kernel per parameter shape and is slow on a shared CPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_instant4d.config import apply_overrides, get_config
from jax_instant4d.export import torch_encoder as te
from jax_instant4d.model import interop
from jax_instant4d.model.encoder import TriplaneEncoder, count_params
from jax_instant4d.model.interop import load_torch_motion_weights
from jax_instant4d.model.layers import pixel_shuffle, resize_bilinear
from jax_instant4d.model.motion import MotionEncoder, face_crop, sincos_2d, trainable_filter

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
REL_TOL = 1e-4  # Flax vs PyTorch: max |diff| <= REL_TOL * max |reference|

# Regression values (the PyTorch mirrors, built independently, give the same counts: see below).
FULL_ENCODER_PARAMS = 54_030_976
FULL_MOTION_PARAMS = 61_665_393


@pytest.fixture(scope="module")
def small():
    # the module itself, trainable (small.py's default is the teacher's pretrained encoder, frozen)
    return get_config("configs/small.py", ["model.motion.weights=", "model.motion.freeze=false"])


@pytest.fixture(scope="module")
def full():
    return get_config("configs/base.py")


_ABSTRACT = {}


def abstract(cls, model_cfg):
    """An abstract module (shapes only); tracing the constructor is cached per class and config."""
    key = (cls, model_cfg.to_json())
    if key not in _ABSTRACT:
        _ABSTRACT[key] = nnx.eval_shape(lambda: cls(model_cfg, rngs=nnx.Rngs(0)))
    return nnx.clone(_ABSTRACT[key])


def filled(cls, model_cfg, seed=0):
    """A concrete module with random values of sensible scale in every parameter and BN statistic."""
    module = abstract(cls, model_cfg)
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(module):
        if not isinstance(var, (nnx.Param, nnx.BatchStat)):
            continue
        shape, leaf = var.shape, path[-1]
        if leaf == "kernel":
            value = rng.normal(0.0, 1.0 / math.sqrt(math.prod(shape[:-1])), shape)
        elif leaf == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif leaf == "var":
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = 0.05 * rng.normal(size=shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    return module


def call_shape(module, *inputs):
    graphdef, state = nnx.split(module)
    return jax.eval_shape(lambda s, *x: nnx.merge(graphdef, s)(*x), state, *inputs)


# --------------------------------------------------------------------------------------------------
# Shapes, dtypes, parameter counts (abstract: no full-size compute)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["small", "full"])
def test_encoder_shapes(which, small, full):
    cfg = small if which == "small" else full
    r, p, c = cfg.model.image_size, cfg.model.encoder.plane_res, cfg.model.encoder.plane_channels
    out = call_shape(abstract(TriplaneEncoder, cfg.model), jax.ShapeDtypeStruct((2, r, r, 3), jnp.float32))
    assert out.shape == (2, 3, p, p, c) and out.dtype == jnp.float32
    if which == "full":
        assert out.shape == (2, 3, 256, 256, 96)


@pytest.mark.parametrize("which", ["small", "full"])
def test_motion_shapes(which, small, full):
    cfg = small if which == "small" else full
    s = cfg.model.motion.crop_size
    code, tokens = call_shape(abstract(MotionEncoder, cfg.model), jax.ShapeDtypeStruct((3, s, s, 3), jnp.float32))
    assert code.shape == (3, 512) and code.dtype == jnp.float32
    assert tokens.shape == (3, 32, 16) and tokens.dtype == jnp.float32
    if which == "full":
        assert s == 224


def test_parameter_counts(small, full):
    enc_full = count_params(abstract(TriplaneEncoder, full.model))
    mot_full = count_params(abstract(MotionEncoder, full.model))
    enc_small = count_params(abstract(TriplaneEncoder, small.model))
    mot_small = count_params(abstract(MotionEncoder, small.model))
    print(f"\nparameters: encoder full {enc_full:,} small {enc_small:,}; motion full {mot_full:,} small {mot_small:,}")
    assert enc_full == FULL_ENCODER_PARAMS and mot_full == FULL_MOTION_PARAMS
    assert 0.4e9 < 4 * (enc_full + mot_full) < 0.5e9  # the paper's ~0.4 GB model (float32)
    assert enc_small < enc_full / 20 and mot_small < mot_full / 20


def test_bad_plane_res_names_the_key(small):
    cfg = apply_overrides(small, ["model.encoder.plane_res=64"])
    with pytest.raises(ValueError, match="model.encoder.plane_res"):
        abstract(TriplaneEncoder, cfg.model)


# --------------------------------------------------------------------------------------------------
# Small building blocks against their PyTorch definitions
# --------------------------------------------------------------------------------------------------


def test_pixel_shuffle_layout():
    x = np.arange(2 * 3 * 5 * 8, dtype=np.float32).reshape(2, 3, 5, 8)  # NHWC, 8 = 2 channels x 2 x 2
    y = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    assert y.shape == (2, 6, 10, 2)
    for c, i, j in [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1)]:
        np.testing.assert_array_equal(y[:, i::2, j::2, c], x[..., c * 4 + i * 2 + j])


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_bilinear_linear_ramp(align_corners):
    h = 7
    x = jnp.broadcast_to(jnp.arange(h, dtype=jnp.float32)[None, :, None, None], (1, h, 3, 1))
    y = np.asarray(resize_bilinear(x, (2 * h, 3), align_corners=align_corners))[0, :, 0, 0]
    dst = np.arange(2 * h)
    want = dst * (h - 1) / (2 * h - 1) if align_corners else np.clip((dst + 0.5) / 2 - 0.5, 0, h - 1)
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_sincos_2d_layout():
    emb = sincos_2d(8, 3, 4, base_size=3)  # 3 rows x 4 columns; columns encoded first
    assert emb.shape == (12, 8)
    token = 1 * 4 + 2  # row 1, column 2; positions scaled by base_size / grid: column 2 -> 1.5
    np.testing.assert_allclose(emb[token, :4], [np.sin(1.5), np.sin(1.5e-2), np.cos(1.5), np.cos(1.5e-2)], atol=1e-6)
    np.testing.assert_allclose(emb[token, 4:], [np.sin(1.0), np.sin(1e-2), np.cos(1.0), np.cos(1e-2)], atol=1e-6)


def test_face_crop_box():
    r, s = 64, 32
    ys, xs = np.meshgrid(np.arange(r) + 0.5, np.arange(r) + 0.5, indexing="ij")
    img = jnp.asarray(np.stack([ys / r, xs / r, np.zeros_like(ys)], -1)[None], jnp.float32)  # pixel centres / r
    crop = np.asarray(face_crop(img, s))
    assert crop.shape == (1, s, s, 3)
    top, bottom, left, right = 35 / 256, 223 / 256, 32 / 256, 220 / 256
    centres = (np.arange(s) + 0.5) / s
    # a linear ramp is reproduced up to the antialiasing kernel's sampling (< 1/4 pixel of a 256^2 frame)
    np.testing.assert_allclose(crop[0, 4:-4, s // 2, 0], top + centres[4:-4] * (bottom - top), atol=1e-3)
    np.testing.assert_allclose(crop[0, s // 2, 4:-4, 1], left + centres[4:-4] * (right - left), atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Gradients, freezing
# --------------------------------------------------------------------------------------------------


def _assert_all_grads_nonzero(grads):
    flat = nnx.to_flat_state(grads)
    assert len(flat) > 0
    dead = [("/".join(map(str, path))) for path, g in flat if not np.any(np.asarray(g[...]) != 0)]
    assert not dead, f"no gradient reaches {dead}"


# One compiled value-and-gradient per network (small config) serves the gradient test and the
# comparison with the PyTorch mirror: compiling these networks dominates the file's runtime.


@pytest.fixture(scope="module")
def encoder_run(small):
    model = filled(TriplaneEncoder, small.model)
    r = small.model.image_size
    x = np.random.default_rng(0).uniform(size=(2, r, r, 3)).astype(np.float32)
    w = jax.random.normal(jax.random.key(1), (2, 3, r // 2, r // 2, int(small.model.encoder.plane_channels)))

    def loss(m):
        out = m(jnp.asarray(x))
        return jnp.sum(out * w), out

    (_, out), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return model, x, np.asarray(out), grads


@pytest.fixture(scope="module")
def motion_run(small):
    model = filled(MotionEncoder, small.model)  # proj_out is no longer zero, so attention gets gradients
    model.eval()  # running BatchNorm statistics (as the PyTorch mirror in eval mode)
    s = small.model.motion.crop_size
    x = np.random.default_rng(0).uniform(size=(2, s, s, 3)).astype(np.float32)
    w = jax.random.normal(jax.random.key(1), (2, 512))

    def loss(m):
        code, tokens = m(jnp.asarray(x))
        return jnp.sum(code * w) + jnp.sum(tokens), (code, tokens)

    grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (_, (code, tokens)), grads = nnx.jit(grad_fn)(model)
    return model, x, np.asarray(code), np.asarray(tokens), grads


def test_encoder_gradients_reach_every_parameter(encoder_run, small):
    _, _, out, grads = encoder_run
    assert out.shape == (2, 3, 32, 32, int(small.model.encoder.plane_channels)) and np.all(np.isfinite(out))
    _assert_all_grads_nonzero(grads)


def test_motion_gradients_reach_every_parameter(motion_run):
    _, _, code, tokens, grads = motion_run
    np.testing.assert_array_equal(code, tokens.reshape(2, 512))
    _assert_all_grads_nonzero(grads)


def test_frozen_motion_encoder_is_excluded(small):
    frozen = abstract(MotionEncoder, apply_overrides(small, ["model.motion.freeze=true"]).model)
    trainable = abstract(MotionEncoder, small.model)
    assert frozen.frozen and not trainable.frozen
    assert jax.tree.leaves(nnx.state(frozen, trainable_filter())) == []
    n_trainable = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(trainable, trainable_filter())))
    assert n_trainable == count_params(trainable) > 0
    assert frozen.model.bn1.use_running_average and not trainable.model.bn1.use_running_average


def test_frozen_motion_encoder_keeps_running_statistics(small):
    # a shallower hourglass and smaller crops than the small config, to compile quickly
    cfg = apply_overrides(small, ["model.motion.freeze=true", "model.motion.hourglass_depth=1",
                                  "model.motion.crop_size=32"])
    model = filled(MotionEncoder, cfg.model)
    model.train()  # e.g. the whole avatar switched to training mode
    before = np.asarray(model.model.m0.b2_plus_1.bn1.mean[...])
    s = cfg.model.motion.crop_size
    code, _ = nnx.jit(lambda m, x: m(x))(model, jax.random.uniform(jax.random.key(0), (2, s, s, 3)))
    assert np.all(np.isfinite(np.asarray(code)))
    np.testing.assert_array_equal(np.asarray(model.model.m0.b2_plus_1.bn1.mean[...]), before)


# --------------------------------------------------------------------------------------------------
# Flax <-> PyTorch mapping
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TriplaneEncoder, MotionEncoder])
def test_numpy_round_trip(cls, small):
    a, b = filled(cls, small.model, seed=0), filled(cls, small.model, seed=1)
    sd = interop.flax_to_torch_state_dict(a)
    interop.torch_state_dict_to_flax(b, sd)
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(pa))


def test_layouts_and_names(small):
    model = filled(TriplaneEncoder, small.model)
    sd = interop.flax_to_torch_state_dict(model, prefix="backbone.")
    k = np.asarray(model.deep_lab_v3.encoder.conv1.kernel[...])
    assert k.shape == (7, 7, 5, 8)
    np.testing.assert_array_equal(sd["backbone.deep_lab_v3.encoder.conv1.weight"], k.transpose(3, 2, 0, 1))
    q = np.asarray(model.low_feat_encoder.blocks[1].attn.q.kernel[...])
    np.testing.assert_array_equal(sd["backbone.low_feat_encoder.net.2.attn.q.weight"], q.T)
    assert sd["backbone.feat_decoder.in_layer.2.attn.sr.weight"].shape == (128, 128, 2, 2)
    assert sd["backbone.feat_decoder.in_layer.2.mlp.dwconv.dwconv.weight"].shape == (256, 1, 3, 3)


def test_shape_mismatch_names_the_parameter(small, full):
    sd = interop.flax_to_torch_state_dict(filled(MotionEncoder, small.model))
    with pytest.raises(ValueError, match=r"shape mismatch for 'model\.[a-z0-9_.]+'"):
        interop.torch_state_dict_to_flax(abstract(MotionEncoder, full.model), sd)
    sd.pop("final_proj.bias")
    with pytest.raises(ValueError, match="final_proj.bias"):
        interop.torch_state_dict_to_flax(filled(MotionEncoder, small.model), sd)


def test_load_motion_weights_safetensors(small, tmp_path):
    from safetensors.numpy import save_file

    src, dst = filled(MotionEncoder, small.model, seed=0), filled(MotionEncoder, small.model, seed=1)
    path = tmp_path / "motion.safetensors"
    sd = interop.flax_to_torch_state_dict(src)
    sd["out_proj.weight"] = np.zeros((4, 16), np.float32)  # an entry our model does not have
    save_file(sd, str(path))
    with pytest.raises(ValueError, match="out_proj.weight"):
        load_torch_motion_weights(dst, path, strict=True)
    with pytest.warns(UserWarning, match="out_proj.weight"):
        load_torch_motion_weights(dst, path)
    np.testing.assert_array_equal(np.asarray(dst.final_proj.kernel[...]), np.asarray(src.final_proj.kernel[...]))
    np.testing.assert_array_equal(np.asarray(dst.model.bn5.var[...]), np.asarray(src.model.bn5.var[...]))
    with pytest.raises(FileNotFoundError, match="model.motion.weights"):
        load_torch_motion_weights(dst, tmp_path / "missing.safetensors")


def _to_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def _rel_err(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@needs_torch
def test_encoder_matches_torch_mirror(small, encoder_run):
    model, x, got, _ = encoder_run  # got: [B, 3, P, P, C]
    mirror = te.make_torch_encoder(small.model)
    mirror.load_state_dict(_to_torch(interop.flax_to_torch_state_dict(model)), strict=True)
    with torch.no_grad():
        want = mirror(torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1).numpy()  # [B, 3, C, P, P], input in [-1, 1]
    want = want.transpose(0, 1, 3, 4, 2)
    assert np.std(want) > 1e-3
    assert _rel_err(got, want) < REL_TOL


@needs_torch
def test_motion_matches_torch_mirror(small, motion_run):
    model, x, _, tokens, _ = motion_run
    mirror = te.make_torch_motion_encoder(small.model)
    mirror.load_state_dict(_to_torch(interop.flax_to_torch_state_dict(model)), strict=True)
    with torch.no_grad():
        want = mirror(torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1).numpy()
    assert want.shape == (2, 32, 16) and np.std(want) > 1e-3
    assert _rel_err(tokens, want) < REL_TOL


@needs_torch
@pytest.mark.parametrize("which", ["encoder", "motion"])
def test_torch_round_trip(which, small, tmp_path):
    torch.manual_seed(0)
    if which == "encoder":
        mirror, model = te.make_torch_encoder(small.model), filled(TriplaneEncoder, small.model)
    else:
        mirror, model = te.make_torch_motion_encoder(small.model), filled(MotionEncoder, small.model)
        for mod in mirror.modules():  # non-trivial statistics and zero-initialised layers
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 1.5)
        torch.nn.init.normal_(mirror.model.att_1.proj_out.weight)
    sd = {k: v.clone() for k, v in mirror.state_dict().items()}
    if which == "motion":  # X-NeMo's wrapper prefix and a nested dict, through torch.load
        path = tmp_path / "motion.pt"
        torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}}, path)
        load_torch_motion_weights(model, path)
    else:
        interop.torch_state_dict_to_flax(model, sd)
    back = interop.flax_to_torch_state_dict(model)
    assert set(back) == set(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)
