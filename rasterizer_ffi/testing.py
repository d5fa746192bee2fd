"""Random, degenerate and head-like Gaussian scenes for tests and benchmarks (like ``jax.test_util``)."""

from __future__ import annotations

import numpy as np

from rasterizer_ffi import project


def camera(width: int, height: int, focal: float | None = None):
    """A camera at z=+3 looking at the origin (OpenCV frame), principal point at the image centre."""
    w2c = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
    w2c[2, 3] = 3.0
    f = focal if focal is not None else 1.2 * max(width, height)
    return w2c, np.array([f, f, width / 2.0, height / 2.0], np.float32)


def random_scene(rng: np.random.Generator, n: int, width: int, height: int, channels: int = 3,
                 degenerate: bool = False, opacity_range=(0.05, 0.95), log_scale=(-4.0, 0.6)):
    """Projected Gaussians of a random 3D scene: the 7 rasterizer inputs (unbatched)."""
    means = rng.normal(size=(n, 3)) * 0.5
    scales = np.exp(log_scale[0] + log_scale[1] * rng.normal(size=(n, 3)))
    quats = rng.normal(size=(n, 4))
    opac = rng.uniform(*opacity_range, size=n)
    if degenerate and n >= 8:
        means[0] = (0.0, 0.0, 3.2)  # behind the camera: dropped
        scales[1] = (2.0, 2.0, 2.0)  # huge: covers the whole image
        scales[2] = (1e-4, 0.4, 1e-4)  # needle-thin
        opac[3] = 0.0  # zero opacity
        opac[4] = 0.99 / 255.0  # never reaches the alpha cut
        means[5] = means[6]  # two Gaussians at exactly the same depth and place: ties by index
        scales[5] = scales[6]
        quats[5] = quats[6]
        opac[7] = 1.0  # clamped to 0.99
    w2c, intr = camera(width, height)
    p = project(means.astype(np.float32), scales.astype(np.float32), quats.astype(np.float32), w2c, intr,
                width, height)
    feats = rng.uniform(-0.2, 1.2, size=(n, channels)).astype(np.float32)
    bg = rng.uniform(0.0, 1.0, size=channels).astype(np.float32)
    return (np.asarray(p.means2d), np.asarray(p.conics), np.asarray(p.depths), np.asarray(p.radii),
            opac.astype(np.float32), feats, bg)


def batch_scenes(scenes):
    """Stacks unbatched scenes (same N and C) into batched inputs."""
    return tuple(np.stack(parts) for parts in zip(*scenes, strict=True))


def shell_scene(rng: np.random.Generator, n: int, size: int, channels: int = 3, radius: float = 0.5):
    """N Gaussians tiling a sphere of ``radius`` (a head-sized shell) seen by an EG3D-like camera at
    distance 3 filling most of a ``size`` x ``size`` image: realistic per-tile loads for benchmarks."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = radius * d * (1.0 + 0.02 * rng.normal(size=(n, 1)))
    spacing = np.sqrt(4 * np.pi * radius**2 / n)
    scales = spacing * np.exp(0.3 * rng.normal(size=(n, 3)))
    quats = rng.normal(size=(n, 4))
    opac = rng.uniform(0.3, 1.0, size=n)
    w2c, intr = camera(size, size, focal=size * 2.4)
    p = project(means.astype(np.float32), scales.astype(np.float32), quats.astype(np.float32), w2c, intr,
                size, size)
    feats = rng.uniform(0.0, 1.0, size=(n, channels)).astype(np.float32)
    bg = np.zeros(channels, np.float32)
    return (np.asarray(p.means2d), np.asarray(p.conics), np.asarray(p.depths), np.asarray(p.radii),
            opac.astype(np.float32), feats, bg)
