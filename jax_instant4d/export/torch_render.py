"""Rendering Gaussians in PyTorch: a pure-PyTorch reference renderer and an adapter to gsplat.

Two renderers with one signature (:func:`render`, ``backend="reference" | "gsplat" | "auto"``):

* **reference** (:func:`project` + :func:`rasterize`, CPU or any device, float32): the semantics of our
  ``rasterizer_ffi`` exactly, written plainly. Projection: OpenCV camera (``world_to_cam`` 4x4,
  intrinsics fx, fy, cx, cy in pixels), Jacobian with x/z, y/z clamped to 1.3x the half field of view,
  0.3 px^2 added to the 2D covariance, Gaussians with z < near or a singular covariance dropped
  (radius 0). Rasterization: pixel (i, j) sampled at (j + 0.5, i + 0.5), Gaussians sorted by depth
  (ties by index), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, skip sigma < 0, alpha = min(0.99,
  opacity exp(-sigma)), skip alpha < 1/255, stop before a Gaussian that would bring the transmittance
  below 1e-4, image = sum c alpha T + T_final background, alpha = 1 - T_final, depth = sum z alpha T
  (expected depth, not normalised by alpha). ``antialiased`` multiplies the opacities by
  sqrt(det(cov) / det(cov + 0.3 I)).

  Memory is bounded: the image is processed in 16x16 tiles; a tile only sees the Gaussians whose
  opacity-aware bounding box (the ellipse on which alpha = 1/255, with a small safety margin) reaches
  one of its pixel centres, and those in chunks of at most ``max_elements / 256`` Gaussians, carrying
  the transmittance from chunk to chunk. A 512^2 image of 262,144 Gaussians never holds more than
  ``max_elements`` (default 2^22) pixel-Gaussian pairs at once. Culling never changes the image: a
  Gaussian outside its box has alpha < 1/255 at every pixel of the tile, so it would be skipped anyway.

* **gsplat** (:func:`render_gsplat`): nerfstudio's ``gsplat.rasterization`` (the renderer of the paper;
  needs a CUDA device), called as its documentation describes (``viewmats`` [C, 4, 4] world-to-camera,
  ``Ks`` [C, 3, 3], ``render_mode="RGB+D"`` for the accumulated depth that is our ``depth``,
  ``rasterize_mode`` classic or antialiased, ``eps2d=0.3``, ``packed=False``). gsplat is not a dependency
  (and was not installed where this was written): the adapter is written against its documented API
  and its test is skipped when ``import gsplat`` fails. gsplat differs from us in two documented
  constants: it clamps alpha at 0.999 (we: 0.99) and stops at T <= 1e-4 (we: T < 1e-4); images agree
  to about 1e-2 where Gaussians are nearly opaque and closely elsewhere.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int

from rasterizer_ffi import constants as K

Tensor = torch.Tensor
TILE = K.TILE_SIZE
DEFAULT_MAX_ELEMENTS = 1 << 22  # pixel-Gaussian pairs held at once by the reference rasterizer
BACKENDS = ("reference", "gsplat", "auto")


class Projected(NamedTuple):
    """Screen-space Gaussians (as ``rasterizer_ffi.Projected``), unbatched."""

    means2d: Float[Tensor, "N 2"]
    conics: Float[Tensor, "N 3"]  # (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Float[Tensor, " N"]
    radii: Int[Tensor, " N"]  # 0 marks a dropped Gaussian
    compensation: Float[Tensor, " N"]


class Rendered(NamedTuple):
    rgb: Float[Tensor, "B H W C"]
    alpha: Float[Tensor, "B H W"]
    depth: Float[Tensor, "B H W"]


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices of quaternions (w, x, y, z) of any non-zero norm."""
    q = quats / torch.sqrt(torch.clamp((quats * quats).sum(-1, keepdim=True), min=1e-24))
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def project(means3d: Float[Tensor, "N 3"], scales: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"],
            world_to_cam: Float[Tensor, "4 4"], intrinsics: Float[Tensor, " 4"], width: int, height: int,
            near: float = K.DEFAULT_NEAR, antialiased: bool = False) -> Projected:
    """3D Gaussians (world frame; ``scales`` are standard deviations) -> screen space, one camera."""
    rot_w = world_to_cam[:3, :3]
    p = means3d @ rot_w.T + world_to_cam[:3, 3]
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = intrinsics.unbind(-1)
    in_front = z >= near
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    lim_x = K.FRUSTUM_CLAMP * 0.5 * width / fx
    lim_y = K.FRUSTUM_CLAMP * 0.5 * height / fy
    tx = torch.minimum(torch.maximum(x / z_safe, -lim_x), lim_x)
    ty = torch.minimum(torch.maximum(y / z_safe, -lim_y), lim_y)
    zero = torch.zeros_like(z_safe)
    jac = torch.stack([torch.stack([fx / z_safe, zero, -fx * tx / z_safe], -1),
                       torch.stack([zero, fy / z_safe, -fy * ty / z_safe], -1)], -2)  # [N, 2, 3]
    m = quat_to_rotmat(quats) * scales[:, None, :]
    cov3d = m @ m.transpose(-1, -2)
    t = jac @ rot_w
    cov2d = t @ cov3d @ t.transpose(-1, -2)
    a0, b, c0 = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det0 = a0 * c0 - b * b
    a, c = a0 + K.COV_BLUR, c0 + K.COV_BLUR
    det = a * c - b * b
    valid = in_front & torch.isfinite(det) & (det > K.MIN_DET) & torch.isfinite(a) & torch.isfinite(c)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    mid = 0.5 * (a + c)
    lam_max = torch.where(valid, mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.0)), zero)
    radii = torch.ceil(3.0 * torch.sqrt(lam_max)).to(torch.int32)
    radii = torch.where(valid, torch.clamp(radii, min=1), torch.zeros_like(radii))
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)
    if antialiased:
        ratio = torch.where(valid, det0 / det_safe, zero)
        pos = ratio > 0
        comp = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), zero)
    else:
        comp = torch.ones_like(z)
    v2 = valid[:, None]
    return Projected(torch.where(v2, means2d, torch.zeros_like(means2d)),
                     torch.where(v2, conics, torch.zeros_like(conics)), torch.where(valid, z, zero), radii,
                     torch.where(valid, comp, zero))


def _boxes(means2d, conics, opacities):
    """Opacity-aware bounding boxes (x0, x1, y0, y1) of the region where alpha >= 1/255 may hold."""
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    thr = torch.log(torch.clamp(opacities, min=K.ALPHA_MIN) / K.ALPHA_MIN) * (1.0 + 1e-3) + 1e-3
    # the ellipse 0.5 d^T Q d <= thr has half extents sqrt(2 thr (Q^-1)_xx), sqrt(2 thr (Q^-1)_yy)
    ex = torch.sqrt(2.0 * thr * torch.clamp(c / det, min=0.0)) + 1e-2
    ey = torch.sqrt(2.0 * thr * torch.clamp(a / det, min=0.0)) + 1e-2
    x, y = means2d.unbind(-1)
    return x - ex, x + ex, y - ey, y + ey


def _composite(px, py, means2d, conics, opacities, feats, depths, state, max_elements):
    """Front-to-back compositing of pixels (px, py) [P] with sorted Gaussians [n], chunked along n.

    ``state`` = (color [P, C], depth [P], T [P], done [P]) is carried across calls and chunks."""
    color, depth, trans, done = state
    chunk = max(1, max_elements // max(int(px.shape[0]), 1))
    for s in range(0, int(means2d.shape[0]), chunk):
        if bool(done.all()):
            break
        m2, con, op = means2d[s:s + chunk], conics[s:s + chunk], opacities[s:s + chunk]
        dx = m2[None, :, 0] - px[:, None]
        dy = m2[None, :, 1] - py[:, None]
        sigma = 0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) + con[None, :, 1] * dx * dy
        alpha = torch.clamp(op[None, :] * torch.exp(-torch.clamp(sigma, min=0.0)), max=K.ALPHA_MAX)
        keep = (sigma >= 0) & (alpha >= K.ALPHA_MIN) & ~done[:, None]
        a = torch.where(keep, alpha, torch.zeros_like(alpha))
        t_after = trans[:, None] * torch.cumprod(1.0 - a, dim=-1)
        stopped = torch.cumsum((keep & (t_after < K.T_MIN)).to(torch.int32), dim=-1) > 0
        a = torch.where(stopped, torch.zeros_like(a), a)
        t_after = trans[:, None] * torch.cumprod(1.0 - a, dim=-1)
        t_before = torch.cat([trans[:, None], t_after[:, :-1]], dim=-1)
        w = a * t_before
        color = color + w @ feats[s:s + chunk]
        depth = depth + w @ depths[s:s + chunk]
        trans = t_after[:, -1]
        done = done | stopped[:, -1]
    return color, depth, trans, done


def rasterize(means2d: Float[Tensor, "N 2"], conics: Float[Tensor, "N 3"], depths: Float[Tensor, " N"],
              radii: Int[Tensor, " N"], opacities: Float[Tensor, " N"], features: Float[Tensor, "N C"],
              background: Float[Tensor, " C"], width: int, height: int, *, tile: int = TILE, cull: bool = True,
              max_elements: int = DEFAULT_MAX_ELEMENTS
              ) -> tuple[Float[Tensor, "H W C"], Float[Tensor, "H W"], Float[Tensor, "H W"]]:
    """Composites screen-space Gaussians into (image [H, W, C], alpha [H, W], depth [H, W]); the
    semantics of ``rasterizer_ffi.rasterize`` (module docstring). ``cull=False`` tests every Gaussian
    at every pixel (same result, slower)."""
    dev, n_ch = means2d.device, features.shape[-1]
    order = torch.argsort(depths, stable=True)
    order = order[(radii[order] > 0) & (opacities[order] >= K.ALPHA_MIN)]  # the rest never contribute
    m2, con, dep, op, ft = means2d[order], conics[order], depths[order], opacities[order], features[order]
    x0, x1, y0, y1 = _boxes(m2, con, op)
    image = torch.zeros(height, width, n_ch, dtype=features.dtype, device=dev)
    depth_img = torch.zeros(height, width, dtype=features.dtype, device=dev)
    trans_img = torch.ones(height, width, dtype=features.dtype, device=dev)
    for ty in range(0, height, tile):
        th = min(tile, height - ty)
        row = (y1 >= ty + 0.5) & (y0 <= ty + th - 0.5) if cull else torch.ones_like(op, dtype=torch.bool)
        r_idx = torch.nonzero(row).squeeze(-1)
        for tx in range(0, width, tile):
            tw = min(tile, width - tx)
            if cull:
                sel = r_idx[(x1[r_idx] >= tx + 0.5) & (x0[r_idx] <= tx + tw - 0.5)]
            else:
                sel = r_idx
            if sel.numel() == 0:
                continue
            py, px = torch.meshgrid(torch.arange(ty, ty + th, device=dev, dtype=features.dtype) + 0.5,
                                    torch.arange(tx, tx + tw, device=dev, dtype=features.dtype) + 0.5,
                                    indexing="ij")
            px, py = px.reshape(-1), py.reshape(-1)
            p = px.shape[0]
            state = (torch.zeros(p, n_ch, dtype=features.dtype, device=dev),
                     torch.zeros(p, dtype=features.dtype, device=dev),
                     torch.ones(p, dtype=features.dtype, device=dev), torch.zeros(p, dtype=torch.bool, device=dev))
            color, depth, trans, _ = _composite(px, py, m2[sel], con[sel], op[sel], ft[sel], dep[sel], state,
                                                max_elements)
            image[ty:ty + th, tx:tx + tw] = color.reshape(th, tw, n_ch)
            depth_img[ty:ty + th, tx:tx + tw] = depth.reshape(th, tw)
            trans_img[ty:ty + th, tx:tx + tw] = trans.reshape(th, tw)
    image = image + trans_img[..., None] * background.to(features.dtype)
    return image, 1.0 - trans_img, depth_img


def _as_tensor(x, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device) if device is not None else x
    return torch.as_tensor(np.array(x, np.float32), device=device)


def _background(background, n_ch: int, like: Tensor) -> Tensor:
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    return torch.broadcast_to(bg, (n_ch,)) if bg.ndim <= 1 else bg


def gsplat_available() -> bool:
    """Whether ``import gsplat`` works here (it needs a CUDA build of gsplat to render)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_reference(means3d: Float[Tensor, "B N 3"], scales: Float[Tensor, "B N 3"], quats: Float[Tensor, "B N 4"],
                     opacities: Float[Tensor, "B N"], colors: Float[Tensor, "B N C"],
                     world_to_cam: Float[Tensor, "B 4 4"], intrinsics: Float[Tensor, "B 4"], width: int, height: int,
                     background: float | Float[Tensor, " C"] = 0.0, *, near: float = K.DEFAULT_NEAR,
                     antialiased: bool = False, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Rendered:
    """Batched reference render: one set of Gaussians per camera."""
    rgbs, alphas, depths = [], [], []
    for i in range(means3d.shape[0]):
        pr = project(means3d[i], scales[i], quats[i], world_to_cam[i], intrinsics[i], width, height, near,
                     antialiased)
        op = opacities[i] * pr.compensation if antialiased else opacities[i]
        bg = _background(background, colors.shape[-1], colors)
        img, a, d = rasterize(pr.means2d, pr.conics, pr.depths, pr.radii, op, colors[i], bg, width, height,
                              max_elements=max_elements)
        rgbs.append(img)
        alphas.append(a)
        depths.append(d)
    return Rendered(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths))


def render_gsplat(means3d: Float[Tensor, "B N 3"], scales: Float[Tensor, "B N 3"], quats: Float[Tensor, "B N 4"],
                  opacities: Float[Tensor, "B N"], colors: Float[Tensor, "B N C"], world_to_cam: Float[Tensor, "B 4 4"],
                  intrinsics: Float[Tensor, "B 4"], width: int, height: int,
                  background: float | Float[Tensor, " C"] = 0.0, *, near: float = K.DEFAULT_NEAR,
                  antialiased: bool = False) -> Rendered:
    """The same render through ``gsplat.rasterization`` (CUDA tensors; see the module docstring)."""
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise ImportError("backend 'gsplat' needs gsplat (pip install gsplat; a CUDA device)") from e
    b = means3d.shape[0]
    ks = torch.zeros(b, 3, 3, dtype=means3d.dtype, device=means3d.device)
    ks[:, 0, 0], ks[:, 1, 1] = intrinsics[:, 0], intrinsics[:, 1]
    ks[:, 0, 2], ks[:, 1, 2], ks[:, 2, 2] = intrinsics[:, 2], intrinsics[:, 3], 1.0
    bg = _background(background, colors.shape[-1], colors)
    rgbs, alphas, depths = [], [], []
    for i in range(b):
        out, alpha, _meta = rasterization(
            means=means3d[i], quats=quats[i], scales=scales[i], opacities=opacities[i], colors=colors[i],
            viewmats=world_to_cam[i][None], Ks=ks[i][None], width=int(width), height=int(height), near_plane=near,
            eps2d=K.COV_BLUR, sh_degree=None, packed=False, render_mode="RGB+D",
            rasterize_mode="antialiased" if antialiased else "classic")
        a = alpha[0, ..., 0]
        rgbs.append(out[0, ..., :-1] + (1.0 - a)[..., None] * bg)
        depths.append(out[0, ..., -1])
        alphas.append(a)
    return Rendered(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths))


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: gsplat on a CUDA device when it imports, else the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"renderer backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "reference"
    return backend


def render(means3d: Float[Tensor, "B N 3"], scales: Float[Tensor, "B N 3"], quats: Float[Tensor, "B N 4"],
           opacities: Float[Tensor, "B N"], colors: Float[Tensor, "B N C"], world_to_cam: Float[Tensor, "B 4 4"],
           intrinsics: Float[Tensor, "B 4"], width: int, height: int, background: float | Float[Tensor, " C"] = 0.0,
           *, near: float = K.DEFAULT_NEAR, antialiased: bool = False, backend: str = "reference",
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> Rendered:
    """Renders a batch of Gaussian sets (world frame, OpenCV cameras in pixels) -> rgb, alpha, depth."""
    dev = means3d.device
    world_to_cam, intrinsics = _as_tensor(world_to_cam, dev), _as_tensor(intrinsics, dev)
    if resolve_backend(backend, dev) == "gsplat":
        return render_gsplat(means3d, scales, quats, opacities, colors, world_to_cam, intrinsics, width, height,
                             background, near=near, antialiased=antialiased)
    return render_reference(means3d, scales, quats, opacities, colors, world_to_cam, intrinsics, width, height,
                            background, near=near, antialiased=antialiased, max_elements=max_elements)
