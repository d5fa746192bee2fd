"""Ablation on the small config: the fusion predicts offsets of position, scale and rotation of Φ(f) directly instead
of δf (the paper's deformation baseline).
"""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "ablation_deform"
    cfg.workdir = "workdirs/ablation_deform"
    cfg.model.fusion = "deform"
    return cfg
