"""Projection of 3D Gaussians to screen-space 2D Gaussians (pure JAX; autodiff gives its backward).

Camera frame: OpenCV (x right, y down, z forward). ``world_to_cam`` is a 4x4 rigid transform,
``intrinsics`` are (fx, fy, cx, cy) in pixels. Pixel (row i, column j) is sampled at (j + 0.5, i + 0.5);
a point projects to (fx * x / z + cx, fy * y / z + cy).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from rasterizer_ffi import constants as K
from rasterizer_ffi._checks import check_image_size, check_projection_inputs


class Projected(NamedTuple):
    """Screen-space Gaussians. Leading dims ``*B`` match the inputs (none, or a batch axis)."""

    means2d: Float[Array, "*B N 2"]
    conics: Float[Array, "*B N 3"]  # (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Float[Array, "*B N"]  # view-space z
    radii: Int[Array, "*B N"]  # ceil(3 sqrt(lambda_max)); 0 marks a dropped Gaussian
    compensation: Float[Array, "*B N"]  # antialiasing factor for the opacities (ones when off)


def quat_to_rotmat(quats: Float[Array, "*N 4"]) -> Float[Array, "*N 3 3"]:
    """Rotation matrices from quaternions (w, x, y, z) of any non-zero norm."""
    q = quats / jnp.sqrt(jnp.maximum(jnp.sum(quats * quats, axis=-1, keepdims=True), 1e-24))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def _project_one(means3d, scales, quats, world_to_cam, intrinsics, width, height, near, antialiased):
    rot_w = world_to_cam[:3, :3]
    p = means3d @ rot_w.T + world_to_cam[:3, 3]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]

    in_front = z >= near
    z_safe = jnp.where(in_front, z, 1.0)

    # Perspective Jacobian with x/z, y/z clamped to 1.3x the half field of view.
    lim_x = K.FRUSTUM_CLAMP * 0.5 * width / fx
    lim_y = K.FRUSTUM_CLAMP * 0.5 * height / fy
    tx = jnp.clip(x / z_safe, -lim_x, lim_x)
    ty = jnp.clip(y / z_safe, -lim_y, lim_y)
    zero = jnp.zeros_like(z_safe)
    jac = jnp.stack(
        [
            jnp.stack([fx / z_safe, zero, -fx * tx / z_safe], axis=-1),
            jnp.stack([zero, fy / z_safe, -fy * ty / z_safe], axis=-1),
        ],
        axis=-2,
    )  # [N, 2, 3]

    rot = quat_to_rotmat(quats)
    m = rot * scales[:, None, :]  # R diag(s)
    cov3d = m @ jnp.swapaxes(m, -1, -2)
    t = jac @ rot_w  # [N, 2, 3]
    cov2d = t @ cov3d @ jnp.swapaxes(t, -1, -2)
    a0, b, c0 = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det0 = a0 * c0 - b * b
    a = a0 + K.COV_BLUR
    c = c0 + K.COV_BLUR
    det = a * c - b * b

    valid = in_front & jnp.isfinite(det) & (det > K.MIN_DET) & jnp.isfinite(a) & jnp.isfinite(c)
    det_safe = jnp.where(valid, det, 1.0)
    conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], axis=-1)

    mid = 0.5 * (a + c)
    lam_max = mid + jnp.sqrt(jnp.maximum(mid * mid - det, 0.0))
    lam_max = jax.lax.stop_gradient(jnp.where(valid, lam_max, 0.0))
    radii = jnp.ceil(3.0 * jnp.sqrt(lam_max)).astype(jnp.int32)
    radii = jnp.where(valid, jnp.maximum(radii, 1), 0)

    means2d = jnp.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], axis=-1)

    if antialiased:
        ratio = jnp.where(valid, det0 / det_safe, 0.0)
        pos = ratio > 0
        comp = jnp.where(pos, jnp.sqrt(jnp.where(pos, ratio, 1.0)), 0.0)
    else:
        comp = jnp.ones_like(z)

    v2 = valid[:, None]
    return Projected(
        means2d=jnp.where(v2, means2d, 0.0),
        conics=jnp.where(v2, conics, 0.0),
        depths=jnp.where(valid, z, 0.0),
        radii=radii,
        compensation=jnp.where(valid, comp, 0.0),
    )


def project(
    means3d: Float[Array, "*B N 3"],
    scales: Float[Array, "*B N 3"],
    quats: Float[Array, "*B N 4"],
    world_to_cam: Float[Array, "*B 4 4"],
    intrinsics: Float[Array, "*B 4"],
    width: int,
    height: int,
    near: float = K.DEFAULT_NEAR,
    antialiased: bool = False,
) -> Projected:
    """Project world-space 3D Gaussians into an OpenCV pinhole camera.

    Accepts unbatched inputs (``means3d [N, 3]``, ``world_to_cam [4, 4]``, ``intrinsics [4]``) or a
    leading batch axis on all of them. ``scales`` are standard deviations (positive), ``quats`` are
    (w, x, y, z) of any norm. A Gaussian with view depth z < ``near`` or a singular 2D covariance is
    dropped: its radius is 0 and its other outputs are 0. ``antialiased=True`` returns the factor
    sqrt(max(0, det(cov2d) / det(cov2d + 0.3 I))) to multiply into the opacities; otherwise ones.
    """
    batched = check_projection_inputs(means3d, scales, quats, world_to_cam, intrinsics)
    check_image_size(width, height)
    fn = lambda m, s, q, w, k: _project_one(m, s, q, w, k, int(width), int(height), float(near), bool(antialiased))  # noqa: E731
    if batched:
        fn = jax.vmap(fn)
    return Projected(*fn(means3d, scales, quats, world_to_cam, intrinsics))
