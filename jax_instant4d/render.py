"""Camera conventions and rendering of Gaussians through ``rasterizer_ffi``.

World frame: y up, the head at the origin facing +z (its nose points at the frontal camera). Cameras
follow EG3D: on a sphere of radius ``camera_radius`` (2.7) around the origin, looking at it. Camera
frame: OpenCV (x right, y down, z forward); ``world_to_cam`` is 4x4 and intrinsics are
(fx, fy, cx, cy) in pixels of the rendered image. A field of view of 18.837 degrees corresponds to
EG3D's normalised focal length 4.2647.

Custom calls do not partition themselves, so :func:`render` runs projection and rasterization under
``jax.shard_map`` over the batch axes when a mesh is given: each device rasterizes its own images.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

import rasterizer_ffi


class Camera(NamedTuple):
    """Batched or single pinhole camera; intrinsics are in pixels for a ``width`` x ``height`` image."""

    world_to_cam: Float[Array, "*B 4 4"]
    intrinsics: Float[Array, "*B 4"]


class Rendered(NamedTuple):
    rgb: Float[Array, "*B H W C"]
    alpha: Float[Array, "*B H W"]
    depth: Float[Array, "*B H W"]
    overflow: Int[Array, "*B"]


def focal_from_fov(fov_degrees: float, size: int) -> float:
    """Focal length in pixels for a square image of ``size`` pixels and a full field of view."""
    return 0.5 * size / math.tan(math.radians(fov_degrees) / 2.0)


def intrinsics_for(fov_degrees: float, size: int) -> np.ndarray:
    f = focal_from_fov(fov_degrees, size)
    return np.array([f, f, size / 2.0, size / 2.0], np.float32)


def look_at(eye: Float[Array, "*B 3"], target: Float[Array, "*B 3"] | None = None,
            up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> Float[Array, "*B 4 4"]:
    """OpenCV world-to-camera matrices for cameras at ``eye`` looking at ``target`` with world ``up``."""
    eye = jnp.asarray(eye, jnp.float32)
    target = jnp.zeros_like(eye) if target is None else jnp.asarray(target, jnp.float32)
    up = jnp.broadcast_to(jnp.asarray(up, jnp.float32), eye.shape)
    fwd = target - eye
    fwd = fwd / jnp.linalg.norm(fwd, axis=-1, keepdims=True)
    right = jnp.cross(fwd, up)
    right = right / jnp.maximum(jnp.linalg.norm(right, axis=-1, keepdims=True), 1e-8)
    down = jnp.cross(fwd, right)
    rot = jnp.stack([right, down, fwd], axis=-2)  # rows: camera axes in world coordinates
    trans = -jnp.einsum("...ij,...j->...i", rot, eye)
    top = jnp.concatenate([rot, trans[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], jnp.float32), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def orbit_camera(yaw: Float[Array, "*B"], pitch: Float[Array, "*B"], radius: float = 2.7,
                 fov_degrees: float = 18.837, size: int = 512) -> Camera:
    """Camera on a sphere around the origin. yaw = pitch = 0 is frontal (on +z); yaw > 0 moves the
    camera towards +x, pitch > 0 moves it up (+y). Angles in radians."""
    yaw = jnp.asarray(yaw, jnp.float32)
    pitch = jnp.asarray(pitch, jnp.float32)
    eye = radius * jnp.stack([jnp.sin(yaw) * jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw) * jnp.cos(pitch)],
                             axis=-1)
    w2c = look_at(eye)
    intr = jnp.broadcast_to(jnp.asarray(intrinsics_for(fov_degrees, size)), yaw.shape + (4,))
    return Camera(w2c, intr)


def scale_intrinsics(intrinsics: Float[Array, "*B 4"], from_size: int, to_size: int) -> Float[Array, "*B 4"]:
    """Intrinsics for the same camera rendered at ``to_size`` instead of ``from_size`` pixels."""
    return intrinsics * (to_size / from_size)


def _render_local(means3d, scales, quats, opacities, features, w2c, intr, background, *, width, height,
                  near, antialiased, backend, tile_capacity):
    proj = rasterizer_ffi.project(means3d, scales, quats, w2c, intr, width, height, near=near,
                                  antialiased=antialiased)
    opac = opacities * proj.compensation if antialiased else opacities
    if backend == "dense":  # the O(H W N) reference: tests on tiny scenes, and while no backend is built
        image, alpha, depth = rasterizer_ffi.rasterize_dense(
            proj.means2d, proj.conics, proj.depths, proj.radii, opac, features, background, width, height)
        return Rendered(image, alpha, depth, jnp.zeros(means3d.shape[:1], jnp.int32))
    return Rendered(*rasterizer_ffi.rasterize(
        proj.means2d, proj.conics, proj.depths, proj.radii, opac, features, background, width, height,
        backend=backend, tile_capacity=tile_capacity, return_overflow=True))


def render(
    means3d: Float[Array, "B N 3"],
    scales: Float[Array, "B N 3"],
    quats: Float[Array, "B N 4"],
    opacities: Float[Array, "B N"],
    features: Float[Array, "B N C"],
    camera: Camera,
    width: int,
    height: int,
    background: Float[Array, " C"] | float = 0.0,
    *,
    near: float = 0.01,
    antialiased: bool = False,
    backend: str = "auto",
    tile_capacity: int = rasterizer_ffi.DEFAULT_TILE_CAPACITY,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> Rendered:
    """Splat a batch of Gaussians (one set per image) to RGB/features, alpha and expected depth.

    ``camera`` is batched like the Gaussians ([B, 4, 4], [B, 4]). With ``mesh`` given (and more than
    one device in it), the batch is split over the mesh axes in ``batch_axes`` that exist, and each
    device projects and rasterizes its share under ``shard_map``. The batch must divide evenly.
    ``backend`` is a ``rasterizer_ffi`` backend name or ``"dense"`` (``rasterizer_ffi.rasterize_dense``,
    memory O(H W N): for tiny test scenes only). ``tile_capacity`` (config ``render.tile_capacity``,
    ``xla`` backend only): 0 renders exactly; K > 0 keeps at most K Gaussians per 16x16 tile and
    reports the dropped (tile, Gaussian) pairs in ``Rendered.overflow``.
    """
    c = features.shape[-1]
    bg = jnp.broadcast_to(jnp.asarray(background, jnp.float32), (c,))
    bg = jnp.broadcast_to(bg, (means3d.shape[0], c))
    fn = lambda m, s, q, o, f, w, k, b: _render_local(  # noqa: E731
        m, s, q, o, f, w, k, b, width=int(width), height=int(height), near=float(near),
        antialiased=bool(antialiased), backend=backend, tile_capacity=int(tile_capacity))
    args = (means3d, scales, quats, opacities, features, camera.world_to_cam, camera.intrinsics, bg)
    if mesh is None or mesh.size == 1:
        return fn(*args)
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    spec = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0])
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, check_vma=False)
    return sharded(*args)
