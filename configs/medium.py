"""The small demo trained three times longer (6,000 steps, ~40 minutes on a quiet 2-core machine): the
held-out learning curves in docs/learning_curves.png come from it (``configs/small.py`` has the model,
data and losses; see README, "Longer training").

The learning rate is constant after warmup, so this config's first 2,000 steps are the small demo's
step for step: a small run's work directory resumes here (``instant4d train --config configs/medium.py
--workdir <small workdir>``) and trains on from its last checkpoint.
"""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "medium"
    cfg.workdir = "workdirs/medium"
    cfg.train.steps = 6000
    # a checkpoint every 1,000 steps, all kept, for `instant4d eval --step N` along the curve
    cfg.train.checkpoint_every = 1000
    cfg.train.keep_checkpoints = 8
    cfg.train.image_every = 500
    return cfg
