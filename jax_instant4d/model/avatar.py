"""The avatar model: encode a source portrait once, animate it per driving frame and camera.

::

    model = Instant4D(cfg, rngs=nnx.Rngs(0))
    avatar = model.encode(source)                       # once per source image   (triplanes -> Gaussians)
    z = model.motion(frame)                             # once per driving frame  (face crop -> motion)
    rgb, alpha, depth, aux = model.animate(avatar, z, camera, W, H)   # per frame and camera

Each of ``encode``, ``motion`` and ``animate`` can be jitted on its own (``nnx.jit``), so animating
never re-runs the encoder; ``model(source, driving, camera, W, H)`` is the three in one.

Static shapes: every avatar has exactly N Gaussians (:func:`~jax_instant4d.model.instantiate.num_gaussians`).
The authors drop Gaussians whose source density (Φ(f), before any motion) is below 1/255; we keep their
slots and set their opacity to 0 after animation (``Avatar.visible``), which renders the same image:
the rasterizer never bins a Gaussian with opacity < 1/255, and no gradient reaches a dropped one.

Several cameras per avatar: ``camera`` may be ``[B, K, 4, 4]`` / ``[B, K, 4]`` (K targets per example).
With a driving motion of batch shape [B] the Gaussians are animated once and rendered K times; with
motion of batch shape [B, K] (one driving frame per target) fusion and decoding run per target. The
outputs are then ``[B, K, H, W, ...]``; rendering runs on the flattened B*K batch (which must divide
the mesh's batch devices).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jaxtyping import Array, Bool, Float

from jax_instant4d import render as render_lib
from jax_instant4d.model.decoder import GaussianDecoder, Gaussians
from jax_instant4d.model.encoder import TriplaneEncoder
from jax_instant4d.model.fusion import FUSIONS, Motion, deform_gaussians, make_fusion
from jax_instant4d.model.instantiate import (
    ANCHORS,
    INSTANTIATIONS,
    frontal_anchors,
    instantiate_plane,
    instantiate_rays,
    num_gaussians,
)
from jax_instant4d.model.motion import MotionEncoder, face_crop, oracle_code

__all__ = ["Avatar", "Gaussians", "Instant4D", "Motion"]

# Initial scale of Φ's position weights with anchored positions (see GaussianDecoder).
ANCHORED_POSITION_INIT = 0.01


class Avatar(NamedTuple):
    """What ``encode`` computes once per source image (a pytree: pass it through ``jit`` freely)."""

    planes: Float[Array, "B 3 P P C"]  # the encoder's triplanes
    f: Float[Array, "B N F"]  # appearance/geometry feature per Gaussian
    m: Float[Array, "B N F"]  # motion basis per Gaussian
    base: Gaussians  # Φ(f) (+ anchors): the source-expression Gaussians
    visible: Bool[Array, "B N"]  # source density >= model.density_threshold
    z_src: Motion  # motion of the source image
    anchors: Float[Array, "B N 3"]  # added to Φ's positions (zeros with model.anchors = "none")


# (rgb [*, H, W, 3], alpha [*, H, W], depth [*, H, W], aux) with * = [B] or [B, K]
Frame = tuple[Float[Array, "*C H W 3"], Float[Array, "*C H W"], Float[Array, "*C H W"], dict[str, Any]]


def _repeat(tree, k: int):
    """Each leaf [B, ...] -> [B*K, ...] (each batch element repeated K times, consecutively)."""
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), tree)


def _flatten2(tree):
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


def _unflatten2(tree, b: int, k: int):
    return jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), tree)


class Instant4D(nnx.Module):
    """Encoder + instantiation + decoder Φ + motion encoder + fusion + render (takes the whole config)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        mc, rc = cfg.model, cfg.render
        if mc.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {mc.fusion!r}")
        if mc.anchors not in ANCHORS:
            raise ValueError(f"model.anchors must be one of {ANCHORS}, got {mc.anchors!r}")
        if mc.instantiate not in INSTANTIATIONS:
            raise ValueError(f"model.instantiate must be one of {INSTANTIATIONS}, got {mc.instantiate!r}")
        if int(mc.encoder.plane_channels) != 2 * int(mc.feature_dim):
            raise ValueError(f"model.encoder.plane_channels ({mc.encoder.plane_channels}) must be "
                             f"2 * model.feature_dim ({mc.feature_dim}): f and m are its halves")
        # Plain Python values only (they live in the graph definition, which must be hashable).
        self.feature_dim = int(mc.feature_dim)
        self.fusion_kind = str(mc.fusion)
        self.instantiate_mode = str(mc.instantiate)
        self.anchor_mode = str(mc.anchors)
        self.gaussian_res = int(mc.gaussian_res)
        self.num_gaussians = num_gaussians(mc)
        self.density_threshold = float(mc.density_threshold)
        self.rays = ml_collections.FrozenConfigDict(mc.rays)
        self.crop_size = int(mc.motion.crop_size)
        self.motion_oracle = bool(mc.motion.oracle)
        self.code_dim, self.token_dim = int(mc.motion.code_dim), int(mc.motion.token_dim)
        self.fov_degrees = float(rc.fov_degrees)
        self.camera_radius = float(rc.camera_radius)
        self.render_options = dict(backend=str(rc.backend), tile_capacity=int(rc.tile_capacity), near=float(rc.near),
                                   antialiased=bool(rc.antialiased))
        self.background = float(rc.background)

        self.encoder = TriplaneEncoder(mc, rngs=rngs)
        self.motion_encoder = MotionEncoder(mc, rngs=rngs)
        self.decoder = GaussianDecoder(self.feature_dim, position_init=ANCHORED_POSITION_INIT
                                       if self.anchor_mode == "frontal" else 1.0, rngs=rngs)
        self.fusion = make_fusion(self.fusion_kind, self.feature_dim, int(mc.motion.code_dim), int(mc.motion.token_dim),
                                  scale=float(mc.fusion_scale), heads=int(mc.global_heads),
                                  init=float(mc.fusion_init), rngs=rngs)

    # ------------------------------------------------------------------------------------------------
    def motion(self, frame: Float[Array, "B R R 3"], *, input_gradient: bool = False) -> Motion:
        """Face crop + motion encoder: a frame in [0, 1] -> its motion (reusable for any camera).
        ``input_gradient``: a frozen encoder's motion carries a gradient to the frame (never to its weights).
        A model trained with ``model.motion.oracle`` reads its motion from expression parameters
        (:meth:`oracle_motion`), never from frames: an error."""
        if self.motion_oracle:
            raise ValueError("this model was trained with model.motion.oracle=True (the motion code is the frame's "
                             "ground-truth expression, a diagnostic): it cannot read motion from a frame; give it "
                             "expression parameters (oracle_motion), on synthetic_heads data")
        return self._read_motion(frame, input_gradient)

    def _read_motion(self, frame: Float[Array, "B R R 3"], input_gradient: bool = False) -> Motion:
        code, tokens = self.motion_encoder(face_crop(frame, self.crop_size), input_gradient=input_gradient)
        return Motion(code, tokens)

    def oracle_motion(self, y: Float[Array, "B E"]) -> Motion:
        """``model.motion.oracle``: the motion of a frame whose expression parameters, each mapped to [0, 1]
        (``data.record.normalise_expression``), are ``y`` (:func:`~jax_instant4d.model.motion.oracle_code`)."""
        return Motion(*oracle_code(y, self.code_dim, self.token_dim))

    def instantiate(self, planes: Float[Array, "B 3 P P C"], key: jax.Array | None = None
                    ) -> tuple[Float[Array, "B N C"], Float[Array, "B N 3"]]:
        """Triplanes -> per-Gaussian features [f | m] (``model.instantiate`` mode) and the anchors added
        to Φ's positions (``model.anchors``; zeros for ``"none"``)."""
        b = planes.shape[0]
        if self.instantiate_mode == "plane":
            feats = instantiate_plane(planes, self.gaussian_res)
            if self.anchor_mode == "frontal":
                grid = jnp.asarray(frontal_anchors(self.gaussian_res, self.fov_degrees, self.camera_radius))
                anchors = jnp.broadcast_to(grid, (b,) + grid.shape)
            else:
                anchors = jnp.zeros((b, feats.shape[1], 3), feats.dtype)
            return feats, anchors
        anchored = self.anchor_mode == "frontal"
        feats, points = instantiate_rays(planes, lambda f: self.decoder(f).densities, self.rays, self.fov_degrees,
                                         self.camera_radius, key=key, feature_dim=self.feature_dim)
        return feats, (jax.lax.stop_gradient(points) if anchored else jnp.zeros_like(points))

    def encode(self, source: Float[Array, "B R R 3"], key: jax.Array | None = None) -> Avatar:
        """Runs once per source image (in [0, 1]): triplanes, Gaussians' features, Φ(f) and z_src.

        ``key`` only matters in ``rays`` mode (random stratified and importance samples); without it
        the samples are deterministic.
        """
        planes = self.encoder(source)
        feats, anchors = self.instantiate(planes, key)
        f, m = feats[..., : self.feature_dim], feats[..., self.feature_dim:]
        base = self._decode(f, anchors)
        visible = base.densities >= self.density_threshold
        # with model.motion.oracle the caller replaces z_src by the source's oracle motion
        return Avatar(planes, f, m, base, visible, self._read_motion(source), anchors)

    def _decode(self, f: Float[Array, "*B N F"], anchors: Float[Array, "*B N 3"]) -> Gaussians:
        """Φ(f), positions offset by the anchors."""
        g = self.decoder(f)
        return g._replace(means=g.means + anchors)

    def animate_gaussians(self, avatar: Avatar, z_drv: Motion) -> tuple[Gaussians, Float[Array, "B N D"]]:
        """The animated Gaussians (opacity 0 where not ``visible``) and the fusion output (δf, or the
        deform offsets, or zeros for ``none``). All leaves share the batch shape [B]."""
        return self._animate(avatar.f, avatar.m, avatar.base, avatar.visible, avatar.z_src, avatar.anchors, z_drv)

    def _animate(self, f, m, base, visible, z_src, anchors, z_drv):
        if self.fusion is None:
            g, delta = base, jnp.zeros_like(f)
        elif self.fusion_kind == "deform":
            delta = self.fusion(m, z_src, z_drv)
            g = deform_gaussians(base, delta)
        else:
            delta = self.fusion(m, z_src, z_drv)
            g = self._decode(f + delta, anchors)
        return g._replace(opacities=jnp.where(visible, g.opacities, 0.0)), delta

    def render(self, gaussians: Gaussians, camera: render_lib.Camera, width: int, height: int,
               mesh: jax.sharding.Mesh | None = None) -> render_lib.Rendered:
        """Splats Gaussians [B, N] with cameras [B] (``render.*`` options of the config)."""
        return render_lib.render(gaussians.means, gaussians.scales, gaussians.quats, gaussians.opacities,
                                 gaussians.colors, camera, int(width), int(height), self.background, mesh=mesh,
                                 **self.render_options)

    def animate(self, avatar: Avatar, z_drv: Motion, camera: render_lib.Camera, width: int, height: int,
                mesh: jax.sharding.Mesh | None = None) -> Frame:
        """Per frame: fusion + Φ + splatting. Returns ``(rgb [*, H, W, 3] in [0, 1], alpha [*, H, W],
        depth [*, H, W], aux)`` with ``*`` = the camera batch ([B] or [B, K]); ``aux`` holds ``delta``
        (δf), ``overflow`` (per image) and ``gaussians`` (the animated Gaussians)."""
        w2c = camera.world_to_cam
        if w2c.ndim == 3:
            g, delta = self.animate_gaussians(avatar, z_drv)
            out = self.render(g, camera, width, height, mesh)
            return out.rgb, out.alpha, out.depth, {"delta": delta, "overflow": out.overflow, "gaussians": g}
        if w2c.ndim != 4:
            raise ValueError(f"camera.world_to_cam must be [B, 4, 4] or [B, K, 4, 4], got {w2c.shape}")
        b, k = w2c.shape[:2]
        per_target = z_drv.code.ndim == 3
        if per_target:  # one driving frame per target: animate B*K sets
            parts = _repeat((avatar.f, avatar.m, avatar.base, avatar.visible, avatar.z_src, avatar.anchors), k)
            g, delta = self._animate(*parts, _flatten2(z_drv))
            g_flat = g
        else:  # one driving frame per example: animate B sets, render each K times
            g, delta = self.animate_gaussians(avatar, z_drv)
            g_flat = _repeat(g, k)
        out = self.render(g_flat, _flatten2(camera), width, height, mesh)
        out = _unflatten2(out, b, k)
        if per_target:
            g, delta = _unflatten2((g, delta), b, k)
        return out.rgb, out.alpha, out.depth, {"delta": delta, "overflow": out.overflow, "gaussians": g}

    def __call__(self, source: Float[Array, "B R R 3"], driving: Float[Array, "B R R 3"], camera: render_lib.Camera,
                 width: int, height: int, mesh: jax.sharding.Mesh | None = None, key: jax.Array | None = None
                 ) -> Frame:
        """``encode`` + ``motion`` + ``animate`` in one call (same outputs)."""
        avatar = self.encode(source, key)
        return self.animate(avatar, self.motion(driving), camera, width, height, mesh)
