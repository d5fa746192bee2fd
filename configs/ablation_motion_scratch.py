"""Ablation on the small config: the motion encoder trained from scratch with the avatar (no pretrained,
frozen teacher encoder; the paper's setting is the small config itself)."""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "ablation_motion_scratch"
    cfg.workdir = "workdirs/ablation_motion_scratch"
    cfg.model.motion.weights = ""
    cfg.model.motion.freeze = False
    return cfg
