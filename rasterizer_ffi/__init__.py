"""Differentiable Gaussian rasterizer behind the XLA FFI, with a pure-XLA reference path.

Two public entry points:

* :func:`project` — 3D Gaussians + an OpenCV camera -> screen-space means, conics, depths, radii
  (pure JAX; its gradient is autodiff).
* :func:`rasterize` — front-to-back alpha compositing of screen-space Gaussians into an image, an
  alpha map and an expected-depth map, with one algorithm and three backends selected by name:
  ``"cpu"`` (C++ through the XLA FFI), ``"cuda"`` (CUDA through the XLA FFI, same per-pixel math),
  ``"xla"`` (pure JAX tiles, exact by default; the TPU path) and ``"auto"`` (cuda on a GPU, cpu on a
  CPU, xla elsewhere).

This package knows nothing of faces or training and never imports ``jax_instant4d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from rasterizer_ffi import constants
from rasterizer_ffi._checks import BACKENDS, check_raster_inputs
from rasterizer_ffi.projection import Projected, project, quat_to_rotmat
from rasterizer_ffi.reference import rasterize_dense

DEFAULT_TILE_CAPACITY = 0  # xla backend: 0 = exact (every pair composited); K > 0 = at most K per tile

__all__ = [
    "BACKENDS",
    "DEFAULT_TILE_CAPACITY",
    "Projected",
    "available_backends",
    "constants",
    "project",
    "quat_to_rotmat",
    "rasterize",
    "rasterize_dense",
    "resolve_backend",
]


def available_backends() -> list[str]:
    """Backends that can run in this process (native libraries found, matching devices present)."""
    from rasterizer_ffi import ffi

    out = ["xla"]
    if ffi.available("cpu"):
        out.append("cpu")
    if ffi.available("cuda") and any(d.platform == "gpu" for d in jax.devices()):
        out.append("cuda")
    return out


def resolve_backend(backend: str) -> str:
    """Maps ``"auto"`` to a concrete backend for the default JAX platform; checks the others exist."""
    from rasterizer_ffi import ffi

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        platform = jax.default_backend()
        if platform == "cpu" and ffi.available("cpu"):
            return "cpu"
        if platform in ("gpu", "cuda") and ffi.available("cuda"):
            return "cuda"
        return "xla"
    if backend in ("cpu", "cuda") and not ffi.available(backend):
        raise RuntimeError(
            f"rasterizer backend {backend!r} is not available: {ffi.load_error(backend)}. "
            "Reinstall with `pip install -e .` (INSTANT4D_CUDA=1 to force the CUDA library) or use "
            "backend='xla'.")
    return backend


def rasterize(
    means2d: Float[Array, "*B N 2"],
    conics: Float[Array, "*B N 3"],
    depths: Float[Array, "*B N"],
    radii: Int[Array, "*B N"],
    opacities: Float[Array, "*B N"],
    features: Float[Array, "*B N C"],
    background: Float[Array, "*B C"],
    width: int,
    height: int,
    backend: str = "auto",
    tile_capacity: int = DEFAULT_TILE_CAPACITY,
    return_overflow: bool = False,
):
    """Composite screen-space Gaussians front to back into ``image [*B,H,W,C]``, ``alpha [*B,H,W]``
    and expected ``depth [*B,H,W]``.

    Inputs are unbatched (``means2d [N, 2]``) or carry a leading batch axis ``B`` on every array
    (``background`` may stay ``[C]``). Semantics, identical in every backend: Gaussians with
    ``radii == 0`` are dropped; the rest are sorted by increasing depth (ties by index); pixel
    (i, j) is sampled at (j + 0.5, i + 0.5); sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with
    d = mean - pixel; skip if sigma < 0; alpha = min(0.99, opacity exp(-sigma)); skip if
    alpha < 1/255; stop before a Gaussian that would bring the transmittance T below 1e-4;
    image = sum f_i alpha_i T_i + T_final background; alpha = 1 - T_final;
    depth = sum z_i alpha_i T_i. Tiling never changes the image (binning uses the opacity-aware
    bound of the alpha cut). ``tile_capacity`` (``xla`` backend only): 0, the default, composites
    every (tile, Gaussian) pair, like ``cpu`` and ``cuda``; K > 0 is an opt-in approximation that
    keeps at most K Gaussians per 16x16 tile (nearest first) and counts the rest. With
    ``return_overflow=True`` a fourth output, int32 ``[*B]``, holds that count (0 on the exact paths).

    Differentiable with respect to means2d, conics, depths, opacities, features and background.
    """
    batched = check_raster_inputs(means2d, conics, depths, radii, opacities, features, background,
                                  width, height, backend)
    if isinstance(tile_capacity, bool) or not isinstance(tile_capacity, (int, np.integer)) or tile_capacity < 0:
        raise ValueError(f"tile_capacity must be an int >= 0 (0 = exact, K > 0 = at most K Gaussians per tile), "
                         f"got {tile_capacity!r}")
    backend = resolve_backend(backend)
    if not batched:
        means2d, conics, depths, radii, opacities, features = (
            x[None] for x in (means2d, conics, depths, radii, opacities, features))
    if background.ndim == 1:
        background = jnp.broadcast_to(background, (means2d.shape[0],) + background.shape)
    radii = radii.astype(jnp.int32)
    args = (means2d, conics, depths, radii, opacities, features, background)
    args = tuple(a.astype(jnp.float32) if a.dtype != jnp.int32 else a for a in args)
    if backend == "xla":
        from rasterizer_ffi.xla import rasterize_xla

        image, alpha, depth, overflow = rasterize_xla(*args, int(width), int(height), int(tile_capacity))
    else:
        from rasterizer_ffi.ffi import rasterize_native

        image, alpha, depth = rasterize_native(*args, int(width), int(height), backend)
        overflow = jnp.zeros(means2d.shape[:1], jnp.int32)
    if not batched:
        image, alpha, depth, overflow = image[0], alpha[0], depth[0], overflow[0]
    if return_overflow:
        return image, alpha, depth, overflow
    return image, alpha, depth
