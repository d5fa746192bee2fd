"""Static templates of the heads generator (NumPy, built once from a fixed seed): the sample grids
and directions every part is placed from, hence the fixed number of Gaussians per head."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------------
# Static templates (NumPy, built once)
# --------------------------------------------------------------------------------------------------

_FRONT_H = 0.0105  # spacing of the frontal grid
_N_RADIAL = 1500
_HAIR_AZ, _HAIR_ROWS, _HAIR_SEQ = 72, 30, 0.58
_EYE_U, _EYE_V = 26, 14
_LID_S, _LID_T = 24, 7
_BROW_S, _BROW_R = 34, 3
_WALL_X, _WALL_Y = 22, 10
_TEETH_A, _TEETH_R = 22, 3
_TONGUE_X, _TONGUE_Z = 9, 7
_NECK_A, _NECK_Y = 36, 12
_N_SHOULDER = 380
_RIM = 44
_ARM = 20


def _fibonacci(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([np.sin(phi) * np.sin(theta), np.cos(phi), np.sin(phi) * np.cos(theta)], -1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _templates() -> dict:
    r = np.random.default_rng(12345)  # fixed: templates are part of the generator, not of the seed
    t = {}
    xs = np.arange(-0.255, 0.2551, _FRONT_H)
    ys = np.arange(-0.405, 0.335, _FRONT_H)
    gx, gy = np.meshgrid(xs, ys)
    keep = (gx / 0.262) ** 2 + ((gy + 0.035) / 0.375) ** 2 <= 1.0
    t["front"] = np.stack([gx[keep], gy[keep]], -1).astype(np.float32)
    t["radial"] = _fibonacci(_N_RADIAL)
    az = (np.arange(_HAIR_AZ) + 0.5) / _HAIR_AZ * 2 * np.pi - np.pi
    s = (np.arange(_HAIR_ROWS) + 0.5) / _HAIR_ROWS
    ha, hs = np.meshgrid(az, s)
    ha = ha + r.uniform(-0.5, 0.5, ha.shape) * (2 * np.pi / _HAIR_AZ)
    hs = hs + r.uniform(-0.4, 0.4, hs.shape) / _HAIR_ROWS
    t["hair"] = np.stack([ha.ravel(), hs.ravel()], -1).astype(np.float32)
    t["hair_noise"] = r.uniform(0.0, 1.0, (ha.size, 2)).astype(np.float32)
    u = np.linspace(-1.2, 1.2, _EYE_U)
    v = np.linspace(-1.3, 1.3, _EYE_V)
    eu, ev = np.meshgrid(u, v)
    eye = np.stack([eu.ravel(), ev.ravel()], -1)
    t["eye"] = np.concatenate([np.concatenate([eye, np.full((len(eye), 1), sd)], -1) for sd in (1.0, -1.0)]
                              ).astype(np.float32)  # (u, v, side)
    ls, lt = np.meshgrid(np.linspace(-1.12, 1.12, _LID_S), np.linspace(0.0, 1.0, _LID_T))
    lid = np.stack([ls.ravel(), lt.ravel()], -1)
    t["lid"] = np.concatenate([np.concatenate([lid, np.full((len(lid), 1), sd)], -1) for sd in (1.0, -1.0)]
                              ).astype(np.float32)
    ls, lt = np.meshgrid(np.linspace(-1.1, 1.1, _LID_S), np.linspace(0.0, 1.0, 2))
    low = np.stack([ls.ravel(), lt.ravel()], -1)
    t["lowlid"] = np.concatenate([np.concatenate([low, np.full((len(low), 1), sd)], -1) for sd in (1.0, -1.0)]
                                 ).astype(np.float32)
    bs, br = np.meshgrid(np.linspace(0.0, 1.0, _BROW_S), np.linspace(-1.0, 1.0, _BROW_R))
    bs = bs + r.uniform(-0.4, 0.4, bs.shape) / _BROW_S
    brow = np.stack([bs.ravel(), br.ravel()], -1)
    t["brow"] = np.concatenate([np.concatenate([brow, np.full((len(brow), 1), sd)], -1) for sd in (1.0, -1.0)]
                               ).astype(np.float32)
    wx, wy = np.meshgrid(np.linspace(-1.0, 1.0, _WALL_X), np.linspace(0.0, 1.0, _WALL_Y))
    t["wall"] = np.stack([wx.ravel(), wy.ravel()], -1).astype(np.float32)
    ta, tr_ = np.meshgrid(np.linspace(-1.0, 1.0, _TEETH_A), np.arange(_TEETH_R))
    teeth = np.stack([ta.ravel(), tr_.ravel()], -1)
    t["teeth"] = np.concatenate([np.concatenate([teeth, np.full((len(teeth), 1), sd)], -1) for sd in (1.0, 0.0)]
                                ).astype(np.float32)  # (a, row, upper?)
    tx, tz = np.meshgrid(np.linspace(-1.0, 1.0, _TONGUE_X), np.linspace(-1.0, 1.0, _TONGUE_Z))
    t["tongue"] = np.stack([tx.ravel(), tz.ravel()], -1).astype(np.float32)
    na, ny = np.meshgrid(np.arange(_NECK_A) / _NECK_A * 2 * np.pi, np.linspace(0.0, 1.0, _NECK_Y))
    t["neck"] = np.stack([na.ravel(), ny.ravel()], -1).astype(np.float32)
    d = _fibonacci(4 * _N_SHOULDER)
    t["shoulder"] = d[d[:, 1] > 0.25][:_N_SHOULDER]
    t["rim"] = np.concatenate([np.stack([np.arange(_RIM) / _RIM * 2 * np.pi, np.full(_RIM, sd)], -1)
                               for sd in (1.0, -1.0)]).astype(np.float32)
    t["arm"] = np.concatenate([np.stack([np.linspace(0, 1, _ARM), np.full(_ARM, sd)], -1)
                               for sd in (1.0, -1.0)]).astype(np.float32)
    t["bridge"] = np.linspace(-1.0, 1.0, 8).astype(np.float32)
    return t


def _tpl(t: dict, name: str) -> jnp.ndarray:
    """A template array behind an optimisation barrier: XLA would otherwise constant-fold everything
    computed from it at compile time (slowly, in its HLO evaluator)."""
    return jax.lax.optimization_barrier(jnp.asarray(t[name]))


def num_gaussians() -> int:
    """N: the number of Gaussians of every head (fixed; hidden parts have opacity 0)."""
    t = _templates()
    return int(sum(len(t[k]) for k in ("front", "radial", "hair", "eye", "lid", "lowlid", "brow", "wall",
                                        "teeth", "tongue", "neck", "shoulder", "rim", "arm", "bridge")) + 2)
