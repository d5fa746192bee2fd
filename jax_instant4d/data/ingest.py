"""Ingest of real teacher output: a folder of clips -> the ``teacher_clips`` dataset.

Layout of ``SRC`` (one sub-folder per clip; the folder name is the clip id unless clip.json says)::

    SRC/<clip>/clip.json
    SRC/<clip>/source.png                  the source image (PNG or JPEG)
    SRC/<clip>/driving.mp4 | driving/      T driving frames: a video, or a folder of PNG/JPEG frames
    SRC/<clip>/view_0.mp4  | view_0/       T teacher frames of view 0 (names are free: clip.json lists them)
    SRC/<clip>/fg_0.mp4    | fg_0/         optional masks per view (grayscale): fg, eyes, mouth

``clip.json``::

    {
      "identity": "ffhq_01234",            required: the source person
      "teacher": "xnemo+lp3d",             required: what produced the views
      "clip_id": "...",                     optional (default: the folder name)
      "split": "train" | "test",            optional (default: by identity, cfg.data.heldout_identities held out)
      "source": {"image": "source.png", "camera": CAMERA},
      "driving": "driving.mp4",
      "views": [{"frames": "view_0.mp4", "cameras": [CAMERA, ...T of them],
                 "fg": "fg_0.mp4", "eyes": "eyes_0/", "mouth": "mouth_0/"}, ...],
      "expression": [[E numbers] x T]       optional ground truth
    }
    CAMERA = {"world_to_cam": [[4 numbers] x 4], "fx": .., "fy": .., "cx": .., "cy": ..,
              "width": W, "height": H}   (OpenCV, pixels; see record.py)

Every clip is checked: files readable, T frames in every stream, one camera per frame, finite and
invertible cameras, frames of the camera's size and of the target resolution (``--resize`` resamples
square frames of another size and scales the intrinsics). A broken clip is reported with its reason
and skipped; ``strict`` makes any rejection fatal. The dataset is written to a temporary folder and
renamed into place only when complete (and, with ``strict``, only if nothing was rejected).

Pixels: 16-bit frames are scaled to 8 bits (not clipped), gray is repeated to RGB, and alpha (RGBA, LA,
palette transparency) is composited on black, the training background, as ``instant4d animate`` does.
Ctrl-C stops the ingest with nothing renamed into place (also when the signal lands inside a callback
that would swallow it); temporary folders of a killed ingest are removed by the next one into the same
place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jaxtyping import Shaped, UInt8

from jax_instant4d.data import builders, record
from jax_instant4d.data.record import ClipError

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def read_frames(path: Path) -> list[UInt8[np.ndarray, "H W 3"]]:
    """All frames (uint8 RGB) of a video file or of a folder of PNG/JPEG images (sorted by name)."""
    if not path.exists():
        raise ClipError("missing frames", f"{path.name} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        return [read_image(p) for p in files]
    if path.suffix.lower() in VIDEO_EXTS:
        import imageio.v2 as imageio

        try:
            with imageio.get_reader(str(path), format="FFMPEG") as reader:
                frames = [to_rgb(np.asarray(f), path.name) for f in reader]
        except ClipError:
            raise
        except Exception as e:  # any decoder failure: the file is unreadable
            raise ClipError("unreadable file", f"{path.name}: {type(e).__name__}: {ffmpeg_reason(str(e))}") from None
        if not frames:
            raise ClipError("unreadable file", f"{path.name}: no frames decoded")
        return frames
    raise ClipError("unreadable file", f"{path.name}: not a video ({'/'.join(VIDEO_EXTS)}) or a frame folder")


_FFMPEG_BANNER = re.compile(
    r"^\s*(ffmpeg version|built with|configuration:|lib(av|sw|postproc)\w*\s+\d|=== stderr ===)")


def ffmpeg_reason(message: str) -> str:
    """An imageio-ffmpeg error without ffmpeg's version banner: its own first line and ffmpeg's last."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not _FFMPEG_BANNER.match(ln)]
    if len(lines) <= 2:
        return "; ".join(lines)
    return f"{lines[0]}; {lines[-1]}"


def to_rgb(x: Shaped[np.ndarray, "H W *C"], name: str) -> UInt8[np.ndarray, "H W 3"]:
    """A decoded frame as uint8 RGB (:func:`jax_instant4d.data.record.as_rgb8`: 16-bit values scaled, alpha
    composited on black); a non-image is an "unreadable file"."""
    try:
        return record.as_rgb8(x, name)
    except record.PixelError as e:
        raise ClipError("unreadable file", str(e)) from None


def read_image(path: Path) -> UInt8[np.ndarray, "H W 3"]:
    """An image file as uint8 RGB (see :func:`to_rgb`)."""
    from PIL import Image

    if not path.is_file():
        raise ClipError("missing frames", f"{path.name} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
                im = im.convert("RGBA")
            elif im.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im)
    except Exception as e:  # PIL raises several types for broken files
        raise ClipError("unreadable file", f"{path.name}: {type(e).__name__}: {e}") from None
    return to_rgb(arr, path.name)


def _camera(obj, what: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    try:
        w2c = np.asarray(obj["world_to_cam"], np.float64)
        k = np.asarray([obj["fx"], obj["fy"], obj["cx"], obj["cy"]], np.float64)
        w, h = int(obj["width"]), int(obj["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise ClipError("invalid clip description", f"{what}: camera needs world_to_cam, fx, fy, cx, cy, width, "
                                                    f"height ({type(e).__name__}: {e})") from None
    if w2c.shape != (4, 4):
        raise ClipError("invalid clip description", f"{what}: world_to_cam must be 4x4, got shape {w2c.shape}")
    record.check_camera(w2c, k, w, h, what)
    return w2c, k, w, h


def _resample(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(frame)
    big = im.size[0] > size
    return np.asarray(im.resize((size, size), Image.Resampling.BOX if big else Image.Resampling.BILINEAR), np.uint8)


def _fit(frame: np.ndarray, cam_wh: tuple[int, int], res: int, resize: bool, what: str) -> tuple[np.ndarray, float]:
    """Checks a frame against its camera's size and the target resolution; returns it (resampled) and the
    intrinsics scale."""
    h, w = frame.shape[:2]
    if (w, h) != cam_wh:
        raise ClipError("wrong resolution", f"{what} is {w}x{h} but its camera says {cam_wh[0]}x{cam_wh[1]}")
    if (w, h) == (res, res):
        return frame, 1.0
    if resize and w == h:
        return _resample(frame, res), res / w
    raise ClipError("wrong resolution", f"{what} is {w}x{h}, expected {res}x{res}"
                                        + ("" if w == h else " (not square)") + ("" if resize else " (see --resize)"))


@dataclass
class ClipSource:
    """One clip folder, its description and the dataset indices assigned to it."""

    path: Path
    meta: dict | None
    clip_id: str
    identity: str = ""
    split: str = "train"
    clip_index: int = -1
    identity_index: int = -1
    error: ClipError | None = None  # set when clip.json itself is unusable


def discover(src: Path) -> list[ClipSource]:
    """The clip folders of ``src`` (sub-folders with a clip.json, or any sub-folder: it will be rejected)."""
    if not src.is_dir():
        raise FileNotFoundError(f"ingest source {src} is not a folder")
    out = []
    for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cs = ClipSource(path=d, meta=None, clip_id=d.name)
        js = d / "clip.json"
        try:
            if not js.is_file():
                raise ClipError("invalid clip description", "clip.json does not exist")
            try:
                meta = json.loads(js.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ClipError("unreadable file", f"clip.json: {e}") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("identity"), str) or not isinstance(
                    meta.get("teacher"), str):
                raise ClipError("invalid clip description", "clip.json needs string fields 'identity' and 'teacher'")
            cs.meta = meta
            cs.clip_id = str(meta.get("clip_id", d.name))
            cs.identity = meta["identity"]
        except ClipError as e:
            cs.error = e
        out.append(cs)
    return out


def assign(clips: list[ClipSource], heldout_identities: int) -> None:
    """Clip and identity indices (sorted names) and splits (clip.json's, else the last identities by hash)."""
    idents = sorted({c.identity for c in clips if c.error is None})
    ident_index = {name: i for i, name in enumerate(idents)}
    by_hash = sorted(idents, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_test = min(int(heldout_identities), max(len(idents) - 1, 0))
    test = set(by_hash[len(by_hash) - n_test:]) if n_test else set()
    for i, c in enumerate(sorted(clips, key=lambda c: c.clip_id)):
        c.clip_index = i
        if c.error is None:
            c.identity_index = ident_index[c.identity]
            given = c.meta.get("split")
            if given is not None:
                from jax_instant4d.data.pipeline import resolve_split

                try:
                    c.split = resolve_split(str(given))
                except ValueError as e:
                    c.error = ClipError("invalid clip description", str(e))
            else:
                c.split = "test" if c.identity in test else "train"


def load_clip(cs: ClipSource, resolution: int, resize: bool = False) -> record.Clip:
    """Reads and checks one clip; raises :class:`ClipError` with the reason."""
    if cs.error is not None:
        raise cs.error
    m, d = cs.meta, cs.path
    res = int(resolution)

    def path_of(name, what):
        if not isinstance(name, str) or not name:
            raise ClipError("invalid clip description", f"{what} must name a file or folder")
        return d / name

    try:
        src_meta = m["source"]
        drv_name = m["driving"]
        views = m["views"]
        assert isinstance(views, list) and views
    except (KeyError, TypeError, AssertionError):
        raise ClipError("invalid clip description", "clip.json needs 'source', 'driving' and a non-empty 'views' "
                                                    "list") from None
    if not isinstance(src_meta, dict) or "camera" not in src_meta:
        raise ClipError("invalid clip description", "source needs 'image' and 'camera'")
    s_w2c, s_k, s_w, s_h = _camera(src_meta["camera"], "source camera")
    src_img, sc = _fit(read_image(path_of(src_meta.get("image"), "source.image")), (s_w, s_h), res, resize, "source")
    s_k = s_k * sc
    driving = read_frames(path_of(drv_name, "driving"))
    t = len(driving)
    if t == 0:
        raise ClipError("missing frames", f"{drv_name} has no frames")
    drv_size = driving[0].shape[:2]
    if any(f.shape[:2] != drv_size for f in driving):
        raise ClipError("wrong resolution", f"{drv_name}: frames of different sizes")
    if drv_size != (res, res):
        if not (resize and drv_size[0] == drv_size[1]):
            raise ClipError("wrong resolution", f"{drv_name} frames are {drv_size[1]}x{drv_size[0]}, expected "
                                                f"{res}x{res}")
        driving = [_resample(f, res) for f in driving]

    v = len(views)
    tgt = np.zeros((t, v, res, res, 3), np.uint8)
    w2c = np.zeros((t, v, 4, 4), np.float32)
    intr = np.zeros((t, v, 4), np.float32)
    masks = {name: None for name in ("fg", "eyes", "mouth")}
    for name in masks:
        present = [isinstance(view, dict) and view.get(name) is not None for view in views]
        if any(present) and not all(present):
            raise ClipError("missing frames", f"'{name}' masks are given for some views but not all")
        if all(present):
            masks[name] = np.zeros((t, v, res, res), np.uint8)
    for vi, view in enumerate(views):
        if not isinstance(view, dict) or "frames" not in view or "cameras" not in view:
            raise ClipError("invalid clip description", f"views[{vi}] needs 'frames' and 'cameras'")
        frames = read_frames(path_of(view["frames"], f"views[{vi}].frames"))
        if len(frames) != t:
            raise ClipError("missing frames", f"view {vi} ({view['frames']}) has {len(frames)} frames, the driving "
                                              f"video {t}")
        cams = view["cameras"]
        if not isinstance(cams, list) or len(cams) != len(frames):
            n = len(cams) if isinstance(cams, list) else "no list of"
            raise ClipError("camera count != frame count", f"view {vi}: {n} cameras for {len(frames)} frames")
        for ti, (frame, cam) in enumerate(zip(frames, cams, strict=True)):
            cw2c, ck, cw, ch = _camera(cam, f"view {vi} camera {ti}")
            img, sc = _fit(frame, (cw, ch), res, resize, f"view {vi} frame {ti}")
            tgt[ti, vi] = img
            w2c[ti, vi] = cw2c
            intr[ti, vi] = ck * sc
        for name, arr in masks.items():
            if arr is None:
                continue
            mframes = read_frames(path_of(view[name], f"views[{vi}].{name}"))
            if len(mframes) != t:
                raise ClipError("missing frames", f"view {vi} {name} masks: {len(mframes)} frames, expected {t}")
            for ti, mf in enumerate(mframes):
                if mf.shape[:2] != frames[ti].shape[:2]:
                    raise ClipError("wrong resolution", f"view {vi} {name} mask {ti} is {mf.shape[1]}x{mf.shape[0]},"
                                                        f" its frame {frames[ti].shape[1]}x{frames[ti].shape[0]}")
                arr[ti, vi] = (mf if mf.shape[0] == res else _resample(mf, res))[..., 0]
    expr = None
    if m.get("expression") is not None:
        try:
            expr = np.asarray(m["expression"], np.float32).reshape(t, record.NUM_EXPRESSION)
        except (ValueError, TypeError):
            raise ClipError("invalid clip description", f"expression must be {t} x {record.NUM_EXPRESSION} "
                                                        "numbers") from None
        if not np.all(np.isfinite(expr)):
            raise ClipError("invalid clip description", "expression has non-finite values")
    return record.Clip(
        clip_id=cs.clip_id, identity_id=cs.identity, teacher=str(m["teacher"]), source_image=src_img,
        source_w2c=s_w2c.astype(np.float32), source_intrinsics=s_k.astype(np.float32),
        driving_images=np.stack(driving), target_images=tgt, target_w2c=w2c, target_intrinsics=intr,
        target_fg=masks["fg"], target_eyes=masks["eyes"], target_mouth=masks["mouth"], expression=expr,
        clip_index=cs.clip_index, identity_index=cs.identity_index)


@contextlib.contextmanager
def _interrupts() -> Iterator[Callable[[], None]]:
    """Ctrl-C raises ``KeyboardInterrupt`` as usual and is also remembered: the returned check raises it
    again, so an interrupt that landed in a callback that swallows exceptions (a garbage-collection
    callback prints "Exception ignored" and goes on) still stops the ingest before anything is renamed
    into place."""
    hit = threading.Event()

    def check() -> None:
        if hit.is_set():
            raise KeyboardInterrupt("interrupted")

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def handler(signum, frame):
        hit.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _only_writer(folder: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` (released by the OS if the process is killed) and removes the
    temporary folders a killed ingest left there: while the lock is held, no other ingest is writing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".ingest.lock", "w")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise IngestError(f"cannot write into {folder}: {e.strerror or e}", IngestReport()) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestError(f"another ingest is writing into {folder}", IngestReport()) from None
        for leftover in sorted(folder.glob(".tmp-*")):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                logger.info("removed %s (left by an interrupted ingest)", leftover)
        yield


@dataclass
class IngestReport:
    path: Path | None = None
    written: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (clip, reason, detail)

    def summary(self) -> str:
        lines = [f"written {len(self.written)}, rejected {len(self.rejected)}"]
        counts: dict[str, int] = {}
        for _, reason, _ in self.rejected:
            counts[reason] = counts.get(reason, 0) + 1
        lines += [f"  {n} x {reason}" for reason, n in sorted(counts.items())]
        return "\n".join(lines)


class IngestError(RuntimeError):
    """The ingest produced no dataset (strict mode with rejections, nothing valid, destination exists)."""

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message)
        self.report = report


def ingest(src: str | os.PathLike, out: str | os.PathLike, resolution: int, *, image_format: str = "png",
           jpeg_quality: int = 95, heldout_identities: int = 1, strict: bool = False, resize: bool = False,
           overwrite: bool = False, progress: bool = True) -> IngestReport:
    """Validates every clip of ``src`` and writes ``teacher_clips`` under the data dir ``out``.

    Two phases: each clip is read, checked and encoded into a staging folder next to the destination
    (rejections are logged as they come, at INFO); then, if anything is left to write (and, with ``strict``,
    nothing was rejected), tfds writes the dataset, which is renamed into place when complete.
    Returns the report (its ``path`` is the dataset directory). Raises :class:`IngestError` (no dataset
    written) in strict mode when a clip is rejected, when no clip is valid, or when the destination
    exists and ``overwrite`` is false.
    """
    import pickle
    import tempfile

    from jax_instant4d.data.builders import TeacherClips, TeacherClipsConfig
    from jax_instant4d.data.pipeline import teacher_config_name

    if image_format not in record.IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {record.IMAGE_FORMATS}, got {image_format!r}")
    report = IngestReport()
    final = builders.dataset_dir(out, "teacher_clips", teacher_config_name(resolution))
    if final.exists() and not overwrite:
        raise IngestError(f"{final} exists (use --overwrite to replace it)", report)
    clips = sorted(discover(Path(src)), key=lambda c: c.clip_id)
    assign(clips, heldout_identities)
    with _only_writer(final.parent), _interrupts() as check_interrupt:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-ingest-", dir=final.parent))
        try:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(clips), desc="ingest", unit="clip")
            loaders: dict[str, list] = {}
            for cs in sorted(clips, key=lambda c: c.clip_index):
                check_interrupt()
                try:
                    example = record.encode_clip(load_clip(cs, resolution, resize), image_format, jpeg_quality)
                except ClipError as e:
                    report.rejected.append((cs.clip_id, e.reason, e.detail))
                    logger.info("rejected %s: %s: %s", cs.clip_id, e.reason, e.detail)
                else:
                    staged = staging / f"{cs.clip_index:08d}.pkl"
                    staged.write_bytes(pickle.dumps(example, protocol=pickle.HIGHEST_PROTOCOL))
                    loaders.setdefault(cs.split, []).append(lambda p=staged: pickle.loads(p.read_bytes()))
                    report.written.append(cs.clip_id)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            if strict and report.rejected:
                report.written.clear()
                raise IngestError("strict: rejected clips, nothing written\n" + report.summary(), report)
            if not report.written:
                raise IngestError("no valid clip to write\n" + report.summary(), report)
            cfg = TeacherClipsConfig(name=teacher_config_name(resolution), loaders=loaders)

            def replace_old():
                check_interrupt()  # a Ctrl-C swallowed while tfds wrote: nothing is renamed into place
                if overwrite and final.exists():
                    shutil.rmtree(final)

            report.path = builders.prepare_atomically(
                lambda d: TeacherClips(config=cfg, data_dir=str(d), file_format="array_record"), final,
                before_rename=replace_old)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        check_interrupt()
    return report
