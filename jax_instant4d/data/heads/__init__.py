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

The generator by part (each module below imports only the ones above it):

    params      identity / expression parameters: names, sampling, :class:`HeadGaussians`
    maths       smooth min / max, signed distances, rotations, colour ramps
    templates   the fixed sample grids and directions (hence :func:`num_gaussians`)
    geometry    identity -> shape numbers, the skin's signed distance function, tracing, regions
    expression  the expression's displacement fields and jaw rotation
    appearance  colours and skin albedo from the identity
    parts       skin, eyes, eyelids, brows, hair, mouth interior, neck and shoulders, glasses
    assembly    :func:`head_canonical`, :func:`pose_head`, :func:`head_gaussians`
    rendering   :func:`render_heads`
"""

from jax_instant4d.data.heads.assembly import HEAD_SCALE, HeadCanonical, head_canonical, head_gaussians, pose_head
from jax_instant4d.data.heads.geometry import _shape as _shape  # the neutral head's numbers (tests)
from jax_instant4d.data.heads.params import (
    _I as _I,  # identity parameter -> index (tests)
)
from jax_instant4d.data.heads.params import (
    IDENTITY_NAMES,
    NUM_IDENTITY_PARAMS,
    HeadGaussians,
    sample_expression,
    sample_identity,
)
from jax_instant4d.data.heads.rendering import render_heads
from jax_instant4d.data.heads.templates import num_gaussians

__all__ = [
    "HEAD_SCALE",
    "IDENTITY_NAMES",
    "NUM_IDENTITY_PARAMS",
    "HeadCanonical",
    "HeadGaussians",
    "head_canonical",
    "head_gaussians",
    "num_gaussians",
    "pose_head",
    "render_heads",
    "sample_expression",
    "sample_identity",
]
