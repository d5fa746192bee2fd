"""Argument checks that run at trace time, before any kernel: errors name the offending argument."""

from __future__ import annotations

import numpy as np

BACKENDS = ("auto", "cpu", "cuda", "xla")


def _shape(x, name):
    try:
        return tuple(x.shape)
    except AttributeError:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from None


def _float(x, name):
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise TypeError(f"{name} must be a floating-point array (float32), got dtype {x.dtype}")


def check_image_size(width, height):
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be a Python int (static), got {type(v).__name__}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")


def check_projection_inputs(means3d, scales, quats, world_to_cam, intrinsics) -> bool:
    """Returns whether the inputs carry a leading batch axis."""
    m = _shape(means3d, "means3d")
    if len(m) not in (2, 3) or m[-1] != 3:
        raise ValueError(f"means3d must have shape [N, 3] or [B, N, 3], got {m}")
    batched = len(m) == 3
    lead = m[:-1]
    for name, x, last in (("scales", scales, 3), ("quats", quats, 4)):
        s = _shape(x, name)
        if s != lead + (last,):
            raise ValueError(f"{name} must have shape {list(lead + (last,))} to match means3d {m}, got {s}")
    bs = m[:1] if batched else ()
    for name, x, tail in (("world_to_cam", world_to_cam, (4, 4)), ("intrinsics", intrinsics, (4,))):
        s = _shape(x, name)
        if s != bs + tail:
            raise ValueError(f"{name} must have shape {list(bs + tail)} (means3d is {m}), got {s}")
    for name, x in (("means3d", means3d), ("scales", scales), ("quats", quats),
                    ("world_to_cam", world_to_cam), ("intrinsics", intrinsics)):
        _float(x, name)
    return batched


def check_raster_inputs(means2d, conics, depths, radii, opacities, features, background, width, height,
                        backend) -> bool:
    """Returns whether the inputs carry a leading batch axis."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_image_size(width, height)
    m = _shape(means2d, "means2d")
    if len(m) not in (2, 3) or m[-1] != 2:
        raise ValueError(f"means2d must have shape [N, 2] or [B, N, 2], got {m}")
    batched = len(m) == 3
    lead = m[:-1]
    expect = {
        "conics": (conics, lead + (3,)),
        "depths": (depths, lead),
        "radii": (radii, lead),
        "opacities": (opacities, lead),
    }
    for name, (x, want) in expect.items():
        s = _shape(x, name)
        if s != want:
            raise ValueError(f"{name} must have shape {list(want)} to match means2d {m}, got {s}")
    f = _shape(features, "features")
    if len(f) != len(m) or f[:-1] != lead or f[-1] < 1:
        raise ValueError(f"features must have shape {list(lead) + ['C']} (C >= 1) to match means2d {m}, got {f}")
    c = f[-1]
    b = _shape(background, "background")
    if b not in ((c,), m[:1] + (c,) if batched else (c,)):
        raise ValueError(
            f"background must have shape [C] or [B, C] with C = {c} channels of features, got {b}")
    for name, x in (("means2d", means2d), ("conics", conics), ("depths", depths),
                    ("opacities", opacities), ("features", features), ("background", background)):
        _float(x, name)
    if not np.issubdtype(np.dtype(radii.dtype), np.integer):
        raise TypeError(f"radii must be an integer array (int32), got dtype {radii.dtype}")
    return batched
