"""``instant4d animate`` and face alignment (jax_instant4d/animate.py, jax_instant4d/data/face.py).

The end-to-end tests run on the real tiny checkpoint of ``tests/real_checkpoint.py`` (64^2, 1,024 Gaussians,
random init) with lossless PNG-folder outputs, so written frames can be compared exactly with direct calls
of the model. Alignment tests use a real photo (scikit-image's astronaut) and dlib's detector/landmarker;
they are skipped when those packages are missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jax_instant4d import animate as anim
from jax_instant4d import render
from jax_instant4d.data import face

R = 64  # model.image_size of the tiny checkpoint


# ----------------------------------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------------------------------


def _pattern(i: int, size: int = R) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx + i) * 0.5 + 0.5, np.cos(5 * yy - 0.7 * i) * 0.5 + 0.5, (xx * yy + 0.2 * i) % 1], -1)
    return (img * 255).round().astype(np.uint8)


def _read_folder(path: Path) -> np.ndarray:
    files = sorted(path.glob("frame_*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files])


def _astronaut() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut()[..., :3])


def _detector(**kw) -> face.FaceDetector:
    pytest.importorskip("dlib")
    try:
        return face.FaceDetector(**kw)
    except face.FaceAlignmentUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def run_dir(real_run):
    """``(workdir, cfg)`` of the shared real checkpoint (tests/conftest.py)."""
    return real_run


@pytest.fixture(scope="module")
def trained(run_dir):
    from jax_instant4d.inference import load_trained

    return load_trained(run_dir[0])


@pytest.fixture(scope="module")
def runner(trained):
    return anim.AvatarRunner(trained.model, R)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("animate_inputs")
    Image.fromarray(_pattern(7)).save(root / "source.png")
    (root / "driving").mkdir()
    for i in range(3):  # names sort naturally: 2 before 10
        Image.fromarray(_pattern(i)).save(root / "driving" / f"f{[2, 10, 11][i]}.png")
    return root


_JITTED = {}


def _direct(model, source: np.ndarray, frames: list[np.ndarray | None], cameras: list[render.Camera]):
    """Frames from direct calls of model.encode / model.motion / model.animate (nnx.jit, not animate.py)."""
    from flax import nnx

    if not _JITTED:  # compiled once per test session
        _JITTED["encode"] = nnx.jit(lambda m, x: m.encode(x))
        _JITTED["motion"] = nnx.jit(lambda m, x: m.motion(x))
        _JITTED["animate"] = nnx.jit(lambda m, a, z, c: m.animate(a, z, c, R, R)[0])
    avatar = _JITTED["encode"](model, jnp.asarray(source[None], jnp.float32) / 255.0)
    out = []
    for f, cam in zip(frames, cameras, strict=True):
        z = avatar.z_src if f is None else _JITTED["motion"](model, jnp.asarray(f[None], jnp.float32) / 255.0)
        out.append(anim.to_uint8(np.asarray(_JITTED["animate"](model, avatar, z, cam))[0]))
    return np.stack(out)


def _frontal(cfg, n: int = 1) -> list[render.Camera]:
    c = render.orbit_camera(jnp.zeros(1), jnp.zeros(1), radius=float(cfg.render.camera_radius),
                            fov_degrees=float(cfg.render.fov_degrees), size=R)
    return [c] * n


def _orbit(cfg, yaw, pitch) -> list[render.Camera]:
    radius, fov = float(cfg.render.camera_radius), float(cfg.render.fov_degrees)
    return [render.orbit_camera(jnp.asarray([y]), jnp.asarray([p]), radius=radius, fov_degrees=fov, size=R)
            for y, p in zip(yaw, pitch, strict=True)]


def _assert_frames_equal(a: np.ndarray, b: np.ndarray):
    """Equal up to the rare rounding flip of a 1e-7 float difference between two compilations."""
    assert a.shape == b.shape
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.max() <= 1 and (d > 0).mean() < 1e-3, (d.max(), (d > 0).mean())


# ----------------------------------------------------------------------------------------------------
# alignment: pure transforms
# ----------------------------------------------------------------------------------------------------


def test_template_is_the_synthetic_heads_framing():
    """CANONICAL re-derived from the generator: the neutral head's eyes, mouth and nose tip projected by
    the frontal EG3D camera of the training data."""
    from jax_instant4d.data import heads

    s = heads._shape(jnp.zeros(heads.NUM_IDENTITY_PARAMS))
    ex, ey, ez = float(s["ex"]), float(s["ey"]), float(s["eye_c"]) + float(s["eye_r"][2])
    pts = np.asarray([[-ex, ey, ez], [ex, ey, ez], [0.0, float(s["ym"]), float(s["zl"])],
                      np.asarray(s["nose_tip"])]) * heads.HEAD_SCALE
    cam = render.orbit_camera(jnp.zeros(()), jnp.zeros(()), radius=2.7, fov_degrees=18.837, size=1)
    w2c, k = np.asarray(cam.world_to_cam), np.asarray(cam.intrinsics)
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = np.stack([k[0] * pc[:, 0] / pc[:, 2] + k[2], k[1] * pc[:, 1] / pc[:, 2] + k[3]], 1)
    np.testing.assert_allclose(face.canonical_points(1), uv, atol=5e-3)


def test_alignment_transform_recovers_a_known_similarity():
    size = 128
    canon = face.canonical_points(size)
    for scale, angle, shift in [(1.0, 0.0, (0, 0)), (0.37, 0.3, (40.0, -12.5)), (2.5, -1.2, (-300.0, 80.0))]:
        truth = face.similarity(scale, angle, np.zeros(2), np.asarray(shift))  # photo -> crop
        el, er, m, _nose = face.apply(face.invert(truth), canon)  # where the photo has the template's points
        got = face.alignment_transform(el, er, m, size)
        np.testing.assert_allclose(got, truth, atol=1e-9, rtol=1e-9)
        np.testing.assert_allclose(face.apply(got, [el, er, m]), canon[:3], atol=1e-9)
    # yaw narrows the eyes: the scale then comes from eye-to-mouth, the axis stays upright
    c = canon
    mid = 0.5 * (c[0] + c[1])
    el, er = mid + 0.7 * (c[0] - mid), mid + 0.7 * (c[1] - mid)
    s, a = face.decompose(face.alignment_transform(el, er, c[2], size))
    assert s == pytest.approx(1.0) and a == pytest.approx(0.0, abs=1e-12)
    # pitch shortens eye-to-mouth: the scale then comes from the eyes
    s, a = face.decompose(face.alignment_transform(c[0], c[1], mid + 0.6 * (c[2] - mid), size))
    assert s == pytest.approx(1.0) and a == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="degenerate"):
        face.alignment_transform(c[0], c[0], c[0], size)


def test_warp_conventions():
    img = _pattern(3, 32)
    ident = face.similarity(1.0, 0.0, np.zeros(2), np.zeros(2))
    np.testing.assert_array_equal(face.warp(img, ident, 32), img / np.float32(255.0))
    # crop moved 5 px right and 3 px down: output (x, y) = input (x + 5, y + 3); outside is black
    shift = face.similarity(1.0, 0.0, np.asarray([5.0, 3.0]), np.zeros(2))
    out = face.warp(img, shift, 32)
    np.testing.assert_allclose(out[:29, :27], img[3:, 5:] / 255.0, atol=1e-6)
    assert np.all(out[29:] == 0) and np.all(out[:, 27:] == 0)
    # 4x shrink of a 2x2-periodic checkerboard: the box pre-filter averages it to flat grey (no aliasing)
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    small = face.warp(board, face.similarity(0.25, 0.0, np.zeros(2), np.zeros(2)), 16)
    np.testing.assert_allclose(small, 0.5, atol=1e-6)


def test_smoothing_fills_gaps_and_removes_jitter():
    size, n = 64, 40
    rng = np.random.default_rng(0)
    base = [face.similarity(0.5, 0.1, np.asarray([100.0 + 2 * t, 80.0]), np.asarray([32.0, 32.0])) for t in range(n)]
    # a constant-velocity track is kept, up to the ends of the clip, and gaps are filled on the line
    track = list(base)
    track[10] = track[11] = None
    out = face.smooth_transforms(track, size, sigma=2.0, max_gap=3)
    for t in range(n):
        np.testing.assert_allclose(out[t], base[t], atol=1e-6)
    # landmark jitter of ~1.5 px on the centre is reduced
    noisy = [face.similarity(0.5, 0.1, np.asarray([100.0, 80.0]) + rng.normal(0, 1.5, 2), np.asarray([32.0, 32.0]))
             for _ in range(n)]
    centre = lambda ts: np.asarray([face.apply(face.invert(a), [32.0, 32.0]) for a in ts])  # noqa: E731
    raw_std = centre(noisy).std(0).mean()
    smooth_std = centre(face.smooth_transforms(noisy, size, sigma=2.0)).std(0).mean()
    assert smooth_std < 0.5 * raw_std
    np.testing.assert_allclose(face.smooth_transforms(noisy, size, sigma=0.0), noisy, atol=1e-9)
    # too long a gap, or no face at all: FaceNotFound with the name and first missing frame
    with pytest.raises(face.FaceNotFound, match=r"clip\.mp4, frame 5: no face found"):
        face.smooth_transforms(base[:5] + [None] * 4 + base[:3], size, max_gap=3, name="clip.mp4")
    with pytest.raises(face.FaceNotFound, match=r"clip\.mp4, frame 0: no face found in any of its 3 frames"):
        face.smooth_transforms([None] * 3, size, name="clip.mp4")


# ----------------------------------------------------------------------------------------------------
# alignment: a real photo through dlib
# ----------------------------------------------------------------------------------------------------


def test_align_real_photo_lands_on_the_template():
    det = _detector()
    photo = _astronaut()
    size = 256
    crop, a0 = face.align_image(photo, size, detector=det)
    assert crop.shape == (size, size, 3) and crop.dtype == np.float32
    # landmarks found again in the aligned crop sit on the template (eye mid-point, eye line, scale)
    lm = det.detect(anim.to_uint8(crop))
    c = face.canonical_points(size)
    np.testing.assert_allclose(0.5 * (lm.eye_left + lm.eye_right), 0.5 * (c[0] + c[1]), atol=0.01 * size)
    eye_line = lm.eye_right - lm.eye_left
    assert abs(math.degrees(math.atan2(eye_line[1], eye_line[0]))) < 1.5
    c_mid = 0.5 * (c[0] + c[1])
    ratios = (np.linalg.norm(eye_line) / np.linalg.norm(c[1] - c[0]),
              np.linalg.norm(lm.mouth - 0.5 * (lm.eye_left + lm.eye_right)) / np.linalg.norm(c[2] - c_mid))
    assert max(ratios) == pytest.approx(1.0, abs=0.03)  # the larger dimension fits the template
    # the same photo rotated, shrunk and moved by a known similarity W aligns to the same crop: A1 W = A0
    w = face.similarity(0.6, math.radians(-14.0), np.asarray([256.0, 256.0]), np.asarray([330.0, 290.0]))
    moved = anim.to_uint8(face.warp(photo, w, 640))
    crop1, a1 = face.align_image(moved, size, detector=det)
    s_rel, ang_rel = face.decompose(face.compose(a1, w))
    s0, ang0 = face.decompose(a0)
    assert s_rel == pytest.approx(s0, rel=0.03)
    assert math.degrees(ang_rel - ang0) == pytest.approx(0.0, abs=1.5)
    centre = np.asarray([size / 2, size / 2])
    np.testing.assert_allclose(face.apply(face.invert(face.compose(a1, w)), centre),
                               face.apply(face.invert(a0), centre), atol=0.02 * size / s0)
    assert np.abs(crop1 - crop).mean() < 0.06


def test_no_face_error_names_the_file(tmp_path, trained):
    det = _detector()
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(blank)
    with pytest.raises(face.FaceNotFound, match=r"blank\.png: no face found"):
        face.align_image(anim.load_image(blank), R, name=str(blank), detector=det)
    out = tmp_path / "out"
    with pytest.raises(face.FaceNotFound, match=str(blank)):
        anim.animate(trained, blank, out, orbit=True, orbit_frames=2)
    assert not out.exists() and list(tmp_path.iterdir()) == [blank]
    # a video: the frame index of the first face-less run that is too long
    photo = np.asarray(Image.fromarray(_astronaut()).resize((256, 256), Image.LANCZOS))
    grey = np.full_like(photo, 128)
    quick = _detector(cnn_fallback=False)
    with pytest.raises(face.FaceNotFound, match=r"clip\.gif, frame 1: no face found"):
        face.track_video([photo, grey, grey, grey, photo], R, name="clip.gif", detector=quick, max_gap=2)
    filled = face.track_video([photo, grey, photo], R, name="clip.gif", detector=quick, max_gap=2, sigma=0)
    np.testing.assert_allclose(filled[1], 0.5 * (filled[0] + filled[2]), rtol=1e-3, atol=1e-3)  # interpolated


# ----------------------------------------------------------------------------------------------------
# the command, end to end
# ----------------------------------------------------------------------------------------------------


def test_cli_writes_the_frames_of_direct_model_calls(run_dir, trained, runner, inputs, tmp_path, capsys,
                                                    monkeypatch):
    from flax import nnx

    from jax_instant4d.cli import main

    workdir, cfg = run_dir
    # The command loads the checkpoint itself; its compiled functions are the module's runner (to compile
    # once per test file), after checking that the model it would compile holds the checkpoint's weights.
    seen = []

    def runner_for(model, size):
        seen.append(size)
        for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(trained.model)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        return runner

    monkeypatch.setattr(anim, "AvatarRunner", runner_for)
    out, report = tmp_path / "frames", tmp_path / "report.json"
    rc = main(["animate", "--checkpoint", str(workdir), "--source", str(inputs / "source.png"),
               "--driving", str(inputs / "driving"), "--out", str(out), "--no-align", "--json", str(report),
               "--config.render.backend=cpu"])
    assert rc == 0 and seen == [R]
    got = _read_folder(out)
    assert got.shape == (3, R, R, 3)
    frames = [_pattern(i) for i in range(3)]
    want = _direct(trained.model, _pattern(7), frames, _frontal(cfg, 3))
    _assert_frames_equal(got, want)
    assert want.std() > 5  # the tiny model renders something (not an empty frame)
    numbers = json.loads(report.read_text())
    assert numbers["frames"] == 3 and numbers["encode_calls"] == 1 and numbers["size"] == R
    assert numbers["encode_ms"] > 0 and numbers["animate_fps"] > 0 and numbers["loop_fps"] > 0
    printed = capsys.readouterr().out
    assert "encode:" in printed and "frames/s" in printed and f"wrote 3 frames at 25 fps to {out}" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "report.json"]  # no temporary left behind
    # a user error: exit 1 and the offending file named
    assert main(["animate", "--checkpoint", str(workdir), "--source", str(tmp_path / "missing.png"), "--orbit",
                 "--out", str(tmp_path / "x.gif")]) == 1
    assert "missing.png" in capsys.readouterr().err


def test_side_by_side_layout(trained, runner, inputs, tmp_path):
    plain = anim.animate(trained, inputs / "source.png", tmp_path / "plain", driving=inputs / "driving",
                         align=False, runner=runner)
    sbs = anim.animate(trained, inputs / "source.png", tmp_path / "sbs", driving=inputs / "driving",
                       align=False, side_by_side=True, runner=runner)
    assert plain.frames == sbs.frames == 3 and not plain.side_by_side and sbs.side_by_side
    a, b = _read_folder(tmp_path / "plain"), _read_folder(tmp_path / "sbs")
    assert b.shape == (3, R, 2 * R, 3)
    np.testing.assert_array_equal(b[:, :, :R], np.stack([_pattern(i) for i in range(3)]))  # driving | result
    np.testing.assert_array_equal(b[:, :, R:], a)


def test_orbit_moves_the_camera_and_encodes_once(trained, runner, inputs, tmp_path, monkeypatch):
    calls = {"encode": 0}
    real_encode = runner.encode

    def counting(x):
        calls["encode"] += 1
        return real_encode(x)

    monkeypatch.setattr(runner, "encode", counting)
    n_anim = len(runner.run_s["animate"])
    rep = anim.animate(trained, inputs / "source.png", tmp_path / "orbit", orbit=True, orbit_frames=4,
                       orbit_yaw=30.0, orbit_pitch=10.0, align=False, runner=runner)
    assert calls["encode"] == 1 and rep.encode_calls == 1
    assert len(runner.run_s["animate"]) - n_anim == 4 and rep.frames == 4
    got = _read_folder(tmp_path / "orbit")
    diffs = [np.abs(got[i].astype(int) - got[j].astype(int)).mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(diffs) > 0.5  # every camera gives another image
    yaw, pitch = anim.orbit_angles(4, 4, 30.0, 10.0)
    np.testing.assert_allclose(np.degrees(yaw), [0, 30, 0, -30], atol=1e-4)
    np.testing.assert_allclose(np.degrees(pitch), [10, 0, -10, 0], atol=1e-4)
    cfg = trained.cfg
    cams = _orbit(cfg, yaw, pitch)
    _assert_frames_equal(got, _direct(trained.model, _pattern(7), [None] * 4, cams))  # the source's expression
    # with driving frames: the orbit spans the clip (3 frames) and the expression follows each frame
    calls["encode"] = 0
    anim.animate(trained, inputs / "source.png", tmp_path / "orbit_drv", driving=inputs / "driving", orbit=True,
                 align=False, runner=runner)
    assert calls["encode"] == 1
    yaw, pitch = anim.orbit_angles(3, 3, 25.0, 10.0)
    cams = _orbit(cfg, yaw, pitch)
    _assert_frames_equal(_read_folder(tmp_path / "orbit_drv"),
                         _direct(trained.model, _pattern(7), [_pattern(i) for i in range(3)], cams))


def test_aligned_video_to_mp4_and_gif(trained, runner, tmp_path):
    det = _detector()
    del det  # (only to skip without dlib)
    photo = _astronaut()
    Image.fromarray(photo).save(tmp_path / "source.png")
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):  # the face drifts and turns a little from frame to frame
        w = face.similarity(0.5, math.radians(3.0 * i), np.asarray([256.0, 256.0]), np.asarray([150.0 + 6 * i, 150.0]))
        Image.fromarray(anim.to_uint8(face.warp(photo, w, 300))).save(clip / f"{i:03d}.jpg", quality=95)
    rep = anim.animate(trained, tmp_path / "source.png", tmp_path / "out", driving=clip, side_by_side=True,
                       runner=runner)
    assert rep.aligned and rep.align_s is not None and rep.encode_calls == 1
    frames = _read_folder(tmp_path / "out")
    assert frames.shape == (3, R, 2 * R, 3)
    src_crop, _ = face.align_image(photo, R)
    for f in frames:  # each aligned driving crop shows the source's face in the same framing
        assert np.abs(f[:, :R] / 255.0 - src_crop).mean() < 0.08
    anim.animate(trained, tmp_path / "source.png", tmp_path / "out.mp4", driving=clip, side_by_side=True,
                 runner=runner)
    import imageio.v3 as iio

    video = np.stack(list(anim.Frames(tmp_path / "out.mp4")))
    assert video.shape == frames.shape and np.abs(video.astype(int) - frames).mean() < 6  # lossy H.264
    # (an orbit, so that consecutive frames differ: a GIF merges identical ones into a longer frame)
    anim.animate(trained, tmp_path / "source.png", tmp_path / "out.gif", driving=clip, orbit=True, runner=runner,
                 fps=10)
    gif = np.stack(list(iio.imiter(tmp_path / "out.gif")))
    assert gif.shape == (3, R, R, 3)
    assert iio.immeta(tmp_path / "out.gif")["duration"] == pytest.approx(100.0)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bad_inputs_and_no_half_written_output(trained, runner, inputs, tmp_path, monkeypatch):
    src = inputs / "source.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        anim.animate(trained, tmp_path / "nope.png", tmp_path / "o", orbit=True, runner=runner)
    with pytest.raises(anim.MediaError, match=r"o\.txt"):
        anim.animate(trained, src, tmp_path / "o.txt", orbit=True, runner=runner)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(anim.MediaError, match=r"wide\.png: 60x40 is not square"):
        anim.animate(trained, tmp_path / "wide.png", tmp_path / "o", orbit=True, align=False, runner=runner)
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(anim.MediaError, match="holds other files"):
        anim.animate(trained, src, notes, orbit=True, orbit_frames=2, align=False, runner=runner)
    assert (notes / "notes.txt").read_text() == "keep me"
    # an error in the middle of the loop: nothing at --out, no temporary left
    real_animate, count = runner.animate, {"n": 0}

    def failing(*args):
        count["n"] += 1
        if count["n"] == 2:
            raise RuntimeError("boom")
        return real_animate(*args)

    monkeypatch.setattr(runner, "animate", failing)
    for out in (tmp_path / "half", tmp_path / "half.mp4"):
        count["n"] = 0
        with pytest.raises(RuntimeError, match="boom"):
            anim.animate(trained, src, out, driving=inputs / "driving", align=False, runner=runner)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "wide.png"]
    # an existing frame folder of ours is replaced whole
    monkeypatch.setattr(runner, "animate", real_animate)
    out = tmp_path / "frames"
    anim.animate(trained, src, out, orbit=True, orbit_frames=3, align=False, runner=runner)
    anim.animate(trained, src, out, orbit=True, orbit_frames=2, align=False, runner=runner)
    assert len(list(out.iterdir())) == 2
    # the driving source kinds: a single image is one frame; a GIF is read frame by frame
    gif = tmp_path / "d.gif"
    import imageio.v3 as iio

    iio.imwrite(gif, np.stack([_pattern(i) for i in range(2)]), duration=50, loop=0)
    frames = anim.Frames(gif)
    assert frames.count() == 2 and frames.fps == pytest.approx(20.0)
    assert anim.Frames(src).count() == 1
    assert [p.name for p in anim.Frames(inputs / "driving").files] == ["f2.png", "f10.png", "f11.png"]


def test_rgba_and_gray_inputs_are_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, ..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = anim.load_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 3) and np.all(img[:2] == 200) and np.all(img[2:] == 0)
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert np.all(anim.load_image(tmp_path / "g.png") == 77)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(anim.MediaError, match=r"bad\.png: cannot read image"):
        anim.load_image(tmp_path / "bad.png")

