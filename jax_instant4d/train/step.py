"""The distillation step: forward pass and losses (:mod:`~jax_instant4d.train.forward`), optimiser updates,
the discriminator's update, non-finite skipping, EMA.

:class:`Trainer` is the run's :class:`~jax_instant4d.train.setup.TrainSetup` (module definitions,
optimisers, shardings, loss networks, ``init``) with the step, compiled once per render resolution (and
adversarial switch) with explicit in/out shardings and the train state donated, and the held-out
evaluation (:class:`~jax_instant4d.train.evaluate.Evaluator`). A step whose loss or gradients are not
finite leaves every parameter and optimiser state as it was and counts itself in ``skipped`` and
``streak``.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jax_instant4d.config import ConfigDict
from jax_instant4d.train import losses as L
from jax_instant4d.train.evaluate import Evaluator
from jax_instant4d.train.forward import (
    Batch,
    ForwardPass,
    disc_inputs,
    forward,
    loss_terms,
    resolution_at,
    share_over_views,
)
from jax_instant4d.train.setup import INIT_COMPILER_OPTIONS, LOSS_NAMES, ModelFactory, TrainSetup
from jax_instant4d.train.sharding import batch_sharding, replicated
from jax_instant4d.train.state import TrainState

__all__ = ["INIT_COMPILER_OPTIONS", "LOSS_NAMES", "ModelFactory", "ForwardPass", "Trainer", "resolution_at",
           "share_over_views"]


class Trainer(TrainSetup):
    """Static parts of training (:class:`TrainSetup`); ``init``, ``step`` and ``evaluate`` run on ``mesh``.

    ``trace_counts[(res, adversarial)]`` counts how often each step variant was traced (once each is
    expected); ``compiled_variants()`` lists the variants built so far."""

    def __init__(self, cfg: ConfigDict, mesh: Mesh, model_factory: ModelFactory | None = None):
        super().__init__(cfg, mesh, model_factory)
        self._steps: dict[tuple[int, bool], Any] = {}
        self.trace_counts: Counter[tuple[int, bool]] = Counter()
        self.evaluator = Evaluator(self)

    @property
    def traces(self) -> int:
        """How often any step function was traced (one per resolution and adversarial switch is expected)."""
        return sum(self.trace_counts.values())

    def compiled_variants(self) -> list[tuple[int, bool]]:
        """The (resolution, adversarial) step variants built so far, sorted."""
        return sorted(self._steps)

    def set_loss_network(self, name: str, params: L.Params) -> None:
        """Installs a loss network's parameters directly (tests use random ones)."""
        if name not in ("lpips", "identity"):
            raise ValueError(f"unknown loss network {name!r}")
        self.nets[name] = params
        self.nets_shardings = jax.tree.map(lambda _: replicated(self.mesh), self.nets)
        self._steps.clear()

    def _keys(self, state: TrainState):
        key = jax.random.fold_in(jax.random.key(self.cfg.train.seed), state.step)
        return jax.random.split(key)

    def _generator_grads(self, state: TrainState, batch, nets, res: int, gkey, dkey, adv: bool):
        """The generator's loss, its terms, the rendered outputs, updated model variables, and the
        gradients with respect to the trainable params."""

        def gen_loss(params):
            model = self.mdef.merge(params, state.frozen, state.rest, gkey)
            out = forward(model, batch, res, self.cfg.model.image_size, self.mesh,
                          motion_codes=self.weights["motion"] > 0)
            terms = loss_terms(out, batch, nets, bool(self.cfg.train.loss.motion_relative),
                               structural=self.weights["ssim"] > 0,
                               change_weighting=str(self.cfg.train.loss.expression_change_weighting))
            if adv:
                disc = self.ddef.merge(state.disc, {}, state.disc_rest, dkey)
                fake, _, cond = disc_inputs(out)
                terms["adversarial"] = L.generator_adversarial(disc(fake, cond))
            else:
                terms["adversarial"] = jnp.zeros((), jnp.float32)
            total = sum(self.weights[n] * terms[n] for n in LOSS_NAMES)
            return total, (terms, out, self.mdef.rest_of(model))

        return jax.value_and_grad(gen_loss, has_aux=True)(state.params)

    def grads_fn(self, res: int, adversarial: bool = False):
        """Forward and backward pass only (no optimiser, no discriminator update): for benchmarks."""

        def fn(state, batch, nets):
            gkey, dkey = self._keys(state)
            (loss, _), grads = self._generator_grads(state, batch, nets, res, gkey, dkey, adversarial)
            return loss, grads

        return jax.jit(fn, in_shardings=(self.state_shardings, batch_sharding(self.mesh), self.nets_shardings),
                       out_shardings=(replicated(self.mesh), self.state_shardings.params))

    def _train_step(self, state: TrainState, batch: dict[str, jax.Array], nets: dict[str, Any], *, res: int,
                    adv: bool):
        self.trace_counts[(res, adv)] += 1
        t = self.cfg.train
        gkey, dkey = self._keys(state)
        (loss, (terms, out, new_rest)), grads = self._generator_grads(state, batch, nets, res, gkey, dkey, adv)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        disc, disc_opt, d_loss = state.disc, state.disc_opt_state, jnp.zeros((), jnp.float32)
        if adv:
            fake, real, cond = disc_inputs(out)
            fake = jax.lax.stop_gradient(fake)

            def disc_loss(dp):
                d = self.ddef.merge(dp, {}, state.disc_rest, dkey)
                real_logits = d(real, cond)
                value = L.discriminator_adversarial(real_logits, d(fake, cond))
                if t.disc.r1 > 0:
                    g = jax.grad(lambda x: jnp.sum(d(x, cond)))(real)
                    value = value + 0.5 * t.disc.r1 * jnp.mean(jnp.sum(g * g, axis=(1, 2, 3)))
                return value

            d_loss, d_grads = jax.value_and_grad(disc_loss)(state.disc)
            d_updates, disc_opt = self.dtx.update(d_grads, state.disc_opt_state, state.disc)
            disc = optax.apply_updates(state.disc, d_updates)
            ok = ok & jnp.isfinite(d_loss) & jnp.isfinite(optax.tree.norm(d_grads))

        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        ema = state.ema
        if ema is not None:
            decay = t.ema_decay
            ema = pick(jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params), ema)
        bad = 1 - ok.astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1, params=pick(params, state.params), frozen=state.frozen,
            rest=pick(new_rest, state.rest), opt_state=pick(opt_state, state.opt_state), ema=ema,
            disc=pick(disc, state.disc), disc_rest=state.disc_rest,
            disc_opt_state=pick(disc_opt, state.disc_opt_state),
            skipped=state.skipped + bad, streak=jnp.where(ok, 0, state.streak + 1))
        psnr = L.psnr(out.rgb[:, 1:].reshape(-1, res, res, out.rgb.shape[-1]),
                      out.target[:, 1:].reshape(-1, res, res, out.rgb.shape[-1]))
        metrics = {"loss": loss, **{f"loss_{n}": terms[n] for n in LOSS_NAMES}, "d_loss": d_loss,
                   "psnr": jnp.mean(psnr), "grad_norm": grad_norm, "lr": self.schedule(state.step),
                   "overflow": out.overflow, "nonfinite": bad, "skipped": new_state.skipped,
                   "streak": new_state.streak, "adversarial_on": jnp.asarray(int(adv), jnp.int32)}
        return new_state, metrics

    def step_fn(self, res: int, adversarial: bool = False):
        """The compiled step at render resolution ``res``, with or without the adversarial loss and the
        discriminator's update (each variant compiled once and cached).

        The adversarial switch is static rather than a ``lax.cond``: XLA's CPU backend runs the
        convolutions inside a conditional ~60x slower than outside. A run thus compiles once per
        resolution, plus once more at the step where the adversarial loss switches on."""
        key = (int(res), bool(adversarial))
        if key not in self._steps:
            rep = replicated(self.mesh)
            self._steps[key] = jax.jit(
                partial(self._train_step, res=key[0], adv=key[1]),
                in_shardings=(self.state_shardings, batch_sharding(self.mesh), self.nets_shardings),
                out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        return self._steps[key]

    def step(self, state: TrainState, batch: dict[str, jax.Array], res: int,
             adversarial: bool | None = None) -> tuple[TrainState, dict]:
        """One step; ``adversarial=None`` reads the state's step counter to decide."""
        if adversarial is None:
            adversarial = self.adversarial_at(int(jax.device_get(state.step)))
        with jax.set_mesh(self.mesh):
            return self.step_fn(res, adversarial)(state, batch, self.nets)

    def evaluate(self, state: TrainState, batches: list[Batch], num_images: int = 4) -> tuple[dict, dict]:
        """Held-out metrics averaged over ``batches`` (global arrays) and images of the first batch
        (:class:`~jax_instant4d.train.evaluate.Evaluator`)."""
        return self.evaluator(state, batches, num_images)
