"""Training losses: pixel, structural (SSIM), region, perceptual (LPIPS-VGG), identity (ArcFace IResNet), adversarial.

The fixed loss networks and their weight files are :mod:`jax_instant4d.perceptual`; PSNR and resizing
are :mod:`jax_instant4d.image_metrics` (shared with evaluation). Both are re-exported here, so training
code reads every loss and metric from one namespace. Images are NHWC floats in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jax_instant4d.image_metrics import masked_psnr, psnr, resize_to, ssim
from jax_instant4d.perceptual import (
    IDENTITY_DIM,
    IDENTITY_SIZE,
    Params,
    identity_embedding,
    init_identity,
    init_lpips,
    iresnet_shapes,
    load_weights,
    lpips,
    lpips_shapes,
    read_tensor_file,
    save_weights,
)

__all__ = [
    "IDENTITY_DIM", "IDENTITY_SIZE", "Params", "discriminator_adversarial", "generator_adversarial",
    "identity_embedding", "identity_loss", "init_identity", "init_lpips", "iresnet_shapes", "l1", "load_weights",
    "lpips", "lpips_shapes", "masked_l1", "masked_psnr", "psnr", "read_tensor_file", "resize_to", "save_weights",
    "structural",
]


def l1(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"]) -> Float[Array, ""]:
    return jnp.mean(jnp.abs(pred - target))


def structural(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"]) -> Float[Array, ""]:
    """1 - SSIM, mean over the images (the evaluation's SSIM: 11 x 11 Gaussian window, sigma 1.5, where the
    window fits): the structural term of 3D Gaussian splatting's own loss, which needs no pretrained network."""
    return 1.0 - jnp.mean(ssim(pred, target))


def masked_l1(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"],
              mask: Float[Array, "B H W"]) -> Float[Array, ""]:
    """Mean absolute error over the pixels of ``mask`` (soft masks weight pixels); 0 without any."""
    m = mask[..., None]
    return jnp.sum(jnp.abs(pred - target) * m) / jnp.maximum(jnp.sum(m) * pred.shape[-1], 1.0)


def identity_loss(params: Params, pred: Float[Array, "B H W 3"], target: Float[Array, "B H W 3"]) -> Float[Array, ""]:
    """1 - cosine similarity of the identity embeddings, averaged over the batch."""
    e = identity_embedding(params, jnp.concatenate([pred, target], axis=0))
    n = pred.shape[0]
    return jnp.mean(1.0 - jnp.sum(e[:n] * jax.lax.stop_gradient(e[n:]), axis=-1))


def generator_adversarial(fake_logits: Float[Array, " B"]) -> Float[Array, ""]:
    """Non-saturating generator loss."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_adversarial(real_logits: Float[Array, " B"], fake_logits: Float[Array, " B"]) -> Float[Array, ""]:
    """Logistic discriminator loss (real -> 1, fake -> 0)."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
