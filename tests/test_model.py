"""The avatar model: shapes of every part (both configs, abstractly), encode/motion/animate vs the fused
forward, the effect of the driving frame, locality of the fusion, the size of δf at init, gradients,
several cameras per avatar, rays mode, the opacity mask, and the PyTorch mirror of the decoder and
fusion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_instant4d import render
from jax_instant4d.config import apply_overrides, load_config_file
from jax_instant4d.model import avatar as avatar_lib
from jax_instant4d.model import decoder as dec
from jax_instant4d.model.avatar import Avatar, Instant4D
from jax_instant4d.model.fusion import Motion
from jax_instant4d.model.instantiate import num_gaussians, sample_pdf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
W = H = 16  # render size of the numerical tests (the dense reference rasterizer is O(H W N))


# --------------------------------------------------------------------------------------------------
# Light test doubles for the triplane encoder and the motion encoder (same signatures, one dense layer
# each). The real modules are tested in test_model_encoder.py; compiling them costs minutes on a
# 2-core machine, so the numerical tests use these, and one slow test runs the whole model with the
# real (shrunk) modules.
# --------------------------------------------------------------------------------------------------
class StandInEncoder(nnx.Module):
    def __init__(self, model_cfg, *, rngs):
        self.res = int(model_cfg.encoder.plane_res)
        self.channels = int(model_cfg.encoder.plane_channels)
        self.proj = nnx.Linear(5, 3 * self.channels, rngs=rngs)

    def __call__(self, image):
        b = image.shape[0]
        x = jax.image.resize(image, (b, self.res, self.res, 3), "bilinear")
        yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, self.res), jnp.linspace(-1, 1, self.res), indexing="ij")
        x = jnp.concatenate([x, jnp.broadcast_to(jnp.stack([xx, yy], -1), (b, self.res, self.res, 2))], -1)
        return jnp.moveaxis(self.proj(x).reshape(b, self.res, self.res, 3, self.channels), 3, 1)


class StandInMotion(nnx.Module):
    def __init__(self, model_cfg, *, rngs):
        mot = model_cfg.motion
        self.token_dim = int(mot.token_dim)
        self.proj = nnx.Linear(8 * 8 * 3, int(mot.code_dim), rngs=rngs)

    def __call__(self, crop, *, input_gradient=False):  # trainable: its code carries gradients either way
        b = crop.shape[0]
        code = self.proj(jax.image.resize(crop, (b, 8, 8, 3), "bilinear").reshape(b, -1))
        return code, code.reshape(b, -1, self.token_dim)


def small_cfg(**overrides):
    # the paper's feature widths (f, m: 48 each; the small config has 24) with the small encoder
    values = {"render.backend": "dense", "model.gaussian_res": 16, "model.feature_dim": 48,
              "model.encoder.plane_channels": 96, "model.motion.weights": "", "model.motion.freeze": False}
    values.update(overrides)
    return apply_overrides(load_config_file(CONFIGS / "small.py"), {k: str(v) for k, v in values.items()})


def make_model(cfg, seed=0, real=False):
    if real:
        model = Instant4D(cfg, rngs=nnx.Rngs(seed))
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(avatar_lib, "TriplaneEncoder", StandInEncoder)
            mp.setattr(avatar_lib, "MotionEncoder", StandInMotion)
            model = Instant4D(cfg, rngs=nnx.Rngs(seed))
    # Random init puts most Gaussians outside the 18.8-degree view; pull positions towards the origin so
    # that images (and image gradients) are not empty.
    last = model.decoder.net.layers[2].kernel
    last[...] = last[...].at[:, dec.POSITION].multiply(0.2)
    return model


_MODELS = {}


def model_for(fusion="local", **overrides):
    """One model per (fusion, overrides), shared by the tests of this module (the jit caches too)."""
    key = (fusion, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        _MODELS[key] = make_model(small_cfg(**{"model.fusion": fusion}, **overrides))
    return _MODELS[key]


def images(seed, b=2, size=64):
    return jax.random.uniform(jax.random.key(seed), (b, size, size, 3))


def cameras(b=2, size=W):
    return render.orbit_camera(jnp.linspace(-0.2, 0.2, b), jnp.linspace(0.1, -0.1, b), size=size)


ENCODE = nnx.jit(lambda m, x: m.encode(x))
MOTION = nnx.jit(lambda m, x: m.motion(x))
ANIMATE = nnx.jit(lambda m, a, z, c: m.animate(a, z, c, W, H))
ANIMATE_GAUSSIANS = nnx.jit(lambda m, a, z: m.animate_gaussians(a, z))
FUSED = nnx.jit(lambda m, s, d, c: m(s, d, c, W, H))


# --------------------------------------------------------------------------------------------------
# Shapes and dtypes (abstract, real encoder and motion encoder: no compute at full size)
# --------------------------------------------------------------------------------------------------
def _abstract_run(cfg, b=2, real=True):
    size = int(cfg.model.image_size)
    with pytest.MonkeyPatch.context() as mp:
        if not real:
            mp.setattr(avatar_lib, "TriplaneEncoder", StandInEncoder)
            mp.setattr(avatar_lib, "MotionEncoder", StandInMotion)
        model = nnx.eval_shape(lambda: Instant4D(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    img = jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32)
    cam = render.Camera(jax.ShapeDtypeStruct((b, 4, 4), jnp.float32), jax.ShapeDtypeStruct((b, 4), jnp.float32))

    def run(st, src, drv, c):
        m = nnx.merge(graphdef, st)
        av = m.encode(src)
        z = m.motion(drv)
        return av, z, m.animate(av, z, c, size, size)

    return model, jax.eval_shape(run, state, img, img, cam)


# The real encoder and motion encoder for the plain model at both sizes; the variants (which only change
# our parts) with the test doubles, to keep tracing time down.
@pytest.mark.parametrize("name,fusion,mode,real", [
    ("full", "local", "plane", True), ("small", "local", "plane", True), ("full", "global", "plane", False),
    ("full", "local", "rays", False), ("small", "deform", "plane", False), ("small", "none", "plane", False),
    ("small", "global", "rays", False)])
def test_shapes_and_dtypes(name, fusion, mode, real):
    cfg = apply_overrides(load_config_file(CONFIGS / f"{name}.py"),
                          {"render.backend": "dense", "model.fusion": fusion, "model.instantiate": mode})
    mc = cfg.model
    n = num_gaussians(mc)
    if name == "full":
        assert n == (262_144 if mode == "plane" else 196_608)
    b, f, p, s = 2, int(mc.feature_dim), int(mc.encoder.plane_res), int(mc.image_size)
    model, (av, z, (rgb, alpha, depth, aux)) = _abstract_run(cfg, b, real)
    assert isinstance(av, Avatar)
    assert av.planes.shape == (b, 3, p, p, 2 * f)
    assert av.f.shape == av.m.shape == (b, n, f)
    g = av.base
    assert (g.means.shape, g.scales.shape, g.quats.shape) == ((b, n, 3), (b, n, 3), (b, n, 4))
    assert g.opacities.shape == g.densities.shape == (b, n) and g.colors.shape == (b, n, 3)
    assert av.visible.shape == (b, n) and av.visible.dtype == jnp.bool_
    code_dim, token_dim = int(mc.motion.code_dim), int(mc.motion.token_dim)
    assert z.code.shape == av.z_src.code.shape == (b, code_dim)
    assert z.tokens.shape == (b, code_dim // token_dim, token_dim)
    assert rgb.shape == (b, s, s, 3) and alpha.shape == depth.shape == (b, s, s)
    assert aux["delta"].shape == (b, n, 10 if fusion == "deform" else f)
    assert aux["overflow"].shape == (b,) and aux["overflow"].dtype == jnp.int32
    assert aux["gaussians"].means.shape == (b, n, 3)
    for leaf in jax.tree.leaves((av, z, rgb, alpha, depth, aux)):
        assert leaf.dtype in (jnp.float32, jnp.bool_, jnp.int32), leaf.dtype
    # parameter shapes of the decoder and the fusion
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert params["decoder"]["net"]["layers"][0]["kernel"].shape == (f, 2 * f)
    assert params["decoder"]["net"]["layers"][2]["kernel"].shape == (2 * f, 22)
    if fusion == "none":
        assert model.fusion is None
    elif fusion in ("local", "deform"):
        assert params["fusion"]["transform"]["mapping"]["kernel"].shape == (2 * code_dim, 2 * f)
        assert "bias" not in params["fusion"]["transform"]["mapping"]
        assert params["fusion"]["net"]["layers"][2]["kernel"].shape == (2 * f, 10 if fusion == "deform" else f)
    else:
        assert params["fusion"]["query"]["kernel"].shape == (f, f)
        assert params["fusion"]["key"]["kernel"].shape == (token_dim, f)


def test_decoder_activations():
    d = dec.GaussianDecoder(48, rngs=nnx.Rngs(0))
    raw = 3.0 * jax.random.normal(jax.random.key(1), (2, 50, 22))
    activate = jax.jit(dec.activate)
    g = activate(raw)
    np.testing.assert_allclose(g.densities, jax.nn.softplus(raw[..., 0] - 1.0), rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 1.0 - np.exp(-np.asarray(g.densities)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(g.quats, axis=-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(g.means).max()) <= 1.0 and 0.0 < float(g.scales.min()) and float(g.scales.max()) < 0.05
    assert -0.001 <= float(g.colors.min()) and float(g.colors.max()) <= 1.001
    np.testing.assert_allclose(g.means, np.tanh(raw[..., 11:14]), rtol=1e-6)
    # the last layer's bias starts at zero; the 8 legacy channels do not influence any attribute
    assert float(jnp.abs(d.net.layers[2].bias[...]).max()) == 0.0
    raw2 = raw.at[..., jnp.array(dec.UNUSED_CHANNELS)].set(123.0)
    for a, b in zip(activate(raw2), g, strict=True):
        np.testing.assert_array_equal(a, b)
    # equalised learning rate: the stored kernel is N(0, 1), the effective one N(0, 1/fan_in)
    k = np.asarray(d.net.layers[0].kernel[...])
    assert 0.8 < k.std() < 1.2 and d.net.layers[0].weight_gain == pytest.approx(1 / np.sqrt(48))


def test_frontal_anchors_start_as_a_sheet_over_the_frontal_view():
    """model.anchors: positions are anchor + tanh(raw); the plane-mode anchor of texel (row, column) is
    seen by the frontal camera at pixel (row, column), on z = 0; freshly initialised, the Gaussians sit
    at their anchors (the whole frontal view covered); with "none" the positions are absolute."""
    res = 16
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(avatar_lib, "TriplaneEncoder", StandInEncoder)
        mp.setattr(avatar_lib, "MotionEncoder", StandInMotion)
        anchored = Instant4D(small_cfg(), rngs=nnx.Rngs(0))
        absolute = Instant4D(small_cfg(**{"model.anchors": "none"}), rngs=nnx.Rngs(0))
    av = ENCODE(anchored, images(0))
    raw = anchored.decoder.raw(av.f)
    np.testing.assert_allclose(av.base.means, av.anchors + np.tanh(raw[..., dec.POSITION]), atol=1e-6)
    cam = render.orbit_camera(jnp.zeros(()), jnp.zeros(()), fov_degrees=anchored.fov_degrees, size=res)
    w2c, (fx, fy, cx, cy) = np.asarray(cam.world_to_cam), np.asarray(cam.intrinsics)
    anchors = np.asarray(av.anchors[0])
    cam_pts = anchors @ w2c[:3, :3].T + w2c[:3, 3]
    pix = np.stack([fx * cam_pts[:, 0] / cam_pts[:, 2] + cx, fy * cam_pts[:, 1] / cam_pts[:, 2] + cy], -1)
    rows, cols = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5, indexing="ij")
    np.testing.assert_allclose(pix, np.stack([cols.ravel(), rows.ravel()], -1), atol=1e-3)
    np.testing.assert_allclose(anchors[:, 2], 0.0, atol=1e-5)
    half_view = 2.7 * np.tan(np.radians(anchored.fov_degrees) / 2)  # the frontal view's half-width at z = 0
    assert np.abs(anchors[:, :2]).max() == pytest.approx(half_view * (1 - 1 / res), rel=1e-4)
    assert float(jnp.abs(av.base.means - av.anchors).max()) < 0.05 * half_view  # at their anchors
    av_abs = ENCODE(absolute, images(0))
    assert float(jnp.abs(av_abs.anchors).max()) == 0.0
    np.testing.assert_allclose(av_abs.base.means, np.tanh(absolute.decoder.raw(av_abs.f)[..., dec.POSITION]),
                               atol=1e-6)
    k = np.asarray(absolute.decoder.net.layers[2].kernel[...])
    assert 0.8 < k[:, dec.POSITION].std() < 1.2  # the authors' initialisation, untouched


# --------------------------------------------------------------------------------------------------
# Numerics on the small config (dense reference rasterizer, 16x16 images, 256 Gaussians)
# --------------------------------------------------------------------------------------------------
def _loss(m, src, drv, cam):
    target = jnp.full(cam.intrinsics.shape[:1] + (H, W, 3), 0.3)
    rgb, alpha, depth, aux = m(src, drv, cam, W, H)
    loss = jnp.mean((rgb - target) ** 2) + 0.1 * jnp.mean(depth) + jnp.mean(aux["delta"] ** 2)
    return loss, (rgb, alpha, depth, aux["delta"])


_FUSED_GRADS = {}


def fused_value_and_grad(fusion):
    """The fused forward's outputs and the gradient of an image loss (one compile, shared by two tests)."""
    if fusion not in _FUSED_GRADS:
        model = model_for(fusion)
        fn = nnx.jit(nnx.value_and_grad(lambda m: _loss(m, images(0), images(1), cameras()), has_aux=True))
        _FUSED_GRADS[fusion] = fn(model)
    return _FUSED_GRADS[fusion]


def test_encode_motion_animate_equals_fused_forward():
    model = model_for("local")
    src, drv, cam = images(0), images(1), cameras()
    rgb, alpha, depth, aux = ANIMATE(model, ENCODE(model, src), MOTION(model, drv), cam)
    (_, (rgb2, alpha2, depth2, delta2)), _ = fused_value_and_grad("local")
    assert float(alpha.max()) > 0.1  # something is rendered
    np.testing.assert_allclose(rgb, rgb2, atol=1e-5)
    np.testing.assert_allclose(alpha, alpha2, atol=1e-5)
    np.testing.assert_allclose(depth, depth2, atol=1e-4)
    np.testing.assert_allclose(aux["delta"], delta2, atol=1e-6)


@pytest.mark.parametrize("fusion", ["none", "local"])
def test_driving_frame_effect(fusion):
    model = model_for(fusion)
    av, cam = ENCODE(model, images(0)), cameras()
    rgb_a, _, _, aux_a = ANIMATE(model, av, MOTION(model, images(1)), cam)
    rgb_b, _, _, aux_b = ANIMATE(model, av, MOTION(model, images(2)), cam)
    assert float(rgb_a.max()) > 0.05
    if fusion == "none":
        np.testing.assert_array_equal(rgb_a, rgb_b)
        for a, b in zip(aux_a["gaussians"], aux_b["gaussians"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert float(jnp.abs(aux_a["delta"]).max()) == 0.0
    else:
        assert float(jnp.abs(aux_a["delta"] - aux_b["delta"]).max()) > 1e-5
        assert float(jnp.abs(aux_a["gaussians"].colors - aux_b["gaussians"].colors).max()) > 1e-6
        assert float(jnp.abs(rgb_a - rgb_b).max()) > 1e-6


@pytest.mark.parametrize("fusion", ["local", "global", "deform"])
def test_fusion_is_local_per_gaussian(fusion):
    """Changing one Gaussian's m changes that Gaussian's animated attributes and nothing else."""
    model = model_for(fusion)
    av = ENCODE(model, images(0))
    z = MOTION(model, images(1))
    g0, d0 = ANIMATE_GAUSSIANS(model, av, z)
    i = 37
    bump = jax.random.normal(jax.random.key(5), av.m.shape[-1:])  # (a constant shift would vanish in LN)
    g1, d1 = ANIMATE_GAUSSIANS(model, av._replace(m=av.m.at[:, i].add(bump)), z)
    for a, b in zip(g0 + (d0,), g1 + (d1,), strict=True):
        diff = jnp.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(axis=-1)  # [B, N]
        others = jnp.concatenate([diff[:, :i], diff[:, i + 1:]], axis=1)
        assert float(others.max()) <= 1e-6
    assert float(jnp.abs(d0[:, i] - d1[:, i]).max()) > 1e-5
    assert float(jnp.abs(g0.means[:, i] - g1.means[:, i]).max()) > 1e-8


def test_delta_small_at_init_for_identical_codes():
    model = model_for("local")
    av = ENCODE(model, images(0))
    _, delta = ANIMATE_GAUSSIANS(model, av, av.z_src)
    # 0.01 x an O(1) MLP output: small, but not zero (AdaLN has no identity path, as the authors').
    assert 0.0 < float(jnp.abs(delta).max()) < 0.05
    assert float(jnp.sqrt(jnp.mean(delta**2))) < 0.02
    # the factor is exactly model.fusion_scale (1 in the small config, whose last layer starts at
    # model.fusion_init = 0.01 of the authors' initialisation: the same delta at init as 0.01 x theirs)
    fusion = model.fusion
    assert fusion.scale == float(small_cfg().model.fusion_scale) == 1.0
    unscaled = fusion.net(fusion.transform(jnp.concatenate([av.z_src.code, av.z_src.code], -1), av.m))
    np.testing.assert_allclose(delta, fusion.scale * unscaled, rtol=1e-5, atol=1e-8)
    paper = make_model(small_cfg(**{"model.fusion_scale": 0.01, "model.fusion_init": 1.0}))
    np.testing.assert_allclose(paper.fusion.net.layers[2].kernel[...] * 0.01, fusion.net.layers[2].kernel[...],
                               rtol=1e-6)  # same draw, scaled: the two initialisations give the same delta


def test_opacity_zero_below_density_threshold():
    model = make_model(small_cfg())
    bias = model.decoder.net.layers[2].bias
    av = ENCODE(model, images(0))
    assert bool(av.visible.all())
    bias[...] = bias[...].at[0].set(-10.0)  # density = softplus(-11) ~ 1.7e-5 < 1/255 in the source
    av = ENCODE(model, images(0))
    assert not bool(av.visible.any())
    g, _ = ANIMATE_GAUSSIANS(model, av, MOTION(model, images(1)))
    assert float(jnp.abs(g.opacities).max()) == 0.0


def _check_gradients(grads):
    flat = nnx.to_flat_state(grads)
    assert len(flat) > 10
    for path, g in flat:
        value = np.asarray(g.get_value() if hasattr(g, "get_value") else g)
        name = "/".join(map(str, path))
        if name == "decoder/net/layers/2/kernel":  # the 8 legacy outputs are never read
            assert np.all(value[:, list(dec.UNUSED_CHANNELS)] == 0.0)
            value = np.delete(value, list(dec.UNUSED_CHANNELS), axis=1)
        if name == "decoder/net/layers/2/bias":
            assert np.all(value[list(dec.UNUSED_CHANNELS)] == 0.0)
            value = np.delete(value, list(dec.UNUSED_CHANNELS))
        assert np.all(np.isfinite(value)), name
        assert np.any(value != 0.0), f"no gradient reaches {name}"


@pytest.mark.parametrize("fusion", ["local", "global"])
def test_gradients_reach_every_parameter(fusion):
    _, grads = fused_value_and_grad(fusion)
    _check_gradients(grads)


def test_several_cameras_per_avatar():
    model = model_for("local")
    b, k = 2, 3
    av = ENCODE(model, images(0))
    z = MOTION(model, images(1))
    yaw = jnp.linspace(-0.3, 0.3, b * k).reshape(b, k)
    cam_bk = render.orbit_camera(yaw, jnp.zeros_like(yaw), size=W)
    rgb, alpha, depth, aux = ANIMATE(model, av, z, cam_bk)
    assert rgb.shape == (b, k, H, W, 3) and alpha.shape == depth.shape == (b, k, H, W)
    assert aux["delta"].shape[:1] == (b,) and aux["overflow"].shape == (b, k)
    j = 2
    rgb_j, *_ = ANIMATE(model, av, z, render.Camera(cam_bk.world_to_cam[:, j], cam_bk.intrinsics[:, j]))
    np.testing.assert_allclose(rgb[:, j], rgb_j, atol=1e-5)
    assert float(jnp.abs(rgb[:, 0] - rgb[:, 2]).max()) > 1e-3  # the views differ
    # one driving frame per target: motion [B, K]
    zk = MOTION(model, images(2, b * k))
    zk = Motion(zk.code.reshape(b, k, -1), zk.tokens.reshape((b, k) + zk.tokens.shape[1:]))
    rgb_k, _, _, aux_k = ANIMATE(model, av, zk, cam_bk)
    assert aux_k["delta"].shape[:2] == (b, k) and aux_k["gaussians"].means.shape[:2] == (b, k)
    zj = Motion(zk.code[:, j], zk.tokens[:, j])
    rgb_1, *_ = ANIMATE(model, av, zj, render.Camera(cam_bk.world_to_cam[:, j], cam_bk.intrinsics[:, j]))
    np.testing.assert_allclose(rgb_k[:, j], rgb_1, atol=1e-5)


def test_rays_mode():
    model = model_for("local", **{"model.instantiate": "rays", "model.rays.resolution": 8,
                                  "model.rays.depth_samples": 6, "model.rays.importance_samples": 4})
    n = 8 * 8 * (6 + 4)
    encode_key = nnx.jit(lambda m, x, k: m.encode(x, k))
    av_det = ENCODE(model, images(0))
    assert av_det.f.shape == (2, n, 48)
    np.testing.assert_array_equal(av_det.f, ENCODE(model, images(0)).f)  # no key: deterministic
    av_rand = encode_key(model, images(0), jax.random.key(3))
    assert float(jnp.abs(av_rand.f - av_det.f).max()) > 0.0
    assert bool(jnp.all(jnp.isfinite(av_rand.base.means))) and bool(av_det.visible.any())
    # importance sampling concentrates the samples in the heavy bin
    bins = jnp.linspace(0.0, 1.0, 11)[None]
    weights = jnp.zeros((1, 10)).at[0, 6].set(1.0)
    s = sample_pdf(bins, weights, jnp.linspace(0.0, 1.0, 50)[None])
    assert float(jnp.mean((s >= 0.6) & (s <= 0.7))) > 0.9


# --------------------------------------------------------------------------------------------------
# The whole model with the real encoder and motion encoder (shrunk: fewer blocks)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_modules_fused_forward_and_gradients():
    cfg = small_cfg(**{"model.encoder.resnet_blocks": (1, 1, 1, 1), "model.encoder.lowres_blocks": 1,
                       "model.encoder.highres_layers": 1, "model.motion.hourglass_depth": 1})
    model = make_model(cfg, real=True)
    # Zero-initialised layers (e.g. the attention output projections) would block the gradient of
    # everything before them at init: give every all-zero parameter small values first.
    leaves = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for i, (_, var) in enumerate(leaves):
        if not np.any(np.asarray(var.get_value())):
            var.set_value(0.01 * jax.random.normal(jax.random.key(i), var.get_value().shape))
    nnx.update(model, nnx.from_flat_state(leaves))
    src, drv, cam = images(0), images(1), cameras()
    (_, (rgb_fused, *_)), grads = nnx.jit(nnx.value_and_grad(lambda m: _loss(m, src, drv, cam), has_aux=True))(model)
    _check_gradients(grads)
    rgb, *_ = ANIMATE(model, ENCODE(model, src), MOTION(model, drv), cam)
    np.testing.assert_allclose(rgb, rgb_fused, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# PyTorch mirror
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["local", "deform", "global"])
def test_torch_mirror_round_trip(fusion):
    torch = pytest.importorskip("torch")
    from jax_instant4d.export import torch_gaussian as tg
    from jax_instant4d.model import interop

    cfg = small_cfg(**{"model.fusion": fusion})
    model = model_for(fusion)
    sd = interop.gaussian_to_torch_state_dict(model)
    if fusion == "local":  # exactly the authors' names and shapes
        official = interop.official_gaussian_shapes(48, int(cfg.model.motion.code_dim))
        assert {k: v.shape for k, v in sd.items()} == official
    mirror = tg.build_torch_modules(cfg, token_dim=int(cfg.model.motion.token_dim))
    assert set(mirror.state_dict()) == set(sd)
    mirror.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)

    av = ENCODE(model, images(0))
    z_src, z_drv = av.z_src, MOTION(model, images(1))
    g, delta = ANIMATE_GAUSSIANS(model, av, z_drv)
    t = lambda x: torch.from_numpy(np.array(x))  # noqa: E731
    with torch.no_grad():
        d_t = mirror["motion_decoder"](t(av.m), t(z_src.code), t(z_drv.code), t(z_src.tokens), t(z_drv.tokens))
        np.testing.assert_allclose(d_t.numpy(), delta, rtol=1e-4, atol=1e-6)
        if fusion != "deform":
            out = mirror["decoder"](t(av.f) + d_t)
            out["means"] = out["means"] + t(av.anchors)  # Φ alone gives the offsets from the anchors
            for name in ("means", "scales", "quats", "colors", "densities"):
                np.testing.assert_allclose(out[name].numpy(), getattr(g, name), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(out["opacities"].numpy() * np.asarray(av.visible), g.opacities,
                                       rtol=1e-4, atol=1e-6)

    # back: torch -> flax into a differently initialised model gives the same parameters and outputs
    other = make_model(cfg, seed=7)
    interop.load_gaussian_state_dict(other, mirror.state_dict())
    a = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(other, nnx.Param))
    for key in ("decoder", "fusion"):
        for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
            np.testing.assert_array_equal(x, y)
    sd2 = interop.gaussian_to_torch_state_dict(other)
    assert sd2.keys() == sd.keys() and all(np.array_equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(ValueError, match="shape"):
        bad = dict(mirror.state_dict())
        bad["decoder.net.0.bias"] = torch.zeros(5)
        interop.load_gaussian_state_dict(other, bad)


def test_torch_instantiation_matches():
    torch = pytest.importorskip("torch")
    from jax_instant4d.export import torch_gaussian as tg
    from jax_instant4d.model.instantiate import instantiate_plane, sample_triplanes

    planes = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 6))
    planes_t = torch.from_numpy(np.array(jnp.moveaxis(planes, -1, 2)))  # [B, 3, C, P, P]
    for res in (16, 5):  # up and down (antialiased)
        ours = jax.jit(instantiate_plane, static_argnums=1)(planes, res)
        theirs = tg.instantiate_plane_torch(planes_t, res).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    pts = jax.random.uniform(jax.random.key(1), (2, 100, 3), minval=-0.6, maxval=0.6)
    ours = jax.jit(sample_triplanes)(planes, pts)
    theirs = tg.sample_triplanes_torch(planes_t, torch.from_numpy(np.array(pts))).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# model.motion.oracle: the ground-truth expression as the motion code (a diagnostic)
# --------------------------------------------------------------------------------------------------
def test_oracle_code_embeds_the_expression_exactly_in_the_encoders_layout():
    from jax_instant4d.model.motion import ORACLE_GAIN, oracle_basis, oracle_code, sincos_1d

    basis = oracle_basis(512, 14)
    np.testing.assert_allclose(basis.T @ basis, np.eye(14), atol=1e-5)  # orthonormal columns
    np.testing.assert_array_equal(basis, oracle_basis(512, 14))  # fixed: a checkpoint's code means one thing
    y = np.random.default_rng(0).uniform(size=(3, 14)).astype(np.float32)
    code, tokens = oracle_code(jnp.asarray(y), 512, 16)
    positions = sincos_1d(16, np.arange(32)).reshape(-1)
    np.testing.assert_allclose(basis.T @ (np.asarray(code) - positions).T / ORACLE_GAIN + 0.5, y.T, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(tokens).reshape(3, 512), code)
    with pytest.raises(ValueError, match="code_dim"):
        oracle_basis(8, 14)


def _expressions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Expression parameters ``shape + (E,)`` drawn uniformly within each parameter's range."""
    from jax_instant4d.data import record

    lo, hi = record.EXPRESSION_RANGES[:, 0], record.EXPRESSION_RANGES[:, 1]
    return (lo + (hi - lo) * rng.uniform(size=shape + (len(lo),))).astype(np.float32)


def test_oracle_model_is_driven_by_the_batch_expressions_and_refuses_frames():
    """Training's encode_batch with model.motion.oracle: z_src and z_drv are the oracle codes of the batch's
    source and driving expressions (the driving frames do not matter), and reading motion from a frame is an
    error (an oracle avatar driven by an encoder's code would be silently wrong)."""
    from jax_instant4d.data import record
    from jax_instant4d.train.forward import encode_batch

    model = model_for("local", **{"model.motion.oracle": True})
    assert model.motion_oracle
    with pytest.raises(ValueError, match="oracle"):
        model.motion(images(1))
    rng = np.random.default_rng(3)
    expr, src_expr = _expressions(rng, (2, 2)), _expressions(rng, (2,))
    traced = jax.jit(record.normalise_expression)(jnp.asarray(expr))  # the train step's path: a traced jax array
    assert isinstance(traced, jax.Array) and traced.dtype == jnp.float32
    np.testing.assert_allclose(traced, record.normalise_expression(expr), atol=1e-6)
    np.testing.assert_allclose(record.normalise_expression(expr.tolist()), record.normalise_expression(expr), atol=0)
    batch = {"source": images(0), "driving": images(1, b=4).reshape(2, 2, 64, 64, 3), "expression": jnp.asarray(expr),
             "source_expression": jnp.asarray(src_expr), "time": jnp.asarray([[0, 1], [0, 1]], jnp.int32)}
    avatar, z_src, z_drv = encode_batch(model, batch, 64)
    want_src = model.oracle_motion(jnp.asarray(record.normalise_expression(src_expr)))
    want_drv = model.oracle_motion(jnp.asarray(record.normalise_expression(expr.reshape(4, 14))))
    np.testing.assert_allclose(z_src.code, want_src.code, atol=1e-6)
    np.testing.assert_allclose(avatar.z_src.code, want_src.code, atol=1e-6)  # the avatar carries it too
    np.testing.assert_allclose(z_drv.code, want_drv.code.reshape(2, 2, -1), atol=1e-6)
    np.testing.assert_allclose(z_drv.tokens, want_drv.tokens.reshape(2, 2, 32, 16), atol=1e-6)
    other = dict(batch, driving=images(7, b=4).reshape(2, 2, 64, 64, 3))
    _, _, z_other = encode_batch(model, other, 64)
    np.testing.assert_array_equal(z_other.code, z_drv.code)


def test_oracle_model_in_evaluation_reads_the_clips_expressions():
    """Evaluation's runner drives an oracle model by each clip's ground-truth expressions (source and driving);
    a clip without them (not synthetic) is an error that names it."""
    from jax_instant4d.data import record
    from jax_instant4d.eval.run import Clip, _Model

    model = model_for("local", **{"model.motion.oracle": True})
    runner = _Model(model)
    rng = np.random.default_rng(4)
    expr, src_expr = _expressions(rng, (3,)), _expressions(rng, ())
    frames = np.asarray(images(2, b=3))
    clip = Clip("id_1/clip_0", 1, np.asarray(images(0, b=1))[0], frames, frames, np.tile(np.eye(4), (3, 1, 1)),
                np.zeros((3, 4), np.float32), 3, 1, expr, np.zeros(4, np.float32), src_expr)
    z = runner.driving_motion(clip, 64)
    np.testing.assert_allclose(z.code, model.oracle_motion(jnp.asarray(record.normalise_expression(expr))).code,
                               atol=1e-6)
    avatar = runner.source_avatar(clip, 64)
    np.testing.assert_allclose(avatar.z_src.code, model.oracle_motion(
        jnp.asarray(record.normalise_expression(src_expr[None]))).code, atol=1e-6)
    real = dataclasses.replace(clip, expression=None, source_expression=None)
    with pytest.raises(ValueError, match="id_1/clip_0.*model.motion.oracle"):
        runner.driving_motion(real, 64)
    with pytest.raises(ValueError, match="id_1/clip_0"):
        runner.source_avatar(real, 64)


# --------------------------------------------------------------------------------------------------
# train.loss.expression_change: the render's change against the teacher's, at each target camera
# --------------------------------------------------------------------------------------------------


def _forward_batch(b=2, k=2):
    """A batch of the pipeline's contract for training's forward pass (64^2 frames, targets at 16^2 cameras)."""
    cam = render.orbit_camera(jnp.linspace(-0.4, 0.4, b * (1 + k)), jnp.linspace(0.2, -0.1, b * (1 + k)), size=64)
    w2c, intr = (x.reshape(b, 1 + k, *x.shape[1:]) for x in (cam.world_to_cam, cam.intrinsics))
    return {"source": images(0, b), "driving": images(1, b * k).reshape(b, k, 64, 64, 3),
            "target": images(2, b * k).reshape(b, k, 64, 64, 3), "source_w2c": w2c[:, 0],
            "source_intrinsics": intr[:, 0], "target_w2c": w2c[:, 1:], "target_intrinsics": intr[:, 1:],
            "target_eyes": jnp.zeros((b, k, 64, 64)), "target_mouth": jnp.zeros((b, k, 64, 64)),
            "time": jnp.tile(jnp.arange(k, dtype=jnp.int32), (b, 1))}


def test_expression_change_loss_compares_the_renders_change_with_the_teachers_at_each_target_camera():
    """With the batch's undriven teacher views, training's forward pass also renders the avatar with its own
    motion at each target camera (exactly what rendering it there alone gives) and leaves every other output as
    it was; the loss is mean |(driven - undriven render) - (teacher view - undriven teacher view)|, weighted by the
    teacher's change or uniform, and 0 when the render changes as the teacher's view does."""
    from jax_instant4d.train.forward import expression_change, forward, loss_terms, resize_square

    model = nnx.clone(model_for("local"))
    model.fusion.scale = 100.0  # δf at full size (the small config's last layer starts 100x smaller): motion shows
    batch = _forward_batch()
    run = nnx.jit(lambda m, b: forward(m, b, W, 64, None))
    plain = run(model, batch)
    with_und = dict(batch, undriven=images(3, 4).reshape(2, 2, 64, 64, 3))
    out = run(model, with_und)
    for a, b in ((out.rgb, plain.rgb), (out.target, plain.target), (out.delta_f, plain.delta_f)):
        np.testing.assert_array_equal(a, b)
    assert plain.undriven is None and int(out.overflow) == int(plain.overflow)
    # an independent path: the avatar animated with its own motion, rendered at the target cameras on its own
    avatar = ENCODE(model, batch["source"])
    z_own = jax.tree.map(lambda s: jnp.repeat(s[:, None], 2, axis=1), avatar.z_src)
    cam = render.Camera(batch["target_w2c"], render.scale_intrinsics(batch["target_intrinsics"], 64, W))
    want_rgb = ANIMATE(model, avatar, z_own, cam)[0]
    np.testing.assert_allclose(out.undriven[0], want_rgb, atol=2e-6)
    # the driving motion changes the render, by far more than the tolerance above
    assert float(jnp.abs(out.undriven[0] - out.rgb[:, 1:]).max()) > 1e-4
    teacher = resize_square(with_und["undriven"].reshape(4, 64, 64, 3), W).reshape(2, 2, W, W, 3)
    np.testing.assert_array_equal(out.undriven[1], teacher)
    rgb, tgt, ur, ut = (np.asarray(x, np.float64) for x in (out.rgb[:, 1:], out.target[:, 1:], *out.undriven))
    err = np.abs((rgb - ur) - (tgt - ut))
    w = np.sum(np.abs(tgt - ut), axis=-1, keepdims=True)  # "change": how much the teacher's view changes there
    np.testing.assert_allclose(loss_terms(out, with_und, {})["expression_change"], np.sum(w * err) / (np.sum(w) * 3),
                               rtol=1e-5)
    np.testing.assert_allclose(loss_terms(out, with_und, {}, change_weighting="uniform")["expression_change"],
                               np.mean(err), rtol=1e-5)
    assert float(loss_terms(plain, batch, {})["expression_change"]) == 0.0  # off without undriven views
    # what cancels: renders whose change is the teacher's give 0, whatever each render's own error
    same = out._replace(target=out.target.at[:, 1:].set(out.rgb[:, 1:] + 0.3),
                        undriven=(out.undriven[0], out.undriven[0] + 0.3))
    assert float(expression_change(same)) < 1e-6 and float(expression_change(same, "uniform")) < 1e-6
    # "change" ignores what the render does where the teacher's view does not change; "uniform" pulls it to 0
    left = (jnp.arange(W) < W // 2)[None, None, None, :, None]
    teacher_change = jnp.where(left, 0.2, 0.0) * jnp.ones_like(out.rgb[:, 1:])
    leak = out._replace(target=out.target.at[:, 1:].set(out.undriven[1] + teacher_change),
                        rgb=out.rgb.at[:, 1:].set(out.undriven[0] + teacher_change + jnp.where(left, 0.0, 0.1)))
    assert float(expression_change(leak)) < 1e-6
    np.testing.assert_allclose(expression_change(leak, "uniform"), 0.05, rtol=1e-4)
    with pytest.raises(ValueError, match="weighting"):
        expression_change(leak, "squared")
