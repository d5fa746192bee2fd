"""Shared helpers of the data tests (no tests here): tiny configs and one tiny synthetic dataset per run."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from jax_instant4d.config import get_config

TINY = {
    "data.resolution": 32,
    "data.num_identities": 3,
    "data.heldout_identities": 1,
    "data.clips_per_identity": 2,
    "data.time_steps": 2,
    "data.views": 2,
    "data.targets_per_example": 2,
    "data.seed": 3,
}


def tiny_cfg(data_dir: str | Path, **overrides):
    ov = {**TINY, "data.data_dir": str(data_dir), **{k.replace("__", "."): str(v) for k, v in overrides.items()}}
    return get_config(None, [f"{k}={v}" for k, v in ov.items()])


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="instant4d-data-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def tiny_dataset(image_format: str = "png"):
    """(cfg, path) of a tiny synthetic_heads dataset, built once per test process."""
    from jax_instant4d.data import ensure_dataset

    cfg = tiny_cfg(_root() / "data", data__image_format=image_format)
    return cfg, ensure_dataset(cfg, progress=False)


@functools.cache
def tiny_undriven_dataset():
    """(cfg, path) of the tiny dataset made with ``data.undriven_views`` (its own name, beside the plain one)."""
    from jax_instant4d.data import ensure_dataset

    cfg = tiny_cfg(_root() / "data", data__undriven_views=True)
    return cfg, ensure_dataset(cfg, progress=False)


def records_by_clip(path, split: str) -> dict[int, dict]:
    from jax_instant4d.data.pipeline import open_source

    src = open_source(path, split)
    return {int(src[i]["clip_index"]): src[i] for i in range(len(src))}


def u8(x) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)
