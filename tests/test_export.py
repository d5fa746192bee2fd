"""instant4d export: the whole model's PyTorch weights (official names, config in the metadata), the
PyTorch mirror of the whole model against the Flax model (same Gaussians and images), the pure-PyTorch
reference renderer against the rasterizer's dense reference, the 3DGS PLY writer/reader, and the import
of PyTorch weights back into a checkpoint (round trip: identical parameters and image).

Tolerances (float32 throughout). Features, motion codes and Gaussians: max |torch - flax| <= 1e-5 (1e-4
for the triplanes, relative to their largest value); images: max |diff| <= 2e-4 on rgb and alpha and
1e-3 on depth (depths are ~2.7). Measured on this machine: ~1e-7 on Gaussians, ~1e-6 on images.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rasterizer_ffi
from jax_instant4d import render
from jax_instant4d.cli import main
from jax_instant4d.export import ply
from jax_instant4d.export import torch_model as tm
from jax_instant4d.model import interop

torch = pytest.importorskip("torch")
from jax_instant4d.export import torch_render as tr  # noqa: E402  (needs torch)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
ERRORS: dict[str, float] = {}  # measured parity errors, printed at the end of the module


def _max_err(name, got, want) -> float:
    err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    ERRORS[name] = err
    return err


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    """Prints the parity errors measured by this module's tests at its end (visible with ``pytest -s``)."""
    yield
    for name, err in sorted(ERRORS.items()):
        print(f"max |torch - reference| {name:>22}: {err:.3g}")


def _t(x):
    return torch.from_numpy(np.array(x))


# --------------------------------------------------------------------------------------------------
# Fixtures: the real tiny checkpoint, the model loaded from it, and its export
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(real_run):
    """``(workdir, cfg)`` of the shared real checkpoint (tests/conftest.py)."""
    return real_run


@pytest.fixture(scope="module")
def trained(run):
    from jax_instant4d.inference import load_trained

    return load_trained(run[0])


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """``instant4d export torch`` of the checkpoint (through the CLI)."""
    out = tmp_path_factory.mktemp("export") / "model.safetensors"
    assert main(["export", "torch", "--checkpoint", str(run[0]), "--out", str(out)]) == 0
    return out


def _images(seed: int, n: int = 1, size: int = SIZE) -> np.ndarray:
    """Smooth random colour images in [0, 1] (a low-resolution noise field, upsampled)."""
    low = jax.random.uniform(jax.random.key(seed), (n, 8, 8, 3))
    return np.asarray(jax.image.resize(low, (n, size, size, 3), "bicubic").clip(0.0, 1.0), np.float32)


def _camera_at(points: np.ndarray, yaw: float = 0.15, pitch: float = 0.1) -> render.Camera:
    """An EG3D-style camera (radius 2.7, model fov) looking at the centroid of ``points``: the image is
    never empty, whatever the initial positions of the Gaussians."""
    target = np.asarray(points, np.float64).reshape(-1, 3).mean(0)
    eye = target + 2.7 * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    w2c = render.look_at(jnp.asarray(eye[None], jnp.float32), jnp.asarray(target[None], jnp.float32))
    return render.Camera(w2c, jnp.asarray(render.intrinsics_for(18.837, SIZE))[None])


_RENDER = nnx.jit(lambda m, g, c: m.render(g, c, SIZE, SIZE))


# --------------------------------------------------------------------------------------------------
# The reference renderer (no model)
# --------------------------------------------------------------------------------------------------
def _scene(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.35, 0.35, (n, 3)).astype(np.float32)
    means[:5, 2] = 3.0  # behind the camera (z < near): dropped
    scales = np.exp(rng.uniform(np.log(0.004), np.log(0.08), (n, 3))).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    opac = rng.uniform(0.0, 1.0, n).astype(np.float32)
    opac[::7] = 0.999  # nearly opaque ones: pixels reach T < 1e-4 and stop early
    opac[::11] = 0.002  # below 1/255: never drawn
    colors = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    cam = render.orbit_camera(np.float32(0.2), np.float32(-0.1), size=40)
    return means, scales, quats, opac, colors, cam


@pytest.mark.parametrize("antialiased", [False, True])
def test_reference_renderer_matches_rasterizer_reference(antialiased):
    means, scales, quats, opac, colors, cam = _scene(0)
    w, h = 40, 32  # not multiples of the 16-pixel tiles
    intr = cam.intrinsics.at[2:].set(jnp.array([w / 2, h / 2]))
    p = rasterizer_ffi.project(means, scales, quats, cam.world_to_cam, intr, w, h, antialiased=antialiased)
    bg = jnp.array([0.1, 0.2, 0.3])
    o = opac * p.compensation
    want = rasterizer_ffi.rasterize_dense(p.means2d, p.conics, p.depths, p.radii, o, colors, bg, w, h)

    tp = tr.project(_t(means), _t(scales), _t(quats), _t(cam.world_to_cam), _t(intr), w, h, antialiased=antialiased)
    np.testing.assert_array_equal(tp.radii.numpy(), np.asarray(p.radii))
    assert int((tp.radii == 0).sum()) >= 5
    for name in ("means2d", "conics", "depths", "compensation"):
        np.testing.assert_allclose(getattr(tp, name).numpy(), getattr(p, name), rtol=1e-5, atol=1e-5)
    for kwargs in ({}, {"cull": False}, {"max_elements": 256 * 7}):  # tiles + culling, brute force, tiny chunks
        got = tr.rasterize(tp.means2d, tp.conics, tp.depths, tp.radii, _t(o), _t(colors), _t(bg), w, h, **kwargs)
        for g, ww, name in zip(got, want, ("rgb", "alpha", "depth"), strict=True):
            assert _max_err(f"renderer {name}", g.numpy(), ww) <= (2e-6 if name != "depth" else 1e-5), (name, kwargs)
    # opaque pixels: the transmittance rule was active (T stays at or above 1e-4) and some pixels are empty
    t_final = 1.0 - np.asarray(want[1], np.float64)
    assert 0.9999e-4 <= t_final.min() < (1e-3 if not antialiased else 0.1) and t_final.max() > 0.5

    # the batched entry point equals per-image projection + rasterization
    out = tr.render(_t(means)[None], _t(scales)[None], _t(quats)[None], _t(opac)[None], _t(colors)[None],
                    _t(cam.world_to_cam)[None], _t(intr)[None], w, h, _t(bg), antialiased=antialiased)
    np.testing.assert_allclose(out.rgb[0].numpy(), want[0], atol=2e-6)


def test_gsplat_adapter():
    gsplat = pytest.importorskip("gsplat", reason="gsplat is not installed (the adapter follows its documented API)")
    del gsplat
    if not torch.cuda.is_available():
        pytest.skip("gsplat renders on CUDA only")
    means, scales, quats, opac, colors, cam = _scene(1)
    opac = np.minimum(opac, 0.9)  # gsplat clamps alpha at 0.999, we at 0.99: compare where neither clamps
    args = [_t(x)[None].cuda() for x in (means, scales, quats, opac, colors, cam.world_to_cam, cam.intrinsics)]
    ref = tr.render(*args, 40, 40, backend="reference")
    got = tr.render(*args, 40, 40, backend="gsplat")
    for g, r in zip(got, ref, strict=True):
        assert float((g - r).abs().max()) < 1e-2


# --------------------------------------------------------------------------------------------------
# export torch: names, shapes, values, metadata
# --------------------------------------------------------------------------------------------------
def test_export_torch_file(exported, trained):
    sd, meta = tm.read_file(exported)
    want = tm.export_state_dict(trained.model)
    assert sd.keys() == want.keys()
    for k in want:
        assert sd[k].dtype == want[k].dtype and np.array_equal(sd[k], want[k]), k
    assert {k: v.shape for k, v in want.items()} == tm.expected_shapes(trained.model)
    # the authors' names: avatar part (backbone / decoder / motion_decoder) and motion part (model.)
    parts = tm.split_official(sd)
    assert all(k.startswith(tm.AVATAR_PREFIXES) for k in parts["E_state_dict"])
    assert all(k.startswith("model.") for k in parts["M_state_dict"])
    assert len(parts["E_state_dict"]) + len(parts["M_state_dict"]) == len(sd)
    code_dim = int(trained.cfg.model.motion.code_dim)
    official = interop.official_gaussian_shapes(int(trained.cfg.model.feature_dim), code_dim)
    assert {k: v.shape for k, v in sd.items() if k.startswith(("decoder.", "motion_decoder."))} == official
    for name in ("backbone.deep_lab_v3.encoder.conv1.weight", "model.model.conv1.weight", "model.pe",
                 "model.final_proj.weight", "model.bbox_proj.0.weight", "model.model.bn1.num_batches_tracked"):
        assert name in sd, name
    # layouts: conv OIHW, dense [out, in]
    conv = np.asarray(trained.model.encoder.deep_lab_v3.encoder.conv1.kernel[...])
    np.testing.assert_array_equal(sd["backbone.deep_lab_v3.encoder.conv1.weight"], conv.transpose(3, 2, 0, 1))
    dense = np.asarray(trained.model.motion_encoder.final_proj.kernel[...])
    np.testing.assert_array_equal(sd["model.final_proj.weight"], dense.T)
    # metadata: the config to rebuild the mirror
    assert meta["format"] == tm.FORMAT
    cfg = tm.config_from_metadata(meta)
    assert cfg.model.to_dict() == trained.cfg.model.to_dict() and cfg.render.to_dict() == trained.cfg.render.to_dict()
    assert json.loads(meta["instant4d.config"])["model"]["encoder"]["resnet_channels"] == [8, 16, 32, 64]
    # the whole mirror has exactly these names (loaded with strict=True)
    mirror = tm.TorchInstant4D(cfg)
    assert set(mirror.state_dict()) == set(sd)
    assert all(tuple(mirror.state_dict()[k].shape) == sd[k].shape for k in sd)


# --------------------------------------------------------------------------------------------------
# Parity: Flax vs the PyTorch mirror on the same inputs
# --------------------------------------------------------------------------------------------------
def test_flax_torch_parity(exported, trained):
    model = trained.model
    src, drv = _images(0), _images(1)
    avatar, z_drv, g, delta = ply.animate_flax(model, src, drv)
    cam = _camera_at(np.asarray(g.means)[0])
    want = _RENDER(model, g, cam)

    mirror = tm.TorchInstant4D.from_file(exported)
    with torch.no_grad():
        t_av = mirror.encode(_t(src))
        t_z = mirror.motion(_t(drv))
        rgb, alpha, depth, aux = mirror.animate(t_av, t_z, cam, SIZE, SIZE)
        crop = tm.face_crop_torch(_t(drv), int(trained.cfg.model.motion.crop_size))
    from jax_instant4d.model.motion import face_crop

    assert _max_err("face crop", crop.numpy(), face_crop(drv, int(trained.cfg.model.motion.crop_size))) <= 1e-6
    planes = t_av.planes.permute(0, 1, 3, 4, 2).numpy()  # the authors' [B, 3, C, P, P] -> ours
    assert _max_err("triplanes", planes, avatar.planes) <= 1e-4 * float(np.abs(avatar.planes).max())
    anchors = getattr(avatar, "anchors", np.zeros_like(np.asarray(avatar.base.means)))
    for name, got, ref in (("f", t_av.f, avatar.f), ("m", t_av.m, avatar.m), ("anchors", t_av.anchors, anchors),
                           ("z_src", t_av.z_src.code, avatar.z_src.code), ("z_drv", t_z.code, z_drv.code),
                           ("z_drv tokens", t_z.tokens, z_drv.tokens), ("delta", aux["delta"], delta)):
        assert _max_err(name, got.numpy(), ref) <= 1e-5, name
    np.testing.assert_array_equal(t_av.visible.numpy(), avatar.visible)
    for name in g._fields:
        assert _max_err(f"gaussians.{name}", getattr(aux["gaussians"], name).numpy(), getattr(g, name)) <= 1e-5, name
        assert _max_err(f"base.{name}", getattr(t_av.base, name).numpy(), getattr(avatar.base, name)) <= 1e-5, name
    assert float(np.asarray(want.alpha).max()) > 0.3 and float(np.mean(np.asarray(want.alpha) > 0.01)) > 0.05
    assert _max_err("image rgb", rgb.numpy(), want.rgb) <= 2e-4
    assert _max_err("image alpha", alpha.numpy(), want.alpha) <= 2e-4
    assert _max_err("image depth", depth.numpy(), want.depth) <= 1e-3


def test_rays_instantiation_parity(trained):
    """Rays mode (the legacy checkpoint's instantiation) against the Flax function, with Φ's densities."""
    from ml_collections import ConfigDict

    from jax_instant4d.model.instantiate import instantiate_rays

    model = trained.model
    rays = ConfigDict(dict(trained.cfg.model.rays.to_dict(), resolution=4, depth_samples=6, importance_samples=5))
    fd = int(trained.cfg.model.feature_dim)
    planes = 0.3 * jax.random.normal(jax.random.key(3), (1, 3, 8, 8, 2 * fd))
    fov, radius = float(trained.cfg.render.fov_degrees), float(trained.cfg.render.camera_radius)
    fn = nnx.jit(lambda m, p: instantiate_rays(p, lambda f: m.decoder(f).densities, rays, fov, radius, feature_dim=fd))
    feats, points = fn(model, planes)
    mirror = tm.TorchInstant4D(trained.cfg)
    mirror.load_state_dict({k: _t(v) for k, v in tm.export_state_dict(model).items()}, strict=True)
    with torch.no_grad():
        t_feats, t_points = tm.instantiate_rays_torch(_t(jnp.moveaxis(planes, -1, 2)),
                                                      lambda f: mirror.decode(f).densities, rays, fov, radius, fd)
    assert feats.shape == (1, 16 * 11, 2 * fd) and float(jnp.std(feats)) > 1e-3
    assert _max_err("rays points", t_points.numpy(), points) <= 1e-5
    assert _max_err("rays features", t_feats.numpy(), feats) <= 1e-5


# --------------------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------------------
STANDARD_HEADER = (
    "ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
    "property float x\nproperty float y\nproperty float z\n"
    "property float nx\nproperty float ny\nproperty float nz\n"
    "property float f_dc_0\nproperty float f_dc_1\nproperty float f_dc_2\n"
    "property float opacity\n"
    "property float scale_0\nproperty float scale_1\nproperty float scale_2\n"
    "property float rot_0\nproperty float rot_1\nproperty float rot_2\nproperty float rot_3\n"
    "end_header\n")


def _gaussians(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n, 3)).astype(np.float32)
    scales = rng.uniform(0.001, 0.05, (n, 3)).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    dens = rng.uniform(0.01, 25.0, n).astype(np.float32)
    dens[0] = 40.0  # opacity rounds to 1.0 in float32: the logit must stay finite
    opac = (-np.expm1(-dens.astype(np.float64))).astype(np.float32)
    opac[3], opac[5] = 0.0, 0.002  # switched off; below 1/255
    colors = rng.uniform(-0.001, 1.001, (n, 3)).astype(np.float32)
    return means, scales, quats, opac, colors, dens


def test_ply_layout_and_round_trip(tmp_path):
    means, scales, quats, opac, colors, dens = _gaussians(50)
    path = tmp_path / "a.ply"
    assert ply.write_ply(path, means, scales, quats, opac, colors, dens) == 48
    data = path.read_bytes()
    head = STANDARD_HEADER.format(n=48).encode("ascii")
    assert data[: len(head)] == head  # byte for byte: the 3DGS property order
    assert len(data) == len(head) + 48 * 17 * 4
    keep = np.ones(50, bool)
    keep[[3, 5]] = False
    # decode the first vertex by hand (little-endian float32 in property order)
    first = struct.unpack("<17f", data[len(head): len(head) + 68])
    np.testing.assert_allclose(first[:3], means[0], rtol=1e-7)
    assert first[3:6] == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(first[6:9], (colors[0] - 0.5) / 0.28209479177387814, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(first[9], 40.0, rtol=1e-6)  # logit(1 - e^-40) = 40 + log(1 - e^-40)
    np.testing.assert_allclose(first[10:13], np.log(scales[0]), rtol=1e-6)
    np.testing.assert_allclose(first[13:], quats[0], rtol=1e-6)
    back = ply.read_ply(path)
    np.testing.assert_array_equal(back.means, means[keep])
    np.testing.assert_allclose(back.scales, scales[keep], rtol=1e-6)
    np.testing.assert_allclose(back.quats, quats[keep], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back.opacities, opac[keep], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back.colors, colors[keep], rtol=1e-6, atol=1e-7)
    # without densities, opacities give the logit directly
    ply.write_ply(path, means, scales, quats, opac, colors)
    np.testing.assert_allclose(ply.read_ply(path).opacities[1:], opac[keep][1:], rtol=1e-5)
    # extra properties (f_rest_*) are ignored by the reader
    rec = ply.to_records(means, scales, quats, opac, colors, dens)
    extra = np.zeros(len(rec), dtype=rec.dtype.descr + [("f_rest_0", "<f4")])
    for name in rec.dtype.names:
        extra[name] = rec[name]
    head2 = head.decode().replace("property float rot_3\n", "property float rot_3\nproperty float f_rest_0\n")
    (tmp_path / "b.ply").write_bytes(head2.encode() + extra.tobytes())
    np.testing.assert_array_equal(ply.read_ply(tmp_path / "b.ply").means, back.means)
    (tmp_path / "c.ply").write_bytes(b"not a ply file")
    with pytest.raises(ply.PlyError, match="c.ply"):
        ply.read_ply(tmp_path / "c.ply")


def test_export_ply_cli(run, trained, tmp_path, capsys):
    from PIL import Image

    # non-square PNGs: centre-cropped to 64 x 64
    src_img = (np.concatenate([np.zeros((8, SIZE, 3)), _images(4)[0], np.zeros((8, SIZE, 3))]) * 255).round()
    for name, img in (("src.png", src_img), ("drv.png", _images(5)[0] * 255)):
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "avatar.ply"
    args = ["export", "ply", "--checkpoint", str(run[0]), "--source", str(tmp_path / "src.png"), "--out", str(out)]
    calls = []

    def loaded(*a, **kw):  # the model is already loaded (test_export_torch_file's CLI run loads one for real)
        calls.append((a, kw))
        return trained

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("jax_instant4d.inference.load_trained", loaded)
        assert main(args + ["--driving", str(tmp_path / "drv.png"), "--config.render.near=0.02"]) == 0
    assert calls == [((str(run[0]), None), {"overrides": ["--config.render.near=0.02"], "ema": True})]
    src, drv = ply.load_image(tmp_path / "src.png", SIZE), ply.load_image(tmp_path / "drv.png", SIZE)
    np.testing.assert_allclose(src[0], src_img[8:-8] / 255.0, atol=1e-6)
    _, _, g, _ = ply.animate_flax(trained.model, src, drv)
    g = [np.asarray(x)[0] for x in g]
    keep = g[3] >= 1.0 / 255.0
    back = ply.read_ply(out)
    assert len(back.means) == int(keep.sum()) > 0
    np.testing.assert_array_equal(back.means, g[0][keep])
    np.testing.assert_allclose(back.scales, g[1][keep], rtol=1e-6)
    np.testing.assert_allclose(back.quats, g[2][keep], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back.opacities, g[3][keep], rtol=1e-6)
    np.testing.assert_allclose(back.colors, g[4][keep], rtol=1e-6, atol=1e-7)
    # no driving frame: the source's own expression
    ply.export_avatar_ply(trained.model, src, None, out)
    _, _, g0, _ = ply.animate_flax(trained.model, src, src)
    visible = np.asarray(g0.opacities)[0] >= 1.0 / 255.0
    np.testing.assert_allclose(ply.read_ply(out).colors, np.asarray(g0.colors)[0][visible], atol=1e-6)
    # user errors name the file and leave nothing behind
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ply.ImageError, match="bad.png"):
        ply.load_image(tmp_path / "bad.png", SIZE)
    capsys.readouterr()
    assert main(["export", "ply", "--checkpoint", str(tmp_path / "nowhere"), "--source", "x.png",
                 "--out", str(tmp_path / "x.ply")]) == 1
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "x.ply").exists()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        tm._atomic_write(tmp_path / "out.safetensors", fail)
    assert list(tmp_path.iterdir()) == []


def test_exported_files_get_the_umask_mode(tmp_path):
    """Not mkstemp's 0600: others can read an exported file as they can any file the user writes."""
    import os

    old = os.umask(0o022)
    try:
        tm.save_file({"w": np.zeros((2, 3), np.float32)}, tmp_path / "a.safetensors")
        os.umask(0o077)
        tm.save_file({"w": np.zeros((2, 3), np.float32)}, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------------------------------
# import-torch: back into a checkpoint
# --------------------------------------------------------------------------------------------------
def _config_args() -> list[str]:
    """--config.* overrides that rebuild the tiny model from configs/small.py."""
    from real_checkpoint import TINY_OVERRIDES

    return ["--config", str(ROOT / "configs" / "small.py")] + [f"--config.{o}" for o in TINY_OVERRIDES
                                                              if o.startswith(("model.", "render."))]


def test_import_torch_round_trip(trained, exported, tmp_path, capsys):
    from jax_instant4d.inference import load_trained

    out = tmp_path / "imported"
    assert main(["export", "import-torch", str(exported), "--out", str(out), *_config_args()]) == 0
    back = load_trained(out)
    assert back.step == 0
    a = nnx.to_flat_state(nnx.state(trained.model, nnx.Not(nnx.RngState)))
    b = dict(nnx.to_flat_state(nnx.state(back.model, nnx.Not(nnx.RngState))))
    assert len(a) > 100
    for path, var in a:
        np.testing.assert_array_equal(np.asarray(b[path].get_value()), np.asarray(var.get_value()), err_msg=str(path))
    # identical rendered image
    src, drv = _images(6), _images(7)
    _, _, g1, _ = ply.animate_flax(trained.model, src, drv)
    _, _, g2, _ = ply.animate_flax(back.model, src, drv)
    cam = _camera_at(np.asarray(g1.means)[0])
    r1, r2 = _RENDER(trained.model, g1, cam), _RENDER(back.model, g2, cam)
    assert float(np.asarray(r1.alpha).max()) > 0.3
    np.testing.assert_array_equal(np.asarray(r2.rgb), np.asarray(r1.rgb))
    np.testing.assert_array_equal(np.asarray(r2.depth), np.asarray(r1.depth))
    # a second import into the same work directory needs --overwrite
    capsys.readouterr()
    assert main(["export", "import-torch", str(exported), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_import_torch_names_the_offending_tensors(exported, tmp_path, capsys):
    sd, meta = tm.read_file(exported)
    sd = dict(sd)
    del sd["decoder.net.0.bias"]
    sd["motion_decoder.extra.weight"] = np.zeros(3, np.float32)
    sd["backbone.feat_decoder.out_layer.bias"] = np.zeros(7, np.float32)
    bad = tm.save_file(sd, tmp_path / "bad.safetensors", meta)
    out = tmp_path / "never"
    capsys.readouterr()
    assert main(["export", "import-torch", str(bad), "--out", str(out)]) == 1  # config from the metadata
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    assert main(["export", "import-torch", str(tmp_path / "junk.safetensors"), "--out", str(out)]) == 1
    msg = capsys.readouterr().err
    for name in ("decoder.net.0.bias", "motion_decoder.extra.weight", "backbone.feat_decoder.out_layer.bias",
                 "bad.safetensors", "junk.safetensors"):
        assert name in msg, name
    assert not (out / "checkpoints").exists()
    # the official checkpoint layout ({"E_state_dict", "M_state_dict"} in a .pth) reads back to the same dict
    good, _ = tm.read_file(exported)
    torch.save({k: {n: _t(v) for n, v in d.items()} for k, d in tm.split_official(good).items()},
               tmp_path / "ckpt.pth")
    again, _ = tm.read_file(tmp_path / "ckpt.pth")
    assert again.keys() == good.keys() and all(np.array_equal(again[k], good[k]) for k in good)
