"""The teacher-clip record: one record per clip, the same for synthetic and real teacher data.

A clip holds a source image of one identity with its camera, and ``T`` time steps; each time step has
the driving frame (another person, or the same one, performing the motion) and ``V >= 1`` teacher views
of the source identity performing that motion, each with its camera. Cameras follow ``rasterizer_ffi``
and ``jax_instant4d.render``: world y up, the head at the origin facing +z; OpenCV camera frame (x right,
y down, z forward); ``world_to_cam`` is a 4x4 rigid transform; intrinsics are (fx, fy, cx, cy) in pixels
of the stored ``width`` x ``height`` image (square, ``resolution``). Backgrounds are black.

Frames are stored encoded (PNG or JPEG bytes, the dataset's ``image_format``); masks always as PNG.
Every per-target array is flattened over (time, view) in row-major order: index ``t * V + v``.

Fields (tfds ``Tensor`` features, readable without TensorFlow):

==================  ============  ==================================================================
name                shape/dtype   meaning
==================  ============  ==================================================================
clip_id             str           clip name (unique in the dataset)
identity_id         str           identity name of the source person
teacher             str           name of the teacher that made the views ("synthetic_heads", ...)
clip_index          int32         unique over the dataset, all splits (ingest: sorted clip names)
identity_index      int32         index of identity_id over the whole dataset
driving_identity    int32         identity index of the driving person (-1 if unknown)
resolution          int32         R: every stored image is R x R
num_times           int32         T
num_views           int32         V
source_image        bytes         encoded RGB source image
source_w2c          f32[4,4]      source camera, world to camera
source_intrinsics   f32[4]        fx, fy, cx, cy (pixels at R)
driving_images      bytes[T]      encoded RGB driving frames
target_images       bytes[T*V]    encoded RGB teacher views
target_w2c          f32[T*V,4,4]  teacher view cameras
target_intrinsics   f32[T*V,4]    fx, fy, cx, cy
has_fg              bool          target_masks carry a foreground mask (red channel)
has_regions         bool          target_masks carry eye (green) and mouth (blue) region masks
target_masks        bytes[T*V]    PNG RGB: fg, eyes, mouth (uint8 0..255); empty bytes if neither
has_expression      bool          expression arrays are ground truth (synthetic data)
expression          f32[T,E]      expression parameters of each time step (zeros if absent)
source_expression   f32[E]        expression of the source image (zeros if absent)
identity_params     f32[P]        synthetic generator identity parameters (empty for real clips)
undriven_images     bytes[T*V]    optional (datasets made with it only): encoded RGB of the source
                                  identity at the source's own expression at each teacher view's camera
==================  ============  ==================================================================
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Shaped, UInt8
from numpy.typing import ArrayLike

# The synthetic head's expression parameters; E is the width of "expression" in records and batches.
EXPRESSION_NAMES: tuple[str, ...] = (
    "jaw_open",  # 0..1
    "smile",  # -1 (frown) .. 1
    "blink_left",  # 0..1, the subject's left eye (world +x)
    "blink_right",  # 0..1
    "brow_left",  # -1 (lowered) .. 1 (raised)
    "brow_right",  # -1 .. 1
    "brow_furrow",  # 0..1, inner brows down and together
    "gaze_x",  # -1..1, +1 looks towards world +x (the subject's left)
    "gaze_y",  # -1..1, +1 looks up
    "pucker",  # 0..1
    "cheek_puff",  # 0..1
    "jaw_side",  # -1..1, lower jaw shifted towards world +x
    "mouth_stretch",  # 0..1, lip corners pulled sideways
    "squint",  # 0..1, lower lids raised
)
NUM_EXPRESSION: int = len(EXPRESSION_NAMES)
EXPRESSION_RANGES: np.ndarray = np.array(
    [(0, 1), (-1, 1), (0, 1), (0, 1), (-1, 1), (-1, 1), (0, 1), (-1, 1), (-1, 1), (0, 1), (0, 1), (-1, 1),
     (0, 1), (0, 1)], np.float32)

_EXPRESSION_INDEX = {n: i for i, n in enumerate(EXPRESSION_NAMES)}
# A horizontal mirror of a frame swaps the subject's left and right and negates sideways motions.
MIRROR_PERMUTATION: np.ndarray = np.arange(NUM_EXPRESSION)
for _a, _b in (("blink_left", "blink_right"), ("brow_left", "brow_right")):
    MIRROR_PERMUTATION[_EXPRESSION_INDEX[_a]], MIRROR_PERMUTATION[_EXPRESSION_INDEX[_b]] = (
        _EXPRESSION_INDEX[_b], _EXPRESSION_INDEX[_a])
MIRROR_NEGATE: np.ndarray = np.isin(np.arange(NUM_EXPRESSION), [_EXPRESSION_INDEX["gaze_x"],
                                                                _EXPRESSION_INDEX["jaw_side"]])


def mirror_expression(expr: Float[np.ndarray, "*B E"]) -> Float[np.ndarray, "*B E"]:
    """The expression of a horizontally mirrored frame: blink and brow left/right swapped, gaze_x and
    jaw_side negated."""
    e = np.asarray(expr, np.float32)[..., MIRROR_PERMUTATION].copy()
    e[..., MIRROR_NEGATE] = -e[..., MIRROR_NEGATE]
    return e


def normalise_expression(expr: Float[ArrayLike, "*B E"]) -> Float[ArrayLike, "*B E"]:
    """Each parameter mapped from its range (``EXPRESSION_RANGES``) to [0, 1], in float32. An array with
    ``astype`` (numpy, or jax: traced too, as in the train step's oracle codes) keeps its kind; anything
    else (a list) becomes a numpy array."""
    lo, hi = EXPRESSION_RANGES[:, 0], EXPRESSION_RANGES[:, 1]
    x = expr.astype(np.float32) if hasattr(expr, "astype") else np.asarray(expr, np.float32)
    return (x - lo) / (hi - lo)


def denormalise_expression(y: Float[np.ndarray, "*B E"]) -> Float[np.ndarray, "*B E"]:
    """Inverse of :func:`normalise_expression`, clipped to the ranges."""
    lo, hi = EXPRESSION_RANGES[:, 0], EXPRESSION_RANGES[:, 1]
    return np.clip(np.asarray(y, np.float32) * (hi - lo) + lo, lo, hi)


IMAGE_FORMATS = ("png", "jpeg")
SPLITS = ("train", "test")  # test = held-out identities
SPLIT_ALIASES = {"heldout": "test", "held-out": "test", "validation": "test"}


class ClipError(ValueError):
    """A clip that cannot be stored. ``reason`` is one of ``REJECT_REASONS``; ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


REJECT_REASONS = (
    "unreadable file",  # a file that cannot be opened or decoded (image, video, JSON)
    "missing frames",  # a listed file or folder is absent, or a stream has fewer / more frames than T
    "camera count != frame count",
    "non-finite camera",
    "non-invertible camera",  # singular or non-rigid world_to_cam, or invalid intrinsics
    "wrong resolution",
    "invalid clip description",  # clip.json lacks a field or has one of the wrong type
)


def encode_image(image: UInt8[np.ndarray, "H W C"], fmt: str, quality: int = 95) -> bytes:
    """PNG or JPEG bytes of a uint8 image (C = 1 or 3)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"encode_image expects uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=int(quality), subsampling=0)
    else:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes, channels: int = 3) -> UInt8[np.ndarray, "H W C"]:
    """Decodes PNG/JPEG bytes to uint8 [H, W, channels]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        arr = np.asarray(im, dtype=np.uint8)
    return arr if channels == 3 else arr[..., None]


class PixelError(ValueError):
    """A decoded image whose pixel type or shape is not an image's (the message names it)."""


def as_rgb8(x: Shaped[np.ndarray, "H W *C"], name: str = "image") -> UInt8[np.ndarray, "H W 3"]:
    """A decoded frame (gray, gray + alpha, RGB, RGBA; 8 or 16 bits; bool) as uint8 RGB: 16-bit values
    scaled by 255/65535 (never saturated), alpha composited on black (the training background). Ingest and
    ``animate`` both read images through it."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype in (np.uint16, np.int32, np.uint32):  # 16-bit samples (PIL reads 16-bit gray PNGs as int32)
        x = np.rint(np.clip(x.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise PixelError(f"{name}: unsupported pixel type {x.dtype}")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[2] not in (1, 2, 3, 4):
        raise PixelError(f"{name}: not an image (shape {x.shape})")
    if x.shape[2] in (2, 4):
        alpha = x[..., -1:].astype(np.float32) / 255.0
        x = np.rint(x[..., :-1].astype(np.float32) * alpha).astype(np.uint8)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(x)


def to_uint8(x: Float[np.ndarray, "..."]) -> UInt8[np.ndarray, "..."]:
    """[0, 1] floats to uint8 with rounding (the inverse of ``x / 255``)."""
    return np.clip(np.round(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Clip:
    """One clip in memory, before encoding (images uint8; see the module docstring for meanings)."""

    clip_id: str
    identity_id: str
    teacher: str
    source_image: np.ndarray  # u8[R,R,3]
    source_w2c: np.ndarray  # f32[4,4]
    source_intrinsics: np.ndarray  # f32[4]
    driving_images: np.ndarray  # u8[T,R,R,3]
    target_images: np.ndarray  # u8[T,V,R,R,3]
    target_w2c: np.ndarray  # f32[T,V,4,4]
    target_intrinsics: np.ndarray  # f32[T,V,4]
    target_fg: np.ndarray | None = None  # u8[T,V,R,R]
    target_eyes: np.ndarray | None = None  # u8[T,V,R,R]
    target_mouth: np.ndarray | None = None  # u8[T,V,R,R]
    expression: np.ndarray | None = None  # f32[T,E]
    source_expression: np.ndarray | None = None  # f32[E]
    identity_params: np.ndarray | None = None  # f32[P]
    undriven_images: np.ndarray | None = None  # u8[T,V,R,R,3]: the source's expression at the target cameras
    clip_index: int = 0
    identity_index: int = 0
    driving_identity: int = -1


def features_dict(undriven: bool = False):
    """The tfds features of a clip record (``Tensor`` features only: no TensorFlow needed); ``undriven``:
    with the optional ``undriven_images``."""
    import tensorflow_datasets as tfds

    T = tfds.features.Tensor
    extra = {"undriven_images": T(shape=(None,), dtype=np.object_)} if undriven else {}
    return tfds.features.FeaturesDict({
        "clip_id": T(shape=(), dtype=np.str_),
        "identity_id": T(shape=(), dtype=np.str_),
        "teacher": T(shape=(), dtype=np.str_),
        "clip_index": T(shape=(), dtype=np.int32),
        "identity_index": T(shape=(), dtype=np.int32),
        "driving_identity": T(shape=(), dtype=np.int32),
        "resolution": T(shape=(), dtype=np.int32),
        "num_times": T(shape=(), dtype=np.int32),
        "num_views": T(shape=(), dtype=np.int32),
        "source_image": T(shape=(), dtype=np.object_),
        "source_w2c": T(shape=(4, 4), dtype=np.float32),
        "source_intrinsics": T(shape=(4,), dtype=np.float32),
        "driving_images": T(shape=(None,), dtype=np.object_),
        "target_images": T(shape=(None,), dtype=np.object_),
        "target_w2c": T(shape=(None, 4, 4), dtype=np.float32),
        "target_intrinsics": T(shape=(None, 4), dtype=np.float32),
        "has_fg": T(shape=(), dtype=np.bool_),
        "has_regions": T(shape=(), dtype=np.bool_),
        "target_masks": T(shape=(None,), dtype=np.object_),
        "has_expression": T(shape=(), dtype=np.bool_),
        "expression": T(shape=(None, NUM_EXPRESSION), dtype=np.float32),
        "source_expression": T(shape=(NUM_EXPRESSION,), dtype=np.float32),
        "identity_params": T(shape=(None,), dtype=np.float32),
        **extra,
    })


def encode_clip(clip: Clip, image_format: str = "png", jpeg_quality: int = 95) -> dict:
    """A :class:`Clip` as a record dict for :func:`features_dict` (frames encoded)."""
    res = int(clip.source_image.shape[0])
    t, v = clip.target_images.shape[:2]
    enc = lambda im: encode_image(im, image_format, jpeg_quality)  # noqa: E731
    has_fg = clip.target_fg is not None
    has_regions = clip.target_eyes is not None or clip.target_mouth is not None
    masks = []
    for ti in range(t):
        for vi in range(v):
            if not (has_fg or has_regions):
                masks.append(b"")
                continue
            m = np.zeros((res, res, 3), np.uint8)
            m[..., 0] = clip.target_fg[ti, vi] if has_fg else 255
            if clip.target_eyes is not None:
                m[..., 1] = clip.target_eyes[ti, vi]
            if clip.target_mouth is not None:
                m[..., 2] = clip.target_mouth[ti, vi]
            masks.append(encode_image(m, "png"))
    has_expr = clip.expression is not None
    expr = np.asarray(clip.expression if has_expr else np.zeros((t, NUM_EXPRESSION)), np.float32)
    src_expr = clip.source_expression if clip.source_expression is not None else np.zeros(NUM_EXPRESSION)
    ident = clip.identity_params if clip.identity_params is not None else np.zeros((0,))
    extra = {}
    if clip.undriven_images is not None:
        if clip.undriven_images.shape != clip.target_images.shape:
            raise ValueError(f"clip {clip.clip_id}: undriven_images has shape {clip.undriven_images.shape}, "
                             f"target_images {clip.target_images.shape}: one undriven view per teacher view")
        extra["undriven_images"] = np.array([enc(clip.undriven_images[ti, vi]) for ti in range(t) for vi in range(v)],
                                            dtype=object)
    return {
        "clip_id": clip.clip_id,
        "identity_id": clip.identity_id,
        "teacher": clip.teacher,
        "clip_index": np.int32(clip.clip_index),
        "identity_index": np.int32(clip.identity_index),
        "driving_identity": np.int32(clip.driving_identity),
        "resolution": np.int32(res),
        "num_times": np.int32(t),
        "num_views": np.int32(v),
        "source_image": enc(clip.source_image),
        "source_w2c": np.asarray(clip.source_w2c, np.float32),
        "source_intrinsics": np.asarray(clip.source_intrinsics, np.float32),
        "driving_images": np.array([enc(im) for im in clip.driving_images], dtype=object),
        "target_images": np.array([enc(clip.target_images[ti, vi]) for ti in range(t) for vi in range(v)],
                                  dtype=object),
        "target_w2c": np.asarray(clip.target_w2c, np.float32).reshape(t * v, 4, 4),
        "target_intrinsics": np.asarray(clip.target_intrinsics, np.float32).reshape(t * v, 4),
        "has_fg": np.bool_(has_fg),
        "has_regions": np.bool_(has_regions),
        "target_masks": np.array(masks, dtype=object),
        "has_expression": np.bool_(has_expr),
        "expression": expr.reshape(t, NUM_EXPRESSION),
        "source_expression": np.asarray(src_expr, np.float32).reshape(NUM_EXPRESSION),
        "identity_params": np.asarray(ident, np.float32).reshape(-1),
        **extra,
    }


def check_camera(w2c: np.ndarray, intrinsics: np.ndarray, width: int, height: int, what: str) -> None:
    """Raises :class:`ClipError` for a non-finite or non-invertible (non-rigid, singular, bad intrinsics) camera."""
    w2c = np.asarray(w2c, np.float64)
    k = np.asarray(intrinsics, np.float64)
    if w2c.shape != (4, 4) or k.shape != (4,):
        raise ClipError("invalid clip description", f"{what}: world_to_cam must be 4x4 and intrinsics 4 numbers")
    if not (np.all(np.isfinite(w2c)) and np.all(np.isfinite(k))):
        raise ClipError("non-finite camera", what)
    rot = w2c[:3, :3]
    det = float(np.linalg.det(rot))
    if not np.allclose(w2c[3], [0, 0, 0, 1], atol=1e-4) or abs(det) < 1e-6:
        raise ClipError("non-invertible camera", f"{what}: bottom row {w2c[3].tolist()}, det(R) = {det:.3g}")
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or det < 0:
        raise ClipError("non-invertible camera", f"{what}: world_to_cam is not a rigid transform (det(R) = {det:.4f})")
    if k[0] <= 0 or k[1] <= 0:
        raise ClipError("non-invertible camera", f"{what}: focal lengths must be positive, got {k[0]}, {k[1]}")
    if not (0 <= k[2] <= width and 0 <= k[3] <= height):
        raise ClipError("non-invertible camera", f"{what}: principal point ({k[2]}, {k[3]}) outside the image")
