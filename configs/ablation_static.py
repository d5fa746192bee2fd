"""Ablation on the small config: a static avatar: no fusion, the driving frame has no effect."""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "ablation_static"
    cfg.workdir = "workdirs/ablation_static"
    cfg.model.fusion = "none"
    return cfg
