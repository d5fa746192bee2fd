"""Ground-truth renders of synthetic heads from their parameters (identity, expression, camera).

Used for the cross-reenactment reference on ``synthetic_heads`` (identity A performing the driving
clip's expressions at A's teacher cameras: what a perfect teacher would show) and for the training
and test images of the expression regressor. Frames go through the dataset generator's own jitted
render function and its uint8 quantisation, so a ground-truth render at a stored teacher view's
camera reproduces the stored frame exactly (PNG datasets; the test checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, UInt8

from jax_instant4d.data import synthetic

CANONICAL_GROUP = 16  # identities per sphere-tracing call (one compiled shape), as the generator uses
RENDER_CHUNK = 16  # frames per render call (one compiled shape)


def canonicals(identities: Float[np.ndarray, "N P"], group: int | None = None) -> list:
    """Canonical (neutral, traced) heads of identity vectors, one pytree of NumPy arrays each.

    ``group`` identities are traced per call (padded, so one shape compiles once); the default,
    ``min(16, N)``, is the generator's, so a process that just generated a dataset reuses its
    compiled tracer."""
    identities = np.asarray(identities, np.float32)
    n = identities.shape[0]
    group = int(group or min(CANONICAL_GROUP, n))
    out = []
    for start in range(0, n, group):
        part = identities[start:start + group]
        pad = np.concatenate([part, np.repeat(part[-1:], group - len(part), axis=0)])
        canon = jax.device_get(synthetic._canonical_batch(jnp.asarray(pad)))  # the generator's jitted tracer
        out.extend(jax.tree.map(lambda x, j=j: x[j], canon) for j in range(len(part)))
    return out


def render_frames(canon: list, which: np.ndarray, expressions: Float[np.ndarray, "N E"],
                  world_to_cam: Float[np.ndarray, "N 4 4"], intrinsics: Float[np.ndarray, "N 4"], size: int,
                  backend: str = "auto", chunk: int = RENDER_CHUNK,
                  progress: Callable[[int], None] | None = None) -> UInt8[np.ndarray, "N S S 3"]:
    """Frame k: canonical head ``canon[which[k]]`` performing ``expressions[k]`` at camera k (intrinsics
    in pixels of ``size``), uint8 RGB on black exactly as the dataset stores teacher views."""
    which = np.asarray(which, np.int64)
    n = len(which)
    fn = synthetic._render_fn(int(size), str(backend))  # the generator's jitted pose + render + quantise
    out = np.zeros((n, size, size, 3), np.uint8)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        pad = np.concatenate([idx, np.repeat(idx[-1:], chunk - len(idx))])
        heads = jax.tree.map(lambda *xs: np.stack(xs), *[canon[which[k]] for k in pad])
        rgb, _alpha, _regions = fn(heads, jnp.asarray(np.asarray(expressions, np.float32)[pad]),
                                   jnp.arange(chunk, dtype=jnp.int32), jnp.asarray(np.asarray(world_to_cam)[pad]),
                                   jnp.asarray(np.asarray(intrinsics)[pad]))
        out[idx] = np.asarray(rgb)[: len(idx)]
        if progress is not None:
            progress(len(idx))
    return out


def render_params(identities: Float[np.ndarray, "N P"], expressions: Float[np.ndarray, "N E"],
                  world_to_cam: Float[np.ndarray, "N 4 4"], intrinsics: Float[np.ndarray, "N 4"], size: int,
                  backend: str = "auto", group: int | None = None) -> UInt8[np.ndarray, "N S S 3"]:
    """One frame per row of parameters (identities traced once each, ``group`` per call)."""
    identities = np.asarray(identities, np.float32)
    uniq, which = np.unique(identities, axis=0, return_inverse=True)
    return render_frames(canonicals(uniq, group), which.reshape(-1), expressions, world_to_cam, intrinsics, size,
                         backend)


def driving_video(spec: synthetic.SyntheticSpec, identity: int, frames: int, seed: int = 0, backend: str = "auto"
                  ) -> tuple[np.ndarray, Float[np.ndarray, "F E"]]:
    """Identity ``identity`` of the dataset performing
    :func:`~jax_instant4d.data.synthetic.expression_sequence` at a frontal camera: uint8 frames
    ``[F, R, R, 3]`` at the dataset's resolution, and the expressions."""
    if not 0 <= identity < spec.num_identities:
        raise ValueError(f"identity {identity} is not in the dataset (0..{spec.num_identities - 1})")
    expr = synthetic.expression_sequence(frames, seed)
    w2c, intr = synthetic.cameras(np.zeros((frames, 2), np.float32), spec)
    canon = canonicals(synthetic.identity_params(spec, identity)[None])
    return render_frames(canon, np.zeros(frames, np.int64), expr, w2c, intr, spec.resolution, backend), expr
