"""instant4d eval: metrics against independent NumPy references, the consistency score on scenes with
known answers, the expression regressor's cache and reported accuracy, ground-truth rendering against
the stored teacher views, and the whole run on the real tiny checkpoint (``real_run``)."""

import functools
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_instant4d import render
from jax_instant4d.eval import consistency as cons
from jax_instant4d.eval import expression, groundtruth, metrics, paper
from jax_instant4d.eval import run as run_lib
from jax_instant4d.eval.run import cross_partners, read_clips

# --------------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------------


def _np_ssim(x: np.ndarray, y: np.ndarray, pad: int = 0) -> float:
    """Wang et al.'s SSIM written out over every 11x11 window (float64): Gaussian weights, sigma 1.5,
    population statistics; ``pad`` zero pixels around the image (0: only windows inside)."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(x.shape[-1]):
        pa = np.lib.stride_tricks.sliding_window_view(np.pad(x[..., ch].astype(np.float64), pad), (11, 11))
        pb = np.lib.stride_tricks.sliding_window_view(np.pad(y[..., ch].astype(np.float64), pad), (11, 11))
        ma, mb = (pa * win).sum((-1, -2)), (pb * win).sum((-1, -2))
        da, db = pa - ma[..., None, None], pb - mb[..., None, None]
        va, vb, cab = (da * da * win).sum((-1, -2)), (db * db * win).sum((-1, -2)), (da * db * win).sum((-1, -2))
        vals.append(((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_independent_reference(rng):
    x = rng.uniform(0, 1, (2, 20, 23, 3)).astype(np.float32)
    x[1] = np.clip(np.cumsum(x[1], axis=0) / 10.0, 0, 1)  # a smooth image too
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    got = np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(y)))
    want = [_np_ssim(x[b], y[b]) for b in range(2)]
    np.testing.assert_allclose(got, want, atol=2e-5)
    got0 = np.asarray(metrics.ssim(jnp.asarray(x), jnp.asarray(y), padding="zeros"))
    np.testing.assert_allclose(got0, [_np_ssim(x[b], y[b], pad=5) for b in range(2)], atol=2e-5)
    assert metrics.ssim_map(jnp.asarray(x), jnp.asarray(y)).shape == (2, 10, 13, 3)


def test_ssim_and_psnr_known_values(rng):
    x = jnp.asarray(rng.uniform(0, 1, (1, 16, 16, 3)), jnp.float32)
    np.testing.assert_allclose(metrics.ssim(x, x), [1.0], atol=1e-6)
    y = jnp.clip(x + 0.2 * jnp.asarray(rng.normal(size=x.shape), jnp.float32), 0, 1)
    np.testing.assert_allclose(metrics.ssim(x, y), metrics.ssim(y, x), atol=1e-6)  # symmetric
    assert float(metrics.ssim(x, y)[0]) < 0.9
    # constant images a and b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.5
    ssim_ab = metrics.ssim(jnp.full((1, 12, 12, 1), a), jnp.full((1, 12, 12, 1), b))
    np.testing.assert_allclose(ssim_ab, [(2 * a * b + 1e-4) / (a * a + b * b + 1e-4)], rtol=1e-5)
    # PSNR: a uniform error of 0.1 is 20 dB; identical images hit the 100 dB cap
    t = jnp.full((2, 8, 8, 3), 0.5)
    np.testing.assert_allclose(metrics.psnr(t + 0.1, t), [20.0, 20.0], atol=1e-4)
    np.testing.assert_allclose(metrics.psnr(t, t), [100.0, 100.0])
    with pytest.raises(ValueError, match="at least"):
        metrics.ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
    np.testing.assert_allclose(metrics.gaussian_window().sum(), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Multi-view consistency
# --------------------------------------------------------------------------------------------------


def _np_sphere_depth(w2c: np.ndarray, intr: np.ndarray, size: int, radius: float) -> np.ndarray:
    """Camera-z depth of a sphere at the origin per pixel centre (inf where the ray misses): NumPy."""
    rot, t = w2c[:3, :3].astype(np.float64), w2c[:3, 3].astype(np.float64)
    centre = -rot.T @ t
    fx, fy, cx, cy = intr
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    dirs_cam = np.stack([(jj - cx) / fx, (ii - cy) / fy, np.ones_like(jj)], -1)  # z = 1
    dirs = dirs_cam @ rot  # rows: R^T d
    b = dirs @ centre
    a = np.sum(dirs * dirs, -1)
    disc = b * b - a * (centre @ centre - radius ** 2)
    s = (-b - np.sqrt(np.maximum(disc, 0))) / a  # the ray parameter is camera z since d_cam.z = 1
    return np.where(disc > 0, s, np.inf)


def test_unproject_project_against_analytic_sphere():
    size, r = 32, 0.3
    cam_a = render.orbit_camera(jnp.asarray([0.3]), jnp.asarray([0.1]), size=size)
    cam_b = cons.orbit_about_up(cam_a, jnp.asarray([-20.0]))
    # orbit_about_up is a rotation of the camera about world y: the centre moves by -20 deg in yaw
    want_b = render.orbit_camera(jnp.asarray([0.3 - math.radians(20.0)]), jnp.asarray([0.1]), size=size)
    np.testing.assert_allclose(cam_b.world_to_cam, want_b.world_to_cam, atol=1e-5)
    np.testing.assert_allclose(cons.partner_yaw(cam_a, 15.0), [-15.0])
    d = _np_sphere_depth(np.asarray(cam_a.world_to_cam[0]), np.asarray(cam_a.intrinsics[0]), size, r)
    hit = np.isfinite(d)
    assert 0.2 < hit.mean() < 0.9
    pts = np.asarray(jax.jit(cons.unproject)(jnp.asarray(np.where(hit, d, 3.0)[None], jnp.float32), cam_a))[0]
    np.testing.assert_allclose(np.linalg.norm(pts[hit], axis=-1), r, atol=1e-4)  # back on the sphere
    project = jax.jit(cons.project)
    uv, z = project(jnp.asarray(pts[None]), cam_a)
    grid = np.asarray(cons.pixel_grid(size, size))
    np.testing.assert_allclose(np.asarray(uv)[0][hit], grid[hit], atol=2e-3)
    np.testing.assert_allclose(np.asarray(z)[0][hit], d[hit], rtol=1e-5)
    # projection into B by hand: x_cam = R p + t, (fx x / z + cx, fy y / z + cy)
    w2c_b, k = np.asarray(cam_b.world_to_cam[0], np.float64), np.asarray(cam_b.intrinsics[0], np.float64)
    pc = pts[hit] @ w2c_b[:3, :3].T + w2c_b[:3, 3]
    uv_b, _ = project(jnp.asarray(pts[None]), cam_b)
    np.testing.assert_allclose(np.asarray(uv_b)[0][hit][:, 0], k[0] * pc[:, 0] / pc[:, 2] + k[2], atol=2e-3)
    np.testing.assert_allclose(np.asarray(uv_b)[0][hit][:, 1], k[1] * pc[:, 1] / pc[:, 2] + k[3], atol=2e-3)
    # bilinear sampling at pixel centres returns the pixels; halfway between two it averages them
    img = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 4, 5, 2)), jnp.float32)
    got, inside = cons.bilinear(img, cons.pixel_grid(4, 5)[None])
    np.testing.assert_allclose(np.asarray(got)[0][:3, :4], np.asarray(img)[0][:3, :4], atol=1e-6)
    assert bool(inside[0, 0, 0]) and not bool(inside[0, 3, 4])
    mid, _ = cons.bilinear(img, jnp.asarray([[[[1.0, 0.5]]]]))
    np.testing.assert_allclose(np.asarray(mid)[0, 0, 0], np.asarray(img)[0, 0, :2].mean(0), atol=1e-6)


def _textured_ball(n: int = 6000, radius: float = 0.7):
    """Opaque small Gaussians covering a sphere; colour a smooth function of position."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    p = radius * np.stack([np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)], -1)
    col = 0.5 + 0.45 * np.stack([np.sin(4 * p[:, 0]), np.cos(5 * p[:, 1]), np.sin(3 * p[:, 2] + 1)], -1)
    scales = np.full((n, 3), 0.022)
    quats = np.tile([1.0, 0, 0, 0], (n, 1))
    return [jnp.asarray(a, jnp.float32)[None] for a in (p, scales, quats, np.full(n, 0.99), col)]


@functools.partial(jax.jit, static_argnums=2)
def _render(scene, cam, size):
    m, s, q, o, c = scene
    out = render.render(m, s, q, o, c, cam, size, size, 0.0, backend="cpu")
    return out.rgb, out.alpha, out.depth


def test_consistency_near_perfect_for_one_scene_and_worse_when_altered():
    size = 48
    scene = _textured_ball()
    cam_a = render.orbit_camera(jnp.asarray([0.35]), jnp.asarray([0.1]), size=size)
    cam_b = cons.orbit_about_up(cam_a, cons.partner_yaw(cam_a, 15.0))
    a, b = _render(scene, cam_a, size), _render(scene, cam_b, size)
    consistency = jax.jit(cons.consistency)
    total, count, cover = consistency(*a, *b, cam_a, cam_b)
    good = cons.score(np.asarray(total), np.asarray(count))
    assert float(cover[0]) > 0.6  # most foreground pixels are co-visible 15 degrees apart
    assert good < 0.03, good
    # view B shows a different texture: same geometry, colours disagree
    m, s, q, o, c = scene
    altered = _render((m, s, q, o, jnp.roll(c, 1500, axis=1)), cam_b, size)
    t2, n2, _ = consistency(*a, *altered, cam_a, cam_b)
    bad = cons.score(np.asarray(t2), np.asarray(n2))
    assert bad > 5 * good and bad > 0.05, (good, bad)
    # view B's image shifted by 3 pixels (its camera says otherwise): worse too
    shifted = tuple(jnp.roll(x, 3, axis=2) for x in b)
    t3, n3, _ = consistency(*a, *shifted, cam_a, cam_b)
    assert cons.score(np.asarray(t3), np.asarray(n3)) > 2 * good
    assert math.isnan(cons.score(np.zeros(1), np.zeros(1)))


# --------------------------------------------------------------------------------------------------
# Ground truth, expression regressor (tiny), the run on the real tiny checkpoint
# --------------------------------------------------------------------------------------------------


def tiny_regressor(cfg) -> expression.RegressorSettings:
    return expression.settings_for(cfg, resolution=64, identities=4, test_identities=4, train_images=64,
                                   test_images=32, steps=40, batch_size=16, widths=(8, 16), hidden=32,
                                   learning_rate=3e-3)


def test_cross_partners():
    assert cross_partners([0, 0, 1, 2]) == [2, 2, 3, 0]
    assert cross_partners([5, 5]) == [None, None]


def test_groundtruth_reproduces_stored_teacher_views(real_run):
    from jax_instant4d.data.pipeline import dataset_path

    _workdir, cfg = real_run
    clips = read_clips(dataset_path(cfg), "heldout", int(cfg.data.resolution))
    assert len(clips) == 2 and clips[0].identity != clips[1].identity
    c = clips[0]
    times = np.arange(c.num_times * c.num_views) // c.num_views
    got = groundtruth.render_params(np.repeat(c.identity_params[None], len(times), 0), c.expression[times],
                                    c.target_w2c, c.target_intrinsics, int(cfg.data.resolution), cfg.render.backend,
                                    group=min(16, int(cfg.data.num_identities)))
    want = np.round(c.targets * 255).astype(np.int32)
    assert np.abs(got.astype(np.int32) - want).max() <= 1


def test_expression_regressor_trains_once_and_reports_its_accuracy(real_run):
    _workdir, cfg = real_run
    s = tiny_regressor(cfg)
    group = min(16, int(cfg.data.num_identities))
    reg = expression.ensure_regressor(cfg.data.data_dir, s, backend=cfg.render.backend, group=group)
    path = expression.cache_path(cfg.data.data_dir, s)
    assert path.is_file() and reg.info["cached"] is False and reg.info["path"] == str(path)
    assert reg.info["final_loss"] < reg.info["first_loss"]
    # the reported held-out accuracy is what the network does on the held-out renders
    x, e = expression.make_images(s, "test", cfg.render.backend, group)
    pred = reg.predict(x.astype(np.float32) / 255.0)
    np.testing.assert_allclose(reg.info["test_mae"], np.abs(pred - e).mean(), rtol=1e-5)
    lo, hi = expression.record.EXPRESSION_RANGES[:, 0], expression.record.EXPRESSION_RANGES[:, 1]
    assert np.all(pred >= lo) and np.all(pred <= hi)
    # cached: loaded, not retrained, same predictions
    again = expression.ensure_regressor(cfg.data.data_dir, s, backend=cfg.render.backend, group=group)
    assert again.info["cached"] is True
    np.testing.assert_allclose(again.predict(x[:4] / 255.0), pred[:4], atol=1e-6)
    # another setting is another file; the error is a plain mean absolute error
    assert expression.cache_path(cfg.data.data_dir, expression.settings_for(cfg, steps=41)) != path
    np.testing.assert_allclose(expression.expression_error(np.ones((2, 14)), np.zeros((2, 14))), [1.0, 1.0])
    # mirroring swaps the subject's left and right: an involution that moves pixels and parameters
    e = e[:3]
    xm, em = expression.mirror(x[:3], e)
    np.testing.assert_array_equal(xm[:, :, 0], x[:3, :, -1])
    names = list(expression.record.EXPRESSION_NAMES)
    np.testing.assert_array_equal(em[:, names.index("blink_left")], e[:, names.index("blink_right")])
    np.testing.assert_array_equal(em[:, names.index("gaze_x")], -e[:, names.index("gaze_x")])
    np.testing.assert_array_equal(em[:, names.index("jaw_open")], e[:, names.index("jaw_open")])
    np.testing.assert_array_equal(expression.mirror(xm, em)[1], e)


def test_training_blur_is_a_gaussian_of_each_images_own_width():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 20, 17, 3)).astype(np.float32)
    sigma = np.asarray([0.0, 0.7, 3.0], np.float32)
    got = np.asarray(expression.blur(jnp.asarray(x), jnp.asarray(sigma)))
    np.testing.assert_array_equal(got[0], x[0])  # width 0: the image itself
    r = expression.BLUR_RADIUS
    for i in (1, 2):  # the independent reference: scipy's separable Gaussian, the border repeated, same taps
        want = ndimage.gaussian_filter(x[i], (sigma[i], sigma[i], 0), mode="nearest", truncate=r / sigma[i])
        np.testing.assert_allclose(got[i], want, atol=2e-6)
    assert np.std(got[2]) < np.std(got[1]) < np.std(x[1])  # wider: smoother (white noise in)
    with pytest.raises(ValueError, match="blur_sigma"):
        expression.RegressorSettings(blur_sigma=r)


def test_evaluate_on_the_real_tiny_checkpoint(real_run, tmp_path):
    from jax_instant4d.data.pipeline import dataset_path
    from jax_instant4d.eval import evaluate
    from jax_instant4d.train import losses

    workdir, cfg = real_run
    lp = tmp_path / "lpips.npz"
    losses.save_weights(losses.init_lpips(0), lp)
    settings = tiny_regressor(cfg)
    seen = []
    result = evaluate(workdir, "heldout", lpips_weights=str(lp), regressor=settings, timing_repeats=3,
                      on_frames=lambda task, ci, ours, ref: seen.append((task, ci, ours, ref)))
    on_disk = json.loads((workdir / "eval_heldout.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key in ("checkpoint", "step", "split", "config_name", "fusion", "num_gaussians", "image_size", "self",
                "cross", "animate_fps", "encode_ms", "notes"):
        assert key in result
    assert result["step"] == 0 and result["split"] == "heldout" and result["num_gaussians"] == 1024
    assert result["fusion"] == cfg.model.fusion and result["image_size"] == int(cfg.model.image_size)
    assert result["animate_fps"] > 0 and result["encode_ms"] > 0
    t, v, res = int(cfg.data.time_steps), int(cfg.data.views), int(cfg.data.resolution)
    for task in ("self", "cross"):
        m = result[task]
        assert {"psnr", "ssim", "lpips", "identity", "expression_error", "expression_error_teacher", "consistency",
                "num_frames"} <= set(m)
        assert m["num_frames"] == 2 * t * v
        assert m["identity"] is None  # no face-recognition weights: absent, not faked
        if m["consistency"] is None:  # the untrained model is translucent: no alpha > 0.9 anywhere
            assert any(f"consistency ({task}): absent" in x for x in result["notes"])
        else:
            assert m["consistency"] >= 0
    assert any("identity: absent" in n for n in result["notes"])

    # The frames it scored: self against the stored teacher views, cross against the ground truth of the
    # source identity performing the partner clip's expressions; metrics recomputed here independently.
    clips = read_clips(dataset_path(cfg), "test", res)
    reg = expression.ensure_regressor(cfg.data.data_dir, settings)
    lp_params = losses.load_weights(lp, "lpips")
    lpips_fn = run_lib._lpips  # the network is train.losses' (tested there); here: which frames, which mean
    assert sorted((task, ci) for task, ci, _o, _r in seen) == sorted(
        (f"{task}{kind}", ci) for task in ("self", "cross") for kind in ("", "-expression", "-expression-undriven")
        for ci in (0, 1))
    cam = render.orbit_camera(jnp.zeros(1), jnp.zeros(1), radius=float(cfg.render.camera_radius),
                              fov_degrees=float(cfg.render.fov_degrees), size=settings.resolution)
    for task in ("self", "cross"):
        ps, ss, lps, ex, ex_und, ex_ref, ex_ceil = [], [], [], [], [], [], []
        # expressions: read from one frontal frame per time step at the regressor's resolution; the reference
        # is the ground truth rendered there
        for tk, ci, ours, ref in seen:
            if not tk.startswith(f"{task}-expression"):
                continue
            c, d = clips[ci], clips[1 - ci] if task == "cross" else clips[ci]
            truth = d.expression[:t]
            assert ours.shape == (t, settings.resolution, settings.resolution, 3)
            want = groundtruth.render_params(np.repeat(c.identity_params[None], t, 0), truth,
                                             np.repeat(np.asarray(cam.world_to_cam), t, 0),
                                             np.repeat(np.asarray(cam.intrinsics), t, 0), settings.resolution,
                                             cfg.render.backend, group=4)
            np.testing.assert_array_equal(np.round(ref * 255).astype(np.uint8), want)
            pred = reg.predict(ours)
            err = np.abs(pred - truth).mean(-1)
            if tk.endswith("-undriven"):
                ex_und.append(err)
                ex_ceil.append(np.abs(pred - c.source_expression[None]).mean(-1))  # the source's own expression
            else:
                ex.append(err)
                ex_ref.append(np.abs(reg.predict(ref) - truth).mean(-1))
        for tk, ci, ours, ref in seen:
            if tk != task:
                continue
            c, d = clips[ci], clips[1 - ci] if task == "cross" else clips[ci]
            truth = d.expression[np.arange(t * v) // v]
            if task == "self":
                np.testing.assert_array_equal(ref, c.targets)
            else:
                want = groundtruth.render_params(np.repeat(c.identity_params[None], t * v, 0), truth, c.target_w2c,
                                                 c.target_intrinsics, res, cfg.render.backend, group=4)
                np.testing.assert_array_equal(np.round(ref * 255).astype(np.uint8), want)
            for k in range(t * v):
                o, r = ours[k].astype(np.float64), ref[k].astype(np.float64)
                ps.append(-10 * np.log10(np.mean((np.clip(o, 0, 1) - r) ** 2)))
                ss.append(_np_ssim(o, r))
            lps.append(np.asarray(lpips_fn(lp_params, jnp.asarray(ours), jnp.asarray(ref))))
        m = result[task]
        np.testing.assert_allclose(m["psnr"], np.mean(ps), atol=2e-3)
        np.testing.assert_allclose(m["ssim"], np.mean(ss), atol=1e-4)
        np.testing.assert_allclose(m["lpips"], np.mean(np.concatenate(lps)), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m["expression_error"], np.mean(np.concatenate(ex)), atol=1e-5)
        np.testing.assert_allclose(m["expression_error_teacher"], np.mean(np.concatenate(ex_ref)), atol=1e-5)
        np.testing.assert_allclose(m["expression_error_undriven"], np.mean(np.concatenate(ex_und)), atol=1e-5)
        np.testing.assert_allclose(m["expression_error_ceiling"], np.mean(np.concatenate(ex_ceil)), atol=1e-5)
        assert m["expression_error_ceiling"] != pytest.approx(m["expression_error_undriven"], abs=1e-4)
        for suffix in ("", "_undriven", "_ceiling"):  # per parameter: the same errors, split by parameter
            per = m[f"expression_error{suffix}_per_parameter"]
            assert len(per) == 14
            np.testing.assert_allclose(np.mean(list(per.values())), m[f"expression_error{suffix}"], atol=1e-5)
        assert paper.reachable_gap(m) == pytest.approx(
            (m["expression_error_undriven"] - m["expression_error_ceiling"])
            / (m["expression_error_undriven"] - m["expression_error_teacher"]))
        assert m["num_expression_frames"] == 2 * t
        gap = paper.gap_closed(m)
        want_gap = (m["expression_error_undriven"] - m["expression_error"]) / (
            m["expression_error_undriven"] - m["expression_error_teacher"])
        assert gap == pytest.approx(want_gap)
    assert result["expression_resolution"] == result["expression_render_resolution"] == settings.resolution
    assert result["motion_weights"] == {"weights": "", "sha256": "", "freeze": False}

    # Self-reenactment baselines and eye + mouth PSNR, recomputed from the raw records: the region masks
    # (green + blue of target_masks), the source image shown unchanged, and per frame in order.
    from PIL import Image

    from jax_instant4d.data.pipeline import open_source

    raw = open_source(dataset_path(cfg), "test")
    full, region, region_src, src_full = [], [], [], []
    for _tk, ci, ours, ref in sorted((x for x in seen if x[0] == "self"), key=lambda x: x[1]):
        rec, c = raw[ci], clips[ci]
        for k in range(t * v):
            mask = np.asarray(Image.open(io.BytesIO(rec["target_masks"][k])).convert("RGB"), np.float64) / 255.0
            sel = np.clip(mask[..., 1] + mask[..., 2], 0, 1) > 0.5
            o, r, src = ours[k].astype(np.float64), ref[k].astype(np.float64), c.source.astype(np.float64)
            full.append(-10 * np.log10(np.mean((np.clip(o, 0, 1) - r) ** 2)))
            src_full.append(-10 * np.log10(np.mean((src - r) ** 2)))
            region.append(-10 * np.log10(np.mean((np.clip(o, 0, 1) - r)[sel] ** 2)) if sel.any() else np.nan)
            region_src.append(-10 * np.log10(np.mean((src - r)[sel] ** 2)) if sel.any() else np.nan)
    m, per = result["self"], result["self"]["per_frame"]
    assert np.isfinite(region).sum() >= t * v  # the synthetic heads record eye and mouth masks
    np.testing.assert_allclose(per["psnr"], full, atol=2e-3)
    np.testing.assert_allclose(np.asarray(per["region_psnr"], float), region, atol=2e-3)  # None (NaN) alike
    np.testing.assert_allclose(m["region_psnr"], np.nanmean(region), atol=2e-3)
    np.testing.assert_allclose(m["psnr_source"], np.mean(src_full), atol=2e-3)
    np.testing.assert_allclose(m["region_psnr_source"], np.nanmean(region_src), atol=2e-3)
    assert len(m["frames"]) == 16 and m["frames"] != result["cross"]["frames"]  # which frames: a fingerprint
    assert "What the driving frame adds" in (workdir / "eval_heldout.md").read_text()

    # ...and the frames are the model's: clip 0, self, target k = (t=1, v=1), assembled here by hand (source
    # encoded, driving frame t's motion, camera k alone), with the loaded model's jitted functions.
    _trained, model = run_lib._load(workdir, None, None)
    size, c, k = int(cfg.model.image_size), clips[0], t * v - 1
    avatar = model.encode(losses.resize_to(jnp.asarray(c.source[None]), size))
    z = model.motion(losses.resize_to(jnp.asarray(c.driving[k // v][None]), size))
    one, _alpha, _depth = model.animate(avatar, z, jnp.asarray(c.target_w2c[k:k + 1]),
                                        jnp.asarray(c.target_intrinsics[k:k + 1]), res)
    ours_self0 = next(o for tk, ci, o, _r in seen if (tk, ci) == ("self", 0))
    np.testing.assert_allclose(ours_self0[k], np.clip(np.asarray(one[0]), 0, 1), atol=2e-3)
    # the undriven baseline: the same avatar with its own source motion as z_drv
    und, _alpha, _depth = model.animate(avatar, avatar.z_src, jnp.asarray(c.target_w2c[k:k + 1]),
                                        jnp.asarray(c.target_intrinsics[k:k + 1]), res)
    ref_k = c.targets[k].astype(np.float64)
    want = -10 * np.log10(np.mean((np.clip(np.asarray(und[0], np.float64), 0, 1) - ref_k) ** 2))
    np.testing.assert_allclose(per["psnr_undriven"][k], want, atol=2e-3)
    # the ceiling: the same undriven frame against the ground truth at the source's own expression (neutral for
    # the synthetic heads), rendered at target k's camera
    assert c.source_expression is not None and c.source_expression.shape == (len(c.expression[0]),)
    still = groundtruth.render_params(c.identity_params[None], c.source_expression[None], c.target_w2c[k:k + 1],
                                      c.target_intrinsics[k:k + 1], res, cfg.render.backend, group=4)[0]
    want = -10 * np.log10(np.mean((np.clip(np.asarray(und[0], np.float64), 0, 1) - still / 255.0) ** 2))
    np.testing.assert_allclose(per["psnr_ceiling"][k], want, atol=2e-3)
    assert not np.array_equal(still, np.round(ref_k * 255))  # the target shows another expression
    share = paper.reachable_share(m)
    assert share == pytest.approx((m["region_psnr"] - m["region_psnr_undriven"])
                                  / (m["region_psnr_ceiling"] - m["region_psnr_undriven"]))

    md = (workdir / "eval_heldout.md").read_text()
    assert "107.31" in md and "0.8294" in md and "**this run**" in md and "*comparable?*" in md
    assert "arXiv:2512.16893" in md
    row = next(line for line in md.splitlines() if line.startswith("| **this run**"))
    assert row.count("—") >= 3  # ID (no weights), EMO and APD (not measured)


def test_expression_render_res_reads_the_avatar_drawn_smaller(real_run):
    """--expression-render-res R: ours and ours undriven are drawn at R^2 at the frontal camera and the regressor
    reads them resized; the errors are the regressor's on exactly those frames; the reference stays at the
    regressor's resolution; the JSON, the notes and the markdown say so. R < 1 is an error."""
    from jax_instant4d.data.pipeline import dataset_path

    workdir, cfg = real_run
    settings = tiny_regressor(cfg)
    small = settings.resolution // 2
    with pytest.raises(ValueError, match="--expression-render-res must be >= 1"):
        run_lib.evaluate(workdir, "heldout", write=False, regressor=settings, expression_render_res=0)
    seen = []
    r = run_lib.evaluate(workdir, "heldout", write=False, regressor=settings, consistency=False, timing_repeats=1,
                         expression_render_res=small,
                         on_frames=lambda task, ci, ours, ref: seen.append((task, ci, ours, ref)))
    assert r["expression_resolution"] == settings.resolution and r["expression_render_resolution"] == small
    reg = expression.ensure_regressor(cfg.data.data_dir, settings)
    clips = read_clips(dataset_path(cfg), "test", int(cfg.data.resolution))
    t = int(cfg.data.time_steps)
    errors = {}
    for task, ci, ours, ref in seen:
        if "-expression" not in task:
            continue
        assert ours.shape == (t, small, small, 3)
        assert ref.shape == (t, settings.resolution, settings.resolution, 3)
        driver = clips[1 - ci] if task.startswith("cross") else clips[ci]
        errors.setdefault(task, []).append(np.abs(reg.predict(ours) - driver.expression[:t]).mean(-1))
    for task in ("self", "cross"):
        for suffix, key in (("", "expression_error"), ("-undriven", "expression_error_undriven")):
            np.testing.assert_allclose(r[task][key], np.mean(np.concatenate(errors[f"{task}-expression{suffix}"])),
                                       atol=1e-5)
    assert any(f"rendered at {small}x{small}" in n for n in r["notes"])
    assert f"ours undriven rendered at {small}² and resized" in paper.markdown_report(r)


def test_evaluate_without_ground_truth_reports_reference_free_metrics_only(real_run, monkeypatch):
    """Real teacher clips carry no expression or identity parameters: cross has no reference."""
    import dataclasses

    workdir, cfg = real_run
    read = run_lib.read_clips
    monkeypatch.setattr(run_lib, "read_clips", lambda *a, **k: [
        dataclasses.replace(c, expression=None, identity_params=None) for c in read(*a, **k)])
    r = run_lib.evaluate(workdir, "test", write=False, timing_repeats=1, consistency=False)
    n = 2 * int(cfg.data.time_steps) * int(cfg.data.views)
    assert r["self"]["num_frames"] == r["cross"]["num_frames"] == n
    assert r["self"]["psnr"] is not None and r["self"]["ssim"] is not None
    for key in ("psnr", "ssim", "lpips", "identity", "expression_error", "expression_error_teacher", "consistency"):
        assert r["cross"][key] is None, key
    assert r["self"]["expression_error"] is None and r["expression_regressor"] is None
    assert any("no ground-truth expressions" in x for x in r["notes"])
    assert any("cross: no reference frames" in x for x in r["notes"])
    assert not (workdir / "eval_test.json").exists()


def test_user_errors_name_what_is_wrong(real_run, tmp_path, capsys):
    from jax_instant4d.cli import main
    from jax_instant4d.eval.run import evaluate

    workdir, _cfg = real_run
    with pytest.raises(ValueError, match="'validation2'"):
        evaluate(workdir, "validation2", write=False)
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        evaluate(tmp_path / "no_such_run", "heldout", write=False)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluate(workdir, "heldout", lpips_weights=str(tmp_path / "missing.npz"), write=False)
    assert main(["eval", "--checkpoint", str(tmp_path / "no_such_run")]) == 2
    assert "no_such_run" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(workdir), "--split", "bogus"]) == 2
    assert "'bogus'" in capsys.readouterr().err


def test_load_result_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        run_lib.load_result(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        run_lib.load_result(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"step": 3}')
    assert run_lib.load_result(tmp_path / "ok.json") == {"step": 3}


def test_markdown_report_marks_what_compares():
    res = {"checkpoint": "x/0", "step": 0, "split": "heldout", "config_name": "small", "fusion": "local",
           "num_gaussians": 4096, "image_size": 64, "animate_fps": 12.5, "encode_ms": 40.0, "notes": ["n1"],
           "self": {"psnr": 20.0, "ssim": 0.8, "lpips": None, "identity": None, "expression_error": 0.1,
                    "expression_error_teacher": 0.05, "consistency": 0.01, "num_frames": 8},
           "cross": {"psnr": None, "ssim": None, "lpips": None, "identity": 0.5, "expression_error": None,
                     "expression_error_teacher": None, "consistency": 0.02, "num_frames": 8}}
    md = paper.markdown_report(res)
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| Method |"))
    rows = lines[head + 2: head + 2 + len(paper.TABLE1) + 2]
    assert len(rows) == len(paper.TABLE1) + 2 and all(r.count("|") == len(paper.HEADERS) + 2 for r in rows)
    assert rows[-2].startswith("| **this run** | 0.0100 | 0.8000 | — | 0.1000 | 0.0200 | 0.5000 | — | — | — | 12.50")
    assert rows[-1].split("|")[2].strip() == "stand-in" and rows[-1].split("|")[3].strip() == "same metric"
    assert "- n1" in md
    ours_paper = dict((name, vals) for name, _k, vals in paper.TABLE1)["Ours (paper)"]
    assert ours_paper[:4] == (0.025, 0.8294, 0.1864, 0.496) and ours_paper[-1] == "107.31"


def test_eval_cli_is_registered():
    from jax_instant4d.cli import _commands

    help_text, add, run = _commands()["eval"]
    import argparse

    p = argparse.ArgumentParser()
    add(p)
    args = p.parse_args(["--checkpoint", "w", "--split", "train", "--max-clips", "3", "--lpips-weights", "l.npz"])
    assert (args.split, args.max_clips, args.lpips_weights, args.identity_weights) == ("train", 3, "l.npz", None)
    assert "Table 1" in help_text and callable(run)


def test_eval_cli_regressor_flags_reach_the_settings(real_run, monkeypatch):
    """Each --regressor-* flag sets its RegressorSettings field (on the checkpoint's camera model); the rest
    keep their defaults."""
    import dataclasses

    from jax_instant4d.cli import main
    from jax_instant4d.eval import run as run_mod

    workdir, cfg = real_run
    seen, render_res = [], []

    def capture(checkpoint, split, *, regressor=None, **kwargs):
        seen.append(regressor)
        render_res.append(kwargs.get("expression_render_res"))
        raise ValueError("captured")  # stops run() before it prints a result

    monkeypatch.setattr(run_mod, "evaluate", capture)
    assert main(["eval", "--checkpoint", str(workdir), "--regressor-identities", "37", "--regressor-images", "999",
                 "--regressor-steps", "11", "--regressor-res", "96", "--expression-render-res", "48"]) == 2
    assert main(["eval", "--checkpoint", str(workdir)]) == 2
    s = seen[0]
    assert (s.identities, s.train_images, s.steps, s.resolution) == (37, 999, 11, 96)
    assert s.fov_degrees == pytest.approx(float(cfg.render.fov_degrees))
    default = expression.RegressorSettings()
    assert dataclasses.replace(s, identities=default.identities, train_images=default.train_images,
                               steps=default.steps, resolution=default.resolution, fov_degrees=default.fov_degrees,
                               camera_radius=default.camera_radius) == default
    assert seen[1] is None  # no flag: evaluate's own default
    assert render_res == [48, None]
