"""Gaussians as a PLY file in the layout of the original 3D Gaussian Splatting code (what splat viewers
read), and a reader for such files.

Layout: ``binary_little_endian 1.0``, one ``vertex`` element, float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

* ``x y z``: the mean in our world frame (y up, the head at the origin facing +z, units of the EG3D
  cameras at radius 2.7); viewers that assume y down show the head upside down: flip in the viewer.
* ``nx ny nz``: zeros (unused by 3DGS; kept because its loaders expect them).
* ``f_dc_*``: the degree-0 spherical-harmonics coefficient of the view-independent RGB colour,
  ``(rgb - 0.5) / C0`` with ``C0 = 0.28209479177387814``; there are no ``f_rest_*`` (no view dependence).
* ``opacity``: the logit of the opacity (viewers apply a sigmoid), computed from the density as
  ``log(1 - exp(-d)) + d`` (exact, finite even where the opacity rounds to 1 in float32).
* ``scale_*``: log standard deviations (viewers apply exp).
* ``rot_*``: the unit quaternion (w, x, y, z).

Invisible Gaussians are dropped: those the model switched off (opacity exactly 0: source density below
``model.density_threshold``) and any with opacity below 1/255, which our renderer never draws (a
Gaussian's alpha never exceeds its opacity and alpha < 1/255 is skipped). The file therefore renders the
same image with our rasterizer and holds only splats that can be seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from jaxtyping import Array, ArrayLike, Float

if TYPE_CHECKING:
    from jax_instant4d.model.avatar import Avatar, Gaussians, Instant4D, Motion

C0 = 0.28209479177387814  # Y_0^0, the degree-0 spherical harmonic
MIN_OPACITY = 1.0 / 255.0
PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
              "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4"}


class PlyError(ValueError):
    """A PLY file that is not a readable 3D Gaussian Splatting file (the file is named)."""


class ImageError(ValueError):
    """An image file that cannot be read (the file is named)."""


class PlyGaussians(NamedTuple):
    """Gaussians as activated attributes (NumPy, float32): what a PLY file stores, decoded."""

    means: Float[np.ndarray, "N 3"]
    scales: Float[np.ndarray, "N 3"]  # standard deviations
    quats: Float[np.ndarray, "N 4"]  # (w, x, y, z), unit norm
    opacities: Float[np.ndarray, " N"]
    colors: Float[np.ndarray, "N 3"]  # RGB


def header(n: int) -> bytes:
    """The PLY header for ``n`` Gaussians (ASCII, ending with ``end_header\\n``)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {int(n)}"]
    lines += [f"property float {p}" for p in PROPERTIES]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def opacity_logit(densities: Float[np.ndarray, " N"]) -> Float[np.ndarray, " N"]:
    """logit(1 - exp(-d)) = log(-expm1(-d)) + d, in float64 (finite for every d > 0)."""
    d = np.asarray(densities, np.float64)
    return np.log(-np.expm1(-d)) + d


def to_records(means: Float[ArrayLike, "N 3"], scales: Float[ArrayLike, "N 3"], quats: Float[ArrayLike, "N 4"],
               opacities: Float[ArrayLike, " N"], colors: Float[ArrayLike, "N 3"],
               densities: Float[ArrayLike, " N"] | None = None, min_opacity: float = MIN_OPACITY) -> np.ndarray:
    """One structured float32 record per visible Gaussian (the PLY vertex layout).

    ``densities`` (optional; Φ's density, opacity = 1 - exp(-density) where the opacity is not 0) gives
    an exact logit where the opacity rounds to 1 in float32. Gaussians with ``opacities < min_opacity``
    (and opacity 0 always) are dropped."""
    means = np.asarray(means, np.float64).reshape(-1, 3)
    n = means.shape[0]
    opac = np.asarray(opacities, np.float64).reshape(n)
    keep = np.isfinite(opac) & (opac >= min_opacity) & (opac > 0)
    if densities is not None:  # opacity = 1 - exp(-density) wherever it is not 0 (switched off, dropped)
        logit = opacity_logit(np.maximum(np.asarray(densities, np.float64).reshape(n), 1e-30))
    else:
        p = np.clip(opac, 1e-30, 1.0 - 1e-7)
        logit = np.log(p) - np.log1p(-p)
    q = np.asarray(quats, np.float64).reshape(n, 4)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    rec = np.zeros(int(keep.sum()), dtype=[(p, "<f4") for p in PROPERTIES])
    cols = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
    rgb = np.asarray(colors, np.float64).reshape(n, 3)
    for i in range(3):
        cols[f"f_dc_{i}"] = (rgb[:, i] - 0.5) / C0
        cols[f"scale_{i}"] = np.log(np.asarray(scales, np.float64).reshape(n, 3)[:, i])
    for i in range(4):
        cols[f"rot_{i}"] = q[:, i]
    cols["opacity"] = logit
    for name, values in cols.items():
        rec[name] = values[keep]
    return rec


def write_ply(path: str | Path, means: Float[ArrayLike, "N 3"], scales: Float[ArrayLike, "N 3"],
              quats: Float[ArrayLike, "N 4"], opacities: Float[ArrayLike, " N"], colors: Float[ArrayLike, "N 3"],
              densities: Float[ArrayLike, " N"] | None = None, min_opacity: float = MIN_OPACITY) -> int:
    """Writes the Gaussians of one avatar (arrays ``[N, ...]``) as a 3DGS PLY file; returns the number
    written. The file appears complete or not at all (temp file + rename)."""
    from jax_instant4d.export.torch_model import _atomic_write

    rec = to_records(means, scales, quats, opacities, colors, densities, min_opacity)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header(len(rec)))
            f.write(rec.tobytes())

    _atomic_write(Path(path), write)
    return len(rec)


def read_ply(path: str | Path) -> PlyGaussians:
    """Reads a binary little-endian 3DGS PLY file (extra properties such as ``f_rest_*`` are ignored)
    back into activated attributes: sigmoid opacity, exp scale, normalised quaternion, RGB from f_dc."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise PlyError(f"{path}: not a PLY file (no 'ply' / 'end_header')")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise PlyError(f"{path}: only binary_little_endian PLY files are read")
    fields, count, in_vertex = [], None, False
    for line in lines:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
            elif count is not None:
                break  # elements after the vertices are not needed
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise PlyError(f"{path}: unsupported vertex property {line!r}")
            fields.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [f[0] for f in fields]
    missing = [p for p in PROPERTIES if p not in names and p not in ("nx", "ny", "nz")]
    if count is None or missing:
        raise PlyError(f"{path}: not a 3D Gaussian Splatting file (missing {missing or 'vertex element'})")
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise PlyError(f"{path}: truncated ({len(body)} bytes for {count} vertices of {dtype.itemsize})")
    rec = np.frombuffer(body, dtype=dtype, count=count)
    col = lambda *ks: np.stack([np.asarray(rec[k], np.float64) for k in ks], axis=-1)  # noqa: E731
    q = col("rot_0", "rot_1", "rot_2", "rot_3")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    logit = np.asarray(rec["opacity"], np.float64)
    return PlyGaussians(means=col("x", "y", "z").astype(np.float32),
                        scales=np.exp(col("scale_0", "scale_1", "scale_2")).astype(np.float32),
                        quats=q.astype(np.float32),
                        opacities=(1.0 / (1.0 + np.exp(-logit))).astype(np.float32),
                        colors=(col("f_dc_0", "f_dc_1", "f_dc_2") * C0 + 0.5).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# From a trained model: the Gaussians of an avatar at an expression
# --------------------------------------------------------------------------------------------------


def load_image(path: str | Path, size: int) -> Float[np.ndarray, "1 S S 3"]:
    """An image file as ``[1, size, size, 3]`` float32 in [0, 1]: RGB, centre-cropped to a square when it
    is not one, resized (bicubic) to ``size`` (``model.image_size``). Expects FFHQ/EG3D-aligned portraits."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            if w != h:
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if s != size:
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(im, np.float32) / 255.0
    except Exception as e:  # PIL raises several types for broken files
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return arr[None]


_JITTED: dict = {}


def _jitted() -> dict:
    if not _JITTED:
        from flax import nnx

        _JITTED["encode"] = nnx.jit(lambda m, x: m.encode(x))
        _JITTED["motion"] = nnx.jit(lambda m, x: m.motion(x))
        _JITTED["animate"] = nnx.jit(lambda m, a, z: m.animate_gaussians(a, z))
    return _JITTED


def animate_flax(model: Instant4D, source: Float[ArrayLike, "B R R 3"],
                 driving: Float[ArrayLike, "B R R 3"] | None = None
                 ) -> tuple[Avatar, Motion, Gaussians, Float[Array, "B N D"]]:
    """``(avatar, z_drv, animated Gaussians, fusion output)`` of an ``Instant4D`` for a source image and a
    driving frame (the source's own motion when ``driving`` is None); each stage jitted once per model."""
    fns = _jitted()
    avatar = fns["encode"](model, source)
    z_drv = avatar.z_src if driving is None else fns["motion"](model, driving)
    gaussians, delta = fns["animate"](model, avatar, z_drv)
    return avatar, z_drv, gaussians, delta


def export_avatar_ply(model: Instant4D, source: Float[ArrayLike, "1 R R 3"],
                      driving: Float[ArrayLike, "1 R R 3"] | None, path: str | Path,
                      min_opacity: float = MIN_OPACITY) -> tuple[int, int]:
    """Writes the Gaussians of the avatar of ``source`` at the expression of ``driving`` (or the source's
    own) as a PLY file. Returns ``(written, total)`` Gaussian counts."""
    _, _, g, _ = animate_flax(model, source, driving)
    g = [np.asarray(x)[0] for x in g]
    means, scales, quats, opacities, colors, densities = g
    written = write_ply(path, means, scales, quats, opacities, colors, densities, min_opacity)
    return written, int(means.shape[0])
