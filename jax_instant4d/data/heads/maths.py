"""Small maths of the heads generator: smooth min / max, signed distances, rotations, colour ramps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------------------------------
# Small maths
# --------------------------------------------------------------------------------------------------


def _smin(a, b, k):
    h = jnp.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _sd_ellipsoid(p, c, r):
    q = (p - c) / r
    k0 = jnp.sqrt(jnp.sum(q * q) + 1e-12)
    k1 = jnp.sqrt(jnp.sum((q / r) ** 2) + 1e-12)
    return k0 * (k0 - 1.0) / k1


def _sd_cone(p, a, b, ra, rb):
    pa = p - a
    ba = b - a
    h = jnp.clip(jnp.dot(pa, ba) / jnp.dot(ba, ba), 0.0, 1.0)
    return jnp.sqrt(jnp.sum((pa - ba * h) ** 2) + 1e-12) - (ra + (rb - ra) * h)


def _normalize(v, axis=-1):
    return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=axis, keepdims=True), 1e-20))


def _sigmoid(x):
    return jax.nn.sigmoid(x)


def _v3(x, y, z):
    return jnp.stack([jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(z, jnp.float32)])


def _rotmat_to_quat(m):
    """(w, x, y, z) of proper rotation matrices [..., 3, 3] (branch-free Shepperd)."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cands = jnp.stack([
        jnp.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                   m[..., 0, 2] + m[..., 2, 0]], -1),
        jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                   m[..., 1, 2] + m[..., 2, 1]], -1),
        jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                   1 - m00 - m11 + m22], -1),
    ], -2)  # [..., 4, 4]; row i is 4 * q_i * q
    key = jnp.stack([tr, m00, m11, m22], -1)
    best = jnp.argmax(key, axis=-1)
    q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    return _normalize(q)


def _lerp(a, b, t):
    return a + (b - a) * t


def _palette(t, knots, colours):
    """Piecewise-linear colour ramp: t (scalar or [n]) over knots -> RGB."""
    colours = jnp.asarray(colours, jnp.float32)
    return jnp.stack([jnp.interp(t, jnp.asarray(knots, jnp.float32), colours[:, c]) for c in range(3)], -1)


def _hsv(h, s, v):
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + h * 6.0, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
