"""The distillation step: forward pass, losses, optimiser updates, non-finite skipping; and evaluation.

Each example is a self-reenactment pair: the avatar encoded from the source is rendered (i) with its
own motion code at the source camera, reconstructing the source, and (ii) with the motion code of
each of the K driving frames at that target's camera, compared with the teacher's frame. All targets
of one time step share one driving code (their codes are averaged), so views differ only by camera.

:class:`Trainer` owns the static parts (module definitions, optimisers, shardings, loss networks) and
compiles one step function per render resolution, with explicit in/out shardings and the train state
donated. A step whose loss or gradients are not finite leaves every parameter and optimiser state as
it was and counts itself in ``skipped`` and ``streak``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PyTree

from jax_instant4d import render
from jax_instant4d.config import ConfigDict
from jax_instant4d.train import losses as L
from jax_instant4d.train import motion_weights
from jax_instant4d.train.discriminator import Discriminator
from jax_instant4d.train.sharding import batch_sharding, like_params_shardings, param_shardings, replicated
from jax_instant4d.train.state import ModelDef, TrainState, make_disc_optimizer, make_optimizer

ModelFactory = Callable[..., nnx.Module]

LOSS_NAMES = ("l1", "lpips", "identity", "region", "delta_f", "adversarial")
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def share_over_views(z: PyTree, time: Int[Array, "B K"]) -> PyTree:
    """Averages the motion (every leaf ``[B, K, ...]``) of the targets that show the same time step:
    all views of one teacher frame are driven by one motion."""
    same = (time[:, :, None] == time[:, None, :]).astype(jnp.float32)
    same = same / jnp.sum(same, axis=-1, keepdims=True)

    def one(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return jnp.einsum("bkj,bjd->bkd", same.astype(x.dtype), flat).reshape(x.shape)

    return jax.tree.map(one, z)


def _stack(first: PyTree, rest: PyTree) -> PyTree:
    """Leaves [B, ...] and [B, K, ...] -> [B, 1 + K, ...]."""
    return jax.tree.map(lambda a, b: jnp.concatenate([a[:, None], b], axis=1), first, rest)


def _code(z: PyTree) -> jax.Array:
    """The motion code of a motion pytree (``Motion.code``, or the array itself), batch dims kept."""
    return z.code if hasattr(z, "code") else jax.tree.leaves(z)[0]


def _resize(x, size: int):
    if x.shape[1] == size:
        return x
    if x.shape[1] > size:
        return L.resize_to(x, size)
    return jax.image.resize(x, (x.shape[0], size, size, *x.shape[3:]), method="linear")


def resolution_at(step: int, schedule, full: int) -> int:
    """Render resolution at ``step`` under ``train.resolution_schedule`` ((from_step, res), ...)."""
    res = full
    for start, r in sorted((int(s), int(r)) for s, r in schedule) if schedule else ():
        if step >= start:
            res = r
    return res


class Rendered(NamedTuple):
    rgb: Float[Array, "B M h w 3"]
    target: Float[Array, "B M h w 3"]
    z_src: PyTree  # motion of the source, leaves [B, ...]
    z_drv: PyTree  # motion of the driving frames, leaves [B, K, ...]
    delta_f: Array
    overflow: Int[Array, ""]


class Trainer:
    """Static parts of training; ``init``, ``step`` and ``evaluate`` run on ``mesh``."""

    def __init__(self, cfg: ConfigDict, mesh: Mesh, model_factory: ModelFactory | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.mesh, self.log = cfg, mesh, log
        tcfg = cfg.train
        if model_factory is None:
            from jax_instant4d.model.avatar import Instant4D

            model_factory = Instant4D
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
        self.dtx = make_disc_optimizer(tcfg)
        w = tcfg.loss
        self.adversarial = w.adversarial > 0 and w.adversarial_start >= 0
        self.weights = {k: float(w[k]) for k in LOSS_NAMES}
        if not self.adversarial:
            self.weights["adversarial"] = 0.0
        self.nets, self.notes = self._loss_networks()
        for note in self.notes:
            log(note)

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
        self._steps: dict[tuple[int, bool], Any] = {}
        self._eval = None
        self.traces = 0  # how often a step function was traced (one per resolution is expected)

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

    def set_loss_network(self, name: str, params: L.Params) -> None:
        """Installs a loss network's parameters directly (tests use random ones)."""
        if name not in ("lpips", "identity"):
            raise ValueError(f"unknown loss network {name!r}")
        self.nets[name] = params
        self.nets_shardings = jax.tree.map(lambda _: replicated(self.mesh), self.nets)
        self._steps.clear()
        self._eval = None

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
        self.log(f"motion encoder: pretrained weights {self.cfg.model.motion.weights} (sha256 {sha[:16]}), "
                 + ("frozen" if n_frozen else "trainable"))
        return state.replace(params=params, frozen=frozen, rest=rest, ema=ema)

    # ----------------------------------------------------------------------------------------------
    # forward pass
    # ----------------------------------------------------------------------------------------------

    def _render(self, model, avatar, z, w2c, intr, res: int):
        """Animates each example's avatar with M motions (leaves [B, M, ...]) at M cameras ([B, M, 4, 4],
        [B, M, 4]); returns rgb [B, M, res, res, 3] and the model's aux outputs."""
        mesh = self.mesh if self.mesh.size > 1 else None
        rgb, _alpha, _depth, aux = model.animate(avatar, z, render.Camera(w2c, intr), res, res, mesh=mesh)
        return rgb, aux

    def _encode(self, model, batch):
        size = int(self.cfg.model.image_size)
        src = _resize(batch["source"], size)
        b, k = batch["driving"].shape[:2]
        drv = _resize(batch["driving"].reshape(b * k, *batch["driving"].shape[2:]), size)
        avatar = model.encode(src)
        z_src = getattr(avatar, "z_src", None)
        if z_src is None:
            z_src = model.motion(src)
        z_drv = jax.tree.map(lambda x: x.reshape(b, k, *x.shape[1:]), model.motion(drv))
        return avatar, z_src, share_over_views(z_drv, batch["time"])

    def _forward(self, model, batch, res: int) -> Rendered:
        avatar, z_src, z_drv = self._encode(model, batch)
        data_res = batch["source"].shape[1]
        z = _stack(z_src, z_drv)
        w2c = jnp.concatenate([batch["source_w2c"][:, None], batch["target_w2c"]], axis=1)
        intr = render.scale_intrinsics(
            jnp.concatenate([batch["source_intrinsics"][:, None], batch["target_intrinsics"]], axis=1),
            data_res, res)
        rgb, aux = self._render(model, avatar, z, w2c, intr, res)
        b, m = w2c.shape[:2]
        target = jnp.concatenate([batch["source"][:, None], batch["target"]], axis=1)
        target = _resize(target.reshape(b * m, *target.shape[2:]), res).reshape(rgb.shape)
        delta_f = aux.get("delta", aux.get("delta_f", jnp.zeros((), jnp.float32)))
        overflow = jnp.sum(aux.get("overflow", jnp.zeros((), jnp.int32))).astype(jnp.int32)
        return Rendered(rgb, target, z_src, z_drv, delta_f, overflow)

    def _terms(self, out: Rendered, batch, nets) -> dict[str, jax.Array]:
        b, m, res = out.rgb.shape[0], out.rgb.shape[1], out.rgb.shape[2]
        pred = out.rgb.reshape(b * m, res, res, -1)
        tgt = out.target.reshape(pred.shape)
        k = m - 1
        masks = jnp.clip(batch["target_eyes"] + batch["target_mouth"], 0.0, 1.0)
        masks = _resize(masks.reshape(b * k, *masks.shape[2:]), res)
        zero = jnp.zeros((), jnp.float32)
        return {
            "l1": L.l1(pred, tgt),
            "lpips": jnp.mean(L.lpips(nets["lpips"], pred, tgt)) if "lpips" in nets else zero,
            "identity": L.identity_loss(nets["identity"], pred, tgt) if "identity" in nets else zero,
            "region": L.masked_l1(out.rgb[:, 1:].reshape(b * k, res, res, -1),
                                  out.target[:, 1:].reshape(b * k, res, res, -1), masks),
            "delta_f": jnp.mean(jnp.square(out.delta_f)),
        }

    def _disc_inputs(self, out: Rendered):
        b, m, res = out.rgb.shape[:3]
        k = m - 1
        c_src, c_drv = _code(out.z_src).reshape(b, 1, -1), _code(out.z_drv).reshape(b, k, -1)
        cond = jnp.concatenate([jnp.broadcast_to(c_src, c_drv.shape), c_drv], axis=-1)
        cond = jax.lax.stop_gradient(cond.reshape(b * k, -1))
        fake = out.rgb[:, 1:].reshape(b * k, res, res, -1)
        real = out.target[:, 1:].reshape(b * k, res, res, -1)
        return fake, real, cond

    # ----------------------------------------------------------------------------------------------
    # the step
    # ----------------------------------------------------------------------------------------------

    def _keys(self, state: TrainState):
        key = jax.random.fold_in(jax.random.key(self.cfg.train.seed), state.step)
        return jax.random.split(key)

    def adversarial_at(self, step: int) -> bool:
        """Whether the adversarial loss (and the discriminator's update) is on at ``step``."""
        return bool(self.adversarial and step >= self.cfg.train.loss.adversarial_start)

    def _generator_grads(self, state: TrainState, batch, nets, res: int, gkey, dkey, adv: bool):
        """The generator's loss, its terms, the rendered outputs, updated model variables, and the
        gradients with respect to the trainable params."""

        def gen_loss(params):
            model = self.mdef.merge(params, state.frozen, state.rest, gkey)
            out = self._forward(model, batch, res)
            terms = self._terms(out, batch, nets)
            if adv:
                disc = self.ddef.merge(state.disc, {}, state.disc_rest, dkey)
                fake, _, cond = self._disc_inputs(out)
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
        self.traces += 1
        t = self.cfg.train
        gkey, dkey = self._keys(state)
        (loss, (terms, out, new_rest)), grads = self._generator_grads(state, batch, nets, res, gkey, dkey, adv)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        disc, disc_opt, d_loss = state.disc, state.disc_opt_state, jnp.zeros((), jnp.float32)
        if adv:
            fake, real, cond = self._disc_inputs(out)
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

    # ----------------------------------------------------------------------------------------------
    # evaluation
    # ----------------------------------------------------------------------------------------------

    def _eval_step(self, params, frozen, rest, batch, num_images: int):
        model = self.mdef.merge(params, frozen, rest, jax.random.key(0))
        model.eval()  # running statistics, no dropout: a frame's code must not depend on its batch
        avatar, z_src, z_drv = self._encode(model, batch)
        res = batch["target"].shape[2]
        b, k = batch["target"].shape[:2]
        z_static = jax.tree.map(lambda s, d: jnp.broadcast_to(s[:, None], d.shape), z_src, z_drv)
        z = jax.tree.map(lambda d, s: jnp.concatenate([d, s], axis=1), z_drv, z_static)
        w2c = jnp.concatenate([batch["target_w2c"]] * 2, axis=1)
        intr = jnp.concatenate([batch["target_intrinsics"]] * 2, axis=1)
        rgb, _ = self._render(model, avatar, z, w2c, intr, res)
        flat = lambda x: x.reshape(b * k, res, res, -1)
        tgt = flat(batch["target"])
        src = flat(jnp.broadcast_to(batch["source"][:, None], batch["target"].shape))
        regions = jnp.clip(batch["target_eyes"] + batch["target_mouth"], 0.0, 1.0).reshape(b * k, res, res)
        reg, has = L.masked_psnr(flat(rgb[:, :k]), tgt, regions)
        reg_static, _ = L.masked_psnr(flat(rgb[:, k:]), tgt, regions)
        reg_source, _ = L.masked_psnr(src, tgt, regions)
        sums = {"psnr": jnp.sum(L.psnr(flat(rgb[:, :k]), tgt)),
                "psnr_static": jnp.sum(L.psnr(flat(rgb[:, k:]), tgt)),
                "psnr_source": jnp.sum(L.psnr(src, tgt)),
                "l1": jnp.sum(jnp.mean(jnp.abs(jnp.clip(flat(rgb[:, :k]), 0, 1) - tgt), axis=(1, 2, 3))),
                "count": jnp.asarray(b * k, jnp.float32),
                # eyes + mouth (where expressions show): averaged over the images that have such pixels
                "region_psnr": jnp.sum(reg), "region_psnr_static": jnp.sum(reg_static),
                "region_psnr_source": jnp.sum(reg_source), "region_count": jnp.sum(has.astype(jnp.float32))}
        n = min(num_images, b)
        images = {"source": batch["source"][:n], "driving": batch["driving"][:n, 0], "teacher": batch["target"][:n, 0],
                  "ours": jnp.clip(rgb[:n, 0], 0.0, 1.0), "static": jnp.clip(rgb[:n, k], 0.0, 1.0)}
        return sums, images

    def evaluate(self, state: TrainState, batches: list[dict[str, jax.Array]],
                 num_images: int = 4) -> tuple[dict, dict]:
        """Held-out metrics (PSNR of ours, of the undriven avatar ``z_drv = z_src`` and of the source
        shown unchanged) averaged over ``batches`` (global arrays), and images of the first batch."""
        if self._eval is None:
            rep = replicated(self.mesh)
            sh = self.state_shardings
            self._eval = jax.jit(partial(self._eval_step, num_images=num_images),
                                 in_shardings=(sh.params, sh.frozen, sh.rest, batch_sharding(self.mesh)),
                                 out_shardings=(rep, rep))
        params = state.ema if state.ema is not None else state.params
        totals, images = {}, None
        with jax.set_mesh(self.mesh):
            for batch in batches:
                sums, imgs = jax.device_get(self._eval(params, state.frozen, state.rest, batch))
                images = imgs if images is None else images
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        count = max(totals.pop("count", 0.0), 1.0)
        region_count = max(totals.pop("region_count", 0.0), 1.0)
        return {k: v / (region_count if k.startswith("region_") else count) for k, v in totals.items()}, images
