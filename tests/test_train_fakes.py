"""Stand-ins for the training tests: a tiny avatar model with the real model's interface, synthetic
batches following the data contract served by a checkpointable grain pipeline, and a worker entry
point so that subprocess tests (launch/local.sh, kill -9, SIGTERM) run the real training loop.

Run as a script it behaves like ``instant4d train`` with these stand-ins:
``python tests/test_train_fakes.py --workdir DIR [--coordinator_address ...] [--config.key=value ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jax_instant4d import render  # noqa: E402
from jax_instant4d.config import ConfigDict, base_config  # noqa: E402
from jax_instant4d.model.fusion import Motion  # noqa: E402

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
    """``encode``/``motion``/``animate`` with the signatures of ``model.avatar.Instant4D`` (motion as a
    ``Motion`` pytree, cameras and motions batched [B, M], aux ``delta`` and ``overflow``); a few small
    layers, one kernel annotated for the ``model`` axis, the output stage under ``shard_map`` over the
    flattened B*M images like ``render.render``."""

    def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
        c, d = 8, int(cfg.model.motion.code_dim)
        self.encoder = nnx.Conv(3, c, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.motion_encoder = nnx.Linear(3 * 16, d, rngs=rngs)
        self.fusion = nnx.Linear(2 * d, c, rngs=rngs)
        self.mix = nnx.Linear(c, c, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
                              rngs=rngs)
        self.head = nnx.Linear(c, 3, rngs=rngs)
        self.camera = nnx.Linear(3, 3, rngs=rngs)

    def motion(self, frame) -> Motion:
        pooled = jax.image.resize(frame, (frame.shape[0], 4, 4, 3), method="linear", antialias=True)
        code = jnp.tanh(self.motion_encoder(pooled.reshape(frame.shape[0], -1)))
        return Motion(code, code.reshape(frame.shape[0], -1, 2))

    def encode(self, source):
        return {"feat": self.encoder(source), "z_src": self.motion(source)}

    def animate(self, avatar, z_drv: Motion, camera: render.Camera, width: int, height: int, mesh=None):
        b, m = camera.world_to_cam.shape[:2]
        z_src = jnp.repeat(avatar["z_src"].code, m, axis=0)
        delta = 0.1 * self.fusion(jnp.concatenate([z_src, z_drv.code.reshape(b * m, -1)], axis=-1))
        feat = self.mix(jnp.repeat(avatar["feat"], m, axis=0) + delta[:, None, None, :])
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


# --------------------------------------------------------------------------------------------------
# sanity checks of the stand-ins themselves
# --------------------------------------------------------------------------------------------------


def test_fake_example_follows_the_batch_contract():
    ex = fake_example(3)
    assert ex["source"].shape == (RES, RES, 3) and ex["source"].dtype == np.float32
    assert ex["target"].shape == (K, RES, RES, 3) and ex["driving"].shape == (K, RES, RES, 3)
    assert ex["target_w2c"].shape == (K, 4, 4) and ex["target_intrinsics"].shape == (K, 4)
    assert ex["target_eyes"].shape == (K, RES, RES) and ex["expression"].shape == (K, EXPR)
    assert ex["time"].dtype == np.int32 and ex["view"].shape == (K,)
    assert 0.0 <= ex["target"].min() and ex["target"].max() <= 1.0
    np.testing.assert_array_equal(fake_example(3)["target"], ex["target"])  # deterministic
    assert not np.array_equal(fake_example(4)["target"], ex["target"])


def test_fake_pipeline_splits_processes_and_restores():
    cfg = tiny_config("/tmp/unused")
    f = make_fake_data_factory()
    whole = next(f(cfg, "train", 4, 0, 1))["clip"]
    p0 = next(f(cfg, "train", 2, 0, 2))["clip"]
    p1 = next(f(cfg, "train", 2, 1, 2))["clip"]
    assert sorted(np.concatenate([p0, p1]).tolist()) == sorted(whole.tolist())
    it = f(cfg, "train", 2, 0, 1)
    next(it)
    saved = it.get_state()
    expected = next(it)["clip"]
    it2 = f(cfg, "train", 2, 0, 1)
    it2.set_state(saved)
    np.testing.assert_array_equal(next(it2)["clip"], expected)


# --------------------------------------------------------------------------------------------------
# worker entry point for subprocess tests
# --------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """The stand-in ``instant4d train``: the config is read first (its jax.distributed timeouts are used),
    then jax.distributed starts, then the real loop runs with the stand-in model and, unless
    ``--real-data``, the stand-in data (``--real-data``: the project's pipeline on a synthetic_heads
    dataset in data.data_dir, generated by process 0 when missing; ``--prepare-delay S`` makes that
    preparation S seconds longer)."""
    import argparse
    import time

    from jax_instant4d.cli import setup_logging
    from jax_instant4d.config import apply_overrides, split_config_args
    from jax_instant4d.train.distributed import initialize

    setup_logging()
    rest, overrides = split_config_args(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--distributed", default="auto")
    parser.add_argument("--devices", type=int, default=0, help="host CPU devices in this process")
    parser.add_argument("--config", default=None, help="ignored (the stand-in config is used)")
    parser.add_argument("--real-data", action="store_true")
    parser.add_argument("--prepare-delay", type=float, default=0.0)
    args = parser.parse_args(rest)
    cfg = apply_overrides(tiny_config(args.workdir), overrides)
    cfg.lock()
    t = cfg.train
    distributed = initialize(args.coordinator_address, args.num_processes, args.process_id, mode=args.distributed,
                             init_timeout_s=t.init_timeout_s, heartbeat_timeout_s=t.heartbeat_timeout_s,
                             shutdown_timeout_s=t.shutdown_timeout_s)
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    from jax_instant4d.train.loop import NonFiniteError, train

    data_factory = make_fake_data_factory()
    if args.real_data:
        from jax_instant4d.data import pipeline

        data_factory = None
        if args.prepare_delay:
            real_ensure = pipeline.ensure_dataset

            def slow_ensure(*a, **kw):
                time.sleep(args.prepare_delay)
                return real_ensure(*a, **kw)

            pipeline.ensure_dataset = slow_ensure
    try:
        train(cfg, model_factory=FakeInstant4D, data_factory=data_factory, distributed=distributed)
    except NonFiniteError as e:
        print(e, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
