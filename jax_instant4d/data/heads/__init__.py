"""Procedural Gaussian heads: identity parameters x expression parameters -> 3D Gaussians.

The synthetic teacher. :func:`head_gaussians` maps an identity vector (``NUM_IDENTITY_PARAMS`` numbers,
see ``IDENTITY_NAMES``) and an expression vector (``NUM_EXPRESSION``, see ``record.EXPRESSION_NAMES``)
to a fixed number of Gaussians (means, scales, quats, opacities, colours, and two region labels: eyes,
mouth). Everything is jit- and vmap-able, so a batch of heads is built in one call.

World frame (``jax_instant4d.render``): y up, head centred at the origin facing +z; the subject's left
is +x. Size (world units, neutral identity): the skin head is ~0.57 wide (ears included) and ~0.83
tall (crown at y ~ 0.43, eyes at y ~ 0.036, mouth at y ~ -0.2, chin at y ~ -0.4, nose tip at z ~ 0.43),
with hair, neck and the top of the shoulders, all inside [-1, 1]^3; at the EG3D camera radius 2.7 and
18.837 degrees the face fills the frame like an FFHQ crop. The head is modelled at 1 / HEAD_SCALE of
that size and scaled at the end of :func:`pose_head`.

Construction: the skin is the zero level set of a smooth-union signed distance function (skull, face,
jaw, chin, cheekbones, brow ridge, nose, lips, ears, carved eye sockets). Surface Gaussians ("surfels":
flat, oriented by the SDF normal) are placed by sphere tracing from a fine frontal grid (the face) and
from a Fibonacci sphere of directions (the rest). Eyes (sclera/iris/pupil pattern that follows the gaze),
eyelids that close with the blink, brows, hair strands (style from the identity), the mouth interior
(teeth, tongue, dark cavity), glasses, neck and shoulders are separate parametric sets. Expressions
deform canonical positions with smooth displacement fields plus a jaw rotation whose skinning weight
is sharp between the lips, so the mouth opens onto its interior; each Gaussian's covariance is carried
through the local Jacobian of the deformation. Colours are albedo x fixed head-frame lighting.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jax_instant4d.data.record import EXPRESSION_NAMES, EXPRESSION_RANGES, NUM_EXPRESSION

IDENTITY_NAMES: tuple[str, ...] = (
    # shape, each in [-1, 1]
    "head_width", "head_height", "head_depth", "jaw_width", "chin_length", "cheek_fullness",
    "nose_length", "nose_width", "nose_projection", "eye_spacing", "eye_size", "eye_tilt",
    "mouth_width", "lip_fullness", "brow_thickness", "brow_height", "ear_size",
    # appearance, each in [0, 1]
    "skin_tone", "skin_redness", "hair_shade", "hair_tint", "hair_length", "hair_volume", "hairline",
    "bald", "iris_colour", "lip_colour", "beard", "glasses", "glasses_colour", "clothing_hue",
    "clothing_shade", "blush",
)
NUM_IDENTITY_PARAMS: int = len(IDENTITY_NAMES)
_I = {name: i for i, name in enumerate(IDENTITY_NAMES)}
_E = {name: i for i, name in enumerate(EXPRESSION_NAMES)}
_NUM_SHAPE = 17


class HeadGaussians(NamedTuple):
    """Gaussians of one head (leading batch dims allowed). World frame, see the module docstring."""

    means: Float[Array, "*B N 3"]
    scales: Float[Array, "*B N 3"]  # standard deviations along the rotated axes
    quats: Float[Array, "*B N 4"]  # (w, x, y, z)
    opacities: Float[Array, "*B N"]
    colours: Float[Array, "*B N 3"]  # RGB in [0, 1]
    regions: Float[Array, "*B N 2"]  # labels: eye region, mouth region (0 or 1)


# --------------------------------------------------------------------------------------------------
# Parameter sampling (NumPy, deterministic from a Generator)
# --------------------------------------------------------------------------------------------------


def sample_identity(rng: np.random.Generator) -> Float[np.ndarray, " P"]:
    """A random identity vector (shape params in [-1, 1], appearance params in [0, 1])."""
    p = np.zeros(NUM_IDENTITY_PARAMS, np.float32)
    p[:_NUM_SHAPE] = np.clip(rng.normal(0.0, 0.5, _NUM_SHAPE), -1.0, 1.0)
    p[_NUM_SHAPE:] = rng.uniform(0.0, 1.0, NUM_IDENTITY_PARAMS - _NUM_SHAPE)
    p[_I["bald"]] = float(rng.uniform() < 0.08)
    p[_I["glasses"]] = float(rng.uniform() < 0.25)
    p[_I["beard"]] = rng.uniform(0.3, 1.0) if rng.uniform() < 0.3 else rng.uniform(0.0, 0.25)
    return p


def sample_expression(rng: np.random.Generator) -> Float[np.ndarray, " E"]:
    """A random expression: each action active with some probability, blinks mostly together."""
    lo, hi = EXPRESSION_RANGES[:, 0], EXPRESSION_RANGES[:, 1]
    e = np.zeros(NUM_EXPRESSION, np.float32)
    active = rng.uniform(size=NUM_EXPRESSION) < 0.4
    vals = rng.uniform(lo, hi)
    e[active] = vals[active]
    # Blinks: both eyes (often), one eye (a wink), or open.
    u = rng.uniform()
    b = rng.uniform(0.3, 1.0)
    if u < 0.25:
        e[_E["blink_left"]] = e[_E["blink_right"]] = b
    elif u < 0.35:
        e[_E["blink_left" if rng.uniform() < 0.5 else "blink_right"]] = b
    else:
        e[_E["blink_left"]] = e[_E["blink_right"]] = 0.0
    # Brows usually move together.
    if rng.uniform() < 0.7:
        e[_E["brow_right"]] = e[_E["brow_left"]]
    # Gaze always set (small), jaw open half the time.
    e[_E["gaze_x"]] = rng.uniform(-1.0, 1.0) * 0.8
    e[_E["gaze_y"]] = rng.uniform(-1.0, 1.0) * 0.6
    if rng.uniform() < 0.5:
        e[_E["jaw_open"]] = rng.uniform(0.15, 1.0)
    return e


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


# --------------------------------------------------------------------------------------------------
# Static templates (NumPy, built once)
# --------------------------------------------------------------------------------------------------

_FRONT_H = 0.0105  # spacing of the frontal grid
_N_RADIAL = 1500
_HAIR_AZ, _HAIR_ROWS, _HAIR_SEQ = 72, 30, 0.58
_EYE_U, _EYE_V = 26, 14
_LID_S, _LID_T = 24, 7
_BROW_S, _BROW_R = 34, 3
_WALL_X, _WALL_Y = 22, 10
_TEETH_A, _TEETH_R = 22, 3
_TONGUE_X, _TONGUE_Z = 9, 7
_NECK_A, _NECK_Y = 36, 12
_N_SHOULDER = 380
_RIM = 44
_ARM = 20


def _fibonacci(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([np.sin(phi) * np.sin(theta), np.cos(phi), np.sin(phi) * np.cos(theta)], -1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _templates() -> dict:
    r = np.random.default_rng(12345)  # fixed: templates are part of the generator, not of the seed
    t = {}
    xs = np.arange(-0.255, 0.2551, _FRONT_H)
    ys = np.arange(-0.405, 0.335, _FRONT_H)
    gx, gy = np.meshgrid(xs, ys)
    keep = (gx / 0.262) ** 2 + ((gy + 0.035) / 0.375) ** 2 <= 1.0
    t["front"] = np.stack([gx[keep], gy[keep]], -1).astype(np.float32)
    t["radial"] = _fibonacci(_N_RADIAL)
    az = (np.arange(_HAIR_AZ) + 0.5) / _HAIR_AZ * 2 * np.pi - np.pi
    s = (np.arange(_HAIR_ROWS) + 0.5) / _HAIR_ROWS
    ha, hs = np.meshgrid(az, s)
    ha = ha + r.uniform(-0.5, 0.5, ha.shape) * (2 * np.pi / _HAIR_AZ)
    hs = hs + r.uniform(-0.4, 0.4, hs.shape) / _HAIR_ROWS
    t["hair"] = np.stack([ha.ravel(), hs.ravel()], -1).astype(np.float32)
    t["hair_noise"] = r.uniform(0.0, 1.0, (ha.size, 2)).astype(np.float32)
    u = np.linspace(-1.2, 1.2, _EYE_U)
    v = np.linspace(-1.3, 1.3, _EYE_V)
    eu, ev = np.meshgrid(u, v)
    eye = np.stack([eu.ravel(), ev.ravel()], -1)
    t["eye"] = np.concatenate([np.concatenate([eye, np.full((len(eye), 1), sd)], -1) for sd in (1.0, -1.0)]
                              ).astype(np.float32)  # (u, v, side)
    ls, lt = np.meshgrid(np.linspace(-1.12, 1.12, _LID_S), np.linspace(0.0, 1.0, _LID_T))
    lid = np.stack([ls.ravel(), lt.ravel()], -1)
    t["lid"] = np.concatenate([np.concatenate([lid, np.full((len(lid), 1), sd)], -1) for sd in (1.0, -1.0)]
                              ).astype(np.float32)
    ls, lt = np.meshgrid(np.linspace(-1.1, 1.1, _LID_S), np.linspace(0.0, 1.0, 2))
    low = np.stack([ls.ravel(), lt.ravel()], -1)
    t["lowlid"] = np.concatenate([np.concatenate([low, np.full((len(low), 1), sd)], -1) for sd in (1.0, -1.0)]
                                 ).astype(np.float32)
    bs, br = np.meshgrid(np.linspace(0.0, 1.0, _BROW_S), np.linspace(-1.0, 1.0, _BROW_R))
    bs = bs + r.uniform(-0.4, 0.4, bs.shape) / _BROW_S
    brow = np.stack([bs.ravel(), br.ravel()], -1)
    t["brow"] = np.concatenate([np.concatenate([brow, np.full((len(brow), 1), sd)], -1) for sd in (1.0, -1.0)]
                               ).astype(np.float32)
    wx, wy = np.meshgrid(np.linspace(-1.0, 1.0, _WALL_X), np.linspace(0.0, 1.0, _WALL_Y))
    t["wall"] = np.stack([wx.ravel(), wy.ravel()], -1).astype(np.float32)
    ta, tr_ = np.meshgrid(np.linspace(-1.0, 1.0, _TEETH_A), np.arange(_TEETH_R))
    teeth = np.stack([ta.ravel(), tr_.ravel()], -1)
    t["teeth"] = np.concatenate([np.concatenate([teeth, np.full((len(teeth), 1), sd)], -1) for sd in (1.0, 0.0)]
                                ).astype(np.float32)  # (a, row, upper?)
    tx, tz = np.meshgrid(np.linspace(-1.0, 1.0, _TONGUE_X), np.linspace(-1.0, 1.0, _TONGUE_Z))
    t["tongue"] = np.stack([tx.ravel(), tz.ravel()], -1).astype(np.float32)
    na, ny = np.meshgrid(np.arange(_NECK_A) / _NECK_A * 2 * np.pi, np.linspace(0.0, 1.0, _NECK_Y))
    t["neck"] = np.stack([na.ravel(), ny.ravel()], -1).astype(np.float32)
    d = _fibonacci(4 * _N_SHOULDER)
    t["shoulder"] = d[d[:, 1] > 0.25][:_N_SHOULDER]
    t["rim"] = np.concatenate([np.stack([np.arange(_RIM) / _RIM * 2 * np.pi, np.full(_RIM, sd)], -1)
                               for sd in (1.0, -1.0)]).astype(np.float32)
    t["arm"] = np.concatenate([np.stack([np.linspace(0, 1, _ARM), np.full(_ARM, sd)], -1)
                               for sd in (1.0, -1.0)]).astype(np.float32)
    t["bridge"] = np.linspace(-1.0, 1.0, 8).astype(np.float32)
    return t


def _tpl(t: dict, name: str) -> jnp.ndarray:
    """A template array behind an optimisation barrier: XLA would otherwise constant-fold everything
    computed from it at compile time (slowly, in its HLO evaluator)."""
    return jax.lax.optimization_barrier(jnp.asarray(t[name]))


def num_gaussians() -> int:
    """N: the number of Gaussians of every head (fixed; hidden parts have opacity 0)."""
    t = _templates()
    return int(sum(len(t[k]) for k in ("front", "radial", "hair", "eye", "lid", "lowlid", "brow", "wall",
                                        "teeth", "tongue", "neck", "shoulder", "rim", "arm", "bridge")) + 2)


# --------------------------------------------------------------------------------------------------
# Identity -> shape numbers
# --------------------------------------------------------------------------------------------------


def _shape(idv):
    g = lambda name: idv[_I[name]]  # noqa: E731
    s = {}
    s["cran_c"] = _v3(0.0, 0.075 + 0.01 * g("head_height"), -0.035)
    s["cran_r"] = _v3(0.228 * (1 + 0.06 * g("head_width")), 0.285 * (1 + 0.05 * g("head_height")),
                      0.29 * (1 + 0.05 * g("head_depth")))
    jw = 1.0 + 0.1 * g("jaw_width")
    s["jw"] = jw
    cl = 0.02 * g("chin_length")
    s["face_c"] = _v3(0.0, -0.085, 0.035)
    s["face_r"] = _v3(0.182 * jw, 0.235 + 0.5 * cl, 0.235)
    s["chin_c"] = _v3(0.0, -0.283 - cl, 0.17)
    s["cheek"] = 1.0 + 0.25 * g("cheek_fullness")
    ex = 0.1 * (1 + 0.06 * g("eye_spacing"))
    ey = 0.03
    s["ex"], s["ey"] = ex, ey
    s["eye_w"] = 0.046 * (1 + 0.08 * g("eye_size"))
    s["eye_hu"] = 0.019 * (1 + 0.15 * g("eye_size"))
    s["eye_hl"] = 0.0125 * (1 + 0.1 * g("eye_size"))
    s["eye_tilt"] = 0.006 * g("eye_tilt")
    s["eye_c"] = jnp.asarray([0.205], jnp.float32)[0]
    s["eye_r"] = _v3(0.063, 0.05, 0.048)
    nl = 1.0 + 0.12 * g("nose_length")
    s["nose_tip"] = _v3(0.0, ey - 0.097 * nl, 0.345 + 0.022 * g("nose_projection"))
    s["nose_w"] = 1.0 + 0.2 * g("nose_width")
    s["ym"] = ey - 0.197 - 0.5 * cl
    s["wm"] = 0.071 * (1 + 0.12 * g("mouth_width"))
    s["lip"] = 1.0 + 0.25 * g("lip_fullness")
    s["zl"] = 0.262
    s["brow_t"] = 1.0 + 0.35 * g("brow_thickness")
    s["brow_y"] = ey + 0.046 * (1 + 0.15 * g("brow_height"))
    s["ear"] = 1.0 + 0.12 * g("ear_size")
    return s


def _head_sdf(p, s):
    pm = p.at[0].set(jnp.abs(p[0]))  # mirror: paired features are modelled at +x
    d = _sd_ellipsoid(p, s["cran_c"], s["cran_r"])
    d = _smin(d, _sd_ellipsoid(p, s["face_c"], s["face_r"]), 0.06)
    jw = s["jw"]
    d = _smin(d, _sd_cone(pm, _v3(0.172 * jw, -0.05, -0.04), _v3(0.07 * jw, s["chin_c"][1] + 0.02, 0.13),
                          0.045, 0.04), 0.05)
    d = _smin(d, _sd_ellipsoid(p, s["chin_c"], _v3(0.066 * jw, 0.055, 0.078)), 0.04)
    d = _smin(d, _sd_ellipsoid(pm, _v3(0.117, -0.015, 0.15), _v3(0.07, 0.05, 0.085) * s["cheek"]), 0.045)
    d = _smin(d, _sd_ellipsoid(p, _v3(0.0, s["brow_y"] + 0.04, 0.19), _v3(0.168, 0.042, 0.075)), 0.03)
    # eye sockets
    d = _smax(d, -_sd_ellipsoid(pm, _v3(s["ex"], s["ey"] + 0.004, 0.258), _v3(0.057, 0.04, 0.032)), 0.02)
    # nose: bridge to tip, tip ball, wings
    tip = s["nose_tip"]
    d = _smin(d, _sd_cone(p, _v3(0.0, s["ey"] + 0.025, 0.238), tip + _v3(0.0, 0.01, -0.012), 0.014,
                          0.021 * s["nose_w"]), 0.028)
    d = _smin(d, _sd_ellipsoid(p, tip + _v3(0.0, 0.0, -0.018), _v3(0.027 * s["nose_w"], 0.025, 0.026)), 0.012)
    d = _smin(d, _sd_ellipsoid(pm, tip + _v3(0.026 * s["nose_w"], -0.008, -0.042), _v3(0.019, 0.016, 0.02)),
              0.01)
    # lips
    wm, ym, zl, lf = s["wm"], s["ym"], s["zl"], s["lip"]
    d = _smin(d, _sd_ellipsoid(p, _v3(0.0, ym + 0.011 * lf, zl), _v3(wm, 0.0135 * lf, 0.023)), 0.012)
    d = _smin(d, _sd_ellipsoid(p, _v3(0.0, ym - 0.015 * lf, zl - 0.004), _v3(0.86 * wm, 0.0165 * lf, 0.023)), 0.012)
    # ears
    e = s["ear"]
    d = _smin(d, _sd_ellipsoid(pm, _v3(s["cran_r"][0] - 0.008, s["ey"] - 0.02, -0.035),
                               _v3(0.02, 0.072 * e, 0.042 * e)), 0.015)
    return d


def _trace(origin, direction, s, iters=56):
    f = lambda q: _head_sdf(q, s)  # noqa: E731

    def body(_, t):
        return t + 0.8 * f(origin + t * direction)

    t = jax.lax.fori_loop(0, iters, body, jnp.float32(0.0))
    p = origin + t * direction
    hit = (jnp.abs(f(p)) < 2e-3) & (t > 0.0)
    n = _normalize(jax.grad(f)(p))
    return p, n, hit


# --------------------------------------------------------------------------------------------------
# Regions (canonical coordinates)
# --------------------------------------------------------------------------------------------------


def _almond(xm, ye, s):
    """Upper and lower lid curves (eye-local) at eye-local x (mirrored: +outer)."""
    u = jnp.clip(xm / s["eye_w"], -1.0, 1.0)
    base = jnp.maximum(1.0 - u * u, 0.0)
    up = s["eye_hu"] * base ** 0.75 * (1.0 - 0.15 * u) + s["eye_tilt"] * u
    low = -s["eye_hl"] * base ** 0.9 + 0.3 * s["eye_tilt"] * u
    return up, low


def _eye_local(p, s):
    xm = jnp.abs(p[..., 0]) - s["ex"]
    ye = p[..., 1] - s["ey"]
    return xm, ye


def _in_almond(p, s, margin):
    xm, ye = _eye_local(p, s)
    up, low = _almond(xm, ye, s)
    return (jnp.abs(xm) < s["eye_w"] + margin) & (ye < up + margin) & (ye > low - margin) & (p[..., 2] > 0.14)


def _lip_masks(p, s):
    x, y = p[..., 0], p[..., 1]
    wm, ym, lf = s["wm"], s["ym"], s["lip"]
    u = jnp.clip(x / wm, -1.0, 1.0)
    front = p[..., 2] > 0.17
    hu = 0.024 * lf * jnp.sqrt(jnp.maximum(1 - u * u, 0.0)) * (1.0 - 0.18 * jnp.exp(-(x / 0.012) ** 2)) + 0.002
    hl = 0.029 * lf * jnp.sqrt(jnp.maximum(1 - (x / (0.9 * wm)) ** 2, 0.0))
    upper = front & (jnp.abs(x) < wm) & (y >= ym) & (y < ym + hu)
    lower = front & (jnp.abs(x) < wm) & (y < ym) & (y > ym - hl)
    return upper, lower


def _mouth_region(p, s):
    x, y = p[..., 0], p[..., 1]
    return (((x / (s["wm"] + 0.02)) ** 2 + ((y - s["ym"] + 0.004) / 0.048) ** 2) < 1.0) & (p[..., 2] > 0.12)


# --------------------------------------------------------------------------------------------------
# Expression deformation
# --------------------------------------------------------------------------------------------------


def _gauss2(dx, dy, sx, sy):
    return jnp.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))


def _deform_point(p, mode, wfix, flag, e, s, seam_floor):
    """Deformed position of one canonical point. mode: 0 skin seam weight, 1 fixed ``wfix``, 2 ramp."""
    x, y, z = p[0], p[1], p[2]
    ax = jnp.abs(x)
    sx = jnp.sign(x)
    ym, wm = s["ym"], s["wm"]
    front = _sigmoid((z - 0.05) / 0.03)
    ex_, ey_, ez_ = jnp.eye(3, dtype=jnp.float32)
    d = jnp.zeros(3, jnp.float32)
    # smile / frown: lip corners up/down and out, cheeks up
    corner = _gauss2(ax - wm, y - ym, 0.03, 0.034) * front
    sm = e[_E["smile"]]
    d = d + corner * (sm * 0.032 * ey_ + sm * 0.014 * sx * ex_ - jnp.abs(sm) * 0.008 * ez_)
    cheek = _gauss2(ax - 0.1, y + 0.07, 0.045, 0.04) * front
    d = d + cheek * jnp.maximum(sm, 0.0) * (0.012 * ey_ + 0.006 * ez_)
    # upper lip lifts with a smile (shows the teeth)
    upper_lip = _sigmoid((y - ym) / 0.002) * _gauss2(x, y - ym - 0.01, wm * 0.8, 0.02) * front
    d = d + upper_lip * jnp.maximum(sm, 0.0) * 0.007 * ey_
    # mouth stretch: corners sideways and down, lips part a little
    st = e[_E["mouth_stretch"]]
    d = d + corner * st * (0.02 * sx * ex_ - 0.007 * ey_)
    lips = _gauss2(x, y - ym, wm * 0.9, 0.03) * front
    d = d + lips * st * 0.004 * jnp.tanh((y - ym) / 0.004) * ey_
    # pucker: lips narrow and push forward
    pk = e[_E["pucker"]]
    mouth = _gauss2(x, y - ym, 0.06, 0.034) * front
    d = d + mouth * pk * (-0.35 * x * ex_ + 0.024 * ez_)
    # cheek puff
    puff = _gauss2(ax - 0.105, y + 0.13, 0.05, 0.05) * front
    d = d + puff * e[_E["cheek_puff"]] * 0.024 * _normalize(jnp.stack([sx * 0.8, 0.0 * x, 0.6 + 0.0 * x]))
    # brows: raise / lower each side, furrow pulls inner ends down and together
    above_eye = _sigmoid((y - s["ey"] - 0.016) / 0.006) * front
    brow_side = jnp.where(x > 0, e[_E["brow_left"]], e[_E["brow_right"]])
    dyb = y - s["brow_y"]
    brow_f = _gauss2(ax - 0.1, jnp.maximum(dyb, 0.0), 0.075, 0.06) * _gauss2(0.0, jnp.minimum(dyb, 0.0), 1.0,
                                                                                 0.03) * above_eye
    d = d + brow_f * brow_side * 0.02 * ey_
    inner = _gauss2(ax - 0.045, dyb, 0.035, 0.03) * above_eye
    d = d + inner * e[_E["brow_furrow"]] * (-0.011 * ey_ - 0.01 * sx * ex_)
    q = p + d * flag
    # jaw: rotation about a transverse axis behind the mouth, plus a sideways shift
    seam_y = ym - 0.5 * jnp.maximum(ax - wm, 0.0)
    width = jnp.maximum(0.0006 + 0.35 * jnp.maximum(ax - 0.85 * wm, 0.0), seam_floor)
    w_seam = _sigmoid((seam_y - y) / width) * _sigmoid((z + 0.04) / 0.03)
    # Between the lips the weight is a step: surfels there move rigidly (no stretch across the gap),
    # while the cheeks beyond the corners stretch smoothly.
    w_sharp = _sigmoid((seam_y - y) / jnp.maximum(width, 0.0006)) * _sigmoid((z + 0.04) / 0.03)
    w_seam = jnp.where(ax < 1.1 * wm, jax.lax.stop_gradient(w_sharp), w_seam)
    w_ramp = jnp.clip((ym + 0.012 - y) / 0.095, 0.0, 1.0)
    w = jnp.where(mode == 0, w_seam, jnp.where(mode == 2, w_ramp, wfix)) * flag
    ang = 0.3 * e[_E["jaw_open"]]
    pivot = _v3(0.0, s["ey"] - 0.05, -0.05)
    r = q - pivot
    ca, sa = jnp.cos(ang), jnp.sin(ang)
    rot = jnp.stack([r[0], ca * r[1] - sa * r[2], sa * r[1] + ca * r[2]]) + pivot
    jaw = rot + e[_E["jaw_side"]] * 0.015 * ex_
    return q + w * (jaw - q)


# --------------------------------------------------------------------------------------------------
# Components: each returns canonical points, frames, albedo, opacity, labels and deformation controls
# --------------------------------------------------------------------------------------------------


class _Part(NamedTuple):
    pos: jnp.ndarray  # [n, 3] canonical
    normal: jnp.ndarray  # [n, 3]
    tangent: jnp.ndarray  # [n, 3] direction of the first footprint axis (projected to the tangent plane)
    size: jnp.ndarray  # [n, 3] std along tangent, bitangent, normal
    albedo: jnp.ndarray  # [n, 3]
    opacity: jnp.ndarray  # [n]
    regions: jnp.ndarray  # [n, 2]
    mode: jnp.ndarray  # [n] jaw weight mode
    wfix: jnp.ndarray  # [n]
    flag: jnp.ndarray  # [n] 1 = follows the expression fields
    shade: jnp.ndarray  # [n] how much lighting applies (1 surfaces, lower for eyes)


def _part(pos, normal, tangent, size, albedo, opacity, regions=None, mode=0, wfix=0.0, flag=1.0, shade=1.0):
    n = pos.shape[0]
    full = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,))  # noqa: E731
    if regions is None:
        regions = jnp.zeros((n, 2), jnp.float32)
    return _Part(pos, normal, tangent, size, albedo, full(opacity), regions.astype(jnp.float32),
                 jnp.broadcast_to(jnp.asarray(mode, jnp.int32), (n,)), full(wfix), full(flag), full(shade))


def _colours(idv):
    g = lambda name: idv[_I[name]]  # noqa: E731
    c = {}
    skin = _palette(g("skin_tone"), [0.0, 0.35, 0.7, 1.0],
                    [[0.96, 0.80, 0.70], [0.86, 0.64, 0.50], [0.62, 0.42, 0.29], [0.36, 0.23, 0.16]])
    red = (g("skin_redness") - 0.5) * 0.08
    c["skin"] = jnp.clip(skin * jnp.asarray([1.0 + red, 1.0 - 0.3 * red, 1.0 - red]), 0.0, 1.0)
    hair = _palette(g("hair_shade"), [0.0, 0.3, 0.6, 0.85, 1.0],
                    [[0.04, 0.035, 0.03], [0.16, 0.10, 0.06], [0.36, 0.22, 0.11], [0.62, 0.46, 0.26],
                     [0.85, 0.72, 0.48]])
    tint = g("hair_tint")
    hair = jnp.where(tint > 0.85, _lerp(hair, jnp.asarray([0.55, 0.2, 0.07]), 0.7), hair)
    hair = jnp.where(tint < 0.12, _lerp(hair, jnp.asarray([0.62, 0.6, 0.58]), 0.75), hair)
    c["hair"] = hair
    c["brow"] = hair * 0.75 + 0.02
    c["iris"] = _palette(g("iris_colour"), [0.0, 0.4, 0.6, 0.8, 1.0],
                         [[0.25, 0.13, 0.06], [0.36, 0.22, 0.1], [0.42, 0.38, 0.18], [0.28, 0.45, 0.32],
                          [0.32, 0.5, 0.72]])
    lipc = _palette(g("lip_colour"), [0.0, 0.7, 1.0], [[0.75, 0.45, 0.42], [0.72, 0.32, 0.33], [0.72, 0.12, 0.18]])
    c["lip"] = _lerp(c["skin"] * jnp.asarray([0.92, 0.7, 0.7]), lipc, 0.35)
    c["cloth"] = _hsv(g("clothing_hue"), 0.55, 0.15 + 0.7 * g("clothing_shade"))
    c["glasses"] = _palette(g("glasses_colour"), [0.0, 0.6, 0.8, 1.0],
                            [[0.05, 0.05, 0.05], [0.12, 0.08, 0.06], [0.75, 0.6, 0.3], [0.55, 0.1, 0.1]])
    return c


def _skin_albedo(p, idv, s, c):
    """Skin colour at canonical points: base tone, lips, blush, beard, eye shadows, nostrils."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = jnp.abs(x)
    base = jnp.broadcast_to(c["skin"], p.shape)
    blush = _gauss2(ax - 0.1, y + 0.07, 0.04, 0.035) * (z > 0.1) * (0.08 + 0.25 * idv[_I["blush"]])
    base = base * (1.0 - blush[..., None] * jnp.asarray([0.0, 0.35, 0.3]))
    # darker around the eyes (sockets) and under the brow
    xm, ye = _eye_local(p, s)
    sock = _gauss2(xm, ye + 0.002, 0.05, 0.03) * (z > 0.1)
    base = base * (1.0 - 0.18 * sock[..., None])
    # beard / stubble
    b = idv[_I["beard"]]
    beard_zone = (_sigmoid((s["ym"] + 0.045 - y) / 0.01) * _sigmoid((0.2 - ax) / 0.02) * (z > -0.02)
                  + _gauss2(x, y - s["ym"] - 0.03, s["wm"] * 0.9, 0.008) * (z > 0.15))
    beard_zone = jnp.clip(beard_zone * _sigmoid((ax - 0.0) / 0.01 + 2.0), 0.0, 1.0)
    amount = jnp.clip((b - 0.3) / 0.7, 0.0, 1.0)
    beard_col = c["hair"] * 0.8
    base = _lerp(base, beard_col, (beard_zone * (0.25 + 0.65 * amount) * (b > 0.3))[..., None])
    # lips
    up, low = _lip_masks(p, s)
    lipmask = (up | low).astype(jnp.float32)
    base = _lerp(base, c["lip"], lipmask[..., None])
    # the line between the lips
    seam = _gauss2(x * 0.0, y - s["ym"], 1.0, 0.0025) * (ax < s["wm"]) * (z > 0.2)
    base = base * (1.0 - 0.55 * seam[..., None])
    # nostrils (on the underside of the nose)
    tip = s["nose_tip"]
    nos = _gauss2(ax - 0.014 * s["nose_w"], y - tip[1] + 0.022, 0.007, 0.005) * (z > tip[2] - 0.06) * (z < tip[2])
    base = base * (1.0 - 0.8 * nos[..., None])
    return jnp.clip(base, 0.0, 1.0)


def _frame_size(h, n, u, r, stretch_max=3.0, thickness=0.12):
    """Surfel sizes for spacing h on a ray parameterisation (ray direction u, distance factor r)."""
    cos = jnp.clip(jnp.abs(jnp.sum(n * u, -1)), 1.0 / stretch_max, 1.0)
    r = jnp.broadcast_to(jnp.asarray(r, jnp.float32), cos.shape)
    sa = 0.75 * h * r / cos
    sb = 0.75 * h * r
    sn = thickness * h * r
    return jnp.stack([sa, sb, sn], -1)


_DOWN = (0.0, 0.0, -1.0)


def _skin_rays(s):
    t = _templates()
    fxy = _tpl(t, "front")
    o = jnp.concatenate([fxy, jnp.full((fxy.shape[0], 1), 0.6, jnp.float32)], -1)
    dirs = _tpl(t, "radial")
    return (o, jnp.broadcast_to(jnp.asarray(_DOWN), o.shape)), (0.85 * dirs, -dirs)


def _skin_parts(idv, s, c, front, radial):
    """Skin surfels from the frontal grid and the radial directions (traced results given)."""
    t = _templates()
    p, n, hit = front
    ok = hit & (n[:, 2] > 0.08)
    size = _frame_size(_FRONT_H, n, -jnp.asarray(_DOWN), 1.0)
    # radial set, kept where the frontal grid does not already cover the surface (facing the front)
    dirs = _tpl(t, "radial")
    pr, nr, hitr = radial
    in_grid = (pr[:, 0] / 0.262) ** 2 + ((pr[:, 1] + 0.035) / 0.375) ** 2 <= 0.97
    # inside the grid keep only undersides the grid cannot see (under the nose tip and the chin): other
    # radial surfels there would show edge-on as thin lines
    underside = (nr[:, 1] < -0.35) & (nr[:, 2] < 0.1) & ((jnp.abs(pr[:, 0]) < 0.025) | (pr[:, 1] < -0.22))
    covered = in_grid & (nr[:, 2] > -0.2) & ~underside
    okr = hitr & ~covered
    h_r = math.sqrt(4 * math.pi / _N_RADIAL)
    sizer = _frame_size(h_r, nr, dirs, jnp.linalg.norm(pr, axis=-1), stretch_max=2.0, thickness=0.3)
    pos = jnp.concatenate([p, pr])
    nrm = jnp.concatenate([n, nr])
    ok = jnp.concatenate([ok, okr])
    size = jnp.concatenate([size, sizer])
    tang = jnp.concatenate([jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0]), p.shape), dirs])
    alb = _skin_albedo(pos, idv, s, c)
    cut = _in_almond(pos, s, -0.0025)
    opac = jnp.where(ok & ~cut, 0.98, 0.0)
    eye_reg = _in_almond(pos, s, 0.016)
    up, low = _lip_masks(pos, s)
    mouth_reg = _mouth_region(pos, s) | up | low
    regions = jnp.stack([eye_reg, mouth_reg], -1)
    return _part(pos, nrm, tang, size, alb, opac, regions)


def _eye_parts(idv, e, s, c):
    t = _templates()
    ev = _tpl(t, "eye")
    side = ev[:, 2]
    w, hu = s["eye_w"], s["eye_hu"]
    xm = ev[:, 0] * w
    ye = ev[:, 1] * jnp.where(ev[:, 1] > 0, hu, s["eye_hl"])
    r = s["eye_r"]
    cz = s["eye_c"]
    q = jnp.clip(1.0 - (xm / r[0]) ** 2 - (ye / r[1]) ** 2, 0.02, 1.0)
    z = cz + r[2] * jnp.sqrt(q)
    x = side * (s["ex"] + xm)
    y = s["ey"] + ye
    pos = jnp.stack([x, y, z], -1)
    centre = jnp.stack([side * s["ex"], jnp.full_like(x, s["ey"]), jnp.full_like(x, cz)], -1)
    nrm = _normalize((pos - centre) / (r ** 2))
    yaw = e[_E["gaze_x"]] * 0.42
    pitch = e[_E["gaze_y"]] * 0.3
    g = jnp.stack([jnp.sin(yaw) * jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw) * jnp.cos(pitch)])
    rot_c = centre - jnp.asarray([0.0, 0.0, 0.012])
    ang = jnp.arccos(jnp.clip(jnp.sum(_normalize(pos - rot_c) * g, -1), -1.0, 1.0))
    sclera = jnp.asarray([0.93, 0.9, 0.86]) * (0.82 + 0.18 * (1 - (xm / w) ** 2))[:, None]
    iris_r, pupil_r = 0.42, 0.16
    iris = c["iris"] * (0.8 + 0.4 * jnp.clip((ang - pupil_r) / (iris_r - pupil_r), 0.0, 1.0))[:, None]
    iris = iris * jnp.where(ang > iris_r - 0.06, 0.55, 1.0)[:, None]
    col = jnp.where((ang < iris_r)[:, None], iris, sclera)
    col = jnp.where((ang < pupil_r)[:, None], jnp.asarray([0.02, 0.02, 0.02]), col)
    inside = _in_almond(jnp.stack([s["ex"] + xm, y, z], -1), s, 0.003)
    size = jnp.stack([jnp.full_like(x, 0.55 * 2.4 * w / _EYE_U), jnp.full_like(x, 0.6 * 2.6 * hu / _EYE_V),
                      jnp.full_like(x, 0.0008)], -1)
    regions = jnp.stack([jnp.ones_like(x), jnp.zeros_like(x)], -1)
    tang = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), pos.shape)
    eyes = _part(pos, nrm, tang, size, col, jnp.where(inside, 0.99, 0.0), regions, mode=1, wfix=0.0, flag=0.0,
                 shade=0.45)
    # catchlights: a small bright dot on each cornea, towards the key light
    light = _normalize(jnp.asarray([0.35, 0.55, 1.0]))
    cl_c = jnp.stack([jnp.asarray([s["ex"], s["ey"], cz]), jnp.asarray([-s["ex"], s["ey"], cz])])
    cl_pos = cl_c + 0.7 * r * light + jnp.asarray([0.0, 0.0, 0.016])
    cl = _part(cl_pos, jnp.broadcast_to(light, (2, 3)), jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), (2, 3)),
               jnp.full((2, 3), 0.0022), jnp.full((2, 3), 1.0), 0.85,
               jnp.asarray([[1.0, 0.0], [1.0, 0.0]]), mode=1, flag=0.0, shade=0.0)
    return eyes, cl


def _lid_parts(idv, e, s, c):
    t = _templates()
    lv = _tpl(t, "lid")
    side = lv[:, 2]
    w = s["eye_w"]
    xm = lv[:, 0] * w
    up, low = _almond(xm, 0.0, s)
    squint = jnp.clip(e[_E["squint"]] + 0.35 * jnp.maximum(e[_E["smile"]], 0.0), 0.0, 1.0)
    low_eff = low + squint * 0.35 * (up - low)
    blink = jnp.where(side > 0, e[_E["blink_left"]], e[_E["blink_right"]])
    blink = jnp.clip(blink - 0.12 * e[_E["gaze_y"]] + 0.25 * squint, 0.0, 1.0)
    top = up + 0.009
    edge = up + (low_eff - up) * blink
    ye = top + (edge - top) * lv[:, 1]
    r = s["eye_r"] + 0.0035
    q = jnp.clip(1.0 - (xm / r[0]) ** 2 - (ye / r[1]) ** 2, 0.02, 1.0)
    z = s["eye_c"] + r[2] * jnp.sqrt(q)
    pos = jnp.stack([side * (s["ex"] + xm), s["ey"] + ye, z], -1)
    centre = jnp.stack([side * s["ex"], jnp.full_like(z, s["ey"]), jnp.full_like(z, s["eye_c"])], -1)
    nrm = _normalize((pos - centre) / (r ** 2))
    span = jnp.abs(top - edge)
    lash = (lv[:, 1] > 0.8).astype(jnp.float32)
    col = _lerp(c["skin"] * 0.9, jnp.asarray([0.05, 0.04, 0.04]) + 0.2 * c["hair"], lash[:, None])
    size = jnp.stack([jnp.full_like(z, 0.6 * 2.24 * w / _LID_S), jnp.maximum(0.7 * span / (_LID_T - 1), 0.0018)
                      + 0.0008 * lash, jnp.full_like(z, 0.0008)], -1)
    inside = jnp.abs(lv[:, 0]) < 1.06
    regions = jnp.stack([jnp.ones_like(z), jnp.zeros_like(z)], -1)
    tang = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), pos.shape)
    lids = _part(pos, nrm, tang, size, col, jnp.where(inside, 0.99, 0.0), regions, mode=1, flag=1.0)
    # lower lids: a thin fixed strip along the lower curve (raised by the squint)
    lv2 = _tpl(t, "lowlid")
    side2 = lv2[:, 2]
    xm2 = lv2[:, 0] * w
    up2, low2 = _almond(xm2, 0.0, s)
    low2 = low2 + squint * 0.35 * (up2 - low2)
    ye2 = low2 - 0.006 + 0.0065 * lv2[:, 1]
    q2 = jnp.clip(1.0 - (xm2 / r[0]) ** 2 - (ye2 / r[1]) ** 2, 0.02, 1.0)
    z2 = s["eye_c"] + r[2] * jnp.sqrt(q2)
    pos2 = jnp.stack([side2 * (s["ex"] + xm2), s["ey"] + ye2, z2], -1)
    centre2 = jnp.stack([side2 * s["ex"], jnp.full_like(z2, s["ey"]), jnp.full_like(z2, s["eye_c"])], -1)
    nrm2 = _normalize((pos2 - centre2) / (r ** 2))
    col2 = jnp.broadcast_to(c["skin"] * jnp.asarray([0.93, 0.82, 0.8]), pos2.shape)
    size2 = jnp.stack([jnp.full_like(z2, 0.6 * 2.2 * w / _LID_S), jnp.full_like(z2, 0.0025),
                       jnp.full_like(z2, 0.0008)], -1)
    regions2 = jnp.stack([jnp.ones_like(z2), jnp.zeros_like(z2)], -1)
    lows = _part(pos2, nrm2, jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), pos2.shape), size2, col2,
                 jnp.where(jnp.abs(lv2[:, 0]) < 1.0, 0.99, 0.0), regions2, mode=1, flag=1.0)
    return lids, lows


def _brow_rays(s):
    t = _templates()
    bv = _tpl(t, "brow")
    side = bv[:, 2]
    sp = jnp.clip(bv[:, 0], 0.0, 1.0)
    w = s["eye_w"]
    xm = -0.95 * w + sp * 2.2 * w
    arch = 0.012 * jnp.sin(jnp.pi * sp ** 0.8)
    yc = s["brow_y"] + arch - 0.008 * sp
    thick = 0.0085 * s["brow_t"] * (1.15 - 0.6 * sp)
    y = yc + bv[:, 1] * thick * 0.5
    x = side * (s["ex"] + xm)
    o = jnp.stack([x, y, jnp.full_like(x, 0.6)], -1)
    return o, jnp.broadcast_to(jnp.asarray(_DOWN), o.shape)


def _brow_parts(idv, s, c, traced):
    t = _templates()
    side = _tpl(t, "brow")[:, 2]
    p, n, hit = traced
    x = p[:, 0]
    p = p + 0.0025 * n
    # strands lean outwards and slightly up along the arc
    tang = jnp.stack([side * 1.0, 0.25 + 0.0 * x, 0.0 * x], -1)
    size = jnp.stack([jnp.full_like(x, 0.0065), jnp.full_like(x, 0.0018) * s["brow_t"], jnp.full_like(x, 0.001)], -1)
    col = jnp.broadcast_to(c["brow"], p.shape)
    regions = jnp.zeros((x.shape[0], 2))
    return _part(p, n, tang, size, col, jnp.where(hit, 0.9, 0.0), regions, mode=0)


def _hair_geometry(s):
    t = _templates()
    hv = _tpl(t, "hair")
    phi, sp = hv[:, 0], jnp.clip(hv[:, 1], 0.0, 1.0)
    cc = s["cran_c"]
    on_skull = sp <= _HAIR_SEQ
    theta = jnp.minimum(sp / _HAIR_SEQ, 1.0) * (jnp.pi / 2) * 1.04
    u = jnp.stack([jnp.sin(theta) * jnp.sin(phi), jnp.cos(theta), jnp.sin(theta) * jnp.cos(phi)], -1)
    depth = jnp.maximum(sp - _HAIR_SEQ, 0.0) / (1.0 - _HAIR_SEQ) * 0.56
    yc = cc[1] - depth
    hdir = jnp.stack([jnp.sin(phi), 0.0 * phi, jnp.cos(phi)], -1)
    return phi, sp, on_skull, theta, u, yc, hdir


def _hair_rays(s):
    """On the skull: rays towards the skull centre. Below its equator: horizontal rays at that height
    towards the vertical axis (the hair hugs the nape there, or hangs for long hair)."""
    _, _, on_skull, _, u, yc, hdir = _hair_geometry(s)
    cc = s["cran_c"]
    o_h = jnp.stack([cc[0] + 0.8 * hdir[:, 0], yc, cc[2] + 0.8 * hdir[:, 2]], -1)
    o = jnp.where(on_skull[:, None], cc + 0.8 * u, o_h)
    d = jnp.where(on_skull[:, None], -u, -hdir)
    return o, d


def _hair_parts(idv, s, c, traced):
    t = _templates()
    noise = _tpl(t, "hair_noise")
    g = lambda name: idv[_I[name]]  # noqa: E731
    phi, sp, on_skull, theta, u, yc, hdir = _hair_geometry(s)
    length = g("hair_length")
    vol = 0.008 + 0.03 * g("hair_volume")
    cc = s["cran_c"]
    cr = s["cran_r"]
    p_sk, n_sk, hit = traced
    p_h, n_h, hit_h = traced
    ring = jnp.stack([cc[0] + (cr[0] + vol) * hdir[:, 0], yc, cc[2] + (cr[2] + vol) * hdir[:, 2]], -1)
    hang = jnp.clip((length - 0.3) / 0.5, 0.0, 1.0)
    hug = jnp.where(hit_h[:, None], p_h + n_h * vol * 0.7, ring)
    p_cur = _lerp(hug, ring, hang)
    n_cur = jnp.where(hit_h[:, None] & (hang < 0.5), n_h, hdir)
    lift = vol * (0.6 + 0.4 * jnp.cos(theta))  # more volume on top
    p_top = p_sk + n_sk * lift[:, None]
    pos = jnp.where(on_skull[:, None], p_top, p_cur)
    nrm = jnp.where(on_skull[:, None], n_sk, n_cur)
    pos = pos + nrm * (noise[:, 0:1] - 0.5) * 0.006
    # where hair grows: above a boundary height that depends on the azimuth (hairline, sideburns, ears, nape)
    a = jnp.abs(phi)
    # two styles: hairline < 0.5 swept back (forehead free, higher for lower values), else a fringe
    hl = g("hairline")
    fringe = hl >= 0.5
    y_front = jnp.where(fringe, 0.2 - 0.14 * (hl - 0.5), 0.215 + 0.12 * (0.5 - hl))
    ear_top = 0.095 - 0.3 * jnp.maximum(length - 0.45, 0.0)
    knots = jnp.asarray([0.0, 0.6, 1.05, 1.3, 1.62, 2.2, jnp.pi])
    vals = jnp.stack([y_front, y_front - 0.02 * fringe + 0.02 * ~fringe, 0.03, ear_top, ear_top - 0.02,
                      -0.06 - 0.25 * length, -0.13 - 0.34 * length])
    boundary = jnp.interp(a, knots, vals)
    y = pos[:, 1]
    present = y > boundary + 0.012 * (noise[:, 1] - 0.5)
    front_ok = (a > 1.15) | on_skull  # hanging hair only at the sides and back
    present = present & front_ok & jnp.where(on_skull, hit, True)
    # fringe over the forehead stays above the brows
    present = present & ((y > s["brow_y"] + 0.05) | (a > 0.9))
    bald = g("bald") > 0.5
    present = present & ~(bald & (y > 0.1 + 0.2 * (a < 1.8)))
    # strand direction: down along the scalp from the crown, straight down when hanging
    t_theta = jnp.stack([jnp.cos(theta) * jnp.sin(phi), -jnp.sin(theta), jnp.cos(theta) * jnp.cos(phi)], -1)
    swept = ~fringe & (a < 1.2)
    tang = jnp.where(on_skull[:, None], jnp.where(swept, -1.0, 1.0)[:, None] * t_theta, jnp.asarray([0.0, -1.0, 0.0]))
    size = jnp.stack([jnp.full_like(y, 0.024), jnp.full_like(y, 0.0075), jnp.full_like(y, 0.004)], -1)
    size = size * (1.0 + 0.3 * vol / 0.038)
    shade = 0.7 + 0.6 * noise[:, 1]
    col = jnp.clip(c["hair"][None] * shade[:, None] + 0.03 * (noise[:, 0:1] - 0.5), 0.0, 1.0)
    return _part(pos, nrm, tang, size, col, jnp.where(present, 0.97, 0.0), None, mode=1, flag=0.0)


def _mouth_parts(idv, s, c):
    t = _templates()
    wm, ym, zl = s["wm"], s["ym"], s["zl"]
    # back wall of the cavity
    wv = _tpl(t, "wall")
    x = wv[:, 0] * wm * 0.9
    y = ym + 0.02 - wv[:, 1] * 0.075
    z = zl - 0.072 + 0.026 * (1 - wv[:, 0] ** 2)
    pos = jnp.stack([x, y, z], -1)
    nrm = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0]), pos.shape)
    dark = 0.55 + 0.45 * jnp.abs(wv[:, 0])
    col = jnp.asarray([0.17, 0.035, 0.04]) * dark[:, None]
    size = jnp.stack([jnp.full_like(x, 0.85 * 1.8 * wm / _WALL_X), jnp.full_like(x, 0.85 * 0.075 / _WALL_Y),
                      jnp.full_like(x, 0.002)], -1)
    reg = jnp.stack([jnp.zeros_like(x), jnp.ones_like(x)], -1)
    wall = _part(pos, nrm, jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), pos.shape), size, col, 0.99, reg,
                 mode=2, shade=0.0)
    # teeth: an upper and a lower arc just behind the lips
    tv = _tpl(t, "teeth")
    upper = tv[:, 2] > 0.5
    a = tv[:, 0] * 0.95
    tx = 0.052 * (wm / 0.071) * jnp.sin(a)
    tz = zl - 0.017 - 0.03 * (1 - jnp.cos(a))
    ty = jnp.where(upper, ym + 0.013 - tv[:, 1] * 0.0075, ym - 0.006 - tv[:, 1] * 0.0065)
    tz = jnp.where(upper, tz, tz - 0.004)
    tpos = jnp.stack([tx, ty, tz], -1)
    tn = jnp.stack([jnp.sin(a), 0.0 * a, jnp.cos(a)], -1)
    gum = jnp.where(upper, tv[:, 1] < 0.5, tv[:, 1] > 1.5)
    tcol = jnp.where(gum[:, None], jnp.asarray([0.75, 0.4, 0.42]), jnp.asarray([0.95, 0.93, 0.86]))
    tsize = jnp.stack([jnp.full_like(tx, 0.0042), jnp.full_like(tx, 0.0048), jnp.full_like(tx, 0.0015)], -1)
    treg = jnp.stack([jnp.zeros_like(tx), jnp.ones_like(tx)], -1)
    teeth = _part(tpos, tn, jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), tpos.shape), tsize, tcol, 0.99, treg,
                  mode=1, wfix=jnp.where(upper, 0.0, 1.0), shade=0.6)
    # tongue
    gv = _tpl(t, "tongue")
    gx = gv[:, 0] * 0.036 * (wm / 0.071)
    gz = zl - 0.052 + gv[:, 1] * 0.028
    gy = ym - 0.024 + 0.01 * jnp.sqrt(jnp.clip(1 - gv[:, 0] ** 2 - gv[:, 1] ** 2 * 0.5, 0.0, 1.0))
    gpos = jnp.stack([gx, gy, gz], -1)
    gn = _normalize(jnp.stack([gv[:, 0] * 0.5, jnp.ones_like(gx), gv[:, 1] * 0.3], -1))
    gcol = jnp.broadcast_to(jnp.asarray([0.7, 0.3, 0.33]), gpos.shape)
    gsize = jnp.stack([jnp.full_like(gx, 0.006), jnp.full_like(gx, 0.006), jnp.full_like(gx, 0.0015)], -1)
    greg = jnp.stack([jnp.zeros_like(gx), jnp.ones_like(gx)], -1)
    tongue = _part(gpos, gn, jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), gpos.shape), gsize, gcol, 0.99, greg,
                   mode=1, wfix=1.0, shade=0.6)
    return wall, teeth, tongue


def _body_parts(idv, s, c):
    t = _templates()
    nv = _tpl(t, "neck")
    ang = nv[:, 0]
    rx = 0.098 * s["jw"]
    rz = 0.092
    y = -0.64 + nv[:, 1] * 0.52
    pos = jnp.stack([rx * jnp.sin(ang), y, -0.045 + rz * jnp.cos(ang)], -1)
    nrm = jnp.stack([jnp.sin(ang), 0.0 * ang, jnp.cos(ang)], -1)
    h = 2 * math.pi * 0.098 / _NECK_A
    size = jnp.stack([jnp.full_like(y, 0.8 * 0.52 / _NECK_Y), jnp.full_like(y, 0.8 * h), jnp.full_like(y, 0.003)],
                     -1)
    col = jnp.broadcast_to(c["skin"] * 0.86, pos.shape)
    neck = _part(pos, nrm, jnp.broadcast_to(jnp.asarray([0.0, 1.0, 0.0]), pos.shape), size, col, 0.98, None,
                 mode=1, flag=0.0)
    d = _tpl(t, "shoulder")
    cen = jnp.asarray([0.0, -0.83, -0.06])
    rad = jnp.asarray([0.42, 0.27, 0.2])
    spos = cen + d * rad
    sn = _normalize(d / rad)
    hs = math.sqrt(2 * math.pi / _N_SHOULDER)
    ssize = jnp.stack([jnp.full_like(d[:, 0], 0.85 * hs * 0.33), jnp.full_like(d[:, 0], 0.85 * hs * 0.33),
                       jnp.full_like(d[:, 0], 0.004)], -1)
    scol = jnp.broadcast_to(c["cloth"], spos.shape)
    # keep the neck opening clear of cloth
    collar = jnp.sqrt((spos[:, 0] / 0.1) ** 2 + ((spos[:, 2] + 0.045) / 0.1) ** 2) > 1.0
    shoulders = _part(spos, sn, jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), spos.shape), ssize, scol,
                      jnp.where(collar, 0.98, 0.0), None, mode=1, flag=0.0)
    return neck, shoulders


def _glasses_parts(idv, s, c):
    t = _templates()
    on = idv[_I["glasses"]] > 0.5
    rv = _tpl(t, "rim")
    ang, side = rv[:, 0], rv[:, 1]
    zg = s["eye_c"] + s["eye_r"][2] + 0.045
    rx, ry = 0.056, 0.04
    x = side * (s["ex"] + 0.004 + rx * jnp.cos(ang))
    y = s["ey"] + 0.002 + ry * jnp.sin(ang)
    pos = jnp.stack([x, y, jnp.full_like(x, zg) - 0.012 * (jnp.cos(ang) * side < -0.5)], -1)
    tang = jnp.stack([-jnp.sin(ang) * side, jnp.cos(ang), 0.0 * ang], -1)
    rs = 0.6 * 2 * math.pi * 0.048 / _RIM
    size = jnp.stack([jnp.full_like(x, rs), jnp.full_like(x, 0.0032), jnp.full_like(x, 0.0032)], -1)
    nrm = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0]), pos.shape)
    col = jnp.broadcast_to(c["glasses"], pos.shape)
    rims = _part(pos, nrm, tang, size, col, jnp.where(on, 0.97, 0.0), None, mode=1, flag=0.0, shade=0.6)
    av = _tpl(t, "arm")
    u, side = av[:, 0], av[:, 1]
    a0 = jnp.stack([side * (s["ex"] + 0.004 + rx), jnp.full_like(u, s["ey"] + 0.012), jnp.full_like(u, zg)], -1)
    a1 = jnp.stack([side * (s["cran_r"][0] + 0.012), jnp.full_like(u, s["ey"] + 0.01), jnp.full_like(u, -0.035)], -1)
    apos = a0 + (a1 - a0) * u[:, None]
    atang = _normalize(a1 - a0)
    asize = jnp.stack([jnp.full_like(u, 0.0105), jnp.full_like(u, 0.003), jnp.full_like(u, 0.003)], -1)
    anrm = jnp.stack([side, 0.0 * u, 0.0 * u], -1)
    arms = _part(apos, anrm, atang, asize, jnp.broadcast_to(c["glasses"], apos.shape), jnp.where(on, 0.97, 0.0),
                 None, mode=1, flag=0.0, shade=0.6)
    bv = _tpl(t, "bridge")
    bx = bv * (s["ex"] - rx - 0.002)
    bpos = jnp.stack([bx, s["ey"] + 0.014 + 0.004 * (1 - bv ** 2), jnp.full_like(bx, zg)], -1)
    bsize = jnp.stack([jnp.full_like(bx, 0.004), jnp.full_like(bx, 0.003), jnp.full_like(bx, 0.003)], -1)
    bridge = _part(bpos, jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0]), bpos.shape),
                   jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), bpos.shape), bsize,
                   jnp.broadcast_to(c["glasses"], bpos.shape), jnp.where(on, 0.97, 0.0), None, mode=1, flag=0.0,
                   shade=0.6)
    return rims, arms, bridge


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------

HEAD_SCALE = 1.2  # the head is modelled at 1/1.2 of its world size
_LIGHT = (0.35, 0.55, 1.0)
_FILL = (-0.6, -0.1, 0.6)


class HeadCanonical(NamedTuple):
    """The expression-independent part of a head (see :func:`head_canonical` and :func:`pose_head`)."""

    identity: Float[Array, "*B P"]
    rigid: HeadGaussians  # parts no expression moves (hair, neck, shoulders, glasses), final but unscaled
    soft: _Part  # canonical parts the expression fields deform (skin, brows, mouth interior)


def _shade(albedo, normal, shade):
    """Albedo x fixed head-frame lighting: wrapped diffuse key light, a fill from the other side, ambient."""
    key = jnp.clip((jnp.sum(normal * _normalize(jnp.asarray(_LIGHT)), -1) + 0.25) / 1.25, 0.0, 1.0)
    fill = jnp.clip(jnp.sum(normal * _normalize(jnp.asarray(_FILL)), -1), 0.0, 1.0)
    light = 0.3 + 0.68 * key + 0.2 * fill
    light = 1.0 + shade * (light - 1.0)
    return jnp.clip(albedo * light[:, None], 0.0, 1.0)


def _frame(P):
    n = _normalize(P.normal)
    a = _normalize(P.tangent - jnp.sum(P.tangent * n, -1, keepdims=True) * n)
    b = jnp.cross(n, a)
    return jnp.stack([a, b, n], -1), n  # columns: tangent, bitangent, normal (a proper rotation)


def _finalize_rigid(P) -> HeadGaussians:
    frame, n = _frame(P)
    return HeadGaussians(P.pos, P.size, _rotmat_to_quat(frame), P.opacity, _shade(P.albedo, n, P.shade), P.regions)


def _finalize_deformed(P, e, s) -> HeadGaussians:
    def deform(p, mode, wfix, flag):
        soft = _deform_point(p, mode, wfix, flag, e, s, 0.012)
        sharp = _deform_point(p, mode, wfix, flag, e, s, 0.0)
        return soft, sharp

    jac, new_pos = jax.vmap(jax.jacfwd(deform, has_aux=True))(P.pos, P.mode, P.wfix, P.flag)
    # the canonical covariance of the surfel frame, carried through the local Jacobian
    frame, n = _frame(P)
    cov0 = jnp.einsum("nij,nj,nkj->nik", frame, P.size ** 2, frame)
    cov = jnp.einsum("nij,njk,nlk->nil", jac, cov0, jac)
    # deformed normal: J^-T n, via the cofactor matrix (columns j1, j2, j3 of J)
    j1, j2, j3 = jac[..., 0], jac[..., 1], jac[..., 2]
    n_def = (n[:, 0:1] * jnp.cross(j2, j3) + n[:, 1:2] * jnp.cross(j3, j1) + n[:, 2:3] * jnp.cross(j1, j2))
    n_def = _normalize(n_def * jnp.sign(jnp.linalg.det(jac))[:, None])
    rot, scales = _surfel_eig(cov, n_def)
    return HeadGaussians(new_pos, scales, _rotmat_to_quat(rot), P.opacity, _shade(P.albedo, n_def, P.shade),
                         P.regions)


def _surfel_eig(cov, normal):
    """Axes and standard deviations of thin (surfel) covariances: the thin axis is taken along ``normal``
    and the in-plane axes solve the 2x2 eigenproblem of the covariance projected to the tangent plane
    (closed form; exact when ``normal`` is an eigenvector, which it is up to the surfel's thinness)."""
    helper = jnp.where(jnp.abs(normal[:, 0:1]) < 0.9, jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([0.0, 1.0, 0.0]))
    u1 = _normalize(jnp.cross(helper, normal))
    u2 = jnp.cross(normal, u1)
    a = jnp.einsum("ni,nij,nj->n", u1, cov, u1)
    b = jnp.einsum("ni,nij,nj->n", u1, cov, u2)
    c = jnp.einsum("ni,nij,nj->n", u2, cov, u2)
    theta = 0.5 * jnp.arctan2(2.0 * b, a - c)
    ct, st = jnp.cos(theta)[:, None], jnp.sin(theta)[:, None]
    e1 = ct * u1 + st * u2
    e2 = -st * u1 + ct * u2
    mid, rad = 0.5 * (a + c), jnp.sqrt(0.25 * (a - c) ** 2 + b * b)
    thin = jnp.einsum("ni,nij,nj->n", normal, cov, normal)
    scales = jnp.sqrt(jnp.maximum(jnp.stack([mid + rad, mid - rad, thin], -1), 1e-10))
    return jnp.stack([e1, e2, normal], -1), scales


def head_canonical(identity: Float[Array, " P"]) -> HeadCanonical:
    """Builds the neutral head of one identity (the costly sphere tracing); vmap for batches."""
    idv = jnp.asarray(identity, jnp.float32)
    s = _shape(idv)
    c = _colours(idv)
    # every sphere trace in one loop (one compiled loop body)
    rays = [*_skin_rays(s), _brow_rays(s), _hair_rays(s)]
    counts = [int(o.shape[0]) for o, _ in rays]
    hits = jax.vmap(lambda o, d: _trace(o, d, s))(jnp.concatenate([o for o, _ in rays]),
                                                     jnp.concatenate([d for _, d in rays]))
    splits = np.cumsum(counts)[:-1].tolist()
    front, radial, brow_t, hair_t = zip(*[jnp.split(h, splits) for h in hits], strict=True)
    skin = _skin_parts(idv, s, c, front, radial)
    brows = _brow_parts(idv, s, c, brow_t)
    hair = _hair_parts(idv, s, c, hair_t)
    wall, teeth, tongue = _mouth_parts(idv, s, c)
    neck, shoulders = _body_parts(idv, s, c)
    rims, arms, bridge = _glasses_parts(idv, s, c)
    rigid = _finalize_rigid(_concat([hair, neck, shoulders, rims, arms, bridge]))
    return HeadCanonical(idv, rigid, _concat([skin, brows, wall, teeth, tongue]))


def _concat(parts):
    return _Part(*[jnp.concatenate([getattr(pt, f) for pt in parts]) for f in _Part._fields])


def pose_head(canonical: HeadCanonical, expression: Float[Array, " E"]) -> HeadGaussians:
    """The Gaussians of a canonical head performing ``expression``; vmap for batches."""
    idv = canonical.identity
    e = jnp.asarray(expression, jnp.float32)
    s = _shape(idv)
    c = _colours(idv)
    eyes, catch = _eye_parts(idv, e, s, c)
    lids, lows = _lid_parts(idv, e, s, c)
    rigid = _finalize_rigid(_concat([eyes, catch]))
    soft = _finalize_deformed(_concat([canonical.soft, lids, lows]), e, s)
    g = HeadGaussians(*[jnp.concatenate(xs) for xs in zip(canonical.rigid, rigid, soft, strict=True)])
    return g._replace(means=g.means * HEAD_SCALE, scales=g.scales * HEAD_SCALE)


def head_gaussians(identity: Float[Array, " P"], expression: Float[Array, " E"]) -> HeadGaussians:
    """The Gaussians of one head (``num_gaussians()`` of them; vmap for batches).

    ``identity``: ``NUM_IDENTITY_PARAMS`` numbers (see :func:`sample_identity`); ``expression``:
    ``NUM_EXPRESSION`` numbers (``record.EXPRESSION_NAMES``; zeros = neutral). World frame as in the
    module docstring. Hidden or absent parts keep their slots with opacity 0. Equal to
    ``pose_head(head_canonical(identity), expression)``.
    """
    return pose_head(head_canonical(identity), expression)


def render_heads(
    gaussians: HeadGaussians,
    world_to_cam: Float[Array, "B 4 4"],
    intrinsics: Float[Array, "B 4"],
    size: int,
    backend: str = "auto",
    tile_capacity: int | None = None,
) -> tuple[Float[Array, "B H W 3"], Float[Array, "B H W"], Float[Array, "B H W 2"]]:
    """Renders a batch of heads (one camera each) on black: RGB, alpha, and the two region channels.

    Calls ``jax_instant4d.render.render`` (``rasterizer_ffi.rasterize`` with ``backend``). The region
    channels are the composited labels: soft masks of the eye and mouth regions. ``tile_capacity``
    (``xla`` backend only) defaults to the number of Gaussians, so every backend renders exactly: the
    ground truth must not depend on which rasterizer made it.
    """
    from jax_instant4d.render import Camera, render

    g = gaussians
    if tile_capacity is None:
        tile_capacity = int(g.means.shape[-2])
    feats = jnp.concatenate([g.colours, g.regions], -1)
    out = render(g.means, g.scales, g.quats, g.opacities, feats, Camera(world_to_cam, intrinsics), int(size),
                 int(size), 0.0, backend=backend, tile_capacity=tile_capacity)
    return out.rgb[..., :3], out.alpha, out.rgb[..., 3:5]
