"""The motion encoder (X-NeMo's): a face crop -> a 512-d implicit motion code.

Architecture (the authors use X-NeMo's ``MotEncoder_withExtra``; sizes for 224^2 crops)::

    crop [B,224,224,3] in [0,1] -> x 2 - 1
      FAN trunk:  conv 7x7/2 + BN + ReLU [112^2 x 64] -> ConvBlock(64->128) -> spatial self-attention
                  (patch 4: 28x28 tokens of 1024) -> maxpool 2 [56^2] -> ConvBlock(128->128)
                  -> ConvBlock(128->256) -> spatial self-attention (patch 2: 28x28 tokens)
                  -> hourglass (depth 4, 256) -> ConvBlock -> 1x1 conv + BN -> spatial self-attention
                  -> 1x1 conv to 68 landmark maps -> BN + ReLU -> conv 3x3/2 to 1 map [28^2]
                  -> ReLU -> linear 784 -> 512
      extra:      concat with bbox_proj([0, 0, 1]) (64; X-NeMo's constant "whole image" box)
                  -> linear 576 -> 512 -> 32 tokens x 16 + 1-D sin-cos positional embedding
      code = tokens flattened (512)

ConvBlocks are FAN's pre-activation blocks (BN-ReLU-conv three times, outputs of widths out/2,
out/4, out/4 concatenated, plus a BN-ReLU-1x1 shortcut when the width changes). Each spatial
self-attention module is AnimateDiff's ``TemporalTransformer3DModel`` used on one frame: GroupNorm
(eps 1e-6) -> p x p patch embedding + 2-D sin-cos positions -> one pre-norm block (self-attention
with 8 heads of 128, no q/k/v bias; GEGLU feed-forward x4) -> linear back to p x p x C -> residual.
The output projection is zero-initialised, as the authors'.

Pretrained weights (``model.motion.weights``, the paper's setting):
:func:`jax_instant4d.model.interop.load_motion_weights` reads a
state dict in X-NeMo's PyTorch layout (safetensors, or ``.pt``/``.pth`` through torch when installed)
strictly into this module and returns the file's SHA-256; names and layouts are listed in
``jax_instant4d/export/MAPPING_encoder.md``. X-NeMo's own file and the synthetic teacher's encoder
(``jax_instant4d/data/motion_teacher.py``, written in the same layout) load the same way; training puts
them into the train state (``jax_instant4d/train/motion_weights.py``). ``model.motion.freeze``: every
parameter carries the metadata ``frozen=True`` (see :attr:`MotionEncoder.frozen` and
:func:`trainable_filter`), BatchNorm uses its running statistics, and outputs carry no gradient.

:func:`face_crop` is the fixed crop the authors fall back to when no face is detected (resize to 256,
rows 35:223 and columns 32:220, resize to 224): our images are already FFHQ/EG3D-aligned, so the fixed
crop is the only one used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float
from ml_collections import ConfigDict

from jax_instant4d.model.layers import MODEL_AXIS, Conv2d, Dense, LayerNorm, gelu, max_pool, resize_bilinear

# The authors' fixed crop of a 256^2 FFHQ-aligned frame: rows 35:223, columns 32:220.
CROP_BOX_256 = (35, 223, 32, 220)  # top, bottom, left, right
BBOX_PARAM = (0.0, 0.0, 1.0)  # X-NeMo's constant box parameter fed to bbox_proj
CONV6_BIAS_INIT = 1.0  # initial bias of the one-channel map before the code's ReLU (see FAN)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[sin(p w_k), cos(p w_k)]`` with ``w_k = 10000^(-k / (dim/2))``: shape ``[len(positions), dim]``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, base_size: int) -> np.ndarray:
    """diffusers' 2-D sin-cos table for a row-major ``grid_h x grid_w`` token grid: ``[H*W, dim]``.

    The first half of the channels encodes the column, the second half the row; positions are scaled
    by ``base_size / grid`` (1 when the grid is the one the module was built for).
    """
    rows = np.arange(grid_h, dtype=np.float32) / np.float32(grid_h / base_size)
    cols = np.arange(grid_w, dtype=np.float32) / np.float32(grid_w / base_size)
    col_grid, row_grid = np.meshgrid(cols, rows)  # [H, W] each
    return np.concatenate([sincos_1d(dim // 2, col_grid), sincos_1d(dim // 2, row_grid)], axis=1)


def _running(frozen: bool) -> bool | None:
    """A frozen encoder always uses running statistics (and no dropout), even after ``model.train()``;
    otherwise the module's own mode (``train()`` / ``eval()``) decides."""
    return True if frozen else None


def _batch_norm(num: int, frozen: bool, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch BatchNorm2d: eps 1e-5, momentum 0.1 (= Flax 0.9), two-pass variance.
    return nnx.BatchNorm(num, use_running_average=frozen, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                         rngs=rngs)


class ConvBlock(nnx.Module):
    """FAN's pre-activation block: out = [c1 | c2 | c3] + shortcut (widths out/2, out/4, out/4)."""

    def __init__(self, in_channels: int, out_channels: int, *, frozen: bool, rngs: nnx.Rngs):
        if out_channels % 4:
            raise ValueError(f"FAN ConvBlock width must be divisible by 4, got {out_channels}")
        h, q = out_channels // 2, out_channels // 4
        self.frozen = bool(frozen)
        self.bn1 = _batch_norm(in_channels, frozen, rngs)
        self.conv1 = Conv2d(in_channels, h, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn2 = _batch_norm(h, frozen, rngs)
        self.conv2 = Conv2d(h, q, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn3 = _batch_norm(q, frozen, rngs)
        self.conv3 = Conv2d(q, q, 3, padding=1, use_bias=False, rngs=rngs)
        if in_channels != out_channels:
            self.downsample_bn = _batch_norm(in_channels, frozen, rngs)
            self.downsample_conv = Conv2d(in_channels, out_channels, 1, use_bias=False, rngs=rngs)
        else:
            self.downsample_bn = self.downsample_conv = None

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B H W Co"]:
        ra = _running(self.frozen)
        o1 = self.conv1(jax.nn.relu(self.bn1(x, ra)))
        o2 = self.conv2(jax.nn.relu(self.bn2(o1, ra)))
        o3 = self.conv3(jax.nn.relu(self.bn3(o2, ra)))
        res = x if self.downsample_conv is None else self.downsample_conv(jax.nn.relu(self.downsample_bn(x, ra)))
        return jnp.concatenate([o1, o2, o3], axis=-1) + res


class HourGlass(nnx.Module):
    """FAN's recursive hourglass; submodules ``b1_<l>``, ``b2_<l>``, ``b3_<l>`` per level, ``b2_plus_1``."""

    def __init__(self, depth: int, features: int, *, dropout: float, frozen: bool, rngs: nnx.Rngs):
        self.depth, self.frozen = int(depth), bool(frozen)
        for level in range(self.depth, 0, -1):
            setattr(self, f"b1_{level}", ConvBlock(features, features, frozen=frozen, rngs=rngs))
            setattr(self, f"b2_{level}", ConvBlock(features, features, frozen=frozen, rngs=rngs))
            setattr(self, f"b3_{level}", ConvBlock(features, features, frozen=frozen, rngs=rngs))
        self.b2_plus_1 = ConvBlock(features, features, frozen=frozen, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, deterministic=frozen, rngs=rngs) if dropout > 0 else None

    def _forward(self, level: int, x: Array) -> Array:
        up1 = getattr(self, f"b1_{level}")(x)
        if self.dropout is not None:
            up1 = self.dropout(up1, deterministic=_running(self.frozen))
        low = getattr(self, f"b2_{level}")(max_pool(x, 2, 2))
        low = self._forward(level - 1, low) if level > 1 else self.b2_plus_1(low)
        low = getattr(self, f"b3_{level}")(low)
        return up1 + resize_bilinear(low, up1.shape[1:3], align_corners=False)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        return self._forward(self.depth, x)


class PatchEmbed(nnx.Module):
    """diffusers' ``PatchEmbed``: a p x p / p conv (the 2-D sin-cos table is not a parameter)."""

    def __init__(self, in_channels: int, dim: int, patch: int, *, rngs: nnx.Rngs):
        self.proj = Conv2d(in_channels, dim, patch, stride=patch, sharding=(None, None, None, MODEL_AXIS), rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
        return self.proj(x)


class SelfAttention(nnx.Module):
    """diffusers' ``Attention`` as a self-attention: to_q/to_k/to_v without bias, to_out with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.heads, self.head_dim = int(heads), int(head_dim)
        self.to_q = Dense(dim, inner, use_bias=False, sharding=(None, MODEL_AXIS), rngs=rngs)
        self.to_k = Dense(dim, inner, use_bias=False, sharding=(None, MODEL_AXIS), rngs=rngs)
        self.to_v = Dense(dim, inner, use_bias=False, sharding=(None, MODEL_AXIS), rngs=rngs)
        self.to_out = Dense(inner, dim, sharding=(MODEL_AXIS, None), rngs=rngs)

    def __call__(self, x: Float[Array, "B N D"]) -> Float[Array, "B N D"]:
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.heads, self.head_dim)
        out = jax.nn.dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.to_out(out.reshape(b, n, self.heads * self.head_dim))


class FeedForward(nnx.Module):
    """diffusers' ``FeedForward`` with GEGLU: ``proj`` gives [hidden | gate], out = W(hidden * gelu(gate))."""

    def __init__(self, dim: int, mult: int = 4, *, rngs: nnx.Rngs):
        self.proj = Dense(dim, 2 * mult * dim, sharding=(None, MODEL_AXIS), rngs=rngs)
        self.out = Dense(mult * dim, dim, sharding=(MODEL_AXIS, None), rngs=rngs)

    def __call__(self, x: Float[Array, "B N D"]) -> Float[Array, "B N D"]:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(hidden * gelu(gate))


class SpatialBlock(nnx.Module):
    """One pre-norm block: x + attn(LN(x)); x + ff(LN(x))."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
        self.attention_blocks = nnx.List([SelfAttention(dim, heads, head_dim, rngs=rngs)])
        self.norms = nnx.List([LayerNorm(dim, rngs=rngs)])
        self.ff = FeedForward(dim, rngs=rngs)
        self.ff_norm = LayerNorm(dim, rngs=rngs)

    def __call__(self, x: Float[Array, "B N D"]) -> Float[Array, "B N D"]:
        for attn, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = x + attn(norm(x))
        return x + self.ff(self.ff_norm(x))


class SpatialSelfAttention(nnx.Module):
    """AnimateDiff's ``TemporalTransformer3DModel`` with ``("Spatial_Self",)`` on a single frame."""

    def __init__(self, channels: int, *, sample_size: int, patch: int, heads: int, head_dim: int, groups: int,
                 rngs: nnx.Rngs):
        inner = heads * head_dim
        if channels % groups:
            raise ValueError(f"model.motion.norm_groups={groups} must divide {channels} channels")
        if inner % (patch * patch):
            raise ValueError(f"attention width {inner} must be divisible by patch^2 = {patch * patch}")
        if sample_size % patch:
            raise ValueError(f"feature size {sample_size} must be divisible by the patch size {patch}")
        self.patch, self.inner, self.base_size = int(patch), int(inner), int(sample_size) // int(patch)
        self.norm = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, use_fast_variance=False, rngs=rngs)
        self.pos_embed = PatchEmbed(channels, inner, patch, rngs=rngs)
        self.transformer_blocks = nnx.List([SpatialBlock(inner, heads, head_dim, rngs=rngs)])
        self.proj_out = Dense(inner // (patch * patch), channels, init="zeros", rngs=rngs)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W C"]:
        b, h, w, c = x.shape
        p = self.patch
        tokens = self.pos_embed(self.norm(x))  # [B, h/p, w/p, inner]
        gh, gw = tokens.shape[1:3]
        pos = jnp.asarray(sincos_2d(self.inner, gh, gw, self.base_size), jnp.float32)
        t = tokens.reshape(b, gh * gw, self.inner) + pos
        for block in self.transformer_blocks:
            t = block(t)
        t = self.proj_out(t.reshape(b, gh, gw, p, p, self.inner // (p * p)))  # [B, gh, gw, p, q, C]
        return x + t.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class FAN(nnx.Module):
    """X-NeMo's ``FAN_SA``: FAN trunk + hourglass with three spatial self-attention modules -> [B, code_dim]."""

    def __init__(self, mot: ConfigDict, *, frozen: bool, rngs: nnx.Rngs):
        c1, c2, c3 = (int(c) for c in mot.fan_channels)
        s, lm = int(mot.crop_size), int(mot.landmarks)
        if s % 8:
            raise ValueError(f"model.motion.crop_size must be a multiple of 8, got {s}")
        depth = int(mot.hourglass_depth)
        if (s // 4) < 2 ** depth:
            raise ValueError(f"model.motion.crop_size/4 = {s // 4} is too small for hourglass_depth {depth}")
        attn = dict(heads=int(mot.attn_heads), head_dim=int(mot.attn_head_dim), groups=int(mot.norm_groups),
                    rngs=rngs)
        p1, p2, p3 = (int(p) for p in mot.attn_patch)
        self.frozen = bool(frozen)
        self.conv1 = Conv2d(3, c1, 7, stride=2, padding=3, rngs=rngs)
        self.bn1 = _batch_norm(c1, frozen, rngs)
        self.conv2 = ConvBlock(c1, c2, frozen=frozen, rngs=rngs)
        self.conv3 = ConvBlock(c2, c2, frozen=frozen, rngs=rngs)
        self.conv4 = ConvBlock(c2, c3, frozen=frozen, rngs=rngs)
        self.m0 = HourGlass(depth, c3, dropout=float(mot.hourglass_dropout), frozen=frozen, rngs=rngs)
        self.top_m_0 = ConvBlock(c3, c3, frozen=frozen, rngs=rngs)
        self.conv_last0 = Conv2d(c3, c3, 1, rngs=rngs)
        self.bn_end0 = _batch_norm(c3, frozen, rngs)
        self.l0 = Conv2d(c3, lm, 1, rngs=rngs)
        self.bn5 = _batch_norm(lm, frozen, rngs)
        self.conv6 = Conv2d(lm, 1, 3, stride=2, padding=1, rngs=rngs)
        # The code passes through this one map and a ReLU: with PyTorch's default bias init it dies (the map
        # goes negative everywhere) within a few Adam steps from scratch, and the code becomes a constant
        # (measured: code std 0 after 25 steps). A positive initial bias keeps it alive; pretrained weights
        # (X-NeMo's) replace it.
        self.conv6.bias[...] = jnp.full_like(self.conv6.bias[...], CONV6_BIAS_INIT)
        self.fc = Dense((s // 8) ** 2, int(mot.code_dim), rngs=rngs)
        self.att_1 = SpatialSelfAttention(c2, sample_size=s // 2, patch=p1, **attn)
        self.att_2 = SpatialSelfAttention(c3, sample_size=s // 4, patch=p2, **attn)
        self.att_3 = SpatialSelfAttention(c3, sample_size=s // 4, patch=p3, **attn)

    def __call__(self, x: Float[Array, "B S S 3"]) -> Float[Array, "B D"]:
        ra = _running(self.frozen)
        x = jax.nn.relu(self.bn1(self.conv1(x), ra))
        x = self.att_1(self.conv2(x))
        x = self.conv4(self.conv3(max_pool(x, 2, 2)))
        x = self.att_2(x)
        x = self.top_m_0(self.m0(x))
        x = self.att_3(self.bn_end0(self.conv_last0(x), ra))
        x = jax.nn.relu(self.bn5(self.l0(jax.nn.relu(x)), ra))
        x = self.conv6(x)  # [B, S/8, S/8, 1]
        return self.fc(jax.nn.relu(x.reshape(x.shape[0], -1)))


class MotionEncoder(nnx.Module):
    """``crop [B,S,S,3] in [0,1] -> (code [B, code_dim], tokens [B, code_dim/token_dim, token_dim])``.

    ``frozen`` (from ``model.motion.freeze``): parameters are tagged ``frozen=True`` so that
    :func:`trainable_filter` leaves them out of optimisation, BatchNorm uses running statistics and the
    outputs are wrapped in ``stop_gradient``; with ``input_gradient=True`` the parameters are (the code
    then carries a gradient to the crop alone: a loss that reads rendered frames with the frozen encoder).
    """

    def __init__(self, model_cfg: ConfigDict, *, rngs: nnx.Rngs):
        mot = model_cfg.motion
        self.crop_size = int(mot.crop_size)
        self.code_dim, self.token_dim = int(mot.code_dim), int(mot.token_dim)
        if self.code_dim % self.token_dim:
            raise ValueError(f"model.motion.code_dim {self.code_dim} not divisible by token_dim {self.token_dim}")
        self.frozen = bool(mot.freeze)
        self.model = FAN(mot, frozen=self.frozen, rngs=rngs)
        self.bbox_fc1 = Dense(len(BBOX_PARAM), int(mot.bbox_dim), rngs=rngs)
        self.bbox_fc2 = Dense(int(mot.bbox_dim), int(mot.bbox_dim), rngs=rngs)
        self.final_proj = Dense(self.code_dim + int(mot.bbox_dim), self.code_dim, rngs=rngs)
        if self.frozen:
            for _, var in nnx.iter_graph(self):
                if isinstance(var, nnx.Param):
                    var.set_metadata(frozen=True)

    def token_positions(self) -> np.ndarray:
        """The 1-D sin-cos table added to the tokens (the authors' buffer ``pe``): ``[T, token_dim]``."""
        return sincos_1d(self.token_dim, np.arange(self.code_dim // self.token_dim)).astype(np.float32)

    def __call__(self, crop: Float[Array, "B S S 3"], *, input_gradient: bool = False
                 ) -> tuple[Float[Array, "B D"], Float[Array, "B T E"]]:
        if self.frozen and input_gradient:
            graphdef, params, rest = nnx.split(self, nnx.Param, ...)
            return nnx.merge(graphdef, jax.lax.stop_gradient(params), rest)._encode(crop)
        code, tokens = self._encode(crop)
        if self.frozen:
            code, tokens = jax.lax.stop_gradient(code), jax.lax.stop_gradient(tokens)
        return code, tokens

    def _encode(self, crop: Float[Array, "B S S 3"]) -> tuple[Float[Array, "B D"], Float[Array, "B T E"]]:
        if crop.ndim != 4 or crop.shape[1:] != (self.crop_size, self.crop_size, 3):
            raise ValueError(f"MotionEncoder expects crops [B, {self.crop_size}, {self.crop_size}, 3] "
                             f"(model.motion.crop_size), got {tuple(crop.shape)}")
        b = crop.shape[0]
        latent = self.model(crop.astype(jnp.float32) * 2.0 - 1.0)
        box = self.bbox_fc2(jax.nn.relu(self.bbox_fc1(jnp.asarray(BBOX_PARAM, jnp.float32))))
        latent = self.final_proj(jnp.concatenate([latent, jnp.broadcast_to(box, (b, box.shape[-1]))], axis=-1))
        tokens = latent.reshape(b, -1, self.token_dim) + jnp.asarray(self.token_positions())
        return tokens.reshape(b, self.code_dim), tokens


ORACLE_SEED = 20261207  # the fixed embedding of the oracle code (model.motion.oracle)
ORACLE_GAIN = 4.0  # (y - 0.5) * 4 for y in [0, 1]: each parameter varies by about 1, as the teacher's code does


def oracle_basis(code_dim: int, num_parameters: int) -> np.ndarray:
    """A fixed ``[code_dim, num_parameters]`` matrix with orthonormal columns (seeded QR of a Gaussian matrix)."""
    if num_parameters > code_dim:
        raise ValueError(f"the oracle code needs code_dim ({code_dim}) >= the number of parameters ({num_parameters})")
    g = np.random.default_rng(ORACLE_SEED).standard_normal((code_dim, num_parameters))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))).astype(np.float32)


def oracle_code(y: Float[Array, "B E"], code_dim: int, token_dim: int
                ) -> tuple[Float[Array, "B D"], Float[Array, "B T K"]]:
    """``model.motion.oracle``: normalised expression parameters ``y`` (each in [0, 1]) -> (code, tokens) laid out
    as :class:`MotionEncoder`'s: ``basis @ ((y - 0.5) * ORACLE_GAIN)`` split into tokens plus the token positions.
    ``basis.T @ (code - positions) / ORACLE_GAIN + 0.5`` gives ``y`` back exactly (up to rounding)."""
    b, e = y.shape
    basis = jnp.asarray(oracle_basis(code_dim, e))
    latent = ((y.astype(jnp.float32) - 0.5) * ORACLE_GAIN) @ basis.T
    positions = sincos_1d(token_dim, np.arange(code_dim // token_dim)).astype(np.float32)
    tokens = latent.reshape(b, -1, token_dim) + jnp.asarray(positions)
    return tokens.reshape(b, code_dim), tokens


def _not_frozen(path, value) -> bool:
    del path
    return not (isinstance(value, nnx.Variable) and value.get_metadata().get("frozen", False))


def trainable_filter() -> nnx.filterlib.Filter:
    """The parameters to optimise: every ``nnx.Param`` not tagged ``frozen=True`` (a frozen motion
    encoder's). Use as ``nnx.Optimizer(model, tx, wrt=trainable_filter())`` and for ``nnx.grad``'s
    ``DiffState``; it works wherever the motion encoder sits in the model tree."""
    return nnx.All(nnx.Param, _not_frozen)


def face_crop(image: Float[Array, "B R R 3"], size: int) -> Float[Array, "B S S 3"]:
    """The authors' fixed face crop for FFHQ/EG3D-aligned frames, as one antialiased bilinear resample.

    Their fallback resizes the frame to 256^2, keeps rows 35:223 and columns 32:220 (a 188^2 box) and
    resizes that to 224^2; here the same box, scaled to the input size, is resampled once to ``size``.
    The two are not the same image. Measured against a two-pass version (the same antialiased bilinear
    resize for both passes) on a textured test image: for a 256^2 input the interiors agree (4e-6) and
    only the border rows and columns differ (up to 0.04: their second pass clamps at the cropped box's
    edge, ours filters across it); for other input sizes the filter footprints differ everywhere
    (512^2 -> 224^2: up to 0.11, mean 0.016; 64^2 -> 64^2: up to 0.16, mean 0.011). A smooth face
    differs less than that texture; the authors' exact resampling library is a further difference. The
    single pass stays because the teacher's motion encoder and every model trained here saw it.
    """
    b, h, w, c = image.shape
    top, bottom, left, right = (v / 256.0 for v in CROP_BOX_256)
    sy, sx = size / ((bottom - top) * h), size / ((right - left) * w)
    scale = jnp.asarray([sy, sx], jnp.float32)
    translation = jnp.asarray([-top * h * sy, -left * w * sx], jnp.float32)
    return jax.image.scale_and_translate(image.astype(jnp.float32), (b, size, size, c), (1, 2), scale, translation,
                                         method="linear", antialias=True)
