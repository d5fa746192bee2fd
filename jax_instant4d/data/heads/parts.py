"""The parts of a head (skin, eyes, eyelids, brows, hair, mouth interior, neck and shoulders, glasses):
each returns canonical points, frames, albedo, opacity, labels and deformation controls."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from jax_instant4d.data.heads.appearance import _skin_albedo
from jax_instant4d.data.heads.geometry import _almond, _in_almond, _lip_masks, _mouth_region
from jax_instant4d.data.heads.maths import _lerp, _normalize
from jax_instant4d.data.heads.params import _E, _I
from jax_instant4d.data.heads.templates import (
    _EYE_U,
    _EYE_V,
    _FRONT_H,
    _HAIR_SEQ,
    _LID_S,
    _LID_T,
    _N_RADIAL,
    _N_SHOULDER,
    _NECK_A,
    _NECK_Y,
    _RIM,
    _WALL_X,
    _WALL_Y,
    _templates,
    _tpl,
)

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
