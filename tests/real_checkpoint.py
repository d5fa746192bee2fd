"""A real (not stand-in) Instant4D checkpoint and a tiny synthetic_heads dataset, for the tests of
what users do with a trained model (animate, eval, export).

The checkpoint holds freshly initialised parameters (training would cost minutes and the tests check
plumbing and parity, not quality); it is written exactly as training writes one (``Checkpointer``),
so ``--checkpoint`` resolves, restores and rebuilds it like a trained run's work directory.
"""

from __future__ import annotations

from pathlib import Path

from jax_instant4d.config import ConfigDict, get_config

ROOT = Path(__file__).resolve().parents[1]

# small.py shrunk further: 1,024 Gaussians; 4 identities (2 held out) x 1 clip x T=2 x V=2 at 64^2; one block per
# ResNet stage, one low-res transformer block, one high-res layer and a depth-1 hourglass (every kind of layer
# stays: the tests check plumbing and parity, and a shallower step reaches its first step in 83 s instead of 135 s
# cold, benchmarks/train.py --first-step, README "How long the tests take").
TINY_OVERRIDES = [
    "data.num_identities=4", "data.heldout_identities=2", "data.clips_per_identity=1", "data.time_steps=2",
    "data.views=2", "model.gaussian_res=32", "model.encoder.resnet_blocks=(1,1,1,1)", "model.encoder.lowres_blocks=1",
    "model.encoder.highres_layers=1", "model.motion.hourglass_depth=1",
    "train.batch_size=4", "train.eval_batch_size=4", "train.eval_batches=1",
    "train.async_checkpoint=False", "train.progress=False", "train.mesh=(-1,1,1)", "render.backend=cpu",
    # a motion encoder initialised with the model (pretraining the teacher's takes minutes); the pretrained,
    # frozen path (small.py's default) has its own tests in test_motion_teacher.py
    "model.motion.weights=", "model.motion.freeze=false",
]


def tiny_real_config(workdir: str | Path, data_dir: str | Path, extra: list[str] | None = None) -> ConfigDict:
    return get_config(ROOT / "configs" / "small.py",
                      [f"workdir={workdir}", f"data.data_dir={data_dir}", *TINY_OVERRIDES, *(extra or [])])


def write_checkpoint(cfg: ConfigDict, step: int = 0) -> Path:
    """Initialises the train state of ``cfg`` and saves it as checkpoint ``step`` of ``cfg.workdir``."""
    from jax_instant4d.train.checkpoint import Checkpointer
    from jax_instant4d.train.sharding import make_mesh
    from jax_instant4d.train.step import Trainer

    trainer = Trainer(cfg, make_mesh(cfg.train.mesh))
    state = trainer.init()
    ckpt = Checkpointer(Path(cfg.workdir) / "checkpoints", async_save=False)
    try:
        ckpt.save(step, state, None, cfg, force=True)
        ckpt.wait()
    finally:
        ckpt.close()
    return Path(cfg.workdir)


def ensure_data(cfg: ConfigDict) -> Path:
    from jax_instant4d import data

    return data.ensure_dataset(cfg, progress=False)
