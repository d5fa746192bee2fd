"""Stand-ins for the training tests: a tiny avatar model with the real model's interface and types
(``encode`` returns an :class:`~jax_instant4d.model.avatar.Avatar`, ``motion`` a
:class:`~jax_instant4d.model.fusion.Motion`), and synthetic batches following the data contract served
by a checkpointable grain pipeline. ``tests/train_worker.py`` runs the real training loop with them in
a subprocess; ``tests/test_train_fakes.py`` checks them.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jax_instant4d import render
from jax_instant4d.config import ConfigDict, base_config
from jax_instant4d.model.avatar import Avatar, Gaussians, Motion

RES = 16
K = 2
EXPR = 4
CODE = 8


def tiny_config(workdir: str | Path, **train_overrides) -> ConfigDict:
    """A config for the stand-ins: 16x16 images, batch 8, two targets per example."""
    cfg = base_config()
    cfg.workdir = str(workdir)
    cfg.data.resolution = RES
    cfg.data.targets_per_example = K
    cfg.model.image_size = RES
    cfg.model.motion.code_dim = CODE
    t = cfg.train
    t.steps = 4
    t.batch_size = 8
    t.eval_batch_size = 8
    t.eval_batches = 1
    t.eval_every = 1000
    t.image_every = 0
    t.log_every = 1
    t.checkpoint_every = 2
    t.warmup_steps = 0
    t.learning_rate = 3e-3
    t.mesh = (-1, 1, 1)
    t.fsdp_min_size = 64
    t.progress = False
    t.disc.channels = 4
    t.disc.max_channels = 8
    t.loss.adversarial_start = -1
    for k, v in train_overrides.items():
        t[k] = v
    return cfg


# --------------------------------------------------------------------------------------------------
# the stand-in model
# --------------------------------------------------------------------------------------------------


class FakeInstant4D(nnx.Module):
    """``encode``/``motion``/``animate`` with the signatures and types of ``model.avatar.Instant4D`` (an
    ``Avatar``, a ``Motion``, cameras and motions batched [B, M], aux ``delta`` and ``overflow``); a few
    small layers, one kernel annotated for the ``model`` axis, the output stage under ``shard_map`` over
    the flattened B*M images like ``render.render``. Its avatar keeps the feature map in ``planes`` (one
    plane) and one "Gaussian" per pixel with feature ``f``; the other fields have the real shapes and
    neutral values."""

    def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
        c, d = 8, int(cfg.model.motion.code_dim)
        self.encoder = nnx.Conv(3, c, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.motion_encoder = nnx.Linear(3 * 16, d, rngs=rngs)
        self.fusion = nnx.Linear(2 * d, c, rngs=rngs)
        self.mix = nnx.Linear(c, c, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
                              rngs=rngs)
        self.head = nnx.Linear(c, 3, rngs=rngs)
        self.camera = nnx.Linear(3, 3, rngs=rngs)
        self.motion_oracle = False  # Instant4D's flag (model.motion.oracle); the stand-in always reads frames

    def motion(self, frame, *, input_gradient: bool = False) -> Motion:  # trainable: gradients either way
        pooled = jax.image.resize(frame, (frame.shape[0], 4, 4, 3), method="linear", antialias=True)
        code = jnp.tanh(self.motion_encoder(pooled.reshape(frame.shape[0], -1)))
        return Motion(code, code.reshape(frame.shape[0], -1, 2))

    def encode(self, source) -> Avatar:
        feat = self.encoder(source)
        b, h, w, c = feat.shape
        f = feat.reshape(b, h * w, c)
        n = h * w
        zeros3 = jnp.zeros((b, n, 3), feat.dtype)
        ones = jnp.ones((b, n), feat.dtype)
        quats = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0, 0.0], feat.dtype), (b, n, 4))
        base = Gaussians(means=zeros3, scales=zeros3 + 0.01, quats=quats, opacities=ones, colors=zeros3,
                         densities=ones)
        return Avatar(planes=feat[:, None], f=f, m=f, base=base, visible=ones > 0, z_src=self.motion(source),
                      anchors=zeros3)

    def animate(self, avatar: Avatar, z_drv: Motion, camera: render.Camera, width: int, height: int, mesh=None):
        b, m = camera.world_to_cam.shape[:2]
        z_src = jnp.repeat(avatar.z_src.code, m, axis=0)
        delta = 0.1 * self.fusion(jnp.concatenate([z_src, z_drv.code.reshape(b * m, -1)], axis=-1))
        feat = self.mix(jnp.repeat(avatar.planes[:, 0], m, axis=0) + delta[:, None, None, :])
        shift = self.camera(camera.world_to_cam.reshape(b * m, 4, 4)[:, :3, 3])[:, None, None, :]
        logits = self.head(feat) + shift

        def local(x):
            x = jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="linear")
            return jax.nn.sigmoid(x)

        if mesh is not None and mesh.size > 1:
            local = jax.shard_map(local, mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P(("data", "fsdp")))
        rgb = local(logits).reshape(b, m, height, width, 3)
        ones = jnp.ones(rgb.shape[:4], rgb.dtype)
        aux = {"delta": delta.reshape(b, m, -1), "overflow": jnp.zeros((b, m), jnp.int32)}
        return rgb, ones, ones, aux


# --------------------------------------------------------------------------------------------------
# synthetic batches (the data contract) and a checkpointable grain pipeline
# --------------------------------------------------------------------------------------------------


def _camera(yaw: float, res: int):
    cam = render.orbit_camera(np.float32(yaw), np.float32(0.0), size=res)
    return np.asarray(cam.world_to_cam, np.float32), np.asarray(cam.intrinsics, np.float32)


def _face(identity: int, expression: np.ndarray, view: int, res: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, res), np.linspace(-1, 1, res), indexing="ij")
    g = np.random.default_rng(identity)
    base = g.uniform(0.2, 0.8, 3)
    img = np.empty((res, res, 3), np.float32)
    head = ((xx - 0.1 * (view - 0.5)) ** 2 + yy**2) < 0.6
    for ch in range(3):
        img[..., ch] = head * (base[ch] + 0.2 * xx * g.uniform(-1, 1) + 0.2 * yy * g.uniform(-1, 1))
    eyes = (np.abs(yy + 0.3) < 0.12) & (np.abs(np.abs(xx) - 0.35) < 0.15)
    mouth = (np.abs(yy - 0.4) < 0.1 + 0.1 * expression[0]) & (np.abs(xx) < 0.3)
    img[eyes] *= 0.3 + 0.7 * expression[1]
    img[mouth] = [0.6 * expression[2], 0.1, 0.1]
    return np.clip(img, 0, 1), eyes.astype(np.float32), mouth.astype(np.float32), head.astype(np.float32)


def fake_example(index: int, res: int = RES, k: int = K, nan: bool = False) -> dict[str, np.ndarray]:
    """One example of the batch contract, a deterministic function of ``index``."""
    g = np.random.default_rng(int(index) + 1000)
    identity = int(index) % 16
    src_expr = g.uniform(0, 1, EXPR).astype(np.float32)
    times = g.integers(0, 2, k)
    views = g.integers(0, 2, k)
    exprs = g.uniform(0, 1, (2, EXPR)).astype(np.float32)
    src, _, _, _ = _face(identity, src_expr, 0, res)
    out = {"source": src, "source_expression": src_expr}
    out["source_w2c"], out["source_intrinsics"] = _camera(0.0, res)
    keys = ("driving", "target", "target_w2c", "target_intrinsics", "target_fg", "target_eyes", "target_mouth",
            "expression")
    per = {key: [] for key in keys}
    for t, v in zip(times, views, strict=True):
        e = exprs[t]
        tgt, eyes, mouth, fg = _face(identity, e, int(v), res)
        drv, _, _, _ = _face(identity + 100, e, 0, res)
        w2c, intr = _camera(0.3 * float(v), res)
        for key, val in zip(keys, (drv, tgt, w2c, intr, fg, eyes, mouth, e), strict=True):
            per[key].append(val)
    out.update({key: np.stack(v).astype(np.float32) for key, v in per.items()})
    out["identity"] = np.int32(identity)
    out["clip"] = np.int32(index)
    out["time"] = times.astype(np.int32)
    out["view"] = views.astype(np.int32)
    if nan:
        out["source"] = out["source"].copy()
        out["source"][0, 0, 0] = np.nan
    return out


def make_fake_data_factory(nan_batches: tuple[int, ...] = (), nan_from: int | None = None):
    """A data factory (cfg, split, batch, process_index, process_count) -> grain iterator; batches whose
    (per-process) number is in ``nan_batches`` or >= ``nan_from`` carry a NaN."""

    def factory(cfg, split, batch_size, process_index, process_count):
        res, k = int(cfg.data.resolution), int(cfg.data.targets_per_example)
        offset = 0 if split == "train" else 10**6
        ds = grain.MapDataset.range(10**6)[process_index::process_count]

        def make(i, idx):
            nb = i // batch_size
            nan = nb in nan_batches or (nan_from is not None and nb >= nan_from)
            return fake_example(offset + int(idx), res, k, nan=nan and split == "train")

        return iter(ds.map_with_index(make).batch(batch_size).to_iter_dataset())

    return factory


def global_batch(step: int, batch_size: int, res: int = RES, k: int = K) -> dict[str, np.ndarray]:
    """The global batch of ``step`` for a single process (rows in example order)."""
    rows = [fake_example(step * batch_size + j, res, k) for j in range(batch_size)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
