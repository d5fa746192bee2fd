"""Pretrained motion-encoder weights (``model.motion.weights``) for training: which file, its hash,
and putting its values into a freshly initialised train state.

``model.motion.weights`` is ``""`` (the motion encoder trains from scratch with the avatar), ``"teacher"``
(the synthetic teacher's encoder, :mod:`jax_instant4d.data.motion_teacher`, pretrained and cached on
first use) or a file (X-NeMo's state dict, or one of ours: see
:func:`jax_instant4d.model.interop.load_motion_weights`). ``model.motion.freeze`` keeps the loaded
weights fixed (the paper's setting); freezing without weights is an error, since it would freeze a
random encoder. The file's SHA-256 goes into ``model.motion.weights_sha256`` of the run's saved config
(``config.json`` and every checkpoint), so evaluations say which weights a model was trained with; a
run whose config already names a hash refuses a file with another.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jax_instant4d.config import ConfigDict, ConfigError, apply_overrides

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


def check(cfg: ConfigDict) -> None:
    """Config errors of ``model.motion`` (before anything slow)."""
    mot = cfg.model.motion
    if mot.freeze and not mot.weights:
        raise ConfigError("model.motion.freeze=true needs model.motion.weights (a weights file, or 'teacher' for the "
                          "synthetic teacher's encoder): it would freeze a randomly initialised encoder")


def weights_path(cfg: ConfigDict) -> Path | None:
    """The file ``model.motion.weights`` names (``None`` for ``""``)."""
    from jax_instant4d.data import motion_teacher

    check(cfg)
    w = str(cfg.model.motion.weights)
    if not w:
        return None
    if w == motion_teacher.TEACHER:
        return motion_teacher.cache_path(cfg)
    return Path(w).expanduser()


def prepare(cfg: ConfigDict, process_index: int = 0, process_count: int = 1) -> ConfigDict:
    """Makes sure the weights file exists (process 0 pretrains the teacher's encoder if it is missing;
    the other processes wait for the file) and returns ``cfg`` with ``model.motion.weights_sha256`` set.
    A config that already names a hash must match the file."""
    from jax_instant4d.data import motion_teacher
    from jax_instant4d.model.interop import file_sha256

    path = weights_path(cfg)
    if path is None:
        return cfg
    if str(cfg.model.motion.weights) == motion_teacher.TEACHER and not path.is_file():
        if process_index == 0:
            motion_teacher.ensure(cfg)
        else:
            _wait_for(path, process_index, float(cfg.data.ready_timeout_s))
    if not path.is_file():
        raise ConfigError(f"model.motion.weights: file not found: {path}")
    sha = file_sha256(path)
    _check_hash(cfg, path, sha)
    log.info("motion encoder weights: %s (sha256 %s)%s", path, sha[:16],
             ", frozen" if cfg.model.motion.freeze else ", fine-tuned")
    out = apply_overrides(cfg, {"model.motion.weights_sha256": sha})
    out.lock()
    return out


def _check_hash(cfg: ConfigDict, path: Path, sha: str) -> None:
    expected = str(cfg.model.motion.weights_sha256)
    if expected and expected != sha:
        raise ConfigError(f"model.motion.weights {path} has SHA-256 {sha[:16]}..., but the config records "
                          f"{expected[:16]}... (model.motion.weights_sha256): the file changed since it was recorded")


def _wait_for(path: Path, process_index: int, timeout: float) -> None:
    """Waits (``data.ready_timeout_s``, as for the dataset) for process 0's file on the shared data_dir."""
    t0 = time.monotonic()
    last = t0
    while not path.is_file():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"process {process_index}: process 0 did not write the motion teacher's encoder "
                               f"{path} within data.ready_timeout_s={timeout:g} s (is data.data_dir on a "
                               f"filesystem every process sees?)")
        if time.monotonic() - last > 60:
            log.info("process %d: waiting for process 0 to pretrain %s", process_index, path)
            last = time.monotonic()
        time.sleep(POLL_SECONDS)


def loaded_variables(cfg: ConfigDict) -> tuple[dict[str, np.ndarray], str] | None:
    """The weights file's values as ``{"a/b/c": array}`` paths of the motion encoder's parameters and
    statistics (as in the train state's pure dicts under ``motion_encoder``), and its SHA-256."""
    from jax_instant4d.model.interop import load_motion_weights
    from jax_instant4d.model.motion import MotionEncoder

    path = weights_path(cfg)
    if path is None:
        return None
    encoder = MotionEncoder(apply_overrides(cfg, ["model.motion.freeze=false"]).model, rngs=nnx.Rngs(0))
    sha = load_motion_weights(encoder, path)
    _check_hash(cfg, path, sha)
    flat = {}
    for p, v in nnx.to_flat_state(nnx.state(encoder, nnx.Not(nnx.RngState))):
        flat["/".join(str(k) for k in p)] = np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
    return flat, sha


def replace_subtree(tree, name: str, values: dict[str, np.ndarray]) -> tuple[object, int]:
    """``tree`` (a pure dict of global arrays) with the leaves under ``tree[name]`` whose paths are in
    ``values`` replaced (same sharding); returns the new tree and how many leaves were replaced."""
    if not isinstance(tree, dict) or name not in tree:
        return tree, 0
    count = 0

    def swap(path, leaf):
        nonlocal count
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if key not in values:
            return leaf
        new = np.asarray(values[key], dtype=leaf.dtype)
        if new.shape != leaf.shape:
            raise ValueError(f"motion encoder weights: {key} has shape {new.shape}, the model's is {leaf.shape}")
        count += 1
        return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda idx, a=new: a[idx])

    sub = jax.tree_util.tree_map_with_path(swap, tree[name])
    return {**tree, name: sub}, count
