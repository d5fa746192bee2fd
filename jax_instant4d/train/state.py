"""The train state (a pytree of pure dicts), splitting NNX modules into its parts, and the optimisers.

An NNX module is split once into a static ``ModelDef`` (its graph definition and abstract variable
templates) and four pure dicts: trainable params, frozen params (``train.frozen`` regexes: no gradient,
no optimiser state), other variables (``rest``: statistics and the like) and RNG streams. RNG streams
are not stored: every step reseeds them from ``fold_in(train.seed, step)``, so a resumed run draws the
same numbers as an uninterrupted one. Checkpoints hold the pure dicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Int, PyTree

from jax_instant4d.config import ConfigDict
from jax_instant4d.train.sharding import path_str


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


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _copy(state: nnx.State) -> nnx.State:
    return jax.tree.map(lambda x: x, state)


class ModelDef:
    """Static half of a split NNX module: rebuilds the module from pure dicts inside traced code."""

    def __init__(self, module: nnx.Module, frozen_patterns: Sequence[str] = ()):
        patterns = [re.compile(p) for p in frozen_patterns]
        self.frozen_patterns = tuple(frozen_patterns)

        def is_frozen(path) -> bool:
            name = path_str(path)
            return any(p.search(name) for p in patterns)

        trainable = lambda path, v: isinstance(v, nnx.Param) and not is_frozen(path)
        frozen = lambda path, v: isinstance(v, nnx.Param) and is_frozen(path)
        graphdef, params, frz, rngs, rest = nnx.split(module, trainable, frozen, nnx.RngState, ...)
        self.graphdef = graphdef
        self.templates = (params, frz, rngs, rest)
        self.filters = (trainable, frozen, nnx.RngState, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)))

    def abstract(self) -> tuple[PyTree, PyTree, PyTree]:
        """Abstract pure dicts (``ShapeDtypeStruct`` leaves) of params, frozen and rest."""
        params, frz, _, rest = self.templates
        to = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(s))
        return to(params), to(frz), to(rest)

    def annotations(self) -> dict[str, tuple]:
        """Partition annotations (``nnx.with_partitioning``) by parameter path."""
        out = {}
        for state in (self.templates[0], self.templates[1], self.templates[3]):
            for path, var in nnx.to_flat_state(state):
                meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
                spec = meta.get("out_sharding") or meta.get("sharding") or meta.get("sharding_names")
                if spec is not None:
                    out[path_str(path)] = tuple(spec)
        return out

    def split(self, module: nnx.Module) -> tuple[PyTree, PyTree, PyTree]:
        """Concrete pure dicts (params, frozen, rest) of a module built like the template."""
        params, frz, _, rest = (nnx.state(module, f) for f in self.filters)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(frz), nnx.to_pure_dict(rest)

    def rest_of(self, module: nnx.Module) -> PyTree:
        return nnx.to_pure_dict(nnx.state(module, self.filters[3]))

    def merge(self, params: PyTree, frozen: PyTree, rest: PyTree, key: jax.Array) -> nnx.Module:
        """A module with these variables and RNG streams freshly seeded from ``key``."""
        t_params, t_frozen, t_rngs, t_rest = (_copy(t) for t in self.templates)
        nnx.replace_by_pure_dict(t_params, params)
        nnx.replace_by_pure_dict(t_frozen, frozen)
        nnx.replace_by_pure_dict(t_rest, rest)
        leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(t_rngs))
        fresh = [jax.random.fold_in(key, i) if _is_key(x) else jnp.zeros(x.shape, x.dtype)
                 for i, x in enumerate(leaves)]
        if leaves:
            nnx.replace_by_pure_dict(t_rngs, jax.tree.unflatten(treedef, fresh))
        return nnx.merge(self.graphdef, t_params, t_frozen, t_rngs, t_rest)


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
