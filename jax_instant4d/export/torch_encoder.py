"""The PyTorch mirror of the triplane encoder and the motion encoder (optional: needs torch).

:class:`TorchTriplaneEncoder` and :class:`TorchMotionEncoder` are PyTorch modules whose ``state_dict()``
has exactly the official names and shapes (the authors' ``LP3DBackbone``; X-NeMo's
``MotEncoder_withExtra``) and whose forward passes follow the official code (inputs in the official
conventions: NCHW images in [-1, 1]). They exist to check the name mapping and to run exported
weights; build them with :func:`make_torch_encoder` / :func:`make_torch_motion_encoder` from the same
``cfg.model``. The mapping itself is NumPy only and lives with the model
(:mod:`jax_instant4d.model.interop`); nothing in the model imports this module.
"""

from __future__ import annotations

import math

import numpy as np
from ml_collections import ConfigDict

from jax_instant4d.model.motion import BBOX_PARAM, sincos_1d, sincos_2d

try:  # importable without torch; building a mirror module then raises
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised where torch is absent
    torch = None

# --------------------------------------------------------------------------------------------------
# PyTorch mirror (names and forward passes of the official modules)
# --------------------------------------------------------------------------------------------------


def _require_torch() -> None:
    if torch is None:
        raise ImportError("the PyTorch mirror needs torch (pip install torch==2.13.0)")


if torch is not None:

    class _ScaledConv2d(nn.Module):
        """The authors' ``MyConv2d``: weight and bias multiplied by ``lr_multiplier`` at run time."""

        def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, lr_multiplier=1.0):
            super().__init__()
            self.stride, self.padding, self.groups, self.lr = stride, padding, groups, lr_multiplier
            std = math.sqrt(2.0 / (k * k * cout // groups))
            self.weight = nn.Parameter(torch.randn(cout, cin // groups, k, k) * std / lr_multiplier)
            self.bias = nn.Parameter(torch.zeros(cout))

        def forward(self, x):
            return F.conv2d(x, self.weight * self.lr, self.bias * self.lr, self.stride, self.padding, 1, self.groups)

    class _ScaledLinear(nn.Module):
        """The authors' ``MyLinear``."""

        def __init__(self, cin, cout, bias=True, lr_multiplier=1.0):
            super().__init__()
            self.lr = lr_multiplier
            self.weight = nn.Parameter(torch.randn(cout, cin) * 0.02 / lr_multiplier)
            self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

        def forward(self, x):
            return F.linear(x, self.weight * self.lr, None if self.bias is None else self.bias * self.lr)

    class _ScaledLayerNorm(nn.Module):
        """The authors' ``MyLayerNorm`` (eps 1e-5)."""

        def __init__(self, dim, lr_multiplier=1.0):
            super().__init__()
            self.dim, self.lr = dim, lr_multiplier
            self.weight = nn.Parameter(torch.ones(dim) / lr_multiplier)
            self.bias = nn.Parameter(torch.zeros(dim))

        def forward(self, x):
            return F.layer_norm(x, (self.dim,), self.weight * self.lr, self.bias * self.lr, 1e-5)

    # ---- encoder ----------------------------------------------------------------------------------

    class TorchBasicBlock(nn.Module):
        def __init__(self, cin, cout, stride, dilation):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.Identity())
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.conv2(F.relu(self.conv1(x)))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class TorchResNetEncoder(nn.Module):
        def __init__(self, cin, stem, widths, blocks):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, stem, 7, 2, 3, bias=False)
            c = stem
            for i, (w, n, s, d) in enumerate(zip(widths, blocks, (1, 2, 1, 1), (1, 1, 2, 4), strict=True)):
                layer = []
                for j in range(n):
                    layer.append(TorchBasicBlock(c, w, s if j == 0 else 1, d))
                    c = w
                self.add_module(f"layer{i + 1}", nn.Sequential(*layer))

        def forward(self, x):
            x = F.relu(self.conv1(x))
            shallow = x
            x = F.max_pool2d(x, 3, 2, 1)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return shallow, x

    class _TorchASPPConv(nn.Module):
        def __init__(self, cin, cout, rate):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=rate, dilation=rate, bias=False), nn.ReLU())

        def forward(self, x):
            return self.net(x)

    class TorchASPP(nn.Module):
        def __init__(self, cin, cout, rates):
            super().__init__()
            self.convs = nn.ModuleList(
                [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())]
                + [_TorchASPPConv(cin, cout, r) for r in rates]
                + [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())])
            self.project = nn.Sequential(nn.Conv2d(5 * cout, cout, 1, bias=False), nn.ReLU())

        def forward(self, x):
            outs = [conv(x) for conv in self.convs[:4]]
            pooled = self.convs[4](x)
            outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
            return self.project(torch.cat(outs, dim=1))

    class TorchDeepLabV3Decoder(nn.Module):
        def __init__(self, cin, cout, rates):
            super().__init__()
            self.aspp = TorchASPP(cin, cout, rates)
            self.project = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.ReLU())

        def forward(self, x):
            return self.project(self.aspp(x))

    class TorchDeepLabV3(nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.encoder = TorchResNetEncoder(5, enc.stem_channels, tuple(enc.resnet_channels),
                                              tuple(enc.resnet_blocks))
            self.decoder = TorchDeepLabV3Decoder(enc.resnet_channels[-1], enc.aspp_channels, tuple(enc.aspp_rates))

        def forward(self, x):  # x: [B, 3, R, R] in [-1, 1]
            rgb = x / 2 + 0.5
            mean = torch.tensor((0.485, 0.456, 0.406), dtype=x.dtype)[None, :, None, None]
            std = torch.tensor((0.229, 0.224, 0.225), dtype=x.dtype)[None, :, None, None]
            theta = torch.eye(2, 3, dtype=x.dtype)[None].expand(len(x), -1, -1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False).permute(0, 3, 1, 2)
            shallow, deep = self.encoder(torch.cat([(rgb - mean) / std, grid], dim=1))
            return shallow, self.decoder(deep)

    class TorchOverlapPatchEmbed(nn.Module):
        def __init__(self, cin, dim, stride):
            super().__init__()
            self.proj = nn.Conv2d(cin, dim, 3, stride, 1)
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            x = self.proj(x)
            _, _, h, w = x.shape
            return self.norm(x.flatten(2).transpose(1, 2)), h, w

    class TorchSegAttention(nn.Module):
        def __init__(self, dim, heads, sr_ratio, lr):
            super().__init__()
            self.heads, self.sr_ratio = heads, sr_ratio
            self.q = _ScaledLinear(dim, dim, lr_multiplier=lr)
            self.kv = _ScaledLinear(dim, 2 * dim, lr_multiplier=lr)
            self.proj = _ScaledLinear(dim, dim, lr_multiplier=lr)
            if sr_ratio > 1:
                self.sr = _ScaledConv2d(dim, dim, sr_ratio, stride=sr_ratio, lr_multiplier=lr)
                self.norm = _ScaledLayerNorm(dim, lr)

        def forward(self, x, h, w):
            b, n, c = x.shape
            hd = c // self.heads
            q = self.q(x).reshape(b, n, self.heads, hd).permute(0, 2, 1, 3)
            if self.sr_ratio > 1:
                x = self.norm(self.sr(x.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1).permute(0, 2, 1))
            kv = self.kv(x).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
            attn = ((q @ kv[0].transpose(-2, -1)) * hd ** -0.5).softmax(dim=-1)
            return self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, n, c))

    class _TorchDWConv(nn.Module):
        def __init__(self, dim, lr):
            super().__init__()
            self.dwconv = _ScaledConv2d(dim, dim, 3, 1, 1, groups=dim, lr_multiplier=lr)

        def forward(self, x, h, w):
            b, n, c = x.shape
            return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)

    class TorchMixFFN(nn.Module):
        def __init__(self, dim, hidden, lr):
            super().__init__()
            self.fc1 = _ScaledLinear(dim, hidden, lr_multiplier=lr)
            self.dwconv = _TorchDWConv(hidden, lr)
            self.act = nn.GELU()
            self.fc2 = _ScaledLinear(hidden, dim, lr_multiplier=lr)

        def forward(self, x, h, w):
            return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))

    class TorchSegBlock(nn.Module):
        def __init__(self, dim, heads, mlp_ratio, sr_ratio, lr):
            super().__init__()
            self.norm1 = _ScaledLayerNorm(dim, lr)
            self.attn = TorchSegAttention(dim, heads, sr_ratio, lr)
            self.norm2 = _ScaledLayerNorm(dim, lr)
            self.mlp = TorchMixFFN(dim, int(dim * mlp_ratio), lr)

        def forward(self, x, h, w):
            x = x + self.attn(self.norm1(x), h, w)
            return x + self.mlp(self.norm2(x), h, w)

    def _tokens_to_map(x, h, w):
        return x.reshape(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2).contiguous()

    class TorchLowResFeatureEncoder(nn.Module):
        def __init__(self, enc):
            super().__init__()
            d, lr, c = enc.transformer_dim, enc.lr_multiplier, enc.branch_channels
            blocks = [TorchSegBlock(d, enc.lowres_heads, enc.mlp_ratio, 1, lr) for _ in range(enc.lowres_blocks)]
            self.net = nn.Sequential(TorchOverlapPatchEmbed(enc.aspp_channels, d, 2), *blocks, nn.PixelShuffle(2),
                                     nn.UpsamplingBilinear2d(scale_factor=2), nn.Conv2d(d // 4, c, 3, 1, 1),
                                     nn.LeakyReLU())
            self.project = nn.Conv2d(c, c, 3, 1, 1)

        def forward(self, x):
            nb = len(self.net) - 5
            x, h, w = self.net[0](x)
            for i in range(nb):
                x = self.net[1 + i](x, h, w)
            x = _tokens_to_map(x, h, w)
            for layer in self.net[1 + nb:]:
                x = layer(x)
            return self.project(x)

    class TorchHighResFeatureEncoder(nn.Module):
        def __init__(self, enc):
            super().__init__()
            c = enc.branch_channels
            self.n = enc.highres_layers
            self.in_layer = nn.Conv2d(enc.stem_channels, c, 3, 2, 1)
            for i in range(self.n):
                self.add_module(f"layer{i + 1}", nn.Conv2d(c, c, 3, 1, 1))
            self.out_layer = nn.Conv2d(c, c, 3, 1, 1)
            self.activation = nn.LeakyReLU()

        def forward(self, x):
            x = self.activation(self.in_layer(x))
            for i in range(self.n):
                x = self.activation(getattr(self, f"layer{i + 1}")(x))
            return self.out_layer(x)

    class TorchFeatureDecoder(nn.Module):
        def __init__(self, enc):
            super().__init__()
            d, lr = enc.transformer_dim, enc.lr_multiplier
            c0, c1 = enc.decoder_channels
            out = 3 * enc.plane_channels
            blocks = [TorchSegBlock(d, enc.decoder_heads, enc.mlp_ratio, enc.decoder_sr_ratio, lr)
                      for _ in range(enc.decoder_blocks)]
            self.in_layer = nn.Sequential(nn.Conv2d(2 * enc.branch_channels, c0, 3, 1, 1),
                                          TorchOverlapPatchEmbed(c0, d, 2), *blocks, nn.PixelShuffle(2))
            self.layer_1 = nn.Conv2d(d // 4, c0, 3, 1, 1)
            self.layer_2 = nn.Conv2d(c0, c1, 3, 1, 1)
            self.layer_3 = nn.Conv2d(c1, c1, 3, 1, 1)
            self.layer_4 = nn.Conv2d(c1, out, 3, 1, 1)
            self.activation_layer = nn.LeakyReLU()
            self.upsample_layer = nn.UpsamplingBilinear2d(scale_factor=2)
            self.out_layer = nn.Conv2d(out, out, 3, 1, 1)

        def forward(self, x):
            x, h, w = self.in_layer[1](self.in_layer[0](x))
            for block in self.in_layer[2:-1]:
                x = block(x, h, w)
            x = self.in_layer[-1](_tokens_to_map(x, h, w))
            x = self.upsample_layer(self.activation_layer(self.layer_1(x)))
            x = self.activation_layer(self.layer_2(x))
            x = self.activation_layer(self.layer_3(x))
            x = self.activation_layer(self.layer_4(x))
            return self.out_layer(x)

    class TorchTriplaneEncoder(nn.Module):
        """Mirror of the authors' ``LP3DBackbone``: image [B,3,R,R] in [-1,1] -> planes [B,3,C,R/2,R/2]."""

        def __init__(self, model_cfg: ConfigDict):
            super().__init__()
            enc = model_cfg.encoder
            self.feat_dim = enc.plane_channels
            self.deep_lab_v3 = TorchDeepLabV3(enc)
            self.low_feat_encoder = TorchLowResFeatureEncoder(enc)
            self.high_feat_encoder = TorchHighResFeatureEncoder(enc)
            self.feat_decoder = TorchFeatureDecoder(enc)

        def forward(self, image):
            high, low = self.deep_lab_v3(image)
            planes = self.feat_decoder(torch.cat([self.low_feat_encoder(low), self.high_feat_encoder(high)], dim=1))
            return planes.view(len(planes), 3, self.feat_dim, planes.shape[-2], planes.shape[-1])

    # ---- motion encoder ---------------------------------------------------------------------------

    class TorchConvBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout // 2, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout // 2)
            self.conv2 = nn.Conv2d(cout // 2, cout // 4, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout // 4)
            self.conv3 = nn.Conv2d(cout // 4, cout // 4, 3, 1, 1, bias=False)
            self.downsample = (nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False))
                               if cin != cout else None)

        def forward(self, x):
            o1 = self.conv1(F.relu(self.bn1(x)))
            o2 = self.conv2(F.relu(self.bn2(o1)))
            o3 = self.conv3(F.relu(self.bn3(o2)))
            return torch.cat([o1, o2, o3], dim=1) + (x if self.downsample is None else self.downsample(x))

    class TorchHourGlass(nn.Module):
        def __init__(self, depth, features, dropout):
            super().__init__()
            self.depth = depth
            self.dropout = nn.Dropout(dropout)
            self._build(depth, features)

        def _build(self, level, c):
            self.add_module(f"b1_{level}", TorchConvBlock(c, c))
            self.add_module(f"b2_{level}", TorchConvBlock(c, c))
            if level > 1:
                self._build(level - 1, c)
            else:
                self.add_module("b2_plus_1", TorchConvBlock(c, c))
            self.add_module(f"b3_{level}", TorchConvBlock(c, c))

        def _forward(self, level, x):
            up1 = self.dropout(self._modules[f"b1_{level}"](x))
            low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
            low = self._forward(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
            low = self._modules[f"b3_{level}"](low)
            return up1 + F.interpolate(low, size=up1.shape[-2:], mode="bilinear", align_corners=False)

        def forward(self, x):
            return self._forward(self.depth, x)

    class TorchPatchEmbed(nn.Module):
        """diffusers' ``PatchEmbed`` (sin-cos table recomputed for the actual grid, not persistent)."""

        def __init__(self, sample, patch, cin, dim):
            super().__init__()
            self.patch, self.dim, self.base = patch, dim, sample // patch
            self.proj = nn.Conv2d(cin, dim, patch, patch)

        def forward(self, x):
            x = self.proj(x)
            gh, gw = x.shape[-2:]
            pos = torch.from_numpy(sincos_2d(self.dim, gh, gw, self.base)).float()[None]
            return x.flatten(2).transpose(1, 2) + pos

    class TorchSelfAttention(nn.Module):
        """diffusers' ``Attention`` (self-attention, no q/k/v bias)."""

        def __init__(self, dim, heads, head_dim):
            super().__init__()
            self.heads, self.head_dim = heads, head_dim
            self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
            self.to_k = nn.Linear(dim, heads * head_dim, bias=False)
            self.to_v = nn.Linear(dim, heads * head_dim, bias=False)
            self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim), nn.Dropout(0.0)])

        def forward(self, x):
            b, n, _ = x.shape
            split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)
            q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
            attn = ((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
            return self.to_out[1](self.to_out[0](out))

    class _TorchGEGLU(nn.Module):
        def __init__(self, dim, inner):
            super().__init__()
            self.proj = nn.Linear(dim, 2 * inner)

        def forward(self, x):
            hidden, gate = self.proj(x).chunk(2, dim=-1)
            return hidden * F.gelu(gate)

    class TorchFeedForward(nn.Module):
        def __init__(self, dim, mult=4):
            super().__init__()
            self.net = nn.ModuleList([_TorchGEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim)])

        def forward(self, x):
            for layer in self.net:
                x = layer(x)
            return x

    class TorchSpatialBlock(nn.Module):
        def __init__(self, dim, heads, head_dim):
            super().__init__()
            self.attention_blocks = nn.ModuleList([TorchSelfAttention(dim, heads, head_dim)])
            self.norms = nn.ModuleList([nn.LayerNorm(dim)])
            self.ff = TorchFeedForward(dim)
            self.ff_norm = nn.LayerNorm(dim)

        def forward(self, x):
            for attn, norm in zip(self.attention_blocks, self.norms, strict=True):
                x = attn(norm(x)) + x
            return self.ff(self.ff_norm(x)) + x

    class TorchSpatialSelfAttention(nn.Module):
        """AnimateDiff's ``TemporalTransformer3DModel`` (one ``Spatial_Self`` layer) on one frame (NCHW)."""

        def __init__(self, channels, sample, patch, heads, head_dim, groups):
            super().__init__()
            inner = heads * head_dim
            self.patch, self.channels = patch, channels
            self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
            self.transformer_blocks = nn.ModuleList([TorchSpatialBlock(inner, heads, head_dim)])
            self.proj_out = nn.Linear(inner // patch ** 2, channels)
            self.pos_embed = TorchPatchEmbed(sample, patch, channels, inner)
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

        def forward(self, x):
            b, _, h, w = x.shape
            p = self.patch
            t = self.pos_embed(self.norm(x))
            for block in self.transformer_blocks:
                t = block(t)
            t = self.proj_out(t.reshape(b, h // p, w // p, p, p, -1))
            t = torch.einsum("nhwpqc->nchpwq", t).reshape(b, self.channels, h, w)
            return t + x

    class TorchFAN(nn.Module):
        """Mirror of X-NeMo's ``FAN_SA``."""

        def __init__(self, mot):
            super().__init__()
            c1, c2, c3 = mot.fan_channels
            s, lm = mot.crop_size, mot.landmarks
            attn = dict(heads=mot.attn_heads, head_dim=mot.attn_head_dim, groups=mot.norm_groups)
            p1, p2, p3 = mot.attn_patch
            self.conv1 = nn.Conv2d(3, c1, 7, 2, 3)
            self.bn1 = nn.BatchNorm2d(c1)
            self.conv2 = TorchConvBlock(c1, c2)
            self.conv3 = TorchConvBlock(c2, c2)
            self.conv4 = TorchConvBlock(c2, c3)
            self.add_module("m0", TorchHourGlass(mot.hourglass_depth, c3, mot.hourglass_dropout))
            self.add_module("top_m_0", TorchConvBlock(c3, c3))
            self.add_module("conv_last0", nn.Conv2d(c3, c3, 1))
            self.add_module("l0", nn.Conv2d(c3, lm, 1))
            self.add_module("bn_end0", nn.BatchNorm2d(c3))
            self.conv6 = nn.Conv2d(lm, 1, 3, 2, 1)
            self.fc = nn.Linear((s // 8) ** 2, mot.code_dim)
            self.bn5 = nn.BatchNorm2d(lm)
            self.att_1 = TorchSpatialSelfAttention(c2, s // 2, p1, **attn)
            self.att_2 = TorchSpatialSelfAttention(c3, s // 4, p2, **attn)
            self.att_3 = TorchSpatialSelfAttention(c3, s // 4, p3, **attn)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.att_1(self.conv2(x))
            x = self.conv4(self.conv3(F.max_pool2d(x, 2)))
            x = self.att_2(x)
            x = self.top_m_0(self.m0(x))
            x = self.att_3(self.bn_end0(self.conv_last0(x)))
            x = F.relu(self.bn5(self.l0(F.relu(x))))
            x = self.conv6(x)
            return self.fc(F.relu(x.view(len(x), -1)))

    class TorchMotionEncoder(nn.Module):
        """Mirror of X-NeMo's ``MotEncoder_withExtra``: crop [B,3,S,S] in [-1,1], box [B,3] -> tokens [B,T,E]."""

        def __init__(self, model_cfg: ConfigDict):
            super().__init__()
            mot = model_cfg.motion
            self.out_ch = mot.token_dim
            self.model = TorchFAN(mot)
            pe = sincos_1d(mot.token_dim, np.arange(mot.code_dim // mot.token_dim))
            self.register_buffer("pe", torch.from_numpy(pe).float().unsqueeze(0))
            self.bbox_proj = nn.Sequential(nn.Linear(len(BBOX_PARAM), mot.bbox_dim), nn.ReLU(), nn.Identity(),
                                           nn.Linear(mot.bbox_dim, mot.bbox_dim))
            self.final_proj = nn.Linear(mot.code_dim + mot.bbox_dim, mot.code_dim)

        def forward(self, x, emb=None):
            if emb is None:
                emb = torch.tensor(BBOX_PARAM, dtype=x.dtype)[None].expand(len(x), -1)
            latent = self.final_proj(torch.cat([self.model(x), self.bbox_proj(emb)], dim=1))
            return latent.reshape(len(x), -1, self.out_ch) + self.pe


def make_torch_encoder(model_cfg: ConfigDict):
    """The PyTorch mirror of :class:`TriplaneEncoder` for ``cfg.model`` (eval mode)."""
    _require_torch()
    return TorchTriplaneEncoder(model_cfg).eval()


def make_torch_motion_encoder(model_cfg: ConfigDict):
    """The PyTorch mirror of :class:`MotionEncoder` for ``cfg.model`` (eval mode: running BN statistics)."""
    _require_torch()
    return TorchMotionEncoder(model_cfg).eval()
