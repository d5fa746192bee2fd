"""The static parts of training: definitions, optimisers, loss networks, shardings, initialisation.

:class:`TrainSetup` is built once per run from the config and the mesh; :class:`~jax_instant4d.train.step.Trainer`
adds the step and the evaluation. ``init`` gives a freshly initialised, sharded train state, with the
pretrained motion encoder (``model.motion.weights``) loaded in place of its initial values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import PyTree

from jax_instant4d.config import ConfigDict, ConfigError
from jax_instant4d.model.split import ModelDef
from jax_instant4d.train import losses as L
from jax_instant4d.train import motion_weights
from jax_instant4d.train.discriminator import Discriminator
from jax_instant4d.train.forward import CHANGE_WEIGHTINGS
from jax_instant4d.train.sharding import like_params_shardings, param_shardings, replicated
from jax_instant4d.train.state import TrainState, lr_multiplier_rules, make_disc_optimizer, make_optimizer
from jax_instant4d.tree_paths import path_str

ModelFactory = Callable[..., nnx.Module]
logger = logging.getLogger(__name__)

LOSS_NAMES = ("l1", "ssim", "lpips", "identity", "region", "delta_f", "motion", "expression_change", "adversarial")
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class TrainSetup:
    """The static parts of training on ``mesh``: module definitions (``mdef``, ``ddef``), optimisers
    (``tx``, ``dtx``, ``schedule``), loss weights and networks (``weights``, ``nets``), the train
    state's shardings and abstract shape, and ``init``. Its notes (which losses are on, which motion
    weights were loaded) are logged (this module's logger, at INFO)."""

    def __init__(self, cfg: ConfigDict, mesh: Mesh, model_factory: ModelFactory | None = None):
        self.cfg, self.mesh = cfg, mesh
        tcfg = cfg.train
        if model_factory is None:
            from jax_instant4d.model.avatar import Instant4D

            model_factory = Instant4D
        if cfg.model.motion.oracle:
            if cfg.data.dataset != "synthetic_heads":
                raise ConfigError(f"model.motion.oracle needs ground-truth expressions: data.dataset must be "
                                  f"synthetic_heads, not {cfg.data.dataset!r}")
            if tcfg.loss.motion > 0:
                raise ConfigError("model.motion.oracle: train.loss.motion reads renders with the motion encoder, "
                                  "which an oracle model does not use; set one of them off")
        _check_expression_change(cfg)
        frozen = list(tcfg.frozen)
        if cfg.model.motion.freeze:
            frozen.append(r"^motion_encoder(/|$)")
        code_dim = int(cfg.model.motion.code_dim)

        def construct():
            model = model_factory(cfg, rngs=nnx.Rngs(cfg.seed))
            disc = Discriminator(2 * code_dim, tcfg.disc.channels, tcfg.disc.max_channels,
                                 rngs=nnx.Rngs(cfg.seed + 1))
            return model, disc

        with jax.set_mesh(mesh):
            abstract_model, abstract_disc = nnx.eval_shape(construct)
        self.mdef = ModelDef(abstract_model, frozen)
        self.ddef = ModelDef(abstract_disc)
        self.tx, self.schedule = make_optimizer(tcfg)
        _check_lr_multipliers(tcfg.lr_multipliers, self.mdef.abstract()[0])
        self.dtx = make_disc_optimizer(tcfg)
        w = tcfg.loss
        self.adversarial = w.adversarial > 0 and w.adversarial_start >= 0
        self.weights = {k: float(w[k]) for k in LOSS_NAMES}
        if not self.adversarial:
            self.weights["adversarial"] = 0.0
        self.nets, self.notes = self._loss_networks()
        for note in self.notes:
            logger.info("%s", note)

        def init_state() -> TrainState:
            model, disc = construct()
            params, frz, rest = self.mdef.split(model)
            dparams, _, drest = self.ddef.split(disc)
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, frozen=frz, rest=rest,
                opt_state=self.tx.init(params),
                ema=jax.tree.map(jnp.copy, params) if tcfg.ema_decay > 0 else None,
                disc=dparams, disc_rest=drest, disc_opt_state=self.dtx.init(dparams),
                skipped=jnp.zeros((), jnp.int32), streak=jnp.zeros((), jnp.int32))

        with jax.set_mesh(mesh):
            abstract = jax.eval_shape(init_state)
        self.state_shardings = self._state_shardings(abstract)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings)
        self._init = jax.jit(init_state, out_shardings=self.state_shardings)
        self._init_compiled = None
        self.nets_shardings = jax.tree.map(lambda _: replicated(mesh), self.nets)

    # ----------------------------------------------------------------------------------------------
    # set-up
    # ----------------------------------------------------------------------------------------------

    def _loss_networks(self) -> tuple[dict[str, Any], list[str]]:
        w, notes, nets = self.cfg.train.loss, [], {}
        if w.lpips > 0 and w.lpips_weights:
            nets["lpips"] = L.load_weights(w.lpips_weights, "lpips")
            notes.append(f"LPIPS loss on (x{w.lpips}), weights from {w.lpips_weights}")
        elif w.lpips > 0:
            notes.append("LPIPS loss off: no weights file (set train.loss.lpips_weights)")
        if w.identity > 0 and w.identity_weights:
            nets["identity"] = L.load_weights(w.identity_weights, "identity", w.identity_depth)
            notes.append(f"identity loss on (x{w.identity}), weights from {w.identity_weights}")
        elif w.identity > 0:
            notes.append("identity loss off: no weights file (set train.loss.identity_weights)")
        if self.adversarial:
            notes.append(f"adversarial loss (x{w.adversarial}) from step {w.adversarial_start}")
        return nets, notes

    def _state_shardings(self, abstract: TrainState) -> TrainState:
        t, mesh = self.cfg.train, self.mesh
        rules = tuple((str(p), tuple(s)) for p, s in t.partition_rules)
        kw = dict(rules=rules, fsdp_min_size=int(t.fsdp_min_size))
        ann = self.mdef.annotations()
        params = param_shardings(abstract.params, mesh, annotations=ann, **kw)
        disc = param_shardings(abstract.disc, mesh, **kw)
        rep = replicated(mesh)
        return TrainState(
            step=rep, params=params,
            frozen=param_shardings(abstract.frozen, mesh, annotations=ann, **kw),
            rest=param_shardings(abstract.rest, mesh, annotations=ann, **kw),
            opt_state=like_params_shardings(abstract.opt_state, params, mesh),
            ema=None if abstract.ema is None else params,
            disc=disc, disc_rest=param_shardings(abstract.disc_rest, mesh, **kw),
            disc_opt_state=like_params_shardings(abstract.disc_opt_state, disc, mesh),
            skipped=rep, streak=rep)

    def init(self, pretrained: bool = True) -> TrainState:
        """A freshly initialised, sharded train state (each device materialises only its shards), with
        ``model.motion.weights`` loaded into the motion encoder unless ``pretrained=False`` (for callers that
        overwrite every parameter anyway, e.g. importing a whole PyTorch state dict).

        Initialisation runs once, so on CPU it is compiled without XLA's expensive optimisations (the
        random-number code of a model's initialisers compiles several times faster; same values)."""
        with jax.set_mesh(self.mesh):
            if self._init_compiled is None:
                lowered = self._init.lower()
                cpu = jax.default_backend() == "cpu"
                self._init_compiled = lowered.compile(INIT_COMPILER_OPTIONS) if cpu else lowered.compile()
            state = self._init_compiled()
        return self._with_pretrained_motion(state) if pretrained else state

    def _with_pretrained_motion(self, state: TrainState) -> TrainState:
        """``model.motion.weights`` (if any) in place of the motion encoder's initial values: its
        parameters (frozen or trainable, and their EMA) and its BatchNorm statistics."""
        loaded = motion_weights.loaded_variables(self.cfg)
        if loaded is None:
            return state
        values, sha = loaded
        name = "motion_encoder"
        params, n_params = motion_weights.replace_subtree(state.params, name, values)
        frozen, n_frozen = motion_weights.replace_subtree(state.frozen, name, values)
        rest, n_rest = motion_weights.replace_subtree(state.rest, name, values)
        ema = state.ema
        if ema is not None:
            ema, _ = motion_weights.replace_subtree(ema, name, values)
        if n_params + n_frozen + n_rest != len(values):
            raise ValueError(f"motion encoder weights: {len(values)} values loaded, {n_params + n_frozen + n_rest} "
                             f"found in the model's '{name}' (does the model have a motion encoder?)")
        logger.info("motion encoder: pretrained weights %s (sha256 %s), %s", self.cfg.model.motion.weights, sha[:16],
                    "frozen" if n_frozen else "trainable")
        return state.replace(params=params, frozen=frozen, rest=rest, ema=ema)

    def adversarial_at(self, step: int) -> bool:
        """Whether the adversarial loss (and the discriminator's update) is on at ``step``."""
        return bool(self.adversarial and step >= self.cfg.train.loss.adversarial_start)


def _check_expression_change(cfg: ConfigDict) -> None:
    """``train.loss.expression_change`` must be a finite weight >= 0, on only with undriven teacher views, and its
    weighting one :func:`~jax_instant4d.train.forward.expression_change` knows."""
    w = float(cfg.train.loss.expression_change)
    if not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"train.loss.expression_change={w!r}: must be a finite number >= 0")
    weighting = cfg.train.loss.expression_change_weighting
    if weighting not in CHANGE_WEIGHTINGS:
        raise ConfigError(f"train.loss.expression_change_weighting={weighting!r}: must be one of {CHANGE_WEIGHTINGS}")
    if w > 0 and not (cfg.data.dataset == "synthetic_heads" and cfg.data.undriven_views):
        raise ConfigError(f"train.loss.expression_change={w} compares each render with the undriven teacher view at "
                          f"its camera: it needs data.dataset=synthetic_heads with data.undriven_views=true (dataset "
                          f"{cfg.data.dataset!r}, undriven_views={bool(cfg.data.undriven_views)})")


def _check_lr_multipliers(rules, params: PyTree) -> None:
    """Every ``train.lr_multipliers`` regex must match a trainable parameter: one that matches none (a typo,
    or a module that is frozen or absent in this model) would silently do nothing."""
    names = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern, _ in lr_multiplier_rules(rules):
        if not any(pattern.search(n) for n in names):
            raise ConfigError(f"train.lr_multipliers: {pattern.pattern!r} matches no trainable parameter "
                              f"(frozen ones get no updates); trainable paths look like {names[:3]}")
