"""Loading a trained avatar model from a work directory (for ``animate``, ``eval``, ``export``).

``--checkpoint`` everywhere accepts a run's work directory (``workdirs/small``), its ``checkpoints/``
folder or one step's folder (``workdirs/small/checkpoints/500``). The config is the one saved with the
checkpoint (so a run is reloaded exactly as it was trained), optionally with overrides on top (e.g.
``render.backend=xla``). The model is rebuilt with the checkpoint's parameters; the EMA parameters are
used when the run kept them (``train.ema_decay > 0``), unless ``ema=False``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jax_instant4d.config import ConfigDict, ConfigError, _check_known, apply_overrides, base_config


class CheckpointNotFound(FileNotFoundError):
    """``--checkpoint`` names no work directory, checkpoint folder or step that exists."""


@dataclasses.dataclass
class Trained:
    cfg: ConfigDict  # the run's config (with overrides applied), locked
    model: nnx.Module  # Instant4D with the checkpoint's parameters
    step: int
    checkpoints: Path  # the checkpoints/ folder it came from
    used_ema: bool


def resolve_checkpoint(checkpoint: str | Path, step: int | None = None) -> tuple[Path, int]:
    """(checkpoints folder, step) for a work directory, a checkpoints folder or a step folder."""
    path = Path(checkpoint).expanduser().absolute()
    if not path.exists():
        raise CheckpointNotFound(f"--checkpoint {checkpoint}: no such file or directory")
    if path.name.isdigit() and (path.parent / path.name).is_dir() and not (path / "checkpoints").is_dir():
        if step is not None and int(path.name) != int(step):
            raise ConfigError(f"--checkpoint {checkpoint} is step {path.name} but --step {step} was given")
        return path.parent, int(path.name)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()
                   and any(p.iterdir()))
    if not steps:
        raise CheckpointNotFound(f"--checkpoint {checkpoint}: no checkpoint steps in {folder}")
    if step is None:
        return folder, steps[-1]
    if int(step) not in steps:
        raise CheckpointNotFound(f"--checkpoint {checkpoint}: no step {step} (have {steps})")
    return folder, int(step)


def saved_config(folder: Path, step: int, overrides: list[str] | dict[str, str] | None = None) -> ConfigDict:
    """The config stored with a checkpoint, checked against today's keys, with overrides applied."""
    from jax_instant4d.train.checkpoint import Checkpointer

    ckpt = Checkpointer(folder, async_save=False)
    try:
        raw = ckpt.saved_config(step)
    finally:
        ckpt.close()
    base = base_config()
    raw = _upgrade(raw)
    cfg = ConfigDict(raw)
    _check_known(cfg, base, f"config saved in {folder / str(step)}")
    merged = base
    merged.update(_tuples(cfg, base).to_dict())
    cfg = apply_overrides(merged, overrides or [])
    cfg.lock()
    return cfg


def _upgrade(raw: dict) -> dict:
    """Configs saved before a key existed get the value that reproduces how they were trained, not
    today's default: ``model.anchors`` came with anchored positions, so a config without it used
    absolute ones (``"none"``)."""
    raw = dict(raw)
    model = dict(raw.get("model", {}))
    model.setdefault("anchors", "none")
    raw["model"] = model
    return raw


def _tuples(cfg: ConfigDict, ref: ConfigDict) -> ConfigDict:
    """JSON turns tuples into lists: give values the type of the default they replace."""
    out = ConfigDict()
    for k, v in cfg.items():
        r = ref[k] if k in ref else None
        if isinstance(v, ConfigDict) and isinstance(r, ConfigDict):
            out[k] = _tuples(v, r)
        elif isinstance(r, tuple) and isinstance(v, list):
            out[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        else:
            out[k] = v
    return out


def load_trained(checkpoint: str | Path, step: int | None = None, *, overrides: list[str] | None = None,
                 ema: bool = True, mesh_shape: tuple[int, ...] | None = None) -> Trained:
    """Rebuilds the trained :class:`~jax_instant4d.model.avatar.Instant4D` of a checkpoint.

    ``mesh_shape`` (default ``(-1, 1, 1)``: every device data-parallel) is the mesh the state is
    restored onto; inference replicates the parameters, so any mesh works."""
    from jax_instant4d.train.checkpoint import Checkpointer
    from jax_instant4d.train.sharding import make_mesh
    from jax_instant4d.train.step import Trainer

    folder, step = resolve_checkpoint(checkpoint, step)
    cfg = saved_config(folder, step, overrides)
    mesh = make_mesh(mesh_shape or (-1, 1, 1))
    trainer = Trainer(cfg, mesh, log=lambda _: None)
    ckpt = Checkpointer(folder, keep=int(cfg.train.keep_checkpoints), async_save=False)
    try:
        state, _ = ckpt.restore(step, trainer.abstract_state)
    finally:
        ckpt.close()
    use_ema = bool(ema and state.ema is not None)
    params = state.ema if use_ema else state.params
    # plain (single-device) arrays: inference replicates nothing and the module may update its statistics
    params, frozen, rest = jax.tree.map(lambda x: jnp.asarray(jax.device_get(x)), (params, state.frozen, state.rest))
    model = trainer.mdef.merge(params, frozen, rest, jax.random.key(0))
    model.eval()
    return Trained(cfg, model, step, folder, use_ema)
