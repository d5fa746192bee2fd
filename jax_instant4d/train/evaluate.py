"""Held-out evaluation during training: PSNR of the driven avatar, of the undriven one (``z_drv =
z_src``) and of the source shown unchanged, on the full frame and on the eyes + mouth, with the EMA
parameters when the run keeps them; and a few images for the logs.

The metrics are :mod:`jax_instant4d.image_metrics`' (the same as ``instant4d eval``'s).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from jax_instant4d.image_metrics import masked_psnr, psnr
from jax_instant4d.train.forward import Batch, encode_batch, render_views
from jax_instant4d.train.setup import TrainSetup
from jax_instant4d.train.sharding import batch_sharding, replicated
from jax_instant4d.train.state import TrainState


class Evaluator:
    """Evaluates train states of ``setup`` on its mesh (one compiled function per number of images)."""

    def __init__(self, setup: TrainSetup):
        self.setup = setup
        self._compiled: dict[int, Any] = {}

    def _eval_step(self, params: PyTree, frozen: PyTree, rest: PyTree, batch: Batch, num_images: int
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Per-batch sums of the metrics, and the first ``num_images`` examples' images."""
        setup = self.setup
        model = setup.mdef.merge(params, frozen, rest, jax.random.key(0))
        model.eval()  # running statistics, no dropout: a frame's code must not depend on its batch
        avatar, z_src, z_drv = encode_batch(model, batch, setup.cfg.model.image_size)
        res = batch["target"].shape[2]
        b, k = batch["target"].shape[:2]
        z_static = jax.tree.map(lambda s, d: jnp.broadcast_to(s[:, None], d.shape), z_src, z_drv)
        z = jax.tree.map(lambda d, s: jnp.concatenate([d, s], axis=1), z_drv, z_static)
        w2c = jnp.concatenate([batch["target_w2c"]] * 2, axis=1)
        intr = jnp.concatenate([batch["target_intrinsics"]] * 2, axis=1)
        rgb, _ = render_views(model, avatar, z, w2c, intr, res, setup.mesh)
        flat = lambda x: x.reshape(b * k, res, res, -1)
        tgt = flat(batch["target"])
        src = flat(jnp.broadcast_to(batch["source"][:, None], batch["target"].shape))
        regions = jnp.clip(batch["target_eyes"] + batch["target_mouth"], 0.0, 1.0).reshape(b * k, res, res)
        reg, has = masked_psnr(flat(rgb[:, :k]), tgt, regions)
        reg_static, _ = masked_psnr(flat(rgb[:, k:]), tgt, regions)
        reg_source, _ = masked_psnr(src, tgt, regions)
        sums = {"psnr": jnp.sum(psnr(flat(rgb[:, :k]), tgt)),
                "psnr_static": jnp.sum(psnr(flat(rgb[:, k:]), tgt)),
                "psnr_source": jnp.sum(psnr(src, tgt)),
                "l1": jnp.sum(jnp.mean(jnp.abs(jnp.clip(flat(rgb[:, :k]), 0, 1) - tgt), axis=(1, 2, 3))),
                "count": jnp.asarray(b * k, jnp.float32),
                # eyes + mouth (where expressions show): averaged over the images that have such pixels
                "region_psnr": jnp.sum(reg), "region_psnr_static": jnp.sum(reg_static),
                "region_psnr_source": jnp.sum(reg_source), "region_count": jnp.sum(has.astype(jnp.float32))}
        n = min(num_images, b)
        images = {"source": batch["source"][:n], "driving": batch["driving"][:n, 0], "teacher": batch["target"][:n, 0],
                  "ours": jnp.clip(rgb[:n, 0], 0.0, 1.0), "static": jnp.clip(rgb[:n, k], 0.0, 1.0)}
        return sums, images

    def __call__(self, state: TrainState, batches: list[Batch], num_images: int = 4
                 ) -> tuple[dict[str, float], dict[str, Any]]:
        """Held-out metrics (PSNR of ours, of the undriven avatar ``z_drv = z_src`` and of the source
        shown unchanged) averaged over ``batches`` (global arrays), and images of the first batch."""
        mesh = self.setup.mesh
        if num_images not in self._compiled:
            rep = replicated(mesh)
            sh = self.setup.state_shardings
            self._compiled[num_images] = jax.jit(partial(self._eval_step, num_images=num_images),
                                                 in_shardings=(sh.params, sh.frozen, sh.rest, batch_sharding(mesh)),
                                                 out_shardings=(rep, rep))
        fn = self._compiled[num_images]
        params = state.ema if state.ema is not None else state.params
        totals, images = {}, None
        with jax.set_mesh(mesh):
            for batch in batches:
                sums, imgs = jax.device_get(fn(params, state.frozen, state.rest, batch))
                images = imgs if images is None else images
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        count = max(totals.pop("count", 0.0), 1.0)
        region_count = max(totals.pop("region_count", 0.0), 1.0)
        return {k: v / (region_count if k.startswith("region_") else count) for k, v in totals.items()}, images
