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
from flax import nnx

from jax_instant4d.config import ConfigDict, ConfigError, _check_known, apply_overrides, base_config
from jax_instant4d.model.split import ModelDef
from jax_instant4d.restore import restore_model_variables, saved_config_dict


class CheckpointNotFound(FileNotFoundError):
    """``--checkpoint`` names no work directory, checkpoint folder or step that exists."""


@dataclasses.dataclass
class Trained:
    cfg: ConfigDict  # the run's config (with overrides applied), locked
    model: nnx.Module  # Instant4D with the checkpoint's parameters
    step: int
    checkpoints: Path  # the checkpoints/ folder it came from
    used_ema: bool


def checkpoint_steps(folder: Path) -> list[int]:
    """The steps of a checkpoints folder: its non-empty sub-folders named by a number, in order."""
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and any(p.iterdir()))


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
    steps = checkpoint_steps(folder)
    if not steps:
        raise CheckpointNotFound(f"--checkpoint {checkpoint}: no checkpoint steps in {folder}")
    if step is None:
        return folder, steps[-1]
    if int(step) not in steps:
        raise CheckpointNotFound(f"--checkpoint {checkpoint}: no step {step} (have {steps})")
    return folder, int(step)


def saved_config(folder: Path, step: int, overrides: list[str] | dict[str, str] | None = None) -> ConfigDict:
    """The config stored with a checkpoint, checked against today's keys, with overrides applied."""
    raw = saved_config_dict(folder, step)
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
                 ema: bool = True) -> Trained:
    """Rebuilds the trained :class:`~jax_instant4d.model.avatar.Instant4D` of a checkpoint.

    Only the model's variables are read (:func:`jax_instant4d.restore.restore_model_variables`): no
    optimiser, discriminator or loss network is built. The arrays are plain single-device ones (inference
    replicates the parameters wherever it runs)."""
    from jax_instant4d.model.avatar import Instant4D

    folder, step = resolve_checkpoint(checkpoint, step)
    cfg = saved_config(folder, step, overrides)
    mdef = ModelDef(nnx.eval_shape(lambda: Instant4D(cfg, rngs=nnx.Rngs(cfg.seed))))
    abstract_params, _, abstract_rest = mdef.abstract()
    params, rest, used_ema = restore_model_variables(folder, step, abstract_params, abstract_rest, ema=ema)
    model = mdef.merge(params, {}, rest, jax.random.key(0))
    model.eval()
    return Trained(cfg, model, step, folder, used_ema)


@dataclasses.dataclass(frozen=True)
class PureModel:
    """A trained model as pure functions of its state (``nnx.split``), for ``jax.jit`` / ``lower``: each
    call rebuilds the module from ``state`` inside the traced function. Evaluation, ``animate`` and the
    benchmarks jit these (each with its own compile and timing needs); :func:`pure_model` makes one."""

    graphdef: nnx.GraphDef

    def encode(self, state: nnx.State, source: jax.Array):
        """Source image(s) ``[B, R, R, 3]`` -> :class:`~jax_instant4d.model.avatar.Avatar`."""
        return nnx.merge(self.graphdef, state).encode(source)

    def motion(self, state: nnx.State, frames: jax.Array):
        """Driving frame(s) ``[B, R, R, 3]`` -> :class:`~jax_instant4d.model.avatar.Motion`."""
        return nnx.merge(self.graphdef, state).motion(frames)

    def oracle_motion(self, state: nnx.State, y: jax.Array):
        """``model.motion.oracle``: normalised expression parameters ``[B, E]`` -> their motion."""
        return nnx.merge(self.graphdef, state).oracle_motion(y)

    def animate(self, state: nnx.State, avatar, z, camera, size: int):
        """(rgb, alpha, depth) of ``avatar`` driven by ``z`` at ``camera``, ``size`` x ``size`` pixels."""
        rgb, alpha, depth, _aux = nnx.merge(self.graphdef, state).animate(avatar, z, camera, size, size)
        return rgb, alpha, depth

    def animate_gaussians(self, state: nnx.State, avatar, z):
        """Fusion + decoder: the driven Gaussians, without splatting."""
        return nnx.merge(self.graphdef, state).animate_gaussians(avatar, z)


def pure_model(model: nnx.Module) -> tuple[PureModel, nnx.State]:
    """``model`` in eval mode (BatchNorm on running statistics), split into :class:`PureModel` and its state."""
    model.eval()
    graphdef, state = nnx.split(model)
    return PureModel(graphdef), state
