"""Multi-view consistency of rendered frames: our stand-in for MEt3R (which needs MASt3R).

What it measures, exactly. Two renders of one animated avatar (the same Gaussians, the same
expression) at cameras A and B, each with RGB, alpha and the rasterizer's expected depth
``D = sum_i z_i alpha_i T_i``. For every pixel p of A whose alpha exceeds ``alpha_min``:

1. its surface depth is ``d = D_A(p) / alpha_A(p)`` (the opacity-weighted mean depth along the ray);
2. the pixel centre (j + 0.5, i + 0.5) is unprojected with A's intrinsics to ``d`` along its ray and
   taken to world coordinates with A's ``world_to_cam`` (OpenCV camera frame);
3. that point is projected into B: pixel position q and depth z_B;
4. B's colour, alpha and surface depth are sampled bilinearly at q;
5. the correspondence is *co-visible* when q lies inside B, B's sampled alpha exceeds ``alpha_min``
   and ``|z_B - D_B(q)/alpha_B(q)| < depth_tol * z_B`` (the point is not occluded in B).

The score is the mean absolute difference of the surface colours (``rgb / alpha``, in [0, 1], mean
over channels) over the co-visible pixels, computed in both directions (A to B and B to A) and
pooled: **0 means the colour each view shows is exactly what the other view and the depth predict**;
larger is less consistent. ``coverage`` is the co-visible fraction of the pixels with alpha above
``alpha_min``. For a set of 3D Gaussians with view-independent colour the score is small by
construction; what remains comes from the renderer (splat footprints, antialiasing) and from geometry
that the expected depth describes badly (semi-transparent layers, floaters), which is what the score
detects. It is not comparable to MEt3R's numbers (a learned dense feature similarity after MASt3R
reconstruction from the two images alone), and it cannot score the teacher's views (they have no depth).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from jax_instant4d.render import Camera

ALPHA_MIN = 0.9
DEPTH_TOL = 0.03  # relative: 3% of the depth


def pixel_grid(height: int, width: int) -> Float[Array, "H W 2"]:
    """Pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5), as the rasterizer samples them."""
    v, u = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5, jnp.arange(width, dtype=jnp.float32) + 0.5,
                        indexing="ij")
    return jnp.stack([u, v], axis=-1)


def unproject(depth: Float[Array, "B H W"], camera: Camera) -> Float[Array, "B H W 3"]:
    """World points at depth ``depth`` (camera z, OpenCV) along the rays through each pixel centre."""
    h, w = depth.shape[-2:]
    uv = pixel_grid(h, w)
    fx, fy, cx, cy = (camera.intrinsics[:, None, None, i] for i in range(4))
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    cam = jnp.stack([x, y, depth], axis=-1)
    rot, t = camera.world_to_cam[:, :3, :3], camera.world_to_cam[:, :3, 3]
    return jnp.einsum("bji,bhwj->bhwi", rot, cam - t[:, None, None, :])  # R^T (x - t)


def project(points: Float[Array, "B H W 3"], camera: Camera) -> tuple[Float[Array, "B H W 2"], Float[Array, "B H W"]]:
    """Pixel coordinates (u, v) (pixel centres at +0.5) and camera depth of world points."""
    rot, t = camera.world_to_cam[:, :3, :3], camera.world_to_cam[:, :3, 3]
    cam = jnp.einsum("bij,bhwj->bhwi", rot, points) + t[:, None, None, :]
    z = cam[..., 2]
    zs = jnp.where(jnp.abs(z) > 1e-6, z, 1e-6)
    fx, fy, cx, cy = (camera.intrinsics[:, None, None, i] for i in range(4))
    return jnp.stack([fx * cam[..., 0] / zs + cx, fy * cam[..., 1] / zs + cy], axis=-1), z


def bilinear(image: Float[Array, "B H W C"], uv: Float[Array, "B h w 2"]) -> tuple[Float[Array, "B h w C"],
                                                                                  Bool[Array, "B h w"]]:
    """Samples ``image`` at pixel coordinates ``uv`` (pixel centres at +0.5) bilinearly; the mask says
    which samples have all four neighbours inside the image."""
    b, h, w, _ = image.shape
    x = uv[..., 0] - 0.5
    y = uv[..., 1] - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 <= w - 1) & (y0 + 1 <= h - 1)
    x0 = jnp.clip(x0, 0, w - 2).astype(jnp.int32)
    y0 = jnp.clip(y0, 0, h - 2).astype(jnp.int32)
    flat = image.reshape(b, h * w, -1)
    take = lambda yy, xx: jax.vmap(lambda f, i: f[i])(flat, (yy * w + xx).reshape(b, -1)).reshape(  # noqa: E731
        *yy.shape, -1)
    top = take(y0, x0) * (1 - fx) + take(y0, x0 + 1) * fx
    bottom = take(y0 + 1, x0) * (1 - fx) + take(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy, inside


def surface(rgb: Float[Array, "B H W 3"], alpha: Float[Array, "B H W"], depth: Float[Array, "B H W"]
            ) -> tuple[Float[Array, "B H W 3"], Float[Array, "B H W"]]:
    """Surface colour ``rgb / alpha`` (clipped to [0, 1]) and surface depth ``depth / alpha``."""
    a = jnp.maximum(alpha, 1e-6)
    return jnp.clip(rgb / a[..., None], 0.0, 1.0), depth / a


def warp(rgb_b: Float[Array, "B H W 3"], alpha_b: Float[Array, "B H W"], depth_b: Float[Array, "B H W"],
         alpha_a: Float[Array, "B H W"], depth_a: Float[Array, "B H W"], cam_a: Camera, cam_b: Camera, *,
         alpha_min: float = ALPHA_MIN, depth_tol: float = DEPTH_TOL
         ) -> tuple[Float[Array, "B H W 3"], Bool[Array, "B H W"]]:
    """B's surface colour seen from A's pixels (steps 1-5 of the module docstring) and the co-visibility mask."""
    col_b, surf_b = surface(rgb_b, alpha_b, depth_b)
    d_a = depth_a / jnp.maximum(alpha_a, 1e-6)
    uv, z = project(unproject(d_a, cam_a), cam_b)
    sampled, inside = bilinear(jnp.concatenate([col_b, alpha_b[..., None], surf_b[..., None]], -1), uv)
    col, a_s, d_s = sampled[..., :3], sampled[..., 3], sampled[..., 4]
    valid = (alpha_a > alpha_min) & inside & (z > 1e-3) & (a_s > alpha_min) & (jnp.abs(z - d_s) < depth_tol * z)
    return col, valid


def consistency(rgb_a: Float[Array, "B H W 3"], alpha_a: Float[Array, "B H W"], depth_a: Float[Array, "B H W"],
                rgb_b: Float[Array, "B H W 3"], alpha_b: Float[Array, "B H W"], depth_b: Float[Array, "B H W"],
                cam_a: Camera, cam_b: Camera, *, alpha_min: float = ALPHA_MIN, depth_tol: float = DEPTH_TOL
                ) -> tuple[Float[Array, " B"], Float[Array, " B"], Float[Array, " B"]]:
    """Per image pair: (sum of colour errors, number of co-visible pixels, coverage), both directions.

    The score of a set of pairs is ``sum(errors) / sum(counts)`` (NaN without co-visible pixels); see
    :func:`score`. Cameras are ``[B]`` batches in pixels of the rendered size."""
    kw = dict(alpha_min=alpha_min, depth_tol=depth_tol)
    total = jnp.zeros(rgb_a.shape[:1], jnp.float32)
    count = jnp.zeros_like(total)
    fg = jnp.zeros_like(total)
    for (rgb_p, a_p, d_p, cam_p), (rgb_q, a_q, d_q, cam_q) in (
            ((rgb_a, alpha_a, depth_a, cam_a), (rgb_b, alpha_b, depth_b, cam_b)),
            ((rgb_b, alpha_b, depth_b, cam_b), (rgb_a, alpha_a, depth_a, cam_a))):
        warped, valid = warp(rgb_q, a_q, d_q, a_p, d_p, cam_p, cam_q, **kw)
        col_p, _ = surface(rgb_p, a_p, d_p)
        err = jnp.mean(jnp.abs(col_p - warped), axis=-1)
        total = total + jnp.sum(jnp.where(valid, err, 0.0), axis=(1, 2))
        count = count + jnp.sum(valid, axis=(1, 2)).astype(jnp.float32)
        fg = fg + jnp.sum(a_p > alpha_min, axis=(1, 2)).astype(jnp.float32)
    return total, count, count / jnp.maximum(fg, 1.0)


def score(total: Float[np.ndarray, " N"], count: Float[np.ndarray, " N"]) -> float:
    """Pooled mean colour error of a set of pairs from :func:`consistency` (NaN without co-visible pixels)."""
    n = float(np.sum(count))
    return float(np.sum(total)) / n if n > 0 else float("nan")


def orbit_about_up(camera: Camera, degrees: Float[Array, " B"]) -> Camera:
    """The camera moved on its orbit around the world origin: rotated by ``degrees`` about world +y
    (the head's up axis); intrinsics unchanged. ``world_to_cam' = world_to_cam @ R_y(degrees)^T``."""
    a = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    c, s = jnp.cos(a), jnp.sin(a)
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    rot = jnp.stack([jnp.stack([c, zero, s, zero], -1), jnp.stack([zero, one, zero, zero], -1),
                     jnp.stack([-s, zero, c, zero], -1), jnp.stack([zero, zero, zero, one], -1)], -2)
    return Camera(camera.world_to_cam @ jnp.swapaxes(rot, -1, -2), camera.intrinsics)


def partner_yaw(camera: Camera, degrees: float) -> Float[Array, " B"]:
    """The yaw step (degrees) that moves each camera towards the frontal view: ``-degrees`` for a
    camera on the +x side of the head, ``+degrees`` otherwise."""
    rot, t = camera.world_to_cam[..., :3, :3], camera.world_to_cam[..., :3, 3]
    centre = -jnp.einsum("...ji,...j->...i", rot, t)  # camera centre in world coordinates
    return jnp.where(centre[..., 0] > 0, -degrees, degrees).astype(jnp.float32)
