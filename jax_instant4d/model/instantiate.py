"""Instantiation: triplanes -> one 96-channel feature per Gaussian, split into f (48) and m (48).

Two modes, as the paper's two checkpoints (``model.instantiate``):

``plane`` (the newer checkpoint)
    Average the three planes, upsample bilinearly (half-pixel centres, antialiased when shrinking: the
    authors' ``F.interpolate(..., align_corners=False, antialias=True)``) to ``gaussian_res``^2, one
    Gaussian per texel in row-major order: 262,144 Gaussians at 512^2.
``rays`` (the older, "legacy" checkpoint)
    NeRF-style: rays through the pixel centres of a ``rays.resolution``^2 grid of a fixed frontal
    camera (EG3D: radius ``render.camera_radius``, fov ``render.fov_degrees``), ``depth_samples``
    stratified depths in [ray_start, ray_end] and ``importance_samples`` more drawn from the coarse
    samples' compositing weights (densities from Φ(f), no gradient); features are read from the
    triplanes at the sample points (bilinear, zero outside the box, mean over the three planes) — 64^2 x
    (24 + 24) = 196,608 Gaussians. As in the authors' renderer, a sample point only decides which
    features a Gaussian gets: its rendered position is Φ's absolute tanh output, like in plane mode.

Anchors (``model.anchors``): with ``"none"`` (the authors' code) a Gaussian's position is Φ's absolute
tanh output. With ``"frontal"`` it is an anchor plus that output: in plane mode the anchor of texel
(row, column) is where the frontal camera's ray through pixel (row, column) meets z = 0
(:func:`frontal_anchors`), in rays mode the sample point itself. Training from scratch needs the
anchors: with absolute positions a freshly initialised encoder gives nearly equal features, so all
Gaussians start at one point, mostly outside the image, and no gradient reaches them; anchored, they
start as a sheet covering the frontal view. Imported official weights use ``"none"``.

Without a key, the rays are sampled deterministically (bin centres; evenly spaced CDF quantiles).
The number of Gaussians is static in both modes (see :func:`num_gaussians`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, Float

from jax_instant4d.render import orbit_camera

INSTANTIATIONS = ("plane", "rays")
ANCHORS = ("frontal", "none")

# Plane axes as in EG3D/the authors: a point (x, y, z) reads plane 0 at (x, y), plane 1 at (x, z) and
# plane 2 at (z, y), as (column, row) grid coordinates of grid_sample.
PLANE_COORDS = ((0, 1), (0, 2), (2, 1))


def num_gaussians(model_cfg: ml_collections.ConfigDict) -> int:
    """N, the static number of Gaussians per avatar for ``model_cfg`` (= ``cfg.model``)."""
    if model_cfg.instantiate == "plane":
        return int(model_cfg.gaussian_res) ** 2
    if model_cfg.instantiate == "rays":
        r = model_cfg.rays
        return int(r.resolution) ** 2 * (int(r.depth_samples) + int(r.importance_samples))
    raise ValueError(f"model.instantiate must be one of {INSTANTIATIONS}, got {model_cfg.instantiate!r}")


def instantiate_plane(planes: Float[Array, "B 3 P P C"], resolution: int) -> Float[Array, "B N C"]:
    """Mean of the three planes, resized to ``resolution``^2, one feature per texel (row-major)."""
    b, _, _, _, c = planes.shape
    mean = jnp.mean(planes, axis=1)
    up = jax.image.resize(mean, (b, resolution, resolution, c), method="bilinear", antialias=True)
    return up.reshape(b, resolution * resolution, c)


def frontal_anchors(resolution: int, fov_degrees: float, radius: float) -> Float[np.ndarray, "M 3"]:
    """Where the frontal camera's ray through each pixel centre of a ``resolution``^2 grid meets the
    plane z = 0 (row-major, like :func:`instantiate_plane`'s texels): a sheet that exactly covers the
    frontal view, texel (row, column) in front of pixel (row, column)."""
    origins, dirs = frontal_rays(resolution, fov_degrees, radius)
    t = -origins[:, 2:3] / dirs[:, 2:3]
    return (origins + t * dirs).astype(np.float32)


def _grid_sample(plane: Float[Array, "H W C"], uv: Float[Array, "M 2"]) -> Float[Array, "M C"]:
    """PyTorch ``grid_sample`` (bilinear, align_corners=False, zero padding) of one channels-last plane."""
    h, w, c = plane.shape
    x = ((uv[:, 0] + 1.0) * w - 1.0) * 0.5
    y = ((uv[:, 1] + 1.0) * h - 1.0) * 0.5
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    flat = plane.reshape(h * w, c)
    out = jnp.zeros((uv.shape[0], c), plane.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            xi = x0 + dx
            yi = y0 + dy
            wgt = (1.0 - jnp.abs(x - xi)) * (1.0 - jnp.abs(y - yi))
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            idx = jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w + jnp.clip(xi, 0, w - 1).astype(jnp.int32)
            out = out + jnp.where(inside, wgt, 0.0)[:, None] * flat[idx]
    return out


def sample_triplanes(planes: Float[Array, "B 3 P P C"], points: Float[Array, "B M 3"],
                     box_warp: float = 1.0) -> Float[Array, "B M C"]:
    """Features at world points: bilinear in each plane (zero outside the box), mean over the planes."""
    coords = points * (2.0 / box_warp)

    def one(planes_b, coords_b):
        feats = [_grid_sample(planes_b[i], coords_b[:, list(axes)]) for i, axes in enumerate(PLANE_COORDS)]
        return sum(feats) / 3.0

    return jax.vmap(one)(planes, coords)


def frontal_rays(resolution: int, fov_degrees: float, radius: float
                 ) -> tuple[Float[np.ndarray, "M 3"], Float[np.ndarray, "M 3"]]:
    """Origins and unit directions ``[resolution^2, 3]`` through the pixel centres of the frontal camera
    (``render.orbit_camera(0, 0)``: at (0, 0, radius), looking at the origin), in row-major pixel order."""
    with jax.ensure_compile_time_eval():  # concrete even when called under jit / eval_shape
        cam = orbit_camera(np.float32(0.0), np.float32(0.0), radius=radius, fov_degrees=fov_degrees,
                           size=resolution)
    w2c = np.asarray(cam.world_to_cam, np.float64)
    fx, fy, cx, cy = np.asarray(cam.intrinsics, np.float64)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    rows, cols = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5, indexing="ij")
    d_cam = np.stack([(cols - cx) / fx, (rows - cy) / fy, np.ones_like(cols)], axis=-1).reshape(-1, 3)
    d = d_cam @ rot  # camera -> world: R^T d for each row
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    origins = np.broadcast_to(-rot.T @ trans, d.shape)
    return origins.astype(np.float32), d.astype(np.float32)


def _smooth_weights(weights: Float[Array, "R S"]) -> Float[Array, "R S"]:
    """The authors' max_pool1d(2, 1, pad 1) then avg_pool1d(2, 1), plus 0.01."""
    pad = jnp.full(weights.shape[:-1] + (1,), -jnp.inf, weights.dtype)
    wp = jnp.concatenate([pad, weights, pad], axis=-1)
    mx = jnp.maximum(wp[:, :-1], wp[:, 1:])  # [R, S+1]
    return 0.5 * (mx[:, :-1] + mx[:, 1:]) + 0.01


def sample_pdf(bins: Float[Array, "R K"], weights: Float[Array, "R L"], u: Float[Array, "R I"],
               eps: float = 1e-5) -> Float[Array, "R I"]:
    """Inverse-CDF sampling of piecewise-constant ``weights`` (L = K - 1 bins) at quantiles ``u``."""
    w = weights + eps
    pdf = w / jnp.sum(w, axis=-1, keepdims=True)
    cdf = jnp.concatenate([jnp.zeros_like(pdf[:, :1]), jnp.cumsum(pdf, axis=-1)], axis=-1)  # [R, K]
    inds = jax.vmap(lambda cr, ur: jnp.searchsorted(cr, ur, side="right"))(cdf, u)
    below = jnp.maximum(inds - 1, 0)
    above = jnp.minimum(inds, weights.shape[-1])
    cdf0 = jnp.take_along_axis(cdf, below, axis=-1)
    cdf1 = jnp.take_along_axis(cdf, above, axis=-1)
    bin0 = jnp.take_along_axis(bins, below, axis=-1)
    bin1 = jnp.take_along_axis(bins, above, axis=-1)
    denom = cdf1 - cdf0
    denom = jnp.where(denom < eps, 1.0, denom)
    return bin0 + (u - cdf0) / denom * (bin1 - bin0)


def instantiate_rays(
    planes: Float[Array, "B 3 P P C"],
    density_fn: Callable[[Float[Array, "B M F"]], Float[Array, "B M"]],
    rays_cfg: ml_collections.ConfigDict,
    fov_degrees: float,
    radius: float,
    key: jax.Array | None = None,
    feature_dim: int | None = None,
) -> tuple[Float[Array, "B N C"], Float[Array, "B N 3"]]:
    """Features ``[B, R^2 (S + I), C]`` at ray samples (per ray: S coarse then I importance samples) and
    the sample points. ``density_fn`` maps f (the first ``feature_dim`` channels) to densities."""
    b, c = planes.shape[0], planes.shape[-1]
    feature_dim = c // 2 if feature_dim is None else feature_dim
    res, s, n_imp = int(rays_cfg.resolution), int(rays_cfg.depth_samples), int(rays_cfg.importance_samples)
    start, end, box = float(rays_cfg.ray_start), float(rays_cfg.ray_end), float(rays_cfg.box_warp)
    origins, dirs = frontal_rays(res, fov_degrees, radius)
    origins, dirs = jnp.asarray(origins), jnp.asarray(dirs)
    m = res * res
    if key is not None:
        k_strat, k_imp = jax.random.split(key)
        jitter = jax.random.uniform(k_strat, (b, m, s))
    else:
        jitter = jnp.full((b, m, s), 0.5)
    step = (end - start) / max(s - 1, 1)
    t_coarse = jnp.linspace(start, end, s)[None, None, :] + jitter * step  # [B, M, S]
    pts = origins[None, :, None, :] + t_coarse[..., None] * dirs[None, :, None, :]
    feats = sample_triplanes(planes, pts.reshape(b, m * s, 3), box)
    if n_imp == 0:
        return feats, pts.reshape(b, m * s, 3)

    dens = jax.lax.stop_gradient(density_fn(feats[..., :feature_dim])).reshape(b * m, s)
    alpha = -jnp.expm1(-dens)
    trans = jnp.cumprod(jnp.concatenate([jnp.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], axis=-1), axis=-1)
    weights = _smooth_weights(alpha * trans[:, :-1])
    z = jax.lax.stop_gradient(t_coarse).reshape(b * m, s)
    mids = 0.5 * (z[:, :-1] + z[:, 1:])
    if key is not None:
        u = jax.random.uniform(k_imp, (b * m, n_imp))
    else:
        u = jnp.broadcast_to(jnp.linspace(0.0, 1.0, n_imp), (b * m, n_imp))
    t_fine = jax.lax.stop_gradient(sample_pdf(mids, weights[:, 1:-1], u)).reshape(b, m, n_imp)
    pts_fine = origins[None, :, None, :] + t_fine[..., None] * dirs[None, :, None, :]
    feats_fine = sample_triplanes(planes, pts_fine.reshape(b, m * n_imp, 3), box)
    all_feats = jnp.concatenate([feats.reshape(b, m, s, c), feats_fine.reshape(b, m, n_imp, c)], axis=2)
    all_pts = jnp.concatenate([pts, pts_fine], axis=2)
    return all_feats.reshape(b, m * (s + n_imp), c), all_pts.reshape(b, m * (s + n_imp), 3)
