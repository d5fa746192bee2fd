"""Appearance from the identity: skin, hair, iris, lip and clothing colours, and the skin's albedo."""

from __future__ import annotations

import jax.numpy as jnp

from jax_instant4d.data.heads.expression import _gauss2
from jax_instant4d.data.heads.geometry import _eye_local, _lip_masks
from jax_instant4d.data.heads.maths import _hsv, _lerp, _palette, _sigmoid
from jax_instant4d.data.heads.params import _I


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
