"""CPU-sized config: trains usefully in minutes on a 2-core machine."""

from jax_instant4d.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "small"
    cfg.workdir = "workdirs/small"
    cfg.data.resolution = 64
    cfg.model.image_size = 64
    cfg.model.encoder.plane_res = 32
    cfg.model.gaussian_res = 64
    return cfg
