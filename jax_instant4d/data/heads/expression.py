"""Expressions: smooth displacement fields plus a jaw rotation that deform canonical positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_instant4d.data.heads.maths import _normalize, _sigmoid, _v3
from jax_instant4d.data.heads.params import _E

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
