"""Assembly: the parts of one identity into a canonical head, posed by an expression into world-frame
Gaussians (covariances carried through the deformation's Jacobian, colours shaded)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jax_instant4d.data.heads.appearance import _colours
from jax_instant4d.data.heads.expression import _deform_point
from jax_instant4d.data.heads.geometry import _shape, _trace
from jax_instant4d.data.heads.maths import _normalize, _rotmat_to_quat
from jax_instant4d.data.heads.params import HeadGaussians
from jax_instant4d.data.heads.parts import (
    _body_parts,
    _brow_parts,
    _brow_rays,
    _eye_parts,
    _glasses_parts,
    _hair_parts,
    _hair_rays,
    _lid_parts,
    _mouth_parts,
    _Part,
    _skin_parts,
    _skin_rays,
)

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
