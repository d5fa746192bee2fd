"""Identity and expression parameters of the synthetic heads: names, sampling, and the output type."""

from __future__ import annotations

from typing import NamedTuple

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
