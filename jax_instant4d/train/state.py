"""The train state (a pytree of pure dicts) and the optimisers.

An NNX module is split once into a static :class:`~jax_instant4d.model.split.ModelDef` (its graph
definition and abstract variable templates) and four pure dicts: trainable params, frozen params
(``train.frozen`` regexes: no gradient, no optimiser state), other variables (``rest``: statistics and
the like) and RNG streams. RNG streams are not stored: every step reseeds them from
``fold_in(train.seed, step)``, so a resumed run draws the same numbers as an uninterrupted one.
Checkpoints hold the pure dicts.
"""

from __future__ import annotations

from typing import Any

import flax
import optax
from jaxtyping import Array, Int, PyTree

from jax_instant4d.config import ConfigDict
from jax_instant4d.model.split import ModelDef

__all__ = ["ModelDef", "TrainState", "learning_rate_schedule", "make_disc_optimizer", "make_optimizer"]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; all leaves are arrays (``None`` for parts switched off)."""

    step: Int[Array, ""]
    params: PyTree  # trainable model params
    frozen: PyTree  # model params that get no updates
    rest: PyTree  # other model variables
    opt_state: PyTree
    ema: PyTree | None  # EMA of params (train.ema_decay > 0)
    disc: PyTree  # discriminator params
    disc_rest: PyTree
    disc_opt_state: PyTree
    skipped: Int[Array, ""]  # steps skipped for non-finite loss or gradients, in total
    streak: Int[Array, ""]  # ... in a row, up to and including the last step

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{f: d.get(f) for f in cls.__dataclass_fields__})


def learning_rate_schedule(lr: float, warmup_steps: int, total_steps: int, kind: str = "constant",
                           min_ratio: float = 0.1) -> optax.Schedule:
    """Linear warmup from 0, then constant or cosine decay to ``min_ratio * lr`` at ``total_steps``."""
    if kind not in ("constant", "cosine"):
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {kind!r}")
    warmup_steps = max(int(warmup_steps), 0)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1), max(total_steps, warmup_steps + 1),
                                                  end_value=lr * min_ratio)
    if warmup_steps == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
                                [warmup_steps])


def make_optimizer(tcfg: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The generator's optimiser: global-norm clipping, then Adam (AdamW with ``weight_decay``)."""
    schedule = learning_rate_schedule(tcfg.learning_rate, tcfg.warmup_steps, tcfg.steps, tcfg.lr_schedule,
                                      tcfg.min_lr_ratio)
    parts = []
    if tcfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(tcfg.grad_clip_norm))
    if tcfg.weight_decay > 0:
        parts.append(optax.adamw(schedule, b1=tcfg.b1, b2=tcfg.b2, weight_decay=tcfg.weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=tcfg.b1, b2=tcfg.b2))
    return optax.chain(*parts), schedule


def make_disc_optimizer(tcfg: ConfigDict) -> optax.GradientTransformation:
    """The discriminator's own Adam (same clipping as the generator)."""
    d = tcfg.disc
    parts = [optax.clip_by_global_norm(tcfg.grad_clip_norm)] if tcfg.grad_clip_norm > 0 else []
    parts.append(optax.adam(d.learning_rate, b1=d.b1, b2=d.b2))
    return optax.chain(*parts)
