"""The train state (a pytree of pure dicts) and the optimisers.

An NNX module is split once into a static :class:`~jax_instant4d.model.split.ModelDef` (its graph
definition and abstract variable templates) and four pure dicts: trainable params, frozen params
(``train.frozen`` regexes: no gradient, no optimiser state), other variables (``rest``: statistics and
the like) and RNG streams. RNG streams are not stored: every step reseeds them from
``fold_in(train.seed, step)``, so a resumed run draws the same numbers as an uninterrupted one.
Checkpoints hold the pure dicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import optax
from jaxtyping import Array, Int, PyTree

from jax_instant4d.config import ConfigDict, ConfigError
from jax_instant4d.model.split import ModelDef
from jax_instant4d.tree_paths import path_str

__all__ = ["ModelDef", "TrainState", "learning_rate_schedule", "lr_multiplier_rules", "make_disc_optimizer",
           "make_optimizer", "scale_by_path"]


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


def lr_multiplier_rules(rules: Sequence) -> tuple[tuple[re.Pattern, float], ...]:
    """``train.lr_multipliers`` checked and compiled: ``((regex, multiplier), ...)`` over parameter paths
    (``"fusion/net/layers/0/kernel"``, the spelling of ``train.frozen``); a clear error otherwise."""
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"train.lr_multipliers[{i}] must be a (regex, multiplier) pair, got {rule!r}")
        pattern, mult = rule
        try:
            mult = float(mult)
        except (TypeError, ValueError):
            raise ConfigError(f"train.lr_multipliers[{i}]: multiplier of {pattern!r} must be a number, "
                              f"got {mult!r}") from None
        if not mult > 0 or mult == float("inf"):
            raise ConfigError(f"train.lr_multipliers[{i}]: multiplier of {pattern!r} must be positive and "
                              f"finite, got {mult!r}")
        try:
            out.append((re.compile(pattern), mult))
        except re.error as e:
            raise ConfigError(f"train.lr_multipliers[{i}]: {pattern!r} is not a regex ({e})") from None
    return tuple(out)


def path_multiplier(name: str, rules: Sequence[tuple[re.Pattern, float]]) -> float:
    """The multiplier of the first rule whose regex matches ``name`` (``re.search``), else 1."""
    for pattern, mult in rules:
        if pattern.search(name):
            return mult
    return 1.0


def scale_by_path(rules: Sequence[tuple[re.Pattern, float]]) -> optax.GradientTransformation:
    """Multiplies each parameter's update by :func:`path_multiplier` of its path: placed after Adam, a
    per-parameter learning-rate multiplier (stateless; the multipliers are fixed when the step is traced)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u if (m := path_multiplier(path_str(path), rules)) == 1.0 else u * m, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(tcfg: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The generator's optimiser: global-norm clipping, then Adam (AdamW with ``weight_decay``), then the
    per-path learning-rate multipliers of ``train.lr_multipliers`` (only when there are any, so that the
    optimiser state of a run without them keeps its layout)."""
    schedule = learning_rate_schedule(tcfg.learning_rate, tcfg.warmup_steps, tcfg.steps, tcfg.lr_schedule,
                                      tcfg.min_lr_ratio)
    parts = []
    if tcfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(tcfg.grad_clip_norm))
    if tcfg.weight_decay > 0:
        parts.append(optax.adamw(schedule, b1=tcfg.b1, b2=tcfg.b2, weight_decay=tcfg.weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=tcfg.b1, b2=tcfg.b2))
    rules = lr_multiplier_rules(tcfg.lr_multipliers)
    if rules:
        parts.append(scale_by_path(rules))
    return optax.chain(*parts), schedule


def make_disc_optimizer(tcfg: ConfigDict) -> optax.GradientTransformation:
    """The discriminator's own Adam (same clipping as the generator)."""
    d = tcfg.disc
    parts = [optax.clip_by_global_norm(tcfg.grad_clip_norm)] if tcfg.grad_clip_norm > 0 else []
    parts.append(optax.adam(d.learning_rate, b1=d.b1, b2=d.b2))
    return optax.chain(*parts)
