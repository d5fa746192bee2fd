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

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jax_instant4d import image_metrics, perceptual
from jax_instant4d.image_metrics import PSNR_MAX_DB, psnr

__all__ = ["PSNR_MAX_DB", "identity_similarity", "lpips_distance", "masked_psnr", "paired_difference", "psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


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


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Float[np.ndarray, " S"]:
    """The normalised 1-D Gaussian taps (centred, ``size`` odd); the 2-D window is their outer product."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"SSIM window size must be odd and positive, got {size}")
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def _filter(x: Float[Array, "N H W 1"], taps: np.ndarray) -> Float[Array, "N h w 1"]:
    """Separable filtering with the window (rows, then columns) where it fits inside the image."""
    k = jnp.asarray(taps)
    s = k.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, k.reshape(s, 1, 1, 1), (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn,
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.lax.conv_general_dilated(x, k.reshape(1, s, 1, 1), (1, 1), ((0, 0), (0, 0)), dimension_numbers=dn,
                                        precision=jax.lax.Precision.HIGHEST)


def ssim_map(x: Float[Array, "B H W C"], y: Float[Array, "B H W C"], *, window: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA, data_range: float = 1.0, padding: str = "valid") -> Float[Array, "B h w C"]:
    """The SSIM map per channel: ``[B, H - window + 1, W - window + 1, C]`` for ``padding="valid"``,
    ``[B, H, W, C]`` for ``padding="zeros"``."""
    if padding not in ("valid", "zeros"):
        raise ValueError(f"SSIM padding must be 'valid' or 'zeros', got {padding!r}")
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM needs two NHWC batches of one shape, got {x.shape} and {y.shape}")
    b, h, w, c = x.shape
    if padding == "valid" and (h < window or w < window):
        raise ValueError(f"SSIM with a {window}x{window} window needs images of at least that size, got {h}x{w}")
    taps = gaussian_window(window, sigma)
    pad = window // 2 if padding == "zeros" else 0
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if pad:
        x, y = (jnp.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0))) for a in (x, y))
        h, w = h + 2 * pad, w + 2 * pad
    # Moments of data centred on each image's mean (variances and covariances are shift-invariant; this
    # keeps the float32 cancellation in E[x^2] - E[x]^2 small); channels go into the batch.
    ox, oy = jnp.mean(x, axis=(1, 2), keepdims=True), jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - ox, y - oy
    planes = lambda a: jnp.transpose(a, (0, 3, 1, 2)).reshape(b * c, h, w, 1)  # noqa: E731
    stack = jnp.concatenate([planes(xc), planes(yc), planes(xc * xc), planes(yc * yc), planes(xc * yc)], axis=0)
    mxc, myc, exx, eyy, exy = jnp.split(_filter(stack, taps), 5, axis=0)
    vx, vy, cxy = exx - mxc * mxc, eyy - myc * myc, exy - mxc * myc
    offset = lambda o: jnp.transpose(o, (0, 3, 1, 2)).reshape(b * c, 1, 1, 1)  # noqa: E731
    mx, my = mxc + offset(ox), myc + offset(oy)  # the window's taps sum to 1
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    m = ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    hh, ww = m.shape[1], m.shape[2]
    return jnp.transpose(m.reshape(b, c, hh, ww), (0, 2, 3, 1))


def ssim(x: Float[Array, "B H W C"], y: Float[Array, "B H W C"], *, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA, data_range: float = 1.0, padding: str = "valid") -> Float[Array, " B"]:
    """Per-image mean SSIM (see the module docstring); symmetric, 1 for identical images."""
    m = ssim_map(x, y, window=window, sigma=sigma, data_range=data_range, padding=padding)
    return jnp.mean(m, axis=(1, 2, 3))


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
