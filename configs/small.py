"""CPU-sized config: trains usefully in minutes on a 2-core machine."""

from jax_instant4d.config import base_config


def get_config():
    cfg = base_config()
    cfg.name = "small"
    cfg.workdir = "workdirs/small"
    cfg.data.resolution = 64
    # synthetic_heads: 64 identities (8 held out) x 4 clips = 256 clips of T=4 steps x V=2 teacher views
    # (~1 min to generate on 2 cores); frames decoded in this process (2 cores: no worker processes)
    cfg.data.num_identities = 64
    cfg.data.heldout_identities = 8
    cfg.data.clips_per_identity = 4
    cfg.data.time_steps = 4
    cfg.data.views = 2
    cfg.data.num_workers = 0
    cfg.model.image_size = 64
    cfg.model.encoder.plane_res = 32
    cfg.model.encoder.stem_channels = 8  # encoder widths / 8 (plane_channels stays 96)
    cfg.model.encoder.resnet_channels = (8, 16, 32, 64)
    cfg.model.encoder.aspp_channels = 32
    cfg.model.encoder.transformer_dim = 128
    cfg.model.encoder.branch_channels = 16
    cfg.model.encoder.decoder_channels = (32, 16)
    cfg.model.motion.crop_size = 64  # motion encoder: 64^2 crops, widths / 4 to / 16
    cfg.model.motion.fan_channels = (16, 32, 64)
    cfg.model.motion.attn_heads = 2
    cfg.model.motion.attn_head_dim = 32
    cfg.model.motion.norm_groups = 8
    cfg.model.gaussian_res = 64  # plane mode: 4096 Gaussians
    cfg.model.rays.resolution = 16  # rays mode (ablation_rays): 16^2 rays x (8 + 8) samples = 4096 Gaussians
    cfg.model.rays.depth_samples = 8
    cfg.model.rays.importance_samples = 8
    return cfg
