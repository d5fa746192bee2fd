"""Face detection and alignment onto the training framing (for in-the-wild sources and driving videos).

The model was trained on heads framed like an EG3D/FFHQ crop: head at the origin, frontal camera at
radius ``render.camera_radius`` (2.7) with ``render.fov_degrees`` (18.837), black background. A photo is
brought into that framing by a similarity transform (rotation, uniform scale, translation) that maps
its eyes and mouth onto where the synthetic teacher's neutral head has them (:data:`CANONICAL`).

Pipeline: :class:`FaceDetector` (dlib's HOG face detector, with dlib's CNN face detector as a fallback,
then dlib's 68-point landmark model: the landmarker the FFHQ alignment was made with) -> :class:`Landmarks`
(eye centres, mouth centre, nose tip) -> :func:`alignment_transform` (pure: FFHQ's construction from the
eye-to-eye and eye-to-mouth vectors, calibrated to our template) -> :func:`warp` (antialiased crop).
Videos: :func:`track_video` aligns every frame, fills short gaps and smooths the transforms over time
(:func:`smooth_transforms`), so the crop does not jitter.

Coordinates are continuous image coordinates in pixels, x right and y down, with the centre of pixel
(row i, column j) at (j + 0.5, i + 0.5). A transform is a 2x3 matrix ``A`` mapping an input point
``p`` to the aligned crop as ``A[:, :2] @ p + A[:, 2]``.

The models ship inside PyPI packages (``dlib-bin`` for dlib, ``face-recognition-models`` for the
landmark and CNN detector files); nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, UInt8

# Where the synthetic teacher's neutral head (jax_instant4d.data.heads, all shape parameters 0) puts
# its features in a frontal render (yaw = pitch = 0, radius 2.7, fov 18.837 degrees), as fractions of
# the image size: the visible centre of each eye (the eyeball's front), the mid-point of the mouth
# corners and the nose tip. ``tests/test_animate.py`` re-derives them from the generator's geometry.
CANONICAL = {
    "eye_left": (0.3491, 0.4547),  # the eye on the image's left (the subject's right eye)
    "eye_right": (0.6509, 0.4547),  # the eye on the image's right (the subject's left eye)
    "mouth": (0.5000, 0.7498),
    "nose": (0.5000, 0.6060),
}

SHAPE_MODEL = "shape_predictor_68_face_landmarks.dat"
CNN_MODEL = "mmod_human_face_detector.dat"


class FaceNotFound(ValueError):
    """No face was found in an image (or in too many consecutive frames of a video)."""

    def __init__(self, name: str, frame: int | None = None, detail: str = ""):
        self.name, self.frame = str(name), frame
        where = f"{name}" if frame is None else f"{name}, frame {frame}"
        super().__init__(f"{where}: no face found{detail} (pass --no-align for crops that are already aligned)")


class FaceAlignmentUnavailable(ImportError):
    """dlib or its model files are not installed."""


class Landmarks(NamedTuple):
    """Face points in continuous pixel coordinates (x, y) of the image they were found in."""

    eye_left: Float[np.ndarray, " 2"]  # image-left eye centre (the subject's right eye)
    eye_right: Float[np.ndarray, " 2"]  # image-right eye centre (the subject's left eye)
    mouth: Float[np.ndarray, " 2"]  # mid-point of the mouth corners
    nose: Float[np.ndarray, " 2"]  # nose tip
    box: tuple[float, float, float, float]  # detector box (left, top, right, bottom)
    score: float  # detector confidence (HOG score or CNN confidence)


# ----------------------------------------------------------------------------------------------------
# Similarity transforms (pure)
# ----------------------------------------------------------------------------------------------------


def canonical_points(size: int) -> Float[np.ndarray, "4 2"]:
    """Template positions (eye_left, eye_right, mouth, nose) in pixels of a ``size`` x ``size`` crop."""
    return np.asarray([CANONICAL[k] for k in ("eye_left", "eye_right", "mouth", "nose")], np.float64) * size


def similarity(scale: float, angle: float, src: Float[np.ndarray, " 2"], dst: Float[np.ndarray, " 2"]
               ) -> Float[np.ndarray, "2 3"]:
    """The transform that rotates by ``angle`` (radians; positive turns +x towards +y, i.e. clockwise on
    screen since y points down), scales by ``scale`` and maps the point ``src`` onto ``dst``."""
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    lin = np.asarray([[c, -s], [s, c]], np.float64)
    return np.concatenate([lin, (np.asarray(dst, np.float64) - lin @ np.asarray(src, np.float64))[:, None]], 1)


def decompose(a: Float[np.ndarray, "2 3"]) -> tuple[float, float]:
    """(scale, angle) of a similarity transform."""
    return float(math.hypot(a[0, 0], a[1, 0])), float(math.atan2(a[1, 0], a[0, 0]))


def invert(a: Float[np.ndarray, "2 3"]) -> Float[np.ndarray, "2 3"]:
    lin = np.linalg.inv(np.asarray(a[:, :2], np.float64))
    return np.concatenate([lin, -(lin @ a[:, 2])[:, None]], 1)


def compose(a: Float[np.ndarray, "2 3"], b: Float[np.ndarray, "2 3"]) -> Float[np.ndarray, "2 3"]:
    """``a`` after ``b`` (first ``b``, then ``a``)."""
    return np.concatenate([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], 1)


def apply(a: Float[np.ndarray, "2 3"], points: Float[np.ndarray, "*N 2"]) -> Float[np.ndarray, "*N 2"]:
    points = np.asarray(points, np.float64)
    return points @ a[:, :2].T + a[:, 2]


def alignment_transform(eye_left: Float[np.ndarray, " 2"], eye_right: Float[np.ndarray, " 2"],
                        mouth: Float[np.ndarray, " 2"], size: int) -> Float[np.ndarray, "2 3"]:
    """The similarity taking a face's eyes and mouth (input pixels) onto the training framing.

    FFHQ's construction, with our template in place of FFHQ's constants: the face's horizontal axis is
    ``eye_to_eye - rot90(eye_to_mouth)`` (robust to yaw, where the eye distance shrinks, and to pitch,
    where the eye-to-mouth distance does); the scale is the smaller of the two that bring the eye
    distance and the eye-to-mouth distance to the template's, i.e. the face is fitted by whichever
    dimension is relatively larger; the eye mid-point goes to the template's eye mid-point.
    """
    el, er, m = (np.asarray(p, np.float64) for p in (eye_left, eye_right, mouth))
    c = canonical_points(size)
    eye_avg = 0.5 * (el + er)
    e2e, e2m = er - el, m - eye_avg
    c_avg = 0.5 * (c[0] + c[1])
    c_e2e, c_e2m = np.linalg.norm(c[1] - c[0]), np.linalg.norm(c[2] - c_avg)
    axis = e2e + np.asarray([e2m[1], -e2m[0]])  # rot90 of e2m: for an upright face both point along +x
    n_e2e, n_e2m = np.linalg.norm(e2e), np.linalg.norm(e2m)
    if not np.all(np.isfinite(axis)) or np.linalg.norm(axis) < 1e-6 or max(n_e2e, n_e2m) < 1e-6:
        raise ValueError(f"degenerate face landmarks: eyes {el}, {er}, mouth {m}")
    angle = -math.atan2(axis[1], axis[0])  # rotate the face's axis onto +x
    scale = min(c_e2e / max(n_e2e, 1e-9), c_e2m / max(n_e2m, 1e-9))
    return similarity(scale, angle, eye_avg, c_avg)


def landmarks_transform(lm: Landmarks, size: int) -> Float[np.ndarray, "2 3"]:
    return alignment_transform(lm.eye_left, lm.eye_right, lm.mouth, size)


# ----------------------------------------------------------------------------------------------------
# Warping
# ----------------------------------------------------------------------------------------------------


def _box_reduce(image: np.ndarray, q: int) -> np.ndarray:
    """Averages q x q blocks (partial blocks at the far edges are dropped)."""
    h, w = (image.shape[0] // q) * q, (image.shape[1] // q) * q
    x = image[:h, :w].reshape(h // q, q, w // q, q, -1)
    return x.mean(axis=(1, 3))


def warp(image: UInt8[np.ndarray, "H W C"] | Float[np.ndarray, "H W C"], a: Float[np.ndarray, "2 3"],
         size: int) -> Float[np.ndarray, "S S C"]:
    """The ``size`` x ``size`` crop whose pixel at output point q is the input at ``invert(a)(q)``.

    Bilinear sampling, black outside the image (the training backgrounds are black). When the
    transform shrinks by more than 2x, the input is first box-filtered by an integer factor (as FFHQ
    shrinks before transforming), so the crop is not aliased. Returns float32 in [0, 1] for uint8
    input, else in the input's range.
    """
    img = np.asarray(image)
    img = img.astype(np.float32) / np.float32(255.0 if img.dtype == np.uint8 else 1.0)
    if img.ndim == 2:
        img = img[..., None]
    a = np.asarray(a, np.float64)
    s, _ = decompose(a)
    q = int(math.floor(1.0 / max(s, 1e-9)))
    if q >= 2 and min(img.shape[:2]) >= q:
        img = _box_reduce(img, q)
        a = compose(a, np.asarray([[q, 0.0, 0.0], [0.0, q, 0.0]]))  # reduced pixel coords -> original
    inv = invert(a)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] - 0.5  # continuous -> index coordinates
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] - 0.5
    h, w = img.shape[:2]
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fx, fy = (u - x0).astype(np.float32)[..., None], (v - y0).astype(np.float32)[..., None]
    out = np.zeros((size, size, img.shape[2]), np.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            vals = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] * ok[..., None]
            out += wy * wx * vals
    return out


# ----------------------------------------------------------------------------------------------------
# Detection (dlib)
# ----------------------------------------------------------------------------------------------------


def _models_dir() -> Path:
    # face_recognition_models' __init__ imports pkg_resources (gone from new setuptools): locate the
    # package without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceAlignmentUnavailable(
            "face alignment needs the landmark model of the 'face-recognition-models' package "
            "(pip install face-recognition-models); or pass --no-align for crops already aligned")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    if not (folder / SHAPE_MODEL).is_file():
        raise FaceAlignmentUnavailable(f"face-recognition-models is installed but {folder / SHAPE_MODEL} is missing")
    return folder


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise FaceAlignmentUnavailable(
            "face alignment needs dlib (pip install dlib-bin); or pass --no-align for crops already aligned") from e
    return dlib


@functools.lru_cache(maxsize=1)
def _load_models():
    dlib = _dlib()
    folder = _models_dir()
    return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / SHAPE_MODEL)),
            dlib.cnn_face_detection_model_v1(str(folder / CNN_MODEL)))


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    if abs(factor - 1.0) < 1e-9:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR if factor > 1 else Image.LANCZOS))


class FaceDetector:
    """Finds the most confident face of an image and its landmarks.

    Detection runs on a copy whose longer side is ``work_side`` pixels (HOG with one pyramid upsampling:
    faces down to ~6% of that side); where HOG finds nothing, dlib's CNN detector (more tolerant of pose
    and blur, ~1-3 s per image on a CPU) is tried when ``cnn_fallback``. Given the previous frame's box
    (videos), the face is first searched near it, which is faster and keeps to the same person. The 68
    landmarks are then fitted on the full-resolution image.
    """

    def __init__(self, *, work_side: int = 640, cnn_fallback: bool = True):
        self.work_side = int(work_side)
        self.cnn_fallback = bool(cnn_fallback)
        self._dlib, self._hog, self._shape, self._cnn = _load_models()

    def _boxes(self, image: np.ndarray, upsample: int, cnn: bool) -> list[tuple[tuple[float, ...], float]]:
        side = max(image.shape[:2])
        # HOG: always at work_side; the CNN (whose cost grows with the area) finds faces down to ~80 px
        # without upsampling, so small images are enlarged only to half of work_side
        f = (min(max(side, self.work_side // 2), self.work_side) if cnn else self.work_side) / side
        small = np.ascontiguousarray(_resize(image, f))
        if cnn:
            found = [(d.rect, float(d.confidence)) for d in self._cnn(small, 0)]
        else:
            rects, scores, _ = self._hog.run(small, upsample, 0.0)
            found = list(zip(rects, (float(s) for s in scores), strict=True))
        return [((r.left() / f, r.top() / f, (r.right() + 1) / f, (r.bottom() + 1) / f), s) for r, s in found]

    def _near(self, image: np.ndarray, prev: tuple[float, float, float, float]):
        left, top, right, bottom = prev
        cx, cy, half = 0.5 * (left + right), 0.5 * (top + bottom), right - left
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(image.shape[1], int(cx + half)), min(image.shape[0], int(cy + half))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        roi = np.ascontiguousarray(image[y0:y1, x0:x1])
        f = 200.0 / max(roi.shape[:2])  # the face is ~half the ROI: ~100 px, found without upsampling
        rects, scores, _ = self._hog.run(np.ascontiguousarray(_resize(roi, f)), 0, 0.0)
        return [((x0 + r.left() / f, y0 + r.top() / f, x0 + (r.right() + 1) / f, y0 + (r.bottom() + 1) / f), float(s))
                for r, s in zip(rects, scores, strict=True)]

    def detect(self, image: UInt8[np.ndarray, "H W 3"], previous: Landmarks | None = None) -> Landmarks | None:
        """The landmarks of the most confident face (nearest to ``previous`` if given), or None."""
        image = np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])
        found = self._near(image, previous.box) if previous is not None else []
        if not found:
            found = self._boxes(image, 1, cnn=False)
        if not found and self.cnn_fallback:
            found = self._boxes(image, 0, cnn=True)
        if not found:
            return None
        if previous is not None and len(found) > 1:
            pc = np.asarray(previous.box).reshape(2, 2).mean(0)
            box, score = min(found, key=lambda b: np.linalg.norm(np.asarray(b[0]).reshape(2, 2).mean(0) - pc))
        else:
            box, score = max(found, key=lambda b: b[1])
        d = self._dlib
        rect = d.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = self._shape(image, rect)
        pts = np.asarray([[p.x, p.y] for p in shape.parts()], np.float64) + 0.5  # pixel index -> continuous
        return Landmarks(pts[36:42].mean(0), pts[42:48].mean(0), 0.5 * (pts[48] + pts[54]), pts[30],
                         tuple(float(v) for v in box), float(score))


# ----------------------------------------------------------------------------------------------------
# Images and videos
# ----------------------------------------------------------------------------------------------------


def align_image(image: UInt8[np.ndarray, "H W 3"], size: int, *, name: str = "image",
                detector: FaceDetector | None = None) -> tuple[Float[np.ndarray, "S S 3"], Float[np.ndarray, "2 3"]]:
    """(aligned crop in [0, 1], its transform) of the most confident face; :class:`FaceNotFound` names
    ``name`` when there is none."""
    detector = detector or FaceDetector()
    lm = detector.detect(image)
    if lm is None:
        raise FaceNotFound(name)
    a = landmarks_transform(lm, size)
    return warp(image, a, size), a


def _gap_error(name: str, first: int, length: int, max_gap: int) -> FaceNotFound:
    return FaceNotFound(name, first, f" (nor in the {length - 1} frames after it; at most {max_gap} consecutive "
                                     "frames are filled from their neighbours)")


def _params(a: np.ndarray, size: int) -> np.ndarray:
    """(log scale, angle, centre x, centre y): the crop's placement in the input frame, where the
    centre is the input point that lands on the crop's centre (these interpolate and smooth well)."""
    s, ang = decompose(a)
    centre = apply(invert(a), np.asarray([size / 2.0, size / 2.0]))
    return np.asarray([math.log(s), ang, centre[0], centre[1]])


def _from_params(p: np.ndarray, size: int) -> np.ndarray:
    return similarity(math.exp(p[0]), p[1], p[2:4], np.asarray([size / 2.0, size / 2.0]))


def smooth_transforms(transforms: list[Float[np.ndarray, "2 3"] | None], size: int, *, sigma: float = 2.0,
                      max_gap: int = 10, name: str = "video") -> list[Float[np.ndarray, "2 3"]]:
    """Fills missing frames (None) and smooths a video's per-frame transforms over time.

    Each transform is described by the crop's placement in the frame (log scale, angle, centre); runs of
    at most ``max_gap`` missing frames are interpolated linearly (held at the ends of the video), then
    each parameter is smoothed with a Gaussian of ``sigma`` frames (zero phase: no lag; a local linear fit
    near the ends of the video, so a steady motion is followed there too). ``sigma`` 0 keeps the
    per-frame values. A longer run of missing frames
    (or no face at all) raises :class:`FaceNotFound` with ``name`` and the run's first frame.
    """
    n = len(transforms)
    found = [i for i, a in enumerate(transforms) if a is not None]
    if not found:
        raise FaceNotFound(name, 0 if n else None, f" in any of its {n} frames")
    gaps, start = [], None
    for i in range(n + 1):
        missing = i < n and transforms[i] is None
        if missing and start is None:
            start = i
        elif not missing and start is not None:
            gaps.append((start, i - start))
            start = None
    for g0, glen in gaps:
        if glen > max_gap:
            raise _gap_error(name, g0, glen, max_gap)
    params = np.full((n, 4), np.nan)
    for i in found:
        params[i] = _params(transforms[i], size)
    idx = np.asarray(found)
    known = params[idx]
    known[:, 1] = np.unwrap(known[:, 1])
    full = np.stack([np.interp(np.arange(n), idx, known[:, k]) for k in range(4)], 1)
    if sigma > 0 and n > 1:
        full = _local_linear(full, sigma)
    return [_from_params(p, size) for p in full]


def _local_linear(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local linear regression along axis 0 (window +-3 sigma). In the interior this is
    plain Gaussian smoothing; near the ends it still follows a steady motion instead of lagging behind
    it (as a truncated, renormalised kernel would)."""
    n = len(x)
    radius = int(math.ceil(3 * sigma))
    out = np.empty_like(x)
    for t in range(n):
        k = np.arange(max(0, t - radius), min(n, t + radius + 1))
        d = (k - t).astype(np.float64)
        w = np.exp(-0.5 * (d / sigma) ** 2)
        s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
        t0, t1 = w @ x[k], (w * d) @ x[k]
        det = s0 * s2 - s1 * s1
        out[t] = (s2 * t0 - s1 * t1) / det if det > 1e-9 * s0 * s0 else t0 / s0
    return out


def track_video(frames: Iterable[UInt8[np.ndarray, "H W 3"]], size: int, *, name: str = "video",
                detector: FaceDetector | None = None, sigma: float = 2.0, max_gap: int = 10,
                progress: Callable[[int], None] | None = None) -> list[Float[np.ndarray, "2 3"]]:
    """Per-frame alignment transforms of a video (detect, fill gaps, smooth); see :func:`smooth_transforms`.

    Stops early with :class:`FaceNotFound` as soon as more than ``max_gap`` consecutive frames have no face.
    """
    detector = detector or FaceDetector()
    out: list[np.ndarray | None] = []
    prev, misses = None, 0
    for i, frame in enumerate(frames):
        lm = detector.detect(frame, prev)
        if lm is None:
            misses += 1
            if misses > max_gap:
                raise _gap_error(name, i - misses + 1, misses, max_gap)
            out.append(None)
        else:
            misses, prev = 0, lm
            out.append(landmarks_transform(lm, size))
        if progress is not None:
            progress(i)
    return smooth_transforms(out, size, sigma=sigma, max_gap=max_gap, name=name)
