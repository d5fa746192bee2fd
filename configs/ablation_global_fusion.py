"""Ablation on the small config: global fusion: cross-attention from every Gaussian to the source and driving motion
tokens (the costly design the paper argues against) instead of the local AdaLN fusion.
"""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "ablation_global_fusion"
    cfg.workdir = "workdirs/ablation_global_fusion"
    cfg.model.fusion = "global"
    return cfg
