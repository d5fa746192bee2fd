"""Image metrics and resizing shared by training and evaluation (one implementation, one floor).

Images are NHWC floats in [0, 1]; predictions and targets are clipped to [0, 1] before comparing. PSNR
floors the mean squared error at ``10^(-PSNR_MAX_DB / 10)`` = 1e-10, so identical images score 100 dB.
SSIM (Wang et al., 2004; the definition is spelled out in :mod:`jax_instant4d.eval.metrics`) is here too: the
evaluation's SSIM column and training's structural loss (``train.loss.ssim``) are one implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


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
