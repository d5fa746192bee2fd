"""PyTorch mirror of the Gaussian decoder Φ and the fusion variants (optional: needs torch).

The mirror modules (defined when torch imports) reproduce the authors' forward passes: use
:func:`build_torch_modules` to get the decoder and the fusion of a config, load the state dict of
:func:`jax_instant4d.model.interop.gaussian_to_torch_state_dict` (NumPy only, the name mapping, with its
table in ``MAPPING_gaussian.md`` beside this file) with ``strict=True``, and compare. ``global`` and
``deform`` have no official counterpart; their mirrors follow our Flax modules under the same
``motion_decoder.`` prefix.
"""

from __future__ import annotations

import math

try:  # importable without torch; building a mirror module then raises
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised where torch is absent
    torch = None

if torch is not None:

    class FullyConnectedLayer(nn.Module):
        """StyleGAN's equalised linear layer: ``x @ (w / sqrt(in)).T + b`` (lr multiplier 1)."""

        def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(out_features, in_features))
            self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
            self.weight_gain = 1.0 / math.sqrt(in_features)

        def forward(self, x):
            return F.linear(x, self.weight * self.weight_gain, self.bias)

    class MyLinear(nn.Module):
        """The authors' ``MyLinear`` (weight and bias multiplied by ``lr_multiplier`` at run time)."""

        def __init__(self, in_features: int, out_features: int, bias: bool = True, lr_multiplier: float = 1.0):
            super().__init__()
            self.lr_multiplier = lr_multiplier
            self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.02 / lr_multiplier)
            self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

        def forward(self, x):
            b = self.bias * self.lr_multiplier if self.bias is not None else None
            return F.linear(x, self.weight * self.lr_multiplier, b)

    def _torch_mlp(f: int, out: int) -> nn.Sequential:
        return nn.Sequential(FullyConnectedLayer(f, 2 * f), nn.Softplus(), FullyConnectedLayer(2 * f, out))

    def _activate_torch(x):
        density = F.softplus(x[..., 0] - 1.0)
        rgb = torch.sigmoid(x[..., 1:4]) * (1 + 2 * 0.001) - 0.001
        means = torch.tanh(x[..., 11:14])
        scales = torch.sigmoid(x[..., 14:17]) * 0.05
        quats = F.normalize(x[..., 17:21], dim=-1)
        return {"means": means, "scales": scales, "quats": quats, "opacities": 1 - torch.exp(-density),
                "colors": rgb, "densities": density}

    class GaussianDecoder(nn.Module):
        """Φ: ``net`` = FC(48, 96), Softplus, FC(96, 22); returns the activated attributes."""

        def __init__(self, n_features: int = 48):
            super().__init__()
            self.net = _torch_mlp(n_features, 22)
            with torch.no_grad():
                self.net[-1].bias.zero_()

        def forward(self, features):
            return _activate_torch(self.net(features))

    class AdaLN(nn.Module):
        def __init__(self, c_dim: int, out_dim: int, lr_multiplier: float = 0.5):
            super().__init__()
            self.out_dim = out_dim
            self.mapping = MyLinear(c_dim, 2 * out_dim, bias=False, lr_multiplier=lr_multiplier)
            self.proj = MyLinear(out_dim, out_dim, lr_multiplier=lr_multiplier)

        def forward(self, c, features):
            c = self.mapping(c)
            scale = c[:, None, : self.out_dim]
            shift = c[:, None, self.out_dim:]
            return self.proj(F.layer_norm(features, (self.out_dim,), eps=1e-5) * scale + shift)

    class MotionDecoder(nn.Module):
        """Local fusion (the authors' ``MotionDecoder``): 0.01 net(AdaLN([z_src, z_drv], m))."""

        def __init__(self, feat_dim: int = 48, motion_dim: int = 512, out_dim: int | None = None,
                     scale: float = 0.01):
            super().__init__()
            self.scale = scale
            self.transform = AdaLN(2 * motion_dim, feat_dim, lr_multiplier=0.5)
            self.net = _torch_mlp(feat_dim, out_dim or feat_dim)

        def forward(self, m, code_src, code_drv, tokens_src=None, tokens_drv=None):
            return self.scale * self.net(self.transform(torch.cat([code_src, code_drv], dim=-1), m))

    class DeformMotionDecoder(MotionDecoder):
        """Ablation ``deform``: the same conditioning, 10 outputs (position 3, log-scale 3, quaternion 4)."""

        def __init__(self, feat_dim: int = 48, motion_dim: int = 512, scale: float = 0.01):
            super().__init__(feat_dim, motion_dim, out_dim=10, scale=scale)

    class GlobalMotionDecoder(nn.Module):
        """Ablation ``global``: cross-attention from LN(m) to LN(source/driving tokens + frame embedding)."""

        def __init__(self, feat_dim: int = 48, token_dim: int = 512, heads: int = 4, scale: float = 0.01):
            super().__init__()
            self.scale = scale
            self.heads = heads
            self.query = FullyConnectedLayer(feat_dim, feat_dim)
            self.key = FullyConnectedLayer(token_dim, feat_dim)
            self.value = FullyConnectedLayer(token_dim, feat_dim)
            self.out = FullyConnectedLayer(feat_dim, feat_dim)
            self.frame_embed = nn.Parameter(torch.randn(2, token_dim) * 0.02)
            self.net = _torch_mlp(feat_dim, feat_dim)

        def forward(self, m, code_src, code_drv, tokens_src, tokens_drv):
            b, n, f = m.shape
            h = self.heads
            tokens = torch.cat([tokens_src + self.frame_embed[0], tokens_drv + self.frame_embed[1]], dim=1)
            tokens = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-5)
            q = self.query(F.layer_norm(m, (f,), eps=1e-5)).view(b, n, h, f // h).transpose(1, 2)
            k = self.key(tokens).view(b, -1, h, f // h).transpose(1, 2)
            v = self.value(tokens).view(b, -1, h, f // h).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(f // h), dim=-1) @ v
            return self.scale * self.net(self.out(att.transpose(1, 2).reshape(b, n, f)))

    def build_torch_modules(cfg, token_dim: int | None = None) -> nn.ModuleDict:
        """``{"decoder": ..., "motion_decoder": ...}`` (no motion decoder for ``fusion = none``) for a config;
        its ``state_dict()`` keys equal those of
        :func:`jax_instant4d.model.interop.gaussian_to_torch_state_dict`."""
        mc = cfg.model
        f, code = int(mc.feature_dim), int(mc.motion.code_dim)
        mods = {"decoder": GaussianDecoder(f)}
        if mc.fusion == "local":
            mods["motion_decoder"] = MotionDecoder(f, code, scale=float(mc.fusion_scale))
        elif mc.fusion == "deform":
            mods["motion_decoder"] = DeformMotionDecoder(f, code, scale=float(mc.fusion_scale))
        elif mc.fusion == "global":
            if token_dim is None:
                raise ValueError("global fusion needs token_dim (the motion encoder's token width)")
            mods["motion_decoder"] = GlobalMotionDecoder(f, token_dim, int(mc.global_heads), float(mc.fusion_scale))
        return nn.ModuleDict(mods)

    def instantiate_plane_torch(planes, resolution: int):
        """The authors' plane instantiation: ``planes [B, 3, C, P, P]`` -> features ``[B, R*R, C]``."""
        b, _, c, _, _ = planes.shape
        up = F.interpolate(planes.mean(1), (resolution, resolution), mode="bilinear", align_corners=False,
                           antialias=True)
        return up.permute(0, 2, 3, 1).reshape(b, -1, c)

    def sample_triplanes_torch(planes, points, box_warp: float = 1.0):
        """The authors' ``sample_from_planes`` + mean over planes: ``planes [B, 3, C, P, P]``, ``points
        [B, M, 3]`` -> ``[B, M, C]``."""
        b, n_planes, c, h, w = planes.shape
        axes = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                             [[0, 0, 1], [0, 1, 0], [1, 0, 0]]], dtype=torch.float32)
        coords = (2.0 / box_warp) * points
        proj = torch.einsum("bmi,pij->bpmj", coords, torch.linalg.inv(axes))[..., :2]
        grid = proj.reshape(b * n_planes, 1, -1, 2)
        out = F.grid_sample(planes.reshape(b * n_planes, c, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.reshape(b, n_planes, c, -1).permute(0, 1, 3, 2).mean(1)
