"""``instant4d animate``: encode a source portrait once, then animate it with a driving video or a camera orbit.

::

    instant4d animate --checkpoint DIR --source face.png --driving clip.mp4 --out out.mp4
    instant4d animate --checkpoint DIR --source face.png --orbit --out orbit.gif          # source expression
    instant4d animate --checkpoint DIR --source face.png --driving clip.mp4 --orbit --side-by-side --out o.mp4

The source and every driving frame are first cropped and aligned to the training framing
(:mod:`jax_instant4d.data.face`; ``--no-align`` skips that for crops that already have it). The model's
``encode`` runs once; per frame only ``motion`` (of the driving frame) and ``animate`` run, each compiled
ahead of time, so the encoder is never re-run. Inputs: an image (PNG/JPEG/...; RGBA is composited on
black), a video (mp4/mov/mkv/webm/avi, through imageio-ffmpeg), a GIF or a folder of PNG/JPEG frames.
Outputs: ``.mp4`` (H.264) / other video suffixes, ``.gif``, or a folder of PNG frames (lossless; any path
without a suffix). An output is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FRAME_PATTERN = "frame_{:05d}.png"
DEFAULT_FPS = 25.0
logger = logging.getLogger(__name__)


class AnimateError(ValueError):
    """A usage error of ``instant4d animate`` (bad option, file or combination); the message names it."""


class MediaError(AnimateError):
    """An input that cannot be read or an output that cannot be written; the message names the file."""


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def to_rgb(array: np.ndarray, name: str = "image") -> UInt8[np.ndarray, "H W 3"]:
    """Any decoded image (gray, RGB, RGBA; 8 or 16 bits) as uint8 RGB; alpha is composited on black,
    the training background (:func:`jax_instant4d.data.record.as_rgb8`, as ingest reads frames)."""
    from jax_instant4d.data.record import PixelError, as_rgb8

    try:
        return as_rgb8(array, name)
    except PixelError as e:
        raise MediaError(str(e)) from None


def load_image(path: str | Path) -> UInt8[np.ndarray, "H W 3"]:
    """An image file as uint8 RGB (EXIF orientation applied, alpha composited on black)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA")
            elif im.mode not in ("L", "LA", "RGB", "RGBA", "I;16"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"{path}: cannot read image ({e})") from e
    return to_rgb(arr, str(path))


@contextlib.contextmanager
def _ffmpeg_spawn():
    """imageio-ffmpeg starts ffmpeg with ``subprocess`` (fork + exec at once, which is safe); JAX warns about
    any fork in a multithreaded process: silence that one warning here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class Frames:
    """The frames of a video, GIF, folder of images or single image, decoded one at a time (iterate again
    to read them again). ``fps`` is the file's frame rate where it has one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(path)
        self.fps: float | None = None
        p = self.path
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if p.is_dir():
            self.kind = "folder"
            self.files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                                key=_natural_key)
            if not self.files:
                raise MediaError(f"{p}: folder holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        elif p.suffix.lower() == ".gif":
            self.kind = "gif"
            try:
                import imageio.v3 as iio

                meta = iio.immeta(p)
                if meta.get("duration"):
                    self.fps = 1000.0 / float(meta["duration"])
            except Exception as e:  # noqa: BLE001 (any decoder failure is a bad file)
                raise MediaError(f"{p}: cannot read GIF ({e})") from e
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            self.kind = "video"
            reader = self._video_reader()
            try:
                fps = reader.get_meta_data().get("fps")
                self.fps = float(fps) if fps else None
            finally:
                reader.close()
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            self.kind = "image"
        else:
            raise MediaError(f"{p}: unknown frame source (a video {VIDEO_SUFFIXES}, .gif, an image or a folder "
                             "of images)")

    def _video_reader(self):
        import imageio.v2 as iio2

        try:
            with _ffmpeg_spawn():
                return iio2.get_reader(self.path, "ffmpeg")
        except Exception as e:  # noqa: BLE001
            raise MediaError(f"{self.path}: cannot read video ({e})") from e

    def __iter__(self) -> Iterator[UInt8[np.ndarray, "H W 3"]]:
        if self.kind == "image":
            yield load_image(self.path)
        elif self.kind == "folder":
            for f in self.files:
                yield load_image(f)
        elif self.kind == "gif":
            import imageio.v3 as iio

            try:
                for i, frame in enumerate(iio.imiter(self.path)):
                    yield to_rgb(frame, f"{self.name} frame {i}")
            except MediaError:
                raise
            except Exception as e:  # noqa: BLE001
                raise MediaError(f"{self.path}: cannot read GIF ({e})") from e
        else:
            reader = self._video_reader()
            try:
                i = 0
                while True:
                    try:
                        frame = reader.get_next_data()
                    except IndexError:
                        break
                    except Exception as e:  # noqa: BLE001
                        raise MediaError(f"{self.path}: cannot decode frame {i} ({e})") from e
                    yield to_rgb(frame, f"{self.name} frame {i}")
                    i += 1
            finally:
                reader.close()

    def count(self) -> int:
        if self.kind == "image":
            return 1
        if self.kind == "folder":
            return len(self.files)
        return sum(1 for _ in self)


def square_frame(image: UInt8[np.ndarray, "H W 3"], size: int, name: str) -> Float[np.ndarray, "S S 3"]:
    """An already-aligned crop (``--no-align``) at the model's size, float in [0, 1]; square ones of
    another size are resampled (antialiased), others are an error naming the file."""
    from PIL import Image

    h, w = image.shape[:2]
    if h != w:
        raise MediaError(f"{name}: {w}x{h} is not square; --no-align needs crops aligned like the training "
                         "images (drop --no-align to detect and align the face)")
    if h != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS if h > size else Image.BICUBIC))
    return image.astype(np.float32) / np.float32(255.0)


def to_uint8(rgb: Float[np.ndarray, "*B H W 3"]) -> UInt8[np.ndarray, "*B H W 3"]:
    """Rendered colours in [0, 1] -> uint8 (rounded), as written to every output."""
    return np.clip(np.rint(np.asarray(rgb, np.float32) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def output_kind(out: str | Path) -> str:
    """``"video"`` (ffmpeg), ``"gif"`` or ``"folder"`` (PNG frames) from the output path."""
    p = Path(out)
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == ".gif":
        return "gif"
    if suffix == "" or p.is_dir():
        return "folder"
    raise MediaError(f"--out {out}: unknown output type (a video {VIDEO_SUFFIXES}, .gif, or a folder for PNG frames)")


class FrameWriter:
    """Writes frames under a temporary name in the output's folder; :meth:`commit` renames it into place
    (an existing output is replaced), :meth:`abort` (or leaving a ``with`` block on an exception) removes it.

    A folder output replaces an existing folder only if that is empty or holds nothing but
    ``frame_*.png`` files (one written by this command): never an unrelated folder.
    """

    def __init__(self, out: str | Path, fps: float):
        self.out = Path(out)
        self.kind = output_kind(out)
        self.fps = float(fps)
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        if not self.out.parent.is_dir():
            raise MediaError(f"--out {out}: folder {self.out.parent} does not exist")
        if self.kind == "folder" and self.out.exists():
            if not self.out.is_dir():
                raise MediaError(f"--out {out}: exists and is not a folder")
            others = [f.name for f in self.out.iterdir() if not re.fullmatch(r"frame_\d+\.png", f.name)]
            if others:
                raise MediaError(f"--out {out}: folder exists and holds other files ({others[0]}, ...); "
                                 "choose a new or empty folder")
        elif self.kind != "folder" and self.out.is_dir():
            raise MediaError(f"--out {out}: is a folder")
        self.tmp = self.out.with_name(f".{self.out.stem}.tmp-{os.getpid()}{self.out.suffix}")
        self._writer = None
        self._gif: list[np.ndarray] = []
        if self.kind == "folder":
            self.tmp.mkdir()

    def write(self, frame: UInt8[np.ndarray, "H W 3"]) -> None:
        if self.shape is None:
            self.shape = frame.shape
            if self.kind == "video" and (frame.shape[0] % 2 or frame.shape[1] % 2):
                raise MediaError(f"--out {self.out}: H.264 needs even frame sizes, got {frame.shape[1]}x"
                                 f"{frame.shape[0]} (use an even --size, or a .gif / folder output)")
        if self.kind == "folder":
            from PIL import Image

            Image.fromarray(frame).save(self.tmp / FRAME_PATTERN.format(self.count))
        elif self.kind == "gif":
            self._gif.append(frame)
        else:
            if self._writer is None:
                import imageio.v2 as iio2

                self._writer = iio2.get_writer(self.tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                                               quality=8, pixelformat="yuv420p", macro_block_size=2)
                with _ffmpeg_spawn():  # ffmpeg starts with the first frame
                    self._writer.append_data(frame)
            else:
                self._writer.append_data(frame)
        self.count += 1

    def commit(self) -> Path:
        if self.count == 0:
            self.abort()
            raise MediaError(f"--out {self.out}: no frames to write")
        if self.kind == "gif":
            import imageio.v3 as iio

            iio.imwrite(self.tmp, np.stack(self._gif), extension=".gif", duration=1000.0 / self.fps, loop=0)
        elif self.kind == "video":
            self._writer.close()
            self._writer = None
        if self.kind == "folder" and self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 (best effort: we are cleaning up after another error)
                pass
            self._writer = None
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# ----------------------------------------------------------------------------------------------------
# The model's three functions, compiled ahead of time
# ----------------------------------------------------------------------------------------------------


class AvatarRunner:
    """``encode`` / ``motion`` / ``animate`` of a model as separately compiled functions of its state.

    Each is compiled (``jax.jit(...).lower(...).compile()``) on its first call, and the compilation time is
    kept apart from the run times: ``encode_compile_s``, ``encode_s``, ``animate_compile_s``,
    ``animate_s`` (one entry per call) and the same for ``motion``.
    """

    def __init__(self, model, size: int):
        import jax

        from jax_instant4d.inference import pure_model

        self.size = s = int(size)
        pure, self.state = pure_model(model)
        self._fns = {
            "encode": jax.jit(pure.encode),
            "motion": jax.jit(pure.motion),
            "animate": jax.jit(lambda st, av, z, cam: pure.animate(st, av, z, cam, s)[0]),
        }
        self._compiled: dict[str, object] = {}
        self.compile_s = {k: 0.0 for k in self._fns}
        self.run_s: dict[str, list[float]] = {k: [] for k in self._fns}

    def _call(self, name: str, *args):
        import jax

        if name not in self._compiled:
            t = time.perf_counter()
            self._compiled[name] = self._fns[name].lower(self.state, *args).compile()
            self.compile_s[name] = time.perf_counter() - t
        t = time.perf_counter()
        out = jax.block_until_ready(self._compiled[name](self.state, *args))
        self.run_s[name].append(time.perf_counter() - t)
        return out

    def encode(self, source: Float[np.ndarray, "1 R R 3"]):
        """The :class:`~jax_instant4d.model.avatar.Avatar` of a source image in [0, 1]."""
        return self._call("encode", np.asarray(source, np.float32))

    def motion(self, frame: Float[np.ndarray, "1 R R 3"]):
        return self._call("motion", np.asarray(frame, np.float32))

    def animate(self, avatar, z, camera) -> Float[np.ndarray, "1 S S 3"]:
        return self._call("animate", avatar, z, camera)


def orbit_angles(n: int, period: int, yaw_degrees: float, pitch_degrees: float
                 ) -> tuple[Float[np.ndarray, " N"], Float[np.ndarray, " N"]]:
    """(yaw, pitch) in radians of an elliptic orbit (EG3D's video path): yaw = A sin(2 pi i / period),
    pitch = B cos(2 pi i / period)."""
    phase = 2.0 * math.pi * np.arange(n) / max(int(period), 1)
    return (np.radians(yaw_degrees) * np.sin(phase)).astype(np.float32), \
        (np.radians(pitch_degrees) * np.cos(phase)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# The animation
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    out: str
    frames: int
    size: int
    fps: float
    encode_ms: float  # one run of the encoder (compilation excluded)
    encode_compile_s: float
    animate_fps: float  # model.animate alone, after warm-up
    animate_ms: float
    animate_compile_s: float
    loop_fps: float  # the whole per-frame loop (read, align, motion, animate, write), after warm-up
    motion_ms: float | None = None
    align_s: float | None = None  # face detection + tracking of the driving frames (a pass before the loop)
    aligned: bool = True
    orbit: bool = False
    side_by_side: bool = False
    device: str = ""
    encode_calls: int = 1

    def summary(self) -> str:
        lines = [f"encode: {self.encode_ms:.1f} ms (once; compilation {self.encode_compile_s:.1f} s)",
                 f"animate: {self.animate_fps:.1f} frames/s ({self.animate_ms:.2f} ms per frame at {self.size}^2; "
                 f"compilation {self.animate_compile_s:.1f} s)"]
        if self.motion_ms is not None:
            lines.append(f"motion: {self.motion_ms:.2f} ms per driving frame")
        lines.append(f"per-frame loop: {self.loop_fps:.1f} frames/s (decode, align, motion, animate, encode video)")
        if self.align_s is not None:
            lines.append(f"face tracking: {self.align_s:.1f} s for {self.frames} driving frames (before the loop)")
        lines.append(f"wrote {self.frames} frames at {self.fps:g} fps to {self.out} [{self.device}]")
        return "\n".join(lines)


def _steady(times: list[float]) -> float:
    """Mean seconds per call after the first (warm-up) call, or the only call."""
    t = times[1:] if len(times) > 1 else times
    return float(np.mean(t)) if t else float("nan")


def _panel(image: Float[np.ndarray, "R R 3"], size: int) -> UInt8[np.ndarray, "S S 3"]:
    from PIL import Image

    img = to_uint8(image)
    if img.shape[0] != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return img


def animate(trained, source: str | Path, out: str | Path, *, driving: str | Path | None = None, orbit: bool = False,
            orbit_frames: int | None = None, orbit_yaw: float = 25.0, orbit_pitch: float = 10.0,
            side_by_side: bool = False, align: bool = True, fps: float | None = None, size: int | None = None,
            smooth: float = 2.0, max_missing: int = 10, runner: AvatarRunner | None = None) -> Report:
    """Encodes ``source`` once and writes the animated frames to ``out``; see the module docstring.

    ``trained`` is a :class:`~jax_instant4d.inference.Trained`. With ``driving``, one output frame per
    driving frame (the expression follows it); without, ``orbit`` renders ``orbit_frames`` (default 60)
    frames at the source's own expression. ``orbit`` moves the camera on an ellipse of ``orbit_yaw`` /
    ``orbit_pitch`` degrees, one revolution per ``orbit_frames`` frames (default: over the driving clip);
    otherwise the camera is frontal. ``side_by_side`` puts the (aligned) driving frame, or the source,
    left of each result. ``size``: render size (default ``model.image_size``). Progress is logged
    (``jax_instant4d.animate``, INFO).
    """
    import jax

    from jax_instant4d import render
    from jax_instant4d.data import face

    cfg = trained.cfg
    res = int(cfg.model.image_size)
    size = int(size or res)
    if size < 8:
        raise AnimateError(f"--size must be at least 8, got {size}")
    if driving is None and not orbit:
        raise AnimateError("give --driving, --orbit, or both")
    if orbit_frames is not None and orbit_frames < 1:
        raise AnimateError(f"--orbit-frames must be positive, got {orbit_frames}")
    if output_kind(out) == "video" and size % 2:  # fail on a bad --out before any work
        raise MediaError(f"--out {out}: H.264 needs even frame sizes, got --size {size} (use an even --size, or a "
                         ".gif / folder output)")
    if not Path(source).is_file():
        raise FileNotFoundError(f"--source {source}: no such file")
    frames = Frames(driving) if driving is not None else None
    detector = face.FaceDetector() if align else None

    # -- the source: once
    src_img = load_image(source)
    if align:
        src, _ = face.align_image(src_img, res, name=str(source), detector=detector)
    else:
        src = square_frame(src_img, res, str(source))

    # -- driving frames: track the face over the whole clip first, so crops can be smoothed in time
    transforms, align_s, n = None, None, None
    if frames is not None and align:
        t = time.perf_counter()
        transforms = face.track_video(frames, res, name=frames.name, detector=detector, sigma=smooth,
                                      max_gap=max_missing)
        align_s = time.perf_counter() - t
        n = len(transforms)
        logger.info("tracked the face in %d driving frames (%.1f s)", n, align_s)
    elif frames is not None and orbit and not orbit_frames:
        n = frames.count()  # one revolution over the clip
    if frames is None:
        n = int(orbit_frames or 60)
    fps = float(fps or (frames.fps if frames is not None and frames.fps else DEFAULT_FPS))

    # -- cameras (an orbit is periodic: one revolution's cameras, indexed modulo the period)
    radius, fov = float(cfg.render.camera_radius), float(cfg.render.fov_degrees)
    if orbit:
        period = int(orbit_frames or n)
        yaw, pitch = orbit_angles(period, period, orbit_yaw, orbit_pitch)
        cams = render.orbit_camera(yaw, pitch, radius=radius, fov_degrees=fov, size=size)
        cams = render.Camera(np.asarray(cams.world_to_cam), np.asarray(cams.intrinsics))
        camera_at = lambda i: render.Camera(cams.world_to_cam[i % period][None],  # noqa: E731
                                            cams.intrinsics[i % period][None])
    else:
        c = render.orbit_camera(np.zeros(1), np.zeros(1), radius=radius, fov_degrees=fov, size=size)
        frontal = render.Camera(np.asarray(c.world_to_cam), np.asarray(c.intrinsics))
        camera_at = lambda i: frontal  # noqa: E731

    runner = runner or AvatarRunner(trained.model, size)
    if runner.size != size:
        raise ValueError(f"the runner renders at {runner.size}^2, not at --size {size}")
    before = {k: (len(v), runner.compile_s[k]) for k, v in runner.run_s.items()}  # (a runner may be reused)
    avatar = runner.encode(src[None])
    logger.info("encoded %s (%.1f ms)", source, runner.run_s["encode"][-1] * 1e3)

    def inputs() -> Iterator[tuple[int, Float[np.ndarray, "R R 3"] | None]]:
        if frames is None:
            for i in range(n):
                yield i, None
            return
        for i, img in enumerate(frames):
            if transforms is not None:
                if i >= len(transforms):
                    raise MediaError(f"{frames.name}: gave more frames on the second read than the first")
                yield i, face.warp(img, transforms[i], res)
            else:
                yield i, square_frame(img, res, f"{frames.name} frame {i}")

    stamps = []
    src_panel = _panel(src, size) if side_by_side else None
    with FrameWriter(out, fps) as writer:
        t0 = time.perf_counter()
        for i, drv in inputs():
            z = avatar.z_src if drv is None else runner.motion(drv[None])
            rgb = to_uint8(runner.animate(avatar, z, camera_at(i))[0])
            if side_by_side:
                rgb = np.concatenate([src_panel if drv is None else _panel(drv, size), rgb], axis=1)
            writer.write(rgb)
            stamps.append(time.perf_counter())
        if writer.count == 0:
            raise MediaError(f"{driving}: no frames")
        written = writer.count
        writer.commit()
    runs = {k: v[before[k][0]:] for k, v in runner.run_s.items()}  # this call's runs and compilations
    compiled = {k: runner.compile_s[k] if runner.compile_s[k] != before[k][1] else 0.0 for k in runner.compile_s}
    loop_fps = 1.0 / _steady(list(np.diff([t0, *stamps])))
    anim_s = _steady(runs["animate"])
    device = jax.devices()[0]
    return Report(out=str(out), frames=written, size=size, fps=fps, encode_ms=runs["encode"][-1] * 1e3,
                  encode_compile_s=compiled["encode"], animate_fps=1.0 / anim_s, animate_ms=anim_s * 1e3,
                  animate_compile_s=compiled["animate"], loop_fps=loop_fps,
                  motion_ms=_steady(runs["motion"]) * 1e3 if runs["motion"] else None,
                  align_s=align_s, aligned=align, orbit=orbit, side_by_side=side_by_side,
                  device=f"{device.platform}:{device.device_kind}", encode_calls=len(runs["encode"]))


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run's work directory, its checkpoints/ folder or "
                                                             "one step's folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--source", required=True, help="the portrait to animate (image file)")
    parser.add_argument("--driving", default=None, help="driving frames: a video (.mp4 ...), a .gif, a folder of "
                                                        "PNG/JPEG frames or one image")
    parser.add_argument("--out", required=True, help="output: .mp4 (or another video suffix), .gif, or a folder "
                                                     "(PNG frames, lossless)")
    parser.add_argument("--orbit", action="store_true", help="move the camera on an orbit (with --driving the "
                                                             "expression follows the clip; without, it is the "
                                                             "source's own)")
    parser.add_argument("--orbit-frames", type=int, default=None, help="frames per revolution (default: the "
                                                                       "driving clip's length, or 60)")
    parser.add_argument("--orbit-yaw", type=float, default=25.0, help="orbit yaw amplitude, degrees (default 25)")
    parser.add_argument("--orbit-pitch", type=float, default=10.0, help="orbit pitch amplitude, degrees (default 10)")
    parser.add_argument("--side-by-side", action="store_true", help="driving frame (or source) | result")
    parser.add_argument("--no-align", action="store_true", help="inputs are already square crops in the training "
                                                                "framing: no face detection")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving "
                                                                "video's, else 25)")
    parser.add_argument("--size", type=int, default=None, help="render size in pixels (default: model.image_size)")
    parser.add_argument("--smooth", type=float, default=2.0, help="temporal smoothing of the driving crops: "
                                                                  "Gaussian sigma in frames (0: off; default 2)")
    parser.add_argument("--max-missing", type=int, default=10, help="consecutive driving frames without a "
                                                                    "detected face that are filled from their "
                                                                    "neighbours (default 10)")
    parser.add_argument("--json", default=None, help="also write the report's numbers to this JSON file")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from jax_instant4d.data.face import FaceAlignmentUnavailable, FaceNotFound
    from jax_instant4d.inference import load_trained

    try:
        trained = load_trained(args.checkpoint, step=args.step, overrides=overrides)
        logger.info("checkpoint %s step %s%s", trained.checkpoints, trained.step, " (EMA)" if trained.used_ema else "")
        report = animate(trained, args.source, args.out, driving=args.driving, orbit=args.orbit,
                         orbit_frames=args.orbit_frames, orbit_yaw=args.orbit_yaw, orbit_pitch=args.orbit_pitch,
                         side_by_side=args.side_by_side, align=not args.no_align, fps=args.fps, size=args.size,
                         smooth=args.smooth, max_missing=args.max_missing)
    except (FaceNotFound, FaceAlignmentUnavailable, AnimateError, FileNotFoundError) as e:
        print(f"instant4d animate: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return 0


COMMAND = ("animate a portrait: encode once, drive it with a video or orbit the camera", add_arguments, run)


if __name__ == "__main__":
    from jax_instant4d.cli import main

    sys.exit(main(["animate", *sys.argv[1:]]))
