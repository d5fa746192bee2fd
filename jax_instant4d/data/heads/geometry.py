"""Geometry of a head: identity -> shape numbers, the skin's signed distance function, sphere tracing,
and the eye and mouth regions in canonical coordinates."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_instant4d.data.heads.maths import _normalize, _sd_cone, _sd_ellipsoid, _smax, _smin, _v3
from jax_instant4d.data.heads.params import _I

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
