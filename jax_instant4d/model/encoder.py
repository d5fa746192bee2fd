"""The triplane encoder (LP3D design): one portrait image -> three feature planes.

Data flow (NHWC throughout; sizes for the full config, 512^2 input)::

    image [B,512,512,3] in [0,1] -> ImageNet-normalised RGB + 2 coordinate channels (x, y in (-1, 1))
      -> DeepLabV3: dilated ResNet-18 (output stride 8, no normalisation layers)
           stem  conv 7x7/2 + ReLU         -> high-res features [B,256,256,64]
           maxpool, layer1..4 (dilation 2, 4 in layers 3, 4), ASPP + 3x3 conv -> [B,64,64,256]
      -> low-res branch: overlapping patch embedding (3x3/2) -> [B,32,32,1024], two SegFormer
           blocks (efficient self-attention, Mix-FFN), pixel shuffle, 2x bilinear (align corners),
           conv, LeakyReLU, conv                                -> [B,128,128,128]
      -> high-res branch: conv 3x3/2, four convs, LeakyReLU      -> [B,128,128,128]
      -> fusion decoder on the concatenation (low first): conv, patch embedding (3x3/2), one block
           with spatial reduction 2, pixel shuffle, convs, 2x bilinear (align corners), convs
                                                                -> [B,256,256,3*96]
      -> planes [B,3,256,256,96]

Channel ``p*C + c`` of the decoder output is feature ``c`` of plane ``p`` (the authors' ``view``).
Channels 0..C/2-1 of a plane are f (appearance/geometry), C/2..C-1 are m (motion basis).

Parameter names follow the authors' PyTorch modules (``LP3DBackbone`` in their ``src/backbone.py``)
so that :mod:`jax_instant4d.model.interop` can map weights both ways; the transformer blocks
keep the authors' learning-rate multiplier (stored weight = effective weight / ``lr_multiplier``,
scaled back at run time), so a stored value equals the PyTorch parameter exactly. Details that differ
from common defaults and are kept here: LayerNorm eps 1e-5, exact (erf) GELU, LeakyReLU slope 0.01,
bilinear 2x upsampling with ``align_corners=True`` (``nn.UpsamplingBilinear2d``), explicit symmetric
padding in every convolution.

The small layers (:class:`Conv2d`, :class:`Dense`, :class:`LayerNorm`, resizing, pixel shuffle) are in
:mod:`jax_instant4d.model.layers`, shared with :mod:`jax_instant4d.model.motion`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float
from ml_collections import ConfigDict

from jax_instant4d.model.layers import (
    MODEL_AXIS,
    Conv2d,
    Dense,
    LayerNorm,
    gelu,
    leaky_relu,
    max_pool,
    pixel_shuffle,
    resize_bilinear,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# --------------------------------------------------------------------------------------------------
# DeepLabV3 with a dilated ResNet-18
# --------------------------------------------------------------------------------------------------


class BasicBlock(nnx.Module):
    """ResNet basic block without normalisation (the authors build it with ``norm_layer=nn.Identity``)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, dilation: int, rngs: nnx.Rngs):
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                            use_bias=False, rngs=rngs)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, use_bias=False,
                            rngs=rngs)
        if stride != 1 or in_channels != out_channels:
            self.downsample = Conv2d(in_channels, out_channels, 1, stride=stride, use_bias=False, rngs=rngs)
        else:
            self.downsample = None

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B h w Co"]:
        y = self.conv2(jax.nn.relu(self.conv1(x)))
        identity = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + identity)


class ResNetEncoder(nnx.Module):
    """ResNet-18 trunk made dilated for output stride 8 (layers 3 and 4: stride 1, dilation 2 and 4)."""

    def __init__(self, in_channels: int, stem: int, widths: Sequence[int], blocks: Sequence[int], *,
                 rngs: nnx.Rngs):
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"model.encoder.resnet_channels/resnet_blocks need 4 entries, got {widths}, {blocks}")
        self.conv1 = Conv2d(in_channels, stem, 7, stride=2, padding=3, use_bias=False, rngs=rngs)
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        c = stem
        for i in range(4):
            layer = []
            for j in range(int(blocks[i])):
                layer.append(BasicBlock(c, int(widths[i]), stride=strides[i] if j == 0 else 1,
                                        dilation=dilations[i], rngs=rngs))
                c = int(widths[i])
            setattr(self, f"layer{i + 1}", nnx.List(layer))

    def __call__(self, x: Float[Array, "B H W Ci"]) -> tuple[Float[Array, "B h w S"], Float[Array, "B q q D"]]:
        x = jax.nn.relu(self.conv1(x))
        shallow = x
        x = max_pool(x, 3, 2, 1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return shallow, x


class ASPP(nnx.Module):
    """Atrous spatial pyramid pooling without normalisation: a 1x1 branch, three dilated 3x3 branches,
    an image-pooling branch; ReLU after each; concatenated and projected by a 1x1 conv + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], *, rngs: nnx.Rngs):
        if len(rates) != 3:
            raise ValueError(f"model.encoder.aspp_rates needs 3 rates, got {rates}")
        convs = [Conv2d(in_channels, out_channels, 1, use_bias=False, rngs=rngs)]
        for r in rates:
            convs.append(Conv2d(in_channels, out_channels, 3, padding=int(r), dilation=int(r), use_bias=False,
                                rngs=rngs))
        convs.append(Conv2d(in_channels, out_channels, 1, use_bias=False, rngs=rngs))  # image pooling
        self.convs = nnx.List(convs)
        self.project = Conv2d(5 * out_channels, out_channels, 1, use_bias=False, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H W Co"]:
        outs = [jax.nn.relu(conv(x)) for conv in self.convs[:4]]
        pooled = jax.nn.relu(self.convs[4](jnp.mean(x, axis=(1, 2), keepdims=True)))
        outs.append(jnp.broadcast_to(pooled, outs[0].shape))  # bilinear from 1x1 = constant
        return jax.nn.relu(self.project(jnp.concatenate(outs, axis=-1)))


class DeepLabV3Decoder(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], *, rngs: nnx.Rngs):
        self.aspp = ASPP(in_channels, out_channels, rates, rngs=rngs)
        self.project = Conv2d(out_channels, out_channels, 3, padding=1, use_bias=False, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H W Co"]:
        return jax.nn.relu(self.project(self.aspp(x)))


def coordinate_channels(batch: int, height: int, width: int) -> Float[Array, "B H W 2"]:
    """``F.affine_grid(identity, align_corners=False)``: (x, y) pixel centres in (-1, 1), x along width."""
    xs = (2.0 * np.arange(width) + 1.0) / width - 1.0
    ys = (2.0 * np.arange(height) + 1.0) / height - 1.0
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).astype(np.float32)  # [H, W, 2]
    return jnp.broadcast_to(jnp.asarray(grid), (batch, height, width, 2))


class DeepLabV3(nnx.Module):
    """Image in [0,1] -> (stride-2 stem features, stride-8 ASPP features)."""

    def __init__(self, enc: ConfigDict, *, rngs: nnx.Rngs):
        self.encoder = ResNetEncoder(5, int(enc.stem_channels), tuple(enc.resnet_channels), tuple(enc.resnet_blocks),
                                     rngs=rngs)
        self.decoder = DeepLabV3Decoder(int(enc.resnet_channels[-1]), int(enc.aspp_channels), tuple(enc.aspp_rates),
                                        rngs=rngs)

    def __call__(self, image: Float[Array, "B R R 3"]) -> tuple[Float[Array, "B h h S"], Float[Array, "B q q A"]]:
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        b, h, w, _ = image.shape
        x = jnp.concatenate([(image - mean) / std, coordinate_channels(b, h, w)], axis=-1)
        shallow, deep = self.encoder(x)
        return shallow, self.decoder(deep)


# --------------------------------------------------------------------------------------------------
# SegFormer-style blocks
# --------------------------------------------------------------------------------------------------


class OverlapPatchEmbed(nnx.Module):
    """3x3 conv with stride (padding 1) + LayerNorm (PyTorch's, not lr-scaled)."""

    def __init__(self, in_channels: int, dim: int, *, stride: int, rngs: nnx.Rngs):
        self.proj = Conv2d(in_channels, dim, 3, stride=stride, padding=1, init="fan_out",
                           sharding=(None, None, None, MODEL_AXIS), rngs=rngs)
        self.norm = LayerNorm(dim, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B h w D"]:
        return self.norm(self.proj(x))


class EfficientAttention(nnx.Module):
    """Multi-head self-attention whose keys/values come from a ``sr_ratio``-strided conv + LayerNorm."""

    def __init__(self, dim: int, heads: int, *, sr_ratio: int, lr_multiplier: float, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"attention width {dim} not divisible by {heads} heads")
        self.heads, self.sr_ratio = int(heads), int(sr_ratio)
        lin = dict(init="trunc", lr_multiplier=lr_multiplier, rngs=rngs)
        self.q = Dense(dim, dim, sharding=(None, MODEL_AXIS), **lin)
        self.kv = Dense(dim, 2 * dim, sharding=(None, MODEL_AXIS), **lin)
        self.proj = Dense(dim, dim, sharding=(MODEL_AXIS, None), **lin)
        if self.sr_ratio > 1:
            self.sr = Conv2d(dim, dim, self.sr_ratio, stride=self.sr_ratio, init="fan_out",
                             lr_multiplier=lr_multiplier, sharding=(None, None, None, MODEL_AXIS), rngs=rngs)
            self.norm = LayerNorm(dim, lr_multiplier=lr_multiplier, rngs=rngs)
        else:
            self.sr = self.norm = None

    def __call__(self, x: Float[Array, "B H W D"]) -> Float[Array, "B H W D"]:
        b, h, w, d = x.shape
        hd = d // self.heads
        q = self.q(x).reshape(b, h * w, self.heads, hd)
        src = x if self.sr is None else self.norm(self.sr(x))
        kv = self.kv(src).reshape(b, -1, 2, self.heads, hd)  # (k | v) on the channel axis, as the authors'
        out = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1])
        return self.proj(out.reshape(b, h, w, d))


class MixFFN(nnx.Module):
    """fc -> depth-wise 3x3 conv -> exact GELU -> fc."""

    def __init__(self, dim: int, hidden: int, *, lr_multiplier: float, rngs: nnx.Rngs):
        self.fc1 = Dense(dim, hidden, init="trunc", lr_multiplier=lr_multiplier, sharding=(None, MODEL_AXIS),
                         rngs=rngs)
        self.dwconv = Conv2d(hidden, hidden, 3, padding=1, groups=hidden, init="fan_out", lr_multiplier=lr_multiplier,
                             sharding=(None, None, None, MODEL_AXIS), rngs=rngs)
        self.fc2 = Dense(hidden, dim, init="trunc", lr_multiplier=lr_multiplier, sharding=(MODEL_AXIS, None),
                         rngs=rngs)

    def __call__(self, x: Float[Array, "B H W D"]) -> Float[Array, "B H W D"]:
        return self.fc2(gelu(self.dwconv(self.fc1(x))))


class TransformerBlock(nnx.Module):
    """Pre-norm SegFormer block: x + attn(LN(x)); x + MixFFN(LN(x)) (no dropout / drop path)."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float, sr_ratio: int, lr_multiplier: float,
                 rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, lr_multiplier=lr_multiplier, rngs=rngs)
        self.attn = EfficientAttention(dim, heads, sr_ratio=sr_ratio, lr_multiplier=lr_multiplier, rngs=rngs)
        self.norm2 = LayerNorm(dim, lr_multiplier=lr_multiplier, rngs=rngs)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), lr_multiplier=lr_multiplier, rngs=rngs)

    def __call__(self, x: Float[Array, "B H W D"]) -> Float[Array, "B H W D"]:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------------
# Branches and fusion decoder
# --------------------------------------------------------------------------------------------------


class LowResFeatureEncoder(nnx.Module):
    def __init__(self, enc: ConfigDict, *, rngs: nnx.Rngs):
        d, lr = int(enc.transformer_dim), float(enc.lr_multiplier)
        self.patch_embed = OverlapPatchEmbed(int(enc.aspp_channels), d, stride=2, rngs=rngs)
        self.blocks = nnx.List([
            TransformerBlock(d, int(enc.lowres_heads), mlp_ratio=float(enc.mlp_ratio), sr_ratio=1, lr_multiplier=lr,
                             rngs=rngs)
            for _ in range(int(enc.lowres_blocks))])
        self.conv = Conv2d(d // 4, int(enc.branch_channels), 3, padding=1, rngs=rngs)
        self.project = Conv2d(int(enc.branch_channels), int(enc.branch_channels), 3, padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "B q q A"]) -> Float[Array, "B p p C"]:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        x = pixel_shuffle(x, 2)
        x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        return self.project(leaky_relu(self.conv(x)))


class HighResFeatureEncoder(nnx.Module):
    def __init__(self, enc: ConfigDict, *, rngs: nnx.Rngs):
        c = int(enc.branch_channels)
        self.in_layer = Conv2d(int(enc.stem_channels), c, 3, stride=2, padding=1, rngs=rngs)
        self.layers = nnx.List([Conv2d(c, c, 3, padding=1, rngs=rngs) for _ in range(int(enc.highres_layers))])
        self.out_layer = Conv2d(c, c, 3, padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "B h h S"]) -> Float[Array, "B p p C"]:
        x = leaky_relu(self.in_layer(x))
        for layer in self.layers:
            x = leaky_relu(layer(x))
        return self.out_layer(x)


class FeatureDecoder(nnx.Module):
    def __init__(self, enc: ConfigDict, *, rngs: nnx.Rngs):
        d, lr = int(enc.transformer_dim), float(enc.lr_multiplier)
        c0, c1 = (int(c) for c in enc.decoder_channels)
        out = 3 * int(enc.plane_channels)
        self.in_conv = Conv2d(2 * int(enc.branch_channels), c0, 3, padding=1, rngs=rngs)
        self.patch_embed = OverlapPatchEmbed(c0, d, stride=2, rngs=rngs)
        self.blocks = nnx.List([
            TransformerBlock(d, int(enc.decoder_heads), mlp_ratio=float(enc.mlp_ratio),
                             sr_ratio=int(enc.decoder_sr_ratio), lr_multiplier=lr, rngs=rngs)
            for _ in range(int(enc.decoder_blocks))])
        self.layer_1 = Conv2d(d // 4, c0, 3, padding=1, rngs=rngs)
        self.layer_2 = Conv2d(c0, c1, 3, padding=1, rngs=rngs)
        self.layer_3 = Conv2d(c1, c1, 3, padding=1, rngs=rngs)
        self.layer_4 = Conv2d(c1, out, 3, padding=1, rngs=rngs)
        self.out_layer = Conv2d(out, out, 3, padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "B p p Ci"]) -> Float[Array, "B P P Co"]:
        x = self.patch_embed(self.in_conv(x))
        for block in self.blocks:
            x = block(x)
        x = leaky_relu(self.layer_1(pixel_shuffle(x, 2)))
        x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        x = leaky_relu(self.layer_2(x))
        x = leaky_relu(self.layer_3(x))
        x = leaky_relu(self.layer_4(x))
        return self.out_layer(x)


def check_encoder_config(model_cfg: ConfigDict) -> None:
    """Raises ``ValueError`` naming the config key when the encoder cannot be built as configured."""
    enc = model_cfg.encoder
    r = int(model_cfg.image_size)
    if r % 16:
        raise ValueError(f"model.image_size must be a multiple of 16 for the triplane encoder, got {r}")
    if int(enc.plane_res) * 2 != r:
        raise ValueError(f"model.encoder.plane_res must be model.image_size / 2 = {r // 2}, got {enc.plane_res}")
    d = int(enc.transformer_dim)
    if d % 4:
        raise ValueError(f"model.encoder.transformer_dim must be divisible by 4 (pixel shuffle), got {d}")
    for key in ("lowres_heads", "decoder_heads"):
        if d % int(enc[key]):
            raise ValueError(f"model.encoder.transformer_dim {d} not divisible by model.encoder.{key}={enc[key]}")
    if (r // 16) % int(enc.decoder_sr_ratio):
        raise ValueError(f"model.encoder.decoder_sr_ratio {enc.decoder_sr_ratio} must divide the decoder's token "
                         f"grid {r // 8}")
    if len(tuple(enc.decoder_channels)) != 2:
        raise ValueError(f"model.encoder.decoder_channels needs 2 entries, got {enc.decoder_channels}")


class TriplaneEncoder(nnx.Module):
    """The LP3D encoder: ``image [B,R,R,3] in [0,1] -> planes [B,3,R/2,R/2,C]`` (C = plane_channels).

    Built from ``cfg.model`` (``model.image_size`` and the keys of ``model.encoder``).
    """

    def __init__(self, model_cfg: ConfigDict, *, rngs: nnx.Rngs):
        check_encoder_config(model_cfg)
        enc = model_cfg.encoder
        self.image_size = int(model_cfg.image_size)
        self.plane_channels = int(enc.plane_channels)
        self.deep_lab_v3 = DeepLabV3(enc, rngs=rngs)
        self.low_feat_encoder = LowResFeatureEncoder(enc, rngs=rngs)
        self.high_feat_encoder = HighResFeatureEncoder(enc, rngs=rngs)
        self.feat_decoder = FeatureDecoder(enc, rngs=rngs)

    def __call__(self, image: Float[Array, "B R R 3"]) -> Float[Array, "B 3 P P C"]:
        if image.ndim != 4 or image.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"TriplaneEncoder expects images [B, {self.image_size}, {self.image_size}, 3] "
                             f"(model.image_size), got {tuple(image.shape)}")
        high, low = self.deep_lab_v3(image.astype(jnp.float32))
        feats = jnp.concatenate([self.low_feat_encoder(low), self.high_feat_encoder(high)], axis=-1)
        planes = self.feat_decoder(feats)
        b, p, _, _ = planes.shape
        return planes.reshape(b, p, p, 3, self.plane_channels).transpose(0, 3, 1, 2, 4)


def count_params(module: nnx.Module) -> int:
    """Number of scalars in the module's ``nnx.Param`` variables (works on abstract modules too)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))
