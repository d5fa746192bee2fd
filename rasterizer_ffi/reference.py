"""Dense reference rasterizer: every pixel against every Gaussian, written plainly in JAX.

It implements the semantics every backend must reproduce (see ``rasterize``), with no tiling, no
capacity and no early exit other than the transmittance rule. Memory is O(H * W * N): it is for tests
and small scenes only. Its gradient comes from JAX autodiff, an independent check on the hand-written
backward passes of the other backends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rasterizer_ffi import constants as K


def composite_weights(sigma, opacity, valid):
    """Per-sample weights alpha_i T_i and the final transmittance of front-to-back compositing.

    ``sigma``, ``opacity``, ``valid`` broadcast to [..., N] with N sorted front to back. Implements:
    skip if sigma < 0; alpha = min(0.99, opacity exp(-sigma)); skip if alpha < 1/255; stop before a
    Gaussian that would bring the transmittance below 1e-4.
    """
    sigma_safe = jnp.where(sigma >= 0, sigma, 0.0)
    alpha = jnp.minimum(K.ALPHA_MAX, opacity * jnp.exp(-sigma_safe))
    keep = valid & (sigma >= 0) & (alpha >= K.ALPHA_MIN)
    a = jnp.where(keep, alpha, 0.0)
    t_after = jnp.cumprod(1.0 - a, axis=-1)
    stopped = jnp.cumsum((keep & (t_after < K.T_MIN)).astype(jnp.int32), axis=-1) > 0
    a = jnp.where(keep & ~stopped, a, 0.0)
    t_after = jnp.cumprod(1.0 - a, axis=-1)
    t_before = jnp.concatenate([jnp.ones_like(t_after[..., :1]), t_after[..., :-1]], axis=-1)
    return a * t_before, t_after[..., -1]


def _dense_one(means2d, conics, depths, radii, opacities, features, background, width, height):
    order = jnp.argsort(depths, stable=True)
    means2d, conics, depths = means2d[order], conics[order], depths[order]
    radii, opacities, features = radii[order], opacities[order], features[order]

    py, px = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                          jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij")
    dx = means2d[:, 0] - px[..., None]  # [H, W, N]
    dy = means2d[:, 1] - py[..., None]
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    w, t_final = composite_weights(sigma, opacities, radii > 0)
    image = jnp.einsum("hwn,nc->hwc", w, features) + t_final[..., None] * background
    depth = jnp.einsum("hwn,n->hw", w, depths)
    return image, 1.0 - t_final, depth


def rasterize_dense(
    means2d: Float[Array, "*B N 2"],
    conics: Float[Array, "*B N 3"],
    depths: Float[Array, "*B N"],
    radii: Int[Array, "*B N"],
    opacities: Float[Array, "*B N"],
    features: Float[Array, "*B N C"],
    background: Float[Array, "*B C"],
    width: int,
    height: int,
) -> tuple[Float[Array, "*B H W C"], Float[Array, "*B H W"], Float[Array, "*B H W"]]:
    """The reference: same arguments and outputs as ``rasterizer_ffi.rasterize``."""
    fn = lambda *args: _dense_one(*args, int(width), int(height))  # noqa: E731
    if means2d.ndim == 3:
        if background.ndim == 1:
            background = jnp.broadcast_to(background, (means2d.shape[0],) + background.shape)
        fn = jax.vmap(fn)
    return fn(means2d, conics, depths, radii, opacities, features, background)
