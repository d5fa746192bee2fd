"""The forward pass of a training step and its losses, as plain functions of (model, batch).

Each example is a self-reenactment pair: the avatar encoded from the source is rendered (i) with its
own motion code at the source camera, reconstructing the source, and (ii) with the motion code of
each of the K driving frames at that target's camera, compared with the teacher's frame. All targets
of one time step share one driving code (their codes are averaged), so views differ only by camera.
Used by the step (:mod:`jax_instant4d.train.step`) and the held-out evaluation
(:mod:`jax_instant4d.train.evaluate`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PyTree

from jax_instant4d import render
from jax_instant4d.data import record
from jax_instant4d.model.avatar import Avatar, Motion
from jax_instant4d.train import losses as L

Batch = dict[str, jax.Array]


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


def resize_square(x: Float[Array, "B H H *C"], size: int) -> Float[Array, "B S S *C"]:
    """Square images or masks to ``size``: area-downsampled, or bilinearly upsampled."""
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


class ForwardPass(NamedTuple):
    """The forward pass's outputs for the losses: M = 1 + K views per example, the source view first."""

    rgb: Float[Array, "B M h w 3"]
    target: Float[Array, "B M h w 3"]
    z_src: Motion  # motion of the source, leaves [B, ...]
    z_drv: Motion  # motion of the driving frames, leaves [B, K, ...]
    delta_f: Array
    overflow: Int[Array, ""]
    # the frozen motion encoder's codes of the M renders and of their targets ([B, M, D] each, the source view
    # first), for the motion-consistency loss; None when that loss is off
    codes: tuple[Float[Array, "B M D"], Float[Array, "B M D"]] | None = None
    # the avatar with its own motion at the K target cameras, and the teacher's undriven views there (the batch's
    # "undriven"), for the expression-change loss; None without them
    undriven: tuple[Float[Array, "B K h w 3"], Float[Array, "B K h w 3"]] | None = None


def render_views(model: nnx.Module, avatar: Avatar, z: Motion, w2c: Float[Array, "B M 4 4"],
                 intr: Float[Array, "B M 4"], res: int, mesh: Mesh | None
                 ) -> tuple[Float[Array, "B M r r 3"], dict[str, Any]]:
    """Animates each example's avatar with M motions (leaves [B, M, ...]) at M cameras ([B, M, 4, 4],
    [B, M, 4]); returns rgb [B, M, res, res, 3] and the model's aux outputs. ``mesh``: split the
    rendering over its batch axes (``None`` or one device: no split)."""
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    rgb, _alpha, _depth, aux = model.animate(avatar, z, render.Camera(w2c, intr), res, res, mesh=mesh)
    return rgb, aux

def encode_batch(model: nnx.Module, batch: Batch, image_size: int) -> tuple[Avatar, Motion, Motion]:
    """The avatars of the batch's sources (at the model's ``image_size``), their own motion and the
    driving frames' motion (leaves [B, K, ...], shared over the views of one time step)."""
    size = int(image_size)
    src = resize_square(batch["source"], size)
    b, k = batch["driving"].shape[:2]
    drv = resize_square(batch["driving"].reshape(b * k, *batch["driving"].shape[2:]), size)
    avatar = model.encode(src)
    if model.motion_oracle:  # model.motion.oracle: the ground-truth expressions' codes
        z_src = model.oracle_motion(record.normalise_expression(batch["source_expression"]))
        avatar = avatar._replace(z_src=z_src)
        expr = batch["expression"]
        z_drv = model.oracle_motion(record.normalise_expression(expr.reshape(b * k, expr.shape[-1])))
    else:
        z_src = avatar.z_src
        z_drv = model.motion(drv)
    z_drv = jax.tree.map(lambda x: x.reshape(b, k, *x.shape[1:]), z_drv)
    return avatar, z_src, share_over_views(z_drv, batch["time"])


def forward(model: nnx.Module, batch: Batch, res: int, image_size: int, mesh: Mesh | None,
            motion_codes: bool = False) -> ForwardPass:
    """Renders each example at its source camera with its own motion and at its K target cameras with
    the driving motions, at ``res``; the targets resized to ``res``; the model's δf and overflow (a
    model whose ``animate`` gives no ``delta`` or ``overflow`` is an error). ``motion_codes``: also the
    motion encoder's codes of the M renders and of their targets (:func:`motion_code_pair`). A batch with
    ``undriven`` views: the avatar is also rendered with its own motion at the K target cameras (in the same
    rendering call), beside them."""
    avatar, z_src, z_drv = encode_batch(model, batch, image_size)
    data_res = batch["source"].shape[1]
    b, k = batch["target_w2c"].shape[:2]
    undriven = "undriven" in batch
    z = _stack(z_src, z_drv)
    w2c = jnp.concatenate([batch["source_w2c"][:, None], batch["target_w2c"]], axis=1)
    intr = jnp.concatenate([batch["source_intrinsics"][:, None], batch["target_intrinsics"]], axis=1)
    if undriven:  # K more views: the source's motion at the target cameras
        z = jax.tree.map(lambda a, s: jnp.concatenate([a, jnp.repeat(s[:, None], k, axis=1)], axis=1), z, z_src)
        w2c = jnp.concatenate([w2c, batch["target_w2c"]], axis=1)
        intr = jnp.concatenate([intr, batch["target_intrinsics"]], axis=1)
    rgb, aux = render_views(model, avatar, z, w2c, render.scale_intrinsics(intr, data_res, res), res, mesh)
    missing = [n for n in ("delta", "overflow") if n not in aux]
    if missing:
        raise ValueError(f"{type(model).__name__}.animate returned no {' or '.join(map(repr, missing))} in its aux "
                         f"outputs (has {sorted(aux)}): the δf penalty and the overflow count need them")
    m = 1 + k
    delta_f, overflow = aux["delta"][:, :m], aux["overflow"][:, :m]  # the undriven views' δf is the source view's
    und = None
    if undriven:
        teacher = resize_square(batch["undriven"].reshape(b * k, *batch["undriven"].shape[2:]), res)
        und = (rgb[:, m:], teacher.reshape(rgb[:, m:].shape))
        rgb = rgb[:, :m]
    target = jnp.concatenate([batch["source"][:, None], batch["target"]], axis=1)
    target = resize_square(target.reshape(b * m, *target.shape[2:]), res).reshape(rgb.shape)
    overflow = jnp.sum(overflow).astype(jnp.int32)
    codes = motion_code_pair(model, rgb, target, image_size) if motion_codes else None
    return ForwardPass(rgb, target, z_src, z_drv, delta_f, overflow, codes, und)


def motion_code_pair(model: nnx.Module, rgb: Float[Array, "B M r r 3"], target: Float[Array, "B M r r 3"],
                     image_size: int) -> tuple[Float[Array, "B M D"], Float[Array, "B M D"]]:
    """The motion encoder's codes of renders and of their targets, each fed as driving frames are (at
    ``image_size``, then the face crop). The target's code carries no gradient; the render's
    carries it back to the avatar (the encoder itself must be frozen: the loss would otherwise teach it to
    read every frame alike)."""
    b, m, r = rgb.shape[:3]
    both = jnp.concatenate([rgb.reshape(b * m, r, r, -1), jax.lax.stop_gradient(target).reshape(b * m, r, r, -1)])
    code = model.motion(resize_square(both, int(image_size)), input_gradient=True).code
    code = code.reshape(2, b, m, -1)
    return code[0], jax.lax.stop_gradient(code[1])


def loss_terms(out: ForwardPass, batch: Batch, nets: dict[str, L.Params], motion_relative: bool = True,
               structural: bool = False, change_weighting: str = "change") -> dict[str, jax.Array]:
    """Every loss term but the adversarial one (a term whose network is missing, or whose codes the forward
    pass did not compute, is 0); ``motion_relative``: :func:`motion_consistency`'s form; ``structural``:
    compute the 1 - SSIM term (else 0, so that a run without it compiles the step it compiled before);
    ``change_weighting``: :func:`expression_change`'s ``weighting``."""
    b, m, res = out.rgb.shape[0], out.rgb.shape[1], out.rgb.shape[2]
    pred = out.rgb.reshape(b * m, res, res, -1)
    tgt = out.target.reshape(pred.shape)
    k = m - 1
    masks = jnp.clip(batch["target_eyes"] + batch["target_mouth"], 0.0, 1.0)
    masks = resize_square(masks.reshape(b * k, *masks.shape[2:]), res)
    zero = jnp.zeros((), jnp.float32)
    return {
        "l1": L.l1(pred, tgt),
        "ssim": L.structural(pred, tgt) if structural else zero,
        "lpips": jnp.mean(L.lpips(nets["lpips"], pred, tgt)) if "lpips" in nets else zero,
        "identity": L.identity_loss(nets["identity"], pred, tgt) if "identity" in nets else zero,
        "region": L.masked_l1(out.rgb[:, 1:].reshape(b * k, res, res, -1),
                              out.target[:, 1:].reshape(b * k, res, res, -1), masks),
        "delta_f": jnp.mean(jnp.square(out.delta_f)),
        "motion": motion_consistency(*out.codes, relative=motion_relative) if out.codes is not None else zero,
        "expression_change": expression_change(out, change_weighting) if out.undriven is not None else zero,
    }


CHANGE_WEIGHTINGS = ("change", "uniform")


def expression_change(out: ForwardPass, weighting: str = "change") -> Float[Array, ""]:
    """L1 between the change the driving motion makes to the render and the change it makes to the teacher's
    view, at each of the K target cameras: (driven render - undriven render) against (teacher view - undriven
    teacher view). The avatar's reconstruction error, shared by its two renders, cancels; what is left is how
    far the driven render's change is from the expression's. Needs ``out.undriven``.

    ``weighting``: "change", each pixel weighted by how much the teacher's view changes there (the sum over the
    channels of |teacher view - undriven teacher view|; the weighted mean), so that a pixel the expression leaves
    alone adds nothing; "uniform", the plain mean over all pixels. Uniform L1 pulls every change of the render
    where the teacher's is 0 towards 0 with a constant force (its gradient is the sign), whatever its size: in
    the expression-change sweep it stopped the driving frame from changing the render at all."""
    if out.undriven is None:
        raise ValueError("expression_change needs the forward pass's undriven views (a batch with 'undriven')")
    if weighting not in CHANGE_WEIGHTINGS:
        raise ValueError(f"expression_change weighting must be one of {CHANGE_WEIGHTINGS}, got {weighting!r}")
    und_rgb, und_target = out.undriven
    change = out.target[:, 1:] - und_target
    err = jnp.abs((out.rgb[:, 1:] - und_rgb) - change)
    if weighting == "uniform":
        return jnp.mean(err)
    w = jax.lax.stop_gradient(jnp.sum(jnp.abs(change), axis=-1, keepdims=True))
    return jnp.sum(w * err) / jnp.maximum(jnp.sum(w) * err.shape[-1], 1e-12)


def motion_consistency(render: Float[Array, "B M D"], target: Float[Array, "B M D"], relative: bool = True
                       ) -> Float[Array, ""]:
    """The motion-consistency loss on the motion encoder's codes of the M renders and targets (the source
    view first): the squared distance between each driven render's code and its target's, mean over the K
    driven views; ``relative``: between their *changes* from the source view (render: the avatar with its own
    motion at the source camera; target: the source image), so that what the encoder reads in every render
    of the avatar alike (its blur, its missing detail) cancels and only the expression change counts."""
    if relative:
        render, target = render[:, 1:] - render[:, :1], target[:, 1:] - target[:, :1]
    else:
        render, target = render[:, 1:], target[:, 1:]
    return jnp.mean(jnp.sum(jnp.square(render - target), axis=-1))


def disc_inputs(out: ForwardPass) -> tuple[Float[Array, "N r r 3"], Float[Array, "N r r 3"], Float[Array, "N Z2"]]:
    """The discriminator's fake and real images (the K targets) and its condition [z_src, z_drv]."""
    b, m, res = out.rgb.shape[:3]
    k = m - 1
    c_src, c_drv = out.z_src.code.reshape(b, 1, -1), out.z_drv.code.reshape(b, k, -1)
    cond = jnp.concatenate([jnp.broadcast_to(c_src, c_drv.shape), c_drv], axis=-1)
    cond = jax.lax.stop_gradient(cond.reshape(b * k, -1))
    fake = out.rgb[:, 1:].reshape(b * k, res, res, -1)
    real = out.target[:, 1:].reshape(b * k, res, res, -1)
    return fake, real, cond
