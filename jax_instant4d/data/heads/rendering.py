"""Rendering a batch of heads with the project's rasterizer (RGB, alpha and the region labels)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from jax_instant4d.data.heads.params import HeadGaussians


def render_heads(
    gaussians: HeadGaussians,
    world_to_cam: Float[Array, "B 4 4"],
    intrinsics: Float[Array, "B 4"],
    size: int,
    backend: str = "auto",
    tile_capacity: int | None = None,
) -> tuple[Float[Array, "B H W 3"], Float[Array, "B H W"], Float[Array, "B H W 2"]]:
    """Renders a batch of heads (one camera each) on black: RGB, alpha, and the two region channels.

    Calls ``jax_instant4d.render.render`` (``rasterizer_ffi.rasterize`` with ``backend``). The region
    channels are the composited labels: soft masks of the eye and mouth regions. ``tile_capacity``
    (``xla`` backend only) defaults to the number of Gaussians, so every backend renders exactly: the
    ground truth must not depend on which rasterizer made it.
    """
    from jax_instant4d.render import Camera, render

    g = gaussians
    if tile_capacity is None:
        tile_capacity = int(g.means.shape[-2])
    feats = jnp.concatenate([g.colours, g.regions], -1)
    out = render(g.means, g.scales, g.quats, g.opacities, feats, Camera(world_to_cam, intrinsics), int(size),
                 int(size), 0.0, backend=backend, tile_capacity=tile_capacity)
    return out.rgb[..., :3], out.alpha, out.rgb[..., 3:5]
