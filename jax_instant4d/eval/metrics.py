"""Image metrics in JAX: PSNR, SSIM (Gaussian window), and thin wrappers over the fixed loss networks.

Images are NHWC floats in [0, 1]. Every function returns one value per image (shape ``[B]``), so
callers can average over any set of frames.

SSIM follows Wang et al. (2004) as implemented by their reference code and by
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``: an 11 x 11 Gaussian window with sigma 1.5, local
means, variances and covariance weighted by that window (population statistics), C1 = (0.01 L)^2,
C2 = (0.03 L)^2 with L = 1, the SSIM map averaged over the pixels where the window fits entirely
inside the image (``padding="valid"``) and over the colour channels. ``padding="zeros"`` instead
zero-pads by 5 pixels and averages the whole map, which is what the authors' ``metrics_cal.py``
(RaymondJiangkw/InstantGaussianAvatar) computes for the paper's SSIM column.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jax_instant4d import image_metrics, perceptual
from jax_instant4d.image_metrics import (  # noqa: F401  (SSIM's parts: its home is image_metrics, shared with training)
    PSNR_MAX_DB,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    gaussian_window,
    psnr,
    ssim,
    ssim_map,
)

__all__ = ["PSNR_MAX_DB", "identity_similarity", "lpips_distance", "masked_psnr", "paired_difference", "psnr", "ssim"]

def masked_psnr(pred: Float[Array, "B H W C"], target: Float[Array, "B H W C"],
                mask: Float[Array, "B H W"]) -> Float[Array, " B"]:
    """Per-image PSNR in dB over the pixels where ``mask`` > 0.5 (:func:`jax_instant4d.image_metrics.masked_psnr`,
    as in training); NaN for an image whose mask has no such pixel (leave it out of averages: ``np.nanmean``)."""
    value, has = image_metrics.masked_psnr(pred, target, mask)
    return jnp.where(has, value, jnp.nan)


def paired_difference(a: Sequence[float | None] | Float[np.ndarray, " N"], b: Sequence[float | None] |
                      Float[np.ndarray, " N"]) -> tuple[float, float, int] | None:
    """Mean of ``a - b`` over the frames where both are finite, the half-width of its 95% confidence
    interval (1.96 standard errors of the mean of the per-frame differences: frames are paired, so
    what both share, e.g. a hard identity, cancels) and the number of pairs; None without two pairs.
    ``None`` entries (how an eval JSON's ``per_frame`` writes a missing value) count as not finite."""
    a, b = (np.asarray([np.nan if x is None else x for x in np.ravel(np.asarray(v, object))], np.float64)
            for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.size} and {b.size} frames (the same frames are needed)")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size < 2:
        return None
    return float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(d.size)), int(d.size)


def lpips_distance(params: perceptual.Params, pred: Float[Array, "B H W 3"],
                   target: Float[Array, "B H W 3"]) -> Float[Array, " B"]:
    """LPIPS-VGG distance per image (``perceptual.lpips`` with weights from a file)."""
    return perceptual.lpips(params, jnp.clip(pred, 0.0, 1.0), jnp.clip(target, 0.0, 1.0))


def identity_similarity(params: perceptual.Params, pred: Float[Array, "B H W 3"],
                        reference: Float[Array, "B H W 3"]) -> Float[Array, " B"]:
    """Cosine similarity of face-recognition embeddings (``perceptual.identity_embedding``) of each
    output and its reference (the source portrait), as the paper's ID column (source vs output)."""
    e = perceptual.identity_embedding(params, jnp.concatenate([jnp.clip(pred, 0.0, 1.0), reference], axis=0))
    n = pred.shape[0]
    return jnp.sum(e[:n] * e[n:], axis=-1)
