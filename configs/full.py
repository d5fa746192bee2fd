"""The paper's configuration: 512^2 images, triplanes 3x96x256^2, plane mode at 512^2 (262,144 Gaussians)."""

from jax_instant4d.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "full"
    cfg.workdir = "workdirs/full"
    cfg.data.resolution = 512
    cfg.train.batch_size = 32
    return cfg
