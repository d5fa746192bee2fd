"""Ablation on the small config: Gaussians instantiated NeRF-style along the rays of a fixed frontal camera (the older
checkpoint) instead of one per texel of the averaged planes.
"""

from pathlib import Path

from jax_instant4d.config import load_config_file


def get_config():
    cfg = load_config_file(Path(__file__).with_name("small.py"))
    cfg.name = "ablation_rays"
    cfg.workdir = "workdirs/ablation_rays"
    cfg.model.instantiate = "rays"
    return cfg
