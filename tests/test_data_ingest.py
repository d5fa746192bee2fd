"""Ingest of real teacher clips: every kind of broken clip is rejected with its reason, good clips (frame
folders and mp4) round-trip through the pipeline, strict mode and interruptions leave no dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from log_capture import captured
from test_data_common import tiny_cfg, u8

from jax_instant4d.data import builders, ingest
from jax_instant4d.data.ingest import IngestError
from jax_instant4d.data.pipeline import make_pipeline
from jax_instant4d.render import orbit_camera

RES, T, V = 32, 3, 2
ROOT = Path(__file__).resolve().parents[1]


def _frame(seed: int, size: int = RES) -> np.ndarray:
    """A smooth colour pattern (video codecs keep it well)."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    ch = [0.5 + 0.4 * np.sin(2 * np.pi * (r.uniform(0.3, 1.2) * x + r.uniform(0.3, 1.2) * y) + r.uniform(0, 6))
          for _ in range(3)]
    return u8(np.stack(ch, -1))


def _camera(yaw: float, size: int = RES) -> dict:
    cam = orbit_camera(np.float32(yaw), np.float32(0.1), size=size)
    k = np.asarray(cam.intrinsics, np.float64)
    return {"world_to_cam": np.asarray(cam.world_to_cam, np.float64).tolist(), "fx": k[0], "fy": k[1], "cx": k[2],
            "cy": k[3], "width": size, "height": size}


def _write_frames(path: Path, frames, video: bool) -> None:
    from PIL import Image

    if video:
        import imageio.v2 as imageio

        with imageio.get_writer(str(path), format="FFMPEG", fps=5, codec="libx264", quality=10,
                                macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(f)
    else:
        path.mkdir(parents=True)
        for i, f in enumerate(frames):
            Image.fromarray(f).save(path / f"{i:04d}.png")


def make_clip(root: Path, name: str, *, video: bool = False, seed: int = 0, identity: str = "alice",
              size: int = RES, split: str | None = "train", masks: bool = True) -> dict:
    """A valid clip folder; returns its clip.json (already written) so a test can break it."""
    from PIL import Image

    d = root / name
    d.mkdir(parents=True)
    ext = ".mp4" if video else ""
    Image.fromarray(_frame(seed, size)).save(d / "source.png")
    _write_frames(d / f"driving{ext}", [_frame(seed + 10 + t, size) for t in range(T)], video)
    views = []
    for v in range(V):
        _write_frames(d / f"view_{v}{ext}", [_frame(seed + 100 + 10 * v + t, size) for t in range(T)], video)
        views.append({"frames": f"view_{v}{ext}", "cameras": [_camera(0.2 * v + 0.05 * t, size) for t in range(T)]})
        if masks:
            mask = [u8(np.full((size, size, 3), 0.25 * (v + 1) + 0.1 * t)) for t in range(T)]
            _write_frames(d / f"fg_{v}", mask, False)
            views[-1]["fg"] = f"fg_{v}"
    meta = {"identity": identity, "teacher": "test-teacher", "driving": f"driving{ext}", "views": views,
            "source": {"image": "source.png", "camera": _camera(0, size)}}
    if split:
        meta["split"] = split
    (d / "clip.json").write_text(json.dumps(meta))
    return meta


def _rewrite(root: Path, name: str, meta: dict) -> None:
    (root / name / "clip.json").write_text(json.dumps(meta))


def broken_clips(root: Path) -> dict[str, str]:
    """One clip per kind of breakage; returns clip name -> expected reason."""
    expected = {}
    # missing frames: view 1 lost its last frame
    make_clip(root, "missing_frames", seed=1)
    os.remove(root / "missing_frames" / "view_1" / f"{T - 1:04d}.png")
    expected["missing_frames"] = "missing frames"
    # a listed file does not exist
    meta = make_clip(root, "missing_file", seed=2)
    meta["driving"] = "nowhere.mp4"
    _rewrite(root, "missing_file", meta)
    expected["missing_file"] = "missing frames"
    # camera count != frame count
    meta = make_clip(root, "camera_count", seed=3)
    meta["views"][0]["cameras"] = meta["views"][0]["cameras"][:-1]
    _rewrite(root, "camera_count", meta)
    expected["camera_count"] = "camera count != frame count"
    # non-finite camera (NaN is not JSON: write it as a string json.loads turns into NaN)
    meta = make_clip(root, "non_finite", seed=4)
    meta["views"][1]["cameras"][1]["world_to_cam"][0][3] = float("nan")
    (root / "non_finite" / "clip.json").write_text(json.dumps(meta))  # json writes NaN, json.loads reads it
    expected["non_finite"] = "non-finite camera"
    # non-invertible camera
    meta = make_clip(root, "non_invertible", seed=5)
    meta["views"][0]["cameras"][0]["world_to_cam"] = [[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 1]]
    _rewrite(root, "non_invertible", meta)
    expected["non_invertible"] = "non-invertible camera"
    # wrong resolution: frames and cameras at 40 px, the dataset wants 32
    make_clip(root, "wrong_resolution", seed=6, size=40)
    expected["wrong_resolution"] = "wrong resolution"
    # unreadable image
    make_clip(root, "unreadable_png", seed=7)
    (root / "unreadable_png" / "view_0" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    expected["unreadable_png"] = "unreadable file"
    # unreadable video
    make_clip(root, "unreadable_mp4", seed=8, video=True)
    data = (root / "unreadable_mp4" / "view_1.mp4").read_bytes()
    (root / "unreadable_mp4" / "view_1.mp4").write_bytes(b"\x00" * 64 + data[len(data) // 2:])
    expected["unreadable_mp4"] = "unreadable file"
    # an mp4 with too few frames
    make_clip(root, "short_mp4", seed=9, video=True)
    _write_frames(root / "short_mp4" / "view_0.mp4.tmp.mp4", [_frame(1)] * (T - 1), True)
    os.replace(root / "short_mp4" / "view_0.mp4.tmp.mp4", root / "short_mp4" / "view_0.mp4")
    expected["short_mp4"] = "missing frames"
    # a folder without clip.json, and a clip.json that is not JSON
    (root / "no_json").mkdir()
    expected["no_json"] = "invalid clip description"
    make_clip(root, "bad_json", seed=10)
    (root / "bad_json" / "clip.json").write_text("{ not json")
    expected["bad_json"] = "unreadable file"
    return expected


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    make_clip(src, "good_png", seed=20, identity="alice")
    make_clip(src, "good_mp4", seed=30, identity="bob", video=True)
    expected = broken_clips(src)
    out = tmp_path_factory.mktemp("out")
    with captured("jax_instant4d.data.ingest") as logs:
        report = ingest.ingest(src, out, RES, heldout_identities=1, progress=False)
    return src, out, report, expected, logs


def test_each_broken_clip_is_rejected_with_its_reason(ingested):
    _, _, report, expected, logs = ingested
    assert sorted(report.written) == ["good_mp4", "good_png"]
    got = {name: reason for name, reason, _ in report.rejected}
    assert got == expected
    for name, reason in expected.items():  # the log names the clip and the reason
        assert any(line.startswith(f"rejected {name}: {reason}") for line in logs), name
    summary = report.summary()
    assert summary.startswith(f"written 2, rejected {len(expected)}")
    assert "3 x missing frames" in summary and "3 x unreadable file" in summary


def test_ingested_clips_round_trip_through_the_pipeline(ingested):
    src, out, report, _, _ = ingested
    assert builders.is_complete(report.path) and report.path.parent.name == f"r{RES}"
    cfg = tiny_cfg(out, data__dataset="teacher_clips", data__targets_per_example=T * V)
    b = next(make_pipeline(cfg, "train", 2, 0, 1))
    from PIL import Image

    names = sorted(p.name for p in src.iterdir())  # clip indices follow the sorted names of all clips
    assert {names[c] for c in b["clip"]} == {"good_mp4", "good_png"}
    for i in range(2):
        rec_id = names[int(b["clip"][i])]
        meta = json.loads((src / rec_id / "clip.json").read_text())
        seed = 30 if rec_id == "good_mp4" else 20
        assert np.array_equal(u8(b["source"][i]), np.asarray(Image.open(src / rec_id / "source.png")))
        np.testing.assert_allclose(b["source_w2c"][i], meta["source"]["camera"]["world_to_cam"], atol=1e-6)
        for j, (t, v) in enumerate(zip(b["time"][i], b["view"][i], strict=True)):
            want = _frame(seed + 100 + 10 * v + t).astype(np.float32) / 255
            err = np.abs(b["target"][i, j] - want)
            if rec_id == "good_png":
                assert err.max() == 0
            else:  # lossy H.264 of a smooth pattern
                assert err.mean() < 0.03
            cam = meta["views"][v]["cameras"][t]
            np.testing.assert_allclose(b["target_w2c"][i, j], cam["world_to_cam"], atol=1e-6)
            np.testing.assert_allclose(b["target_intrinsics"][i, j], [cam["fx"], cam["fy"], cam["cx"], cam["cy"]],
                                       rtol=1e-6)
            np.testing.assert_allclose(b["target_fg"][i, j], u8(0.25 * (v + 1) + 0.1 * t) / 255, atol=1e-6)
            assert b["target_eyes"][i, j].max() == 0 and b["expression"][i, j].max() == 0  # absent: zeros
        # the driving frame of each target's time step
        drv = _frame(seed + 10 + int(b["time"][i, 0])).astype(np.float32) / 255
        assert np.abs(b["driving"][i, 0] - drv).mean() < 0.03


def test_resize_option_resamples_and_scales_intrinsics(tmp_path):
    src = tmp_path / "src"
    make_clip(src, "big", seed=40, size=2 * RES, masks=False)
    with pytest.raises(IngestError):  # without --resize: wrong resolution, nothing valid
        ingest.ingest(src, tmp_path / "a", RES, progress=False)
    report = ingest.ingest(src, tmp_path / "b", RES, resize=True, progress=False)
    assert report.written == ["big"]
    cfg = tiny_cfg(tmp_path / "b", data__dataset="teacher_clips")
    b = next(make_pipeline(cfg, "train", 1, 0, 1))
    big = _frame(40, 2 * RES).astype(np.float32)
    box = big.reshape(RES, 2, RES, 2, 3).mean((1, 3)) / 255  # 2x2 box average
    assert np.abs(b["source"][0] - box).max() <= 1 / 255 + 1e-6
    np.testing.assert_allclose(b["source_intrinsics"][0], np.asarray([_camera(0, 2 * RES)[k] for k in
                                                                       ("fx", "fy", "cx", "cy")]) / 2, rtol=1e-6)
    # no masks in this clip: foreground all ones, regions all zeros
    assert b["target_fg"].min() == 1.0 and b["target_eyes"].max() == 0.0 and b["target_mouth"].max() == 0.0


def test_strict_mode_writes_nothing(tmp_path):
    src = tmp_path / "src"
    make_clip(src, "good", seed=50)
    make_clip(src, "bad", seed=51)
    os.remove(src / "bad" / "view_0" / "0000.png")
    with pytest.raises(IngestError, match="strict") as e:
        ingest.ingest(src, tmp_path / "out", RES, strict=True, progress=False)
    assert e.value.report.rejected[0][:2] == ("bad", "missing frames")
    assert not (tmp_path / "out" / "teacher_clips" / f"r{RES}" / "1.0.0").exists()
    assert not list((tmp_path / "out" / "teacher_clips" / f"r{RES}").glob(".tmp-*"))  # temporary dir removed


def test_interrupted_ingest_leaves_no_valid_dataset(tmp_path, monkeypatch):
    """An exception while tfds is writing the records (after validation): no dataset, no leftovers."""
    src = tmp_path / "src"
    for i in range(3):
        make_clip(src, f"clip{i}", seed=60 + i)
    final = tmp_path / "out" / "teacher_clips" / f"r{RES}" / "1.0.0"
    real = builders.TeacherClips._generate_examples

    def interrupted(self, split):
        for n, item in enumerate(real(self, split)):
            if n == 1:
                raise KeyboardInterrupt  # like Ctrl-C in the middle of writing
            yield item

    monkeypatch.setattr(builders.TeacherClips, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest(src, tmp_path / "out", RES, progress=False)
    assert not final.exists() and not builders.is_complete(final)
    assert not list(final.parent.glob(".tmp-*"))  # staging and tfds' temporary dirs are removed
    monkeypatch.setattr(builders.TeacherClips, "_generate_examples", real)
    report = ingest.ingest(src, tmp_path / "out", RES, progress=False)  # a rerun completes
    assert len(report.written) == 3 and builders.is_complete(final)


def slowed_ingest_script(marker, body: str) -> str:
    """A Python script: tfds' example generation slowed to one record a minute, touching ``marker`` after the
    first (the moment to kill the process), then ``body``."""
    return f"""
import time
from jax_instant4d.data import builders
real = builders.TeacherClips._generate_examples
def slow(self, split):
    for item in real(self, split):
        yield item
        open({str(marker)!r}, "w").close()
        time.sleep(60)
builders.TeacherClips._generate_examples = slow
""" + body


def test_killed_ingest_leaves_no_valid_dataset(tmp_path):
    """SIGKILL while tfds writes the records (no cleanup can run): the destination is still absent."""
    src = tmp_path / "src"
    for i in range(2):
        make_clip(src, f"clip{i}", seed=70 + i)
    marker = tmp_path / "started"
    script = slowed_ingest_script(marker, f"""
from jax_instant4d.data import ingest
ingest.ingest({str(src)!r}, {str(tmp_path / "out")!r}, {RES}, progress=False)
""")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the ingest subprocess never started writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    final = tmp_path / "out" / "teacher_clips" / f"r{RES}" / "1.0.0"
    assert not final.exists() and not builders.is_complete(final)
    assert list(final.parent.glob(".tmp-*"))  # what was being written is only in temporary dirs


def test_cli_ingest_prints_reasons_and_summary(tmp_path, capsys):
    from jax_instant4d.cli import main

    src = tmp_path / "src"
    make_clip(src, "fine", seed=80)
    meta = make_clip(src, "broken", seed=81)
    meta["views"][1]["cameras"] = meta["views"][1]["cameras"][:1]
    _rewrite(src, "broken", meta)
    args = ["data", "ingest", str(src), "--out", str(tmp_path / "out"), "--config", str(ROOT / "configs/small.py"),
            f"--config.data.resolution={RES}"]
    assert main(args + ["--strict"]) == 1
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "rejected broken: camera count != frame count" in err
    assert "written 1, rejected 1" in out
    assert main(args) == 1  # the destination exists now: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0


# --------------------------------------------------------------------------------------------------
# pixels: 16-bit frames scaled, alpha composited on black; ffmpeg's banner kept out of the reasons
# --------------------------------------------------------------------------------------------------


def test_16bit_frames_are_scaled_and_alpha_is_composited_on_black(tmp_path):
    from PIL import Image

    gray16 = (np.arange(RES * RES, dtype=np.uint32).reshape(RES, RES) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    got = ingest.read_image(tmp_path / "gray16.png")
    want = np.rint(gray16.astype(np.float64) / 257).astype(np.uint8)
    assert got.shape == (RES, RES, 3) and np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    assert (got == 255).mean() < 0.01  # not saturated
    rgba = np.zeros((RES, RES, 4), np.uint8)
    rgba[..., :3] = _frame(1)
    rgba[..., 3] = np.linspace(0, 255, RES, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = ingest.read_image(tmp_path / "rgba.png")
    want = np.rint(rgba[..., :3].astype(np.float32) * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    assert np.array_equal(got, want) and got[:, 0].max() == 0  # alpha 0: black
    la = np.stack([gray16 // 257, np.full_like(gray16, 128)], -1).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = ingest.read_image(tmp_path / "la.png")
    assert np.array_equal(got[..., 1], np.rint(la[..., 0] * (128 / 255.0)).astype(np.uint8))


def test_unreadable_video_reason_has_no_ffmpeg_banner(ingested):
    _, _, report, _, logs = ingested
    detail = next(d for name, _, d in report.rejected if name == "unreadable_mp4")
    line = next(ln for ln in logs if ln.startswith("rejected unreadable_mp4"))
    for text in (detail, line):
        assert "\n" not in text and "ffmpeg version" not in text and "configuration:" not in text
        assert "Invalid data found when processing input" in text


# --------------------------------------------------------------------------------------------------
# Ctrl-C: never swallowed, nothing renamed into place; leftovers of a killed ingest removed next time
# --------------------------------------------------------------------------------------------------


def test_swallowed_ctrl_c_still_stops_the_ingest(tmp_path, monkeypatch):
    """A SIGINT whose KeyboardInterrupt is swallowed (as in a garbage-collection callback) still ends the
    ingest before the dataset is renamed into place."""
    src = tmp_path / "src"
    for i in range(2):
        make_clip(src, f"clip{i}", seed=90 + i)
    real = builders.TeacherClips._generate_examples

    def swallowing(self, split):
        for item in real(self, split):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    time.sleep(0)
            except KeyboardInterrupt:
                pass  # swallowed
            yield item

    monkeypatch.setattr(builders.TeacherClips, "_generate_examples", swallowing)
    # a background job of a shell starts with SIGINT ignored: give this test Python's own handler
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            ingest.ingest(src, tmp_path / "out", RES, progress=False)
        final = tmp_path / "out" / "teacher_clips" / f"r{RES}" / "1.0.0"
        assert not final.exists() and not list(final.parent.glob(".tmp-*"))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_exits_130_and_a_killed_runs_leftovers_are_removed(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        make_clip(src, f"clip{i}", seed=100 + i)
    out = tmp_path / "out"
    final = out / "teacher_clips" / f"r{RES}" / "1.0.0"
    marker = tmp_path / "started"
    script = slowed_ingest_script(marker, f"""
import sys
from jax_instant4d import cli
sys.exit(cli.main(["data", "ingest", {str(src)!r}, "--out", {str(out)!r}, "--config", "configs/small.py",
                   "--config.data.resolution={RES}"]))
""")
    for sig in (signal.SIGKILL, signal.SIGINT):
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "never started writing"
            if sig == signal.SIGKILL:
                assert list(final.parent.glob(".tmp-*"))
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not final.exists()
        if sig == signal.SIGINT:
            err = proc.stderr.read()
            assert rc == 130 and "interrupted" in err and "Traceback" not in err, err
            # the second run removed the first run's leftovers on start and its own on Ctrl-C
            assert not list(final.parent.glob(".tmp-*"))
        else:
            assert list(final.parent.glob(".tmp-*"))  # kill -9: nothing could clean up
    report = ingest.ingest(src, out, RES, progress=False)  # a rerun completes
    assert len(report.written) == 2 and builders.is_complete(final)


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from jax_instant4d.cli import main

    make_clip(tmp_path / "src", "fine", seed=110)
    (tmp_path / "out").write_text("a file")
    rc = main(["data", "ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--config",
               str(ROOT / "configs/small.py"), f"--config.data.resolution={RES}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"instant4d data ingest: cannot write into {tmp_path / 'out' / 'teacher_clips'}"
                                f"/r{RES}: Not a directory"]
