"""The synthetic teacher: clips of procedural heads (``heads.py``) in the teacher-clip format.

Each clip: a neutral source image of identity A at a near-frontal camera; T driving frames of another
identity B (same split) performing expressions e_1..e_T at near-frontal cameras; and for each time step
V teacher views of A performing e_t at random EG3D-style cameras (radius ``render.camera_radius``,
field of view ``render.fov_degrees``, yaw within +-35 degrees, pitch within +-20 degrees). The ground
truth expression parameters and the eye / mouth region masks are stored too. With ``undriven_views`` each
teacher view also has its undriven twin: A at the source's own (neutral) expression at the same camera.

Everything is a pure function of the seed: identity i's parameters come from ``(seed, 1, i)``, clip c's
plan (driving identity, expressions, cameras) from ``(seed, 2, c)``, so any subset of clips can be
regenerated alone. Identities ``num_identities - heldout_identities ..`` form the ``test`` split.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jax_instant4d.data import heads
from jax_instant4d.data.record import NUM_EXPRESSION, SPLITS, Clip, to_uint8

GENERATOR_VERSION = 1  # bump when the generator's output changes: it is part of the dataset name
SOURCE_YAW, SOURCE_PITCH = 5.0, 3.0  # degrees of jitter of the source and driving cameras
TARGET_YAW, TARGET_PITCH = 35.0, 20.0  # range of the teacher-view cameras (degrees)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the synthetic dataset's content."""

    resolution: int = 64
    num_identities: int = 64
    heldout_identities: int = 8
    clips_per_identity: int = 2
    time_steps: int = 4
    views: int = 2
    seed: int = 0
    image_format: str = "png"
    jpeg_quality: int = 95
    fov_degrees: float = 18.837
    camera_radius: float = 2.7
    # also render each teacher view's camera with the source identity at the source's expression
    undriven_views: bool = False

    def __post_init__(self):
        if self.num_identities < 2:
            raise ValueError(f"data.num_identities must be >= 2, got {self.num_identities}")
        if not 1 <= self.heldout_identities < self.num_identities:
            raise ValueError(f"data.heldout_identities must be in [1, num_identities), got {self.heldout_identities}")
        for k in ("resolution", "clips_per_identity", "time_steps", "views"):
            if getattr(self, k) < 1:
                raise ValueError(f"data.{k} must be >= 1, got {getattr(self, k)}")

    @property
    def name(self) -> str:
        """The tfds config name: readable essentials plus a hash of every field and the generator version
        (``undriven_views`` only when true, so that the datasets made before it existed keep their names)."""
        fields = asdict(self)
        if not self.undriven_views:
            del fields["undriven_views"]
        h = hashlib.sha1(repr((sorted(fields.items()), GENERATOR_VERSION)).encode()).hexdigest()[:8]
        return (f"r{self.resolution}-i{self.num_identities}-c{self.clips_per_identity}-t{self.time_steps}"
                f"-v{self.views}-s{self.seed}-{self.image_format}{'-u' if self.undriven_views else ''}-{h}")

    @property
    def num_clips(self) -> int:
        return self.num_identities * self.clips_per_identity

    def identities(self, split: str) -> list[int]:
        first_test = self.num_identities - self.heldout_identities
        return list(range(first_test)) if split == "train" else list(range(first_test, self.num_identities))

    def clips(self, split: str) -> list[int]:
        return [i * self.clips_per_identity + k for i in self.identities(split) for k in range(self.clips_per_identity)]


def spec_from_config(cfg) -> SyntheticSpec:
    d, r = cfg.data, cfg.render
    return SyntheticSpec(resolution=int(d.resolution), num_identities=int(d.num_identities),
                         heldout_identities=int(d.heldout_identities), clips_per_identity=int(d.clips_per_identity),
                         time_steps=int(d.time_steps), views=int(d.views), seed=int(d.seed),
                         image_format=str(d.image_format), jpeg_quality=int(d.jpeg_quality),
                         fov_degrees=float(r.fov_degrees), camera_radius=float(r.camera_radius),
                         undriven_views=bool(d.undriven_views))


def identity_params(spec: SyntheticSpec, index: int) -> Float[np.ndarray, " P"]:
    return heads.sample_identity(np.random.default_rng([spec.seed, 1, index]))


@dataclass
class ClipPlan:
    clip_index: int
    identity: int
    driving_identity: int
    expression: np.ndarray  # [T, E]
    source_angles: np.ndarray  # [2] yaw, pitch (radians)
    driving_angles: np.ndarray  # [T, 2]
    target_angles: np.ndarray  # [T, V, 2]


def clip_plan(spec: SyntheticSpec, clip_index: int) -> ClipPlan:
    rng = np.random.default_rng([spec.seed, 2, clip_index])
    ident = clip_index // spec.clips_per_identity
    split = "train" if ident < spec.num_identities - spec.heldout_identities else "test"
    others = [i for i in spec.identities(split) if i != ident] or [ident]
    drv = int(others[rng.integers(len(others))])
    t, v = spec.time_steps, spec.views
    expr = np.stack([heads.sample_expression(rng) for _ in range(t)]).astype(np.float32)
    rad = math.pi / 180.0
    jitter = lambda n: np.stack([rng.uniform(-SOURCE_YAW, SOURCE_YAW, n),  # noqa: E731
                                 rng.uniform(-SOURCE_PITCH, SOURCE_PITCH, n)], -1) * rad
    src = jitter(1)[0]
    drv_ang = jitter(t)
    tgt = np.stack([rng.uniform(-TARGET_YAW, TARGET_YAW, (t, v)), rng.uniform(-TARGET_PITCH, TARGET_PITCH, (t, v))],
                   -1) * rad
    return ClipPlan(clip_index, ident, drv, expr, src.astype(np.float32), drv_ang.astype(np.float32),
                    tgt.astype(np.float32))


def cameras(angles: Float[np.ndarray, "*B 2"], spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera matrices and intrinsics for (yaw, pitch) pairs (``render.orbit_camera``)."""
    from jax_instant4d.render import orbit_camera

    cam = orbit_camera(jnp.asarray(angles[..., 0]), jnp.asarray(angles[..., 1]), radius=spec.camera_radius,
                       fov_degrees=spec.fov_degrees, size=spec.resolution)
    return np.asarray(cam.world_to_cam, np.float32), np.asarray(cam.intrinsics, np.float32)


@jax.jit
def _canonical_batch(ids):
    return jax.vmap(heads.head_canonical)(ids)


@functools.lru_cache(maxsize=8)
def _render_fn(size: int, backend: str):
    @jax.jit
    def fn(canon, expr, pose_of_render, w2c, intr):
        g = jax.vmap(heads.pose_head)(canon, expr)
        g = jax.tree.map(lambda x: jnp.take(x, pose_of_render, axis=0), g)
        rgb, alpha, regions = heads.render_heads(g, w2c, intr, size, backend=backend)
        return (jnp.clip(jnp.round(rgb * 255.0), 0, 255).astype(jnp.uint8),
                jnp.clip(jnp.round(alpha * 255.0), 0, 255).astype(jnp.uint8),
                jnp.where(regions > 0.5, 255, 0).astype(jnp.uint8))

    return fn


class Generator:
    """Renders clips of a spec in batches (one jit-compiled function per chunk size)."""

    def __init__(self, spec: SyntheticSpec, backend: str = "auto", max_pixels: int = 6_000_000,
                 cache_identities: int = 512):
        self.spec = spec
        self._views_per_time = 2 if spec.undriven_views else 1  # teacher views, and their undriven twins
        per_clip = (1 + spec.time_steps + self._views_per_time * spec.time_steps * spec.views) * spec.resolution ** 2
        self.chunk = int(max(1, min(16, max_pixels // per_clip, spec.num_clips)))
        self._render = _render_fn(spec.resolution, backend)
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._cache_size = cache_identities

    def _canonicals(self, idents: Sequence[int]):
        missing = sorted({i for i in idents if i not in self._cache})
        size = min(16, self.spec.num_identities)
        for start in range(0, len(missing), size):
            group = missing[start:start + size]
            padded = group + [group[-1]] * (size - len(group))  # one compiled shape
            canon = _canonical_batch(jnp.asarray(np.stack([identity_params(self.spec, i) for i in padded])))
            canon = jax.device_get(canon)
            for j, i in enumerate(group):
                self._cache[i] = jax.tree.map(lambda x, j=j: x[j], canon)
        for i in idents:
            self._cache.move_to_end(i)
        while len(self._cache) > max(self._cache_size, len(set(idents))):
            self._cache.popitem(last=False)
        return jax.tree.map(lambda *xs: np.stack(xs), *[self._cache[i] for i in idents])

    def render(self, clip_indices: Sequence[int]) -> list[Clip]:
        """Renders the given clips (any number; processed in chunks of ``self.chunk``)."""
        out = []
        for start in range(0, len(clip_indices), self.chunk):
            out.extend(self._render_chunk(list(clip_indices[start:start + self.chunk])))
        return out

    def _render_chunk(self, clip_indices: list[int]) -> list[Clip]:
        spec = self.spec
        t, v = spec.time_steps, spec.views
        n_real = len(clip_indices)
        plans = [clip_plan(spec, c) for c in clip_indices]
        plans += [plans[-1]] * (self.chunk - n_real)  # pad to the compiled chunk size
        zero = np.zeros(NUM_EXPRESSION, np.float32)
        pose_ident, pose_expr, render_pose, angles = [], [], [], []
        for p in plans:
            base = len(pose_ident)
            pose_ident += [p.identity] + [p.driving_identity] * t + [p.identity] * t
            pose_expr += [zero] + list(p.expression) + list(p.expression)
            render_pose += [base] + [base + 1 + i for i in range(t)] + [base + 1 + t + i for i in range(t)
                                                                         for _ in range(v)]
            angles += [p.source_angles] + list(p.driving_angles) + list(p.target_angles.reshape(t * v, 2))
            if spec.undriven_views:  # the source's posed head (its own expression) at every teacher camera
                render_pose += [base] * (t * v)
                angles += list(p.target_angles.reshape(t * v, 2))
        w2c, intr = cameras(np.stack(angles), spec)
        canon = self._canonicals(pose_ident)
        rgb, alpha, regions = self._render(canon, jnp.asarray(np.stack(pose_expr)),
                                           jnp.asarray(np.asarray(render_pose, np.int32)), jnp.asarray(w2c),
                                           jnp.asarray(intr))
        rgb, alpha, regions = np.asarray(rgb), np.asarray(alpha), np.asarray(regions)
        per = 1 + t + self._views_per_time * t * v
        res = spec.resolution
        clips = []
        for k, p in enumerate(plans[:n_real]):
            o = k * per
            sl = slice(o + 1 + t, o + 1 + t + t * v)
            und = slice(o + 1 + t + t * v, o + per)
            clips.append(Clip(
                clip_id=f"synthetic-{p.clip_index:06d}",
                identity_id=f"synthetic-id{p.identity:05d}",
                teacher="synthetic_heads",
                source_image=rgb[o],
                source_w2c=w2c[o],
                source_intrinsics=intr[o],
                driving_images=rgb[o + 1:o + 1 + t],
                target_images=rgb[sl].reshape(t, v, res, res, 3),
                target_w2c=w2c[sl].reshape(t, v, 4, 4),
                target_intrinsics=intr[sl].reshape(t, v, 4),
                target_fg=alpha[sl].reshape(t, v, res, res),
                target_eyes=regions[sl, ..., 0].reshape(t, v, res, res),
                target_mouth=regions[sl, ..., 1].reshape(t, v, res, res),
                expression=p.expression,
                source_expression=zero,
                identity_params=identity_params(spec, p.identity),
                undriven_images=rgb[und].reshape(t, v, res, res, 3) if spec.undriven_views else None,
                clip_index=p.clip_index,
                identity_index=p.identity,
                driving_identity=p.driving_identity,
            ))
        return clips


def generate(spec: SyntheticSpec, split: str, backend: str = "auto", progress: bool = False) -> Iterator[Clip]:
    """Yields the clips of one split in order (rendered in chunks)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    gen = Generator(spec, backend=backend)
    indices = spec.clips(split)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=f"synthetic_heads {split}", unit="clip")
    for start in range(0, len(indices), gen.chunk):
        for clip in gen.render(indices[start:start + gen.chunk]):
            yield clip
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def render_direct(identity: Float[np.ndarray, " P"], expression: Float[np.ndarray, " E"], w2c: np.ndarray,
                  intrinsics: np.ndarray, size: int, backend: str = "auto") -> dict[str, np.ndarray]:
    """One head rendered straight from parameters (no dataset): uint8 rgb, fg, eyes, mouth as stored."""
    g = heads.head_gaussians(jnp.asarray(identity, jnp.float32), jnp.asarray(expression, jnp.float32))
    g = jax.tree.map(lambda x: x[None], g)
    rgb, alpha, regions = heads.render_heads(g, jnp.asarray(w2c)[None], jnp.asarray(intrinsics)[None], size,
                                             backend=backend)
    regions = np.asarray(regions[0])
    return {"rgb": to_uint8(np.asarray(rgb[0])), "fg": to_uint8(np.asarray(alpha[0])),
            "eyes": np.where(regions[..., 0] > 0.5, 255, 0).astype(np.uint8),
            "mouth": np.where(regions[..., 1] > 0.5, 255, 0).astype(np.uint8)}


def expression_sequence(frames: int, seed: int = 0, hold: int = 8) -> Float[np.ndarray, "F E"]:
    """A smooth expression trajectory for a driving video: key expressions every ``hold`` frames (the
    dataset's distribution, :func:`heads.sample_expression`, starting from neutral), eased between."""
    if frames < 1 or hold < 1:
        raise ValueError(f"expression_sequence needs frames >= 1 and hold >= 1, got {frames}, {hold}")
    rng = np.random.default_rng([seed, 500])
    keys = [np.zeros(NUM_EXPRESSION, np.float32)]
    keys += [heads.sample_expression(rng) for _ in range(frames // hold + 1)]
    out = np.zeros((frames, NUM_EXPRESSION), np.float32)
    for f in range(frames):
        k, r = divmod(f, hold)
        w = 0.5 - 0.5 * math.cos(math.pi * r / hold)  # ease in and out
        out[f] = (1.0 - w) * keys[k] + w * keys[k + 1]
    return out
