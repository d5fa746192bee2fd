"""Fusion of motion into the Gaussians: the paper's local fusion and the ablations.

Every variant maps a Gaussian's motion basis ``m`` and the motion of the source (``z_src``) and the
driving frame (``z_drv``) to a per-Gaussian offset:

``local`` (the paper; the authors' ``MotionDecoder``)
    AdaLN: a bias-free linear maps [z_src, z_drv] (1024) to a scale and a shift (48 each) that modulate
    LN(m) (no affine, eps 1e-5): ``LN(m) * scale + shift`` (no ``1 +``: as the authors); then a linear
    48 -> 48 and an MLP 48 -> 96 (softplus) -> 48, times ``fusion_scale`` (0.01): δf. The animated
    Gaussian is Φ(f + δf). Per Gaussian, cost linear in N, no interaction between Gaussians.
``global``
    Cross-attention from every Gaussian (query: LN(m)) to the motion tokens of the source and the
    driving frame (keys/values: LN of the tokens plus a learned source/driving embedding), multi-head,
    then the same output linear + MLP and scale as ``local``. Cost N x 2T per head: the heavy design
    the paper argues against.
``deform``
    The ``local`` AdaLN conditioning, but the MLP predicts 10 numbers per Gaussian (× fusion_scale)
    that deform Φ(f) directly: position += d[0:3], scale *= exp(d[3:6]), quaternion += d[6:10]
    (renormalised). f itself never changes.
``none``
    No fusion (a static avatar): :func:`make_fusion` returns ``None``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jax_instant4d.model.decoder import EqualizedLinear, Gaussians

FUSIONS = ("local", "global", "deform", "none")
ADALN_LR_MULTIPLIER = 0.5
LN_EPS = 1e-5  # torch.nn.LayerNorm's default
DEFORM_OUTPUTS = 10  # position 3, log-scale 3, quaternion 4
GLOBAL_QUERY_CHUNK = 16384  # Gaussians per attention chunk (bounds the N x 2T logits in memory)


class Motion(NamedTuple):
    """A frame's motion: the global code and the encoder's tokens (tokens are used by ``global`` only)."""

    code: Float[Array, "*B Z"]
    tokens: Float[Array, "*B T D"]


def layer_norm(x: Float[Array, "... C"], eps: float = LN_EPS) -> Float[Array, "... C"]:
    """LayerNorm over the last axis without affine parameters (biased variance, like PyTorch)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _mlp(feature_dim: int, out_dim: int, rngs: nnx.Rngs, init: float = 1.0) -> nnx.Sequential:
    """48 -> 96 (softplus) -> out; ``init`` scales the last layer's initial weights (its bias starts at 0)."""
    last = EqualizedLinear.fully_connected(2 * feature_dim, out_dim, rngs=rngs)
    if init != 1.0:
        last.kernel[...] = last.kernel[...] * float(init)
    return nnx.Sequential(
        EqualizedLinear.fully_connected(feature_dim, 2 * feature_dim, rngs=rngs),
        jax.nn.softplus,
        last,
    )


class AdaLN(nnx.Module):
    """``proj(LN(x) * scale + shift)`` with (scale, shift) = mapping(c) (the authors' ``AdaLN``)."""

    def __init__(self, cond_dim: int, feature_dim: int, *, rngs: nnx.Rngs):
        self.feature_dim = int(feature_dim)
        self.mapping = EqualizedLinear.scaled(cond_dim, 2 * feature_dim, use_bias=False,
                                              lr_multiplier=ADALN_LR_MULTIPLIER, rngs=rngs)
        self.proj = EqualizedLinear.scaled(feature_dim, feature_dim, lr_multiplier=ADALN_LR_MULTIPLIER, rngs=rngs)

    def __call__(self, cond: Float[Array, "B Cc"], x: Float[Array, "B N F"]) -> Float[Array, "B N F"]:
        c = self.mapping(cond)
        scale = c[:, None, : self.feature_dim]
        shift = c[:, None, self.feature_dim:]
        return self.proj(layer_norm(x) * scale + shift)


class LocalFusion(nnx.Module):
    """The paper's local fusion (PyTorch: ``motion_decoder``): δf = 0.01 MLP(AdaLN([z_src, z_drv], m))."""

    kind = "local"

    def __init__(self, feature_dim: int, code_dim: int, *, scale: float = 0.01, init: float = 1.0, rngs: nnx.Rngs):
        self.scale = float(scale)
        self.transform = AdaLN(2 * code_dim, feature_dim, rngs=rngs)
        self.net = _mlp(feature_dim, feature_dim, rngs, init)

    def __call__(self, m: Float[Array, "B N F"], z_src: Motion, z_drv: Motion) -> Float[Array, "B N F"]:
        cond = jnp.concatenate([z_src.code, z_drv.code], axis=-1)
        return self.scale * self.net(self.transform(cond, m))


class DeformFusion(nnx.Module):
    """Ablation: the local conditioning predicts position/scale/rotation offsets of Φ(f) directly."""

    kind = "deform"

    def __init__(self, feature_dim: int, code_dim: int, *, scale: float = 0.01, init: float = 1.0, rngs: nnx.Rngs):
        self.scale = float(scale)
        self.transform = AdaLN(2 * code_dim, feature_dim, rngs=rngs)
        self.net = _mlp(feature_dim, DEFORM_OUTPUTS, rngs, init)

    def __call__(self, m: Float[Array, "B N F"], z_src: Motion, z_drv: Motion) -> Float[Array, "B N 10"]:
        cond = jnp.concatenate([z_src.code, z_drv.code], axis=-1)
        return self.scale * self.net(self.transform(cond, m))


def deform_gaussians(base: Gaussians, delta: Float[Array, "*B N 10"]) -> Gaussians:
    """Applies :class:`DeformFusion` offsets to decoded Gaussians (opacity and colour unchanged)."""
    q = base.quats + delta[..., 6:10]
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    return base._replace(means=base.means + delta[..., 0:3], scales=base.scales * jnp.exp(delta[..., 3:6]), quats=q)


def _attend(q, k, v):
    """Softmax attention; q [B, n, H, d], k/v [B, T, H, d] -> [B, n, H, d]."""
    logits = jnp.einsum("bnhd,bthd->bnht", q, k) * (q.shape[-1] ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bnht,bthd->bnhd", weights, v)


class GlobalFusion(nnx.Module):
    """Ablation: multi-head cross-attention from the Gaussians to the source and driving motion tokens."""

    kind = "global"

    def __init__(self, feature_dim: int, token_dim: int, *, heads: int = 4, scale: float = 0.01, init: float = 1.0,
                 rngs: nnx.Rngs):
        if feature_dim % heads:
            raise ValueError(f"model.global_heads={heads} must divide model.feature_dim={feature_dim}")
        self.scale = float(scale)
        self.heads = int(heads)
        self.query = EqualizedLinear.fully_connected(feature_dim, feature_dim, rngs=rngs)
        self.key = EqualizedLinear.fully_connected(token_dim, feature_dim, rngs=rngs)
        self.value = EqualizedLinear.fully_connected(token_dim, feature_dim, rngs=rngs)
        self.out = EqualizedLinear.fully_connected(feature_dim, feature_dim, rngs=rngs)
        embed = nnx.with_partitioning(jax.nn.initializers.normal(0.02), (None, None), eager_sharding=False)
        self.frame_embed = nnx.Param(embed(rngs.params(), (2, token_dim), jnp.float32))  # [source, driving]
        self.net = _mlp(feature_dim, feature_dim, rngs, init)

    def __call__(self, m: Float[Array, "B N F"], z_src: Motion, z_drv: Motion) -> Float[Array, "B N F"]:
        b, n, f = m.shape
        h = self.heads
        emb = self.frame_embed[...]
        tokens = jnp.concatenate([z_src.tokens + emb[0], z_drv.tokens + emb[1]], axis=1)
        tokens = layer_norm(tokens)
        k = self.key(tokens).reshape(b, -1, h, f // h)
        v = self.value(tokens).reshape(b, -1, h, f // h)
        q = self.query(layer_norm(m)).reshape(b, n, h, f // h)
        if n > GLOBAL_QUERY_CHUNK and n % GLOBAL_QUERY_CHUNK == 0:
            chunks = q.reshape(b, n // GLOBAL_QUERY_CHUNK, GLOBAL_QUERY_CHUNK, h, f // h).swapaxes(0, 1)
            attend = jax.checkpoint(lambda qc: _attend(qc, k, v))
            att = jax.lax.map(attend, chunks).swapaxes(0, 1).reshape(b, n, h, f // h)
        else:
            att = _attend(q, k, v)
        return self.scale * self.net(self.out(att.reshape(b, n, f)))


def make_fusion(kind: str, feature_dim: int, code_dim: int, token_dim: int, *, scale: float = 0.01,
                heads: int = 4, init: float = 1.0, rngs: nnx.Rngs) -> LocalFusion | GlobalFusion | DeformFusion | None:
    """The fusion module selected by ``model.fusion`` (``None`` for ``none``). ``init`` scales the initial
    weights of the last layer (``model.fusion_init``)."""
    if kind == "local":
        return LocalFusion(feature_dim, code_dim, scale=scale, init=init, rngs=rngs)
    if kind == "global":
        return GlobalFusion(feature_dim, token_dim, heads=heads, scale=scale, init=init, rngs=rngs)
    if kind == "deform":
        return DeformFusion(feature_dim, code_dim, scale=scale, init=init, rngs=rngs)
    if kind == "none":
        return None
    raise ValueError(f"model.fusion must be one of {FUSIONS}, got {kind!r}")
