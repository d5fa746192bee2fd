"""Image metrics and resizing shared by training and evaluation (one implementation, one floor).

Images are NHWC floats in [0, 1]; predictions and targets are clipped to [0, 1] before comparing. PSNR
floors the mean squared error at ``10^(-PSNR_MAX_DB / 10)`` = 1e-10, so identical images score 100 dB.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

PSNR_MAX_DB = 100.0  # identical images: the MSE is floored at 1e-10
_MSE_FLOOR = 10.0 ** (-PSNR_MAX_DB / 10.0)


def resize_to(x: Float[Array, "B H W *C"], size: int) -> Float[Array, "B h w *C"]:
    """Area-downsamples (or bilinearly resizes) square images/masks to ``size`` x ``size``."""
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return x
    if h % size == 0 and w % size == 0 and h // size == w // size:
        f = h // size
        y = x.reshape(x.shape[0], size, f, size, f, *x.shape[3:])
        return y.mean(axis=(2, 4))
    return jax.image.resize(x, (x.shape[0], size, size, *x.shape[3:]), method="linear", antialias=True)


def psnr(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"]) -> Float[Array, " B"]:
    """Per-image PSNR in dB (both images clipped to [0, 1]; at most ``PSNR_MAX_DB``)."""
    d = jnp.clip(pred, 0.0, 1.0) - jnp.clip(target, 0.0, 1.0)
    mse = jnp.mean(d * d, axis=(1, 2, 3))
    return -10.0 * jnp.log10(jnp.maximum(mse, _MSE_FLOOR))


def masked_psnr(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"], mask: Float[Array, "B H W"]
                ) -> tuple[Float[Array, " B"], Bool[Array, " B"]]:
    """Per-image PSNR over the pixels where ``mask`` > 0.5 (weights 0/1), and whether the mask has any
    pixel (images without one have PSNR 0 and should be left out of averages)."""
    m = (mask > 0.5).astype(pred.dtype)[..., None]
    n = jnp.sum(m, axis=(1, 2, 3)) * pred.shape[-1]
    d = jnp.clip(pred, 0.0, 1.0) - jnp.clip(target, 0.0, 1.0)
    se = jnp.sum(m * d * d, axis=(1, 2, 3))
    has = n > 0
    value = -10.0 * jnp.log10(jnp.maximum(se / jnp.maximum(n, 1.0), _MSE_FLOOR))
    return jnp.where(has, value, 0.0), has
