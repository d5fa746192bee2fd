"""The evaluation run behind ``instant4d eval``: self- and cross-reenactment on a teacher-clip split.

Protocol (every frame of the first ``max_clips`` clips of the split, in dataset order):

* **self-reenactment**: clip c's source is encoded once and driven by c's own driving frames; the
  frame of time t is rendered at each of c's teacher cameras (t, v) and compared with the teacher
  view (t, v). On ``synthetic_heads`` the driving frames show another identity B performing e_t and
  the teacher views show the source identity A performing e_t, so this is the training task on
  held-out identities.
* **cross-reenactment**: clip c's source is driven by the driving frames of the next clip d (in
  order, cyclically) whose source identity differs, rendered at c's teacher cameras for the first
  ``min(T_c, T_d)`` time steps. The reference on ``synthetic_heads`` is the ground truth rendered
  directly: c's identity performing d's expressions at c's cameras (:mod:`.groundtruth`). Real teacher
  clips have no such reference: only reference-free metrics (identity, consistency) are reported there.

Metrics per frame, averaged over frames: PSNR and SSIM (:mod:`.metrics`) against the reference;
LPIPS-VGG against the reference and identity similarity to the source portrait when their weights
files are given (``--lpips-weights`` / ``--identity-weights``, or ``train.loss.*_weights`` of the run's
config), absent (``null``) otherwise; on ``synthetic_heads`` the expression error of ours and of the
reference (the teacher's frames for self, the ground truth for cross) against the ground-truth
expression (:mod:`.expression`); the multi-view consistency of ours (:mod:`.consistency`), pairing each
rendered camera with the same camera orbited ``consistency_degrees`` towards the front. For
self-reenactment also the PSNR over the eye and mouth regions (where expressions show; clips that record
region masks), and both PSNRs of two baselines on the same frames: the same avatar undriven
(z_drv = z_src, what the driving frame adds) and the source image shown unchanged; per-frame values are
kept (``per_frame``) so runs evaluated on the same frames can be compared pairwise. Then the
animation frame rate (batch 1, ``animate`` only, jitted, after warm-up, at ``model.image_size``) and
the encoding time of one source image, on this machine's default JAX device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_instant4d import perceptual, render
from jax_instant4d.eval import consistency as cons
from jax_instant4d.eval import expression as expr_lib
from jax_instant4d.eval import groundtruth, metrics
from jax_instant4d.image_metrics import resize_to

METRIC_KEYS = ("psnr", "ssim", "lpips", "identity", "expression_error", "expression_error_teacher", "consistency")
CONSISTENCY_DEGREES = 15.0
# self-reenactment only: the eye + mouth PSNR of ours, and both metrics for two baselines (the same
# model undriven, z_drv = z_src; the source image shown unchanged)
BASELINE_KEYS = ("region_psnr", "psnr_undriven", "region_psnr_undriven", "psnr_source", "region_psnr_source",
                 "psnr_ceiling", "region_psnr_ceiling")
# *_ceiling (synthetic data): the undriven avatar against the ground truth at the *source's* expression, rendered
# at the target cameras; it shows the source's expression, so what separates it from that ground truth is its
# reconstruction alone. A driven avatar that reconstructs as well and performs the driving expression exactly would
# score about this against the real targets: the most the driving frame can add at this reconstruction quality.
PER_FRAME_KEYS = ("psnr", "region_psnr", "psnr_undriven", "region_psnr_undriven", "psnr_source", "region_psnr_source",
                  "psnr_ceiling", "region_psnr_ceiling",
                  "expression_error", "expression_error_undriven", "expression_error_teacher")  # expression_*: per
# time step (the frontal frames they are read from), the others per rendered view


@dataclasses.dataclass
class Clip:
    """One clip decoded at the evaluation resolution R (images float32 in [0, 1])."""

    clip_id: str
    identity: int
    source: np.ndarray  # [R, R, 3]
    driving: np.ndarray  # [T, R, R, 3]
    targets: np.ndarray  # [T * V, R, R, 3]
    target_w2c: np.ndarray  # [T * V, 4, 4]
    target_intrinsics: np.ndarray  # [T * V, 4], pixels at R
    num_times: int
    num_views: int
    expression: np.ndarray | None  # [T, E] ground truth (synthetic only)
    identity_params: np.ndarray | None  # [P] (synthetic only)
    source_expression: np.ndarray | None = None  # [E] the source image's expression (synthetic only)
    target_regions: np.ndarray | None = None  # [T * V, R, R] eyes + mouth mask in [0, 1] (when recorded)


def _decode(data: bytes, size: int) -> np.ndarray:
    """A record's frame as training reads it, in [0, 1]."""
    from jax_instant4d.data.pipeline import decode_image

    return decode_image(data, size).astype(np.float32) / 255.0


def _regions(rec, resolution: int) -> np.ndarray | None:
    """Eyes + mouth of every target (the green and blue channels of ``target_masks``), as training reads them."""
    if not bool(rec["has_regions"]) or any(len(b) == 0 for b in rec["target_masks"]):
        return None
    m = np.stack([_decode(b, resolution) for b in rec["target_masks"]])
    return np.clip(m[..., 1] + m[..., 2], 0.0, 1.0)


def read_clips(path: str | Path, split: str, resolution: int, max_clips: int | None = None) -> list[Clip]:
    """The first ``max_clips`` clips of a split of a prepared teacher-clip dataset."""
    from jax_instant4d.data.pipeline import open_source

    source = open_source(path, split)
    n = len(source)
    if n == 0:
        raise ValueError(f"dataset {path}: split {split!r} has no clips")
    n = n if max_clips is None else min(n, int(max_clips))
    clips = []
    for i in range(n):
        rec = source[i]
        t, v = int(rec["num_times"]), int(rec["num_views"])
        scale = resolution / int(rec["resolution"])
        synthetic = bool(rec["has_expression"]) and np.asarray(rec["identity_params"]).size > 0
        clips.append(Clip(
            clip_id=str(rec["clip_id"].decode() if isinstance(rec["clip_id"], bytes) else rec["clip_id"]),
            identity=int(rec["identity_index"]),
            source=_decode(rec["source_image"], resolution),
            driving=np.stack([_decode(b, resolution) for b in rec["driving_images"]]),
            targets=np.stack([_decode(b, resolution) for b in rec["target_images"]]),
            target_w2c=np.asarray(rec["target_w2c"], np.float32),
            target_intrinsics=np.asarray(rec["target_intrinsics"], np.float32) * scale,
            num_times=t, num_views=v,
            expression=np.asarray(rec["expression"], np.float32) if synthetic else None,
            identity_params=np.asarray(rec["identity_params"], np.float32) if synthetic else None,
            source_expression=np.asarray(rec["source_expression"], np.float32) if synthetic else None,
            target_regions=_regions(rec, resolution)))
    return clips


def cross_partners(identities: list[int]) -> list[int | None]:
    """For each clip, the next clip (cyclically) with another source identity (None if there is none)."""
    n = len(identities)
    out = []
    for i in range(n):
        out.append(next(((i + k) % n for k in range(1, n) if identities[(i + k) % n] != identities[i]), None))
    return out


class _Model:
    """Jitted encode / motion / animate of a trained model (the graph split once)."""

    def __init__(self, model):
        from jax_instant4d.inference import pure_model

        pure, self.state = pure_model(model)
        self._encode = jax.jit(pure.encode)
        self._motion = jax.jit(pure.motion)
        self._animate = jax.jit(lambda st, avatar, z, w2c, intr, size: pure.animate(
            st, avatar, z, render.Camera(w2c, intr), size), static_argnums=5)

    def encode(self, source):
        return self._encode(self.state, source)

    def motion(self, frames):
        return self._motion(self.state, frames)

    def animate(self, avatar, z, w2c, intr, size: int):
        return self._animate(self.state, avatar, z, w2c, intr, int(size))


_LOADED: dict = {}  # the last checkpoint loaded (its compiled functions are reused by the next evaluation)


def _load(checkpoint, step, overrides):
    """(Trained, _Model) of a checkpoint, reused while the same step folder is evaluated again unchanged
    (e.g. both splits of one run, or a sweep's repeated calls)."""
    from jax_instant4d.inference import load_trained, resolve_checkpoint

    folder, step = resolve_checkpoint(checkpoint, step)
    key = (str(folder), int(step), tuple(overrides or ()), (folder / str(step)).stat().st_mtime_ns)
    if key not in _LOADED:
        _LOADED.clear()
        trained = load_trained(folder / str(step), overrides=list(overrides or []))
        _LOADED[key] = (trained, _Model(trained.model))
    return _LOADED[key]


def _resize(x: np.ndarray, size: int) -> jax.Array:
    return resize_to(jnp.asarray(x, jnp.float32), int(size))


@jax.jit
def _image_metrics(pred, ref):
    return metrics.psnr(pred, ref), metrics.ssim(pred, ref)


@jax.jit
def _lpips(params, pred, ref):
    return metrics.lpips_distance(params, pred, ref)


@jax.jit
def _identity(params, pred, ref):
    return metrics.identity_similarity(params, pred, ref)


@jax.jit
def _consistency(rgb_a, alpha_a, depth_a, rgb_b, alpha_b, depth_b, w2c_a, intr_a, w2c_b, intr_b):
    return cons.consistency(rgb_a, alpha_a, depth_a, rgb_b, alpha_b, depth_b, render.Camera(w2c_a, intr_a),
                            render.Camera(w2c_b, intr_b))


class _Accumulator:
    def __init__(self):
        self.values: dict[str, list[np.ndarray]] = {}
        self.frames = 0
        self.cons_total = 0.0
        self.cons_count = 0.0
        self.coverage: list[np.ndarray] = []
        self.expr_abs: list[np.ndarray] = []  # [frames, E] |regressor(ours) - truth|
        self.expression_frames = 0  # one per time step (read at the frontal camera)
        self.frame_ids: list[str] = []

    def add(self, name: str, per_frame) -> None:
        self.values.setdefault(name, []).append(np.asarray(per_frame, np.float64).reshape(-1))

    def mean(self, name: str) -> float | None:
        if name not in self.values:
            return None
        v = np.concatenate(self.values[name])
        if name.startswith("region_"):  # NaN: a frame without eye or mouth pixels
            v = v[~np.isnan(v)]
        return _finite(float(np.mean(v))) if v.size else None

    def summary(self) -> dict:
        out = {k: self.mean(k) for k in ("psnr", "ssim", "lpips", "identity", "expression_error",
                                          "expression_error_undriven", "expression_error_teacher")}
        for k in BASELINE_KEYS:
            if k in self.values:
                out[k] = self.mean(k)
        out["consistency"] = (_finite(cons.score(np.asarray([self.cons_total]), np.asarray([self.cons_count])))
                              if self.coverage else None)
        out["consistency_coverage"] = (_finite(float(np.mean(np.concatenate(self.coverage)))) if self.coverage
                                       else None)
        out["num_frames"] = int(self.frames)
        if self.expression_frames:
            out["num_expression_frames"] = int(self.expression_frames)
        if self.expr_abs:
            from jax_instant4d.data.record import EXPRESSION_NAMES

            per = np.concatenate(self.expr_abs).mean(0)
            out["expression_error_per_parameter"] = {n: float(v) for n, v in zip(EXPRESSION_NAMES, per, strict=True)}
        if self.frames:
            # Per frame, for paired comparisons between runs evaluated on the same frames (sweep collect);
            # "frames" fingerprints which frames these are.
            out["per_frame"] = {k: [None if not math.isfinite(x) else round(float(x), 4) for x in
                                    np.concatenate(self.values[k])] for k in PER_FRAME_KEYS if k in self.values}
            out["frames"] = hashlib.sha1("\n".join(self.frame_ids).encode()).hexdigest()[:16]
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _load_net(path: str, kind: str, depth: int = 50):
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{kind} weights file not found: {path}")
    return perceptual.load_weights(Path(path).expanduser(), kind, depth=depth)


def _timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Seconds per call (each call waited for: frame-by-frame latency), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / max(repeats, 1)


def evaluate(checkpoint: str | Path, split: str = "heldout", *, step: int | None = None,
             out: str | Path | None = None, markdown: str | Path | None = None, max_clips: int | None = None,
             lpips_weights: str | None = None, identity_weights: str | None = None,
             overrides: list[str] | None = None, expression: bool = True,
             regressor: expr_lib.RegressorSettings | None = None, consistency: bool = True,
             consistency_degrees: float = CONSISTENCY_DEGREES, timing_repeats: int = 20, write: bool = True,
             frames_per_call: int = 8, log: Callable[[str], None] | None = print,
             on_frames: Callable[[str, int, np.ndarray, np.ndarray | None], None] | None = None) -> dict:
    """Evaluates a checkpoint on a split; returns the result dict (the JSON's content) and, with
    ``write``, writes it to ``out`` (default ``<workdir>/eval_<split>.json``) and the markdown table to
    ``markdown`` (default ``<workdir>/eval_<split>.md``). See the module docstring for the protocol.

    ``overrides`` are config overrides (``"render.backend=xla"``) applied on top of the checkpoint's
    saved config; ``regressor`` sets the expression regressor (default :class:`RegressorSettings`
    with the config's camera model). ``on_frames(task, clip_index, ours, reference)`` (optional) sees
    every batch of frames (``[K, R, R, 3]`` in [0, 1]; reference None where there is none); frames are
    rendered ``frames_per_call`` at a time (memory: every target animates its own Gaussians). The frames
    expressions are read from come as tasks ``"self-expression"`` / ``"cross-expression"`` (ours) and
    ``"...-expression-undriven"``, with their reference."""
    from jax_instant4d.data.pipeline import ensure_dataset, resolve_split
    from jax_instant4d.eval import paper

    say = log or (lambda _m: None)
    data_split = resolve_split(split)  # ValueError naming the split
    if max_clips is not None and int(max_clips) < 1:
        raise ValueError(f"--max-clips must be >= 1, got {max_clips}")
    for given, what in ((lpips_weights, "lpips"), (identity_weights, "identity")):
        if given and not Path(given).expanduser().is_file():  # before the (slow) model load
            raise FileNotFoundError(f"{what} weights file not found: {given}")
    trained, runner = _load(checkpoint, step, overrides)
    cfg, model = trained.cfg, trained.model
    workdir = trained.checkpoints.parent
    notes: list[str] = []

    lpips_path = lpips_weights or str(cfg.train.loss.lpips_weights or "")
    id_path = identity_weights or str(cfg.train.loss.identity_weights or "")
    lpips_params = _load_net(lpips_path, "lpips") if lpips_path else None
    id_params = _load_net(id_path, "identity", int(cfg.train.loss.identity_depth)) if id_path else None
    if lpips_params is None:
        notes.append("lpips: absent, no LPIPS-VGG weights file given (--lpips-weights or train.loss.lpips_weights)")
    else:
        notes.append(f"lpips: LPIPS-VGG with weights {lpips_path}")
    if id_params is None:
        notes.append("identity: absent, no face-recognition weights file given (--identity-weights or "
                     "train.loss.identity_weights)")
    else:
        notes.append(f"identity: cosine similarity of IResNet-{cfg.train.loss.identity_depth} embeddings "
                     f"({id_path}) of each output and the source portrait")

    path = ensure_dataset(cfg, progress=False)
    res = int(cfg.data.resolution)
    clips = read_clips(path, data_split, res, max_clips)
    say(f"eval: {len(clips)} clips of {cfg.data.dataset} {data_split} ({path}) at {res}x{res}, "
        f"checkpoint step {trained.step}")
    synthetic = all(c.expression is not None for c in clips)
    backend = str(cfg.render.backend)
    group = min(16, int(cfg.data.num_identities)) if cfg.data.dataset == "synthetic_heads" else None

    reg, expr_res = None, None
    if expression and synthetic:
        settings = regressor or expr_lib.settings_for(cfg)
        reg = expr_lib.ensure_regressor(cfg.data.data_dir, settings, backend=backend, group=group, log=say)
        expr_res = int(settings.resolution)
        notes.append(f"expression_error: mean |regressor(frame) - ground-truth expression| over the 14 parameters, "
                     f"read at {expr_res}x{expr_res} at the frontal camera, one frame per time step (ours, ours "
                     f"undriven with z_drv = z_src, and the reference rendered there from the ground-truth "
                     f"parameters); the regressor's own error on held-out "
                     f"ground-truth renders is {reg.info['test_mae']:.4f} (predicting the median: "
                     f"{reg.info['baseline_mae']:.4f}), the metric's floor")
    elif not expression:
        notes.append("expression_error: not computed (switched off)")
    else:
        notes.append("expression_error: absent, the dataset has no ground-truth expressions (synthetic_heads only)")
    if consistency:
        notes.append(f"consistency: mean |surface colour difference| between each rendered view and the view "
                     f"orbited {consistency_degrees:g} deg towards the front, through our own expected depth "
                     f"(co-visible pixels with alpha > {cons.ALPHA_MIN}, both directions; 0 = consistent); a "
                     f"stand-in for MEt3R, not comparable to it")
    else:
        notes.append("consistency: not computed (switched off)")
    if synthetic:
        notes.append("ceiling (self): psnr_ceiling / region_psnr_ceiling are the undriven avatar against the ground "
                     "truth at the source's own expression, at the target cameras: its reconstruction error alone, "
                     "about what a driven avatar that reconstructs as well would score with exact expressions; "
                     "(ours - undriven) / (ceiling - undriven) is the share of that reachable gain the driving "
                     "frame delivers")
        notes.append("cross reference: ground truth rendered from the source identity's parameters performing the "
                     "driving clip's expressions at the source clip's teacher cameras")
    else:
        notes.append("cross: no reference frames for real teacher clips (psnr, ssim, lpips, expression absent)")

    size = int(cfg.model.image_size)
    acc = {"self": _Accumulator(), "cross": _Accumulator()}
    partners = cross_partners([c.identity for c in clips])
    if all(p is None for p in partners):
        notes.append("cross: skipped, the evaluated clips share one source identity")
    motions = {}

    def motion_of(k: int):
        if k not in motions:
            motions[k] = runner.motion(_resize(clips[k].driving, size))
        return motions[k]

    canon = None
    if synthetic:
        uniq, inverse = np.unique(np.stack([c.identity_params for c in clips]), axis=0, return_inverse=True)
        canon, canon_of_clip = groundtruth.canonicals(uniq, group), inverse.reshape(-1)
    def frame_batch(a: _Accumulator, mode: str, ci: int, di: int, idx: np.ndarray, chunk: int, avatar) -> None:
        """Renders targets ``idx`` of clip ``ci`` driven by clip ``di`` (padded to ``chunk`` frames: one
        compiled shape) and adds their metrics to ``a``."""
        clip, drv, n = clips[ci], clips[di], len(idx)
        pad = np.concatenate([idx, np.repeat(idx[-1:], chunk - n)])
        times = idx // clip.num_views
        z = jax.tree.map(lambda x: x[pad // clip.num_views][None], motion_of(di))  # [1, K, ...]
        w2c, intr = clip.target_w2c[idx], clip.target_intrinsics[idx]
        rgb, alpha, depth = runner.animate(avatar, z, jnp.asarray(clip.target_w2c[pad])[None],
                                           jnp.asarray(clip.target_intrinsics[pad])[None], res)
        rgb, alpha, depth = jnp.clip(rgb[0, :n], 0.0, 1.0), alpha[0, :n], depth[0, :n]
        a.frames += n
        a.frame_ids += [f"{clip.clip_id}/{mode}/{drv.clip_id}/{i}" for i in idx]
        if mode == "self":
            ref = jnp.asarray(clip.targets[idx])
            # The baselines: the same avatar undriven (z_drv = z_src) and the source image itself.
            z_und = jax.tree.map(lambda s: jnp.broadcast_to(s[:, None], (1, chunk) + s.shape[1:]), avatar.z_src)
            rgb_u = runner.animate(avatar, z_und, jnp.asarray(clip.target_w2c[pad])[None],
                                   jnp.asarray(clip.target_intrinsics[pad])[None], res)[0]
            rgb_u = jnp.clip(rgb_u[0, :n], 0.0, 1.0)
            src = jnp.broadcast_to(jnp.asarray(clip.source)[None], ref.shape)
            a.add("psnr_undriven", metrics.psnr(rgb_u, ref))
            a.add("psnr_source", metrics.psnr(src, ref))
            pairs = [("region_psnr", rgb, ref), ("region_psnr_undriven", rgb_u, ref), ("region_psnr_source", src, ref)]
            if synthetic:  # the ceiling: the undriven avatar against the ground truth at the source's expression
                still = jnp.asarray(groundtruth.render_frames(
                    canon, np.full(n, canon_of_clip[ci]), np.repeat(clip.source_expression[None], n, 0), w2c, intr,
                    res, backend).astype(np.float32) / 255.0)
                a.add("psnr_ceiling", metrics.psnr(rgb_u, still))
                pairs.append(("region_psnr_ceiling", rgb_u, still))
            if clip.target_regions is not None:
                mask = jnp.asarray(clip.target_regions[idx])
                for key, img, against in pairs:
                    a.add(key, metrics.masked_psnr(img, against, mask))
        elif synthetic:
            ref = jnp.asarray(groundtruth.render_frames(
                canon, np.full(n, canon_of_clip[ci]), drv.expression[times], w2c, intr, res, backend
            ).astype(np.float32) / 255.0)
        else:
            ref = None
        if on_frames is not None:
            on_frames(mode, ci, np.asarray(rgb), None if ref is None else np.asarray(ref))
        if ref is not None:
            p, s = _image_metrics(rgb, ref)
            a.add("psnr", p)
            a.add("ssim", s)
            if lpips_params is not None:
                a.add("lpips", _lpips(lpips_params, rgb, ref))
        if id_params is not None:
            a.add("identity", _identity(id_params, rgb, jnp.broadcast_to(jnp.asarray(clip.source[None]), rgb.shape)))
        if consistency:
            cam = render.Camera(jnp.asarray(clip.target_w2c[pad]), jnp.asarray(clip.target_intrinsics[pad]))
            cam_b = cons.orbit_about_up(cam, cons.partner_yaw(cam, consistency_degrees))
            rgb_b, alpha_b, depth_b = runner.animate(avatar, z, cam_b.world_to_cam[None], cam_b.intrinsics[None], res)
            total, count, cover = jax.device_get(_consistency(
                rgb, alpha, depth, jnp.clip(rgb_b[0, :n], 0.0, 1.0), alpha_b[0, :n], depth_b[0, :n],
                jnp.asarray(w2c), jnp.asarray(intr), cam_b.world_to_cam[:n], cam_b.intrinsics[:n]))
            a.cons_total += float(np.sum(total))
            a.cons_count += float(np.sum(count))
            a.coverage.append(np.asarray(cover))

    def expression_batch(a: _Accumulator, mode: str, ci: int, di: int, tc: int, avatar) -> None:
        """Expression errors of clip ``ci`` driven by clip ``di``, one frame per time step, read where the
        regressor reads expressions: at ``expr_res`` and at the frontal camera (yaw = pitch = 0). Ours and
        the same avatar undriven (z_drv = z_src) are rendered there, and so is the reference, from the
        ground-truth parameters (the source identity performing the driving expression: what the teacher
        shows)."""
        drv = clips[di]
        times = np.arange(tc)
        pad = np.concatenate([times, np.repeat(times[-1:], expr_chunk - tc)])
        truth = drv.expression[times]
        z = jax.tree.map(lambda x: x[pad][None], motion_of(di))  # [1, K, ...]
        z_und = jax.tree.map(lambda s: jnp.broadcast_to(s[:, None], (1, expr_chunk) + s.shape[1:]), avatar.z_src)
        w2c = jnp.broadcast_to(expr_cam.world_to_cam, (1, expr_chunk, 4, 4))
        intr = jnp.broadcast_to(expr_cam.intrinsics, (1, expr_chunk, 4))
        ours = jnp.clip(runner.animate(avatar, z, w2c, intr, expr_res)[0][0, :tc], 0.0, 1.0)
        und = jnp.clip(runner.animate(avatar, z_und, w2c, intr, expr_res)[0][0, :tc], 0.0, 1.0)
        ref = groundtruth.render_frames(canon, np.full(tc, canon_of_clip[ci]), truth,
                                        np.asarray(w2c[0, :tc]), np.asarray(intr[0, :tc]), expr_res,
                                        backend).astype(np.float32) / 255.0
        if on_frames is not None:
            on_frames(f"{mode}-expression", ci, np.asarray(ours), ref)
            on_frames(f"{mode}-expression-undriven", ci, np.asarray(und), ref)
        pred = reg.predict(ours)
        a.add("expression_error", expr_lib.expression_error(pred, truth))
        a.expr_abs.append(np.abs(pred - truth))
        a.add("expression_error_undriven", expr_lib.expression_error(reg.predict(und), truth))
        a.add("expression_error_teacher", expr_lib.expression_error(reg.predict(ref), truth))
        a.expression_frames += tc

    if reg is not None:
        expr_chunk = max(c.num_times for c in clips)
        expr_cam = render.orbit_camera(jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.float32),
                                       radius=float(cfg.render.camera_radius),
                                       fov_degrees=float(cfg.render.fov_degrees), size=expr_res)
    t_start = time.perf_counter()
    for ci, clip in enumerate(clips):
        avatar = runner.encode(_resize(clip.source[None], size))
        modes = [("self", ci)] + ([("cross", partners[ci])] if partners[ci] is not None else [])
        for mode, di in modes:
            drv = clips[di]
            tc = min(clip.num_times, drv.num_times)
            total = tc * clip.num_views
            chunk = max(1, min(int(frames_per_call), total))
            for start in range(0, total, chunk):
                frame_batch(acc[mode], mode, ci, di, np.arange(start, min(start + chunk, total)), chunk, avatar)
            if reg is not None and drv.expression is not None:
                expression_batch(acc[mode], mode, ci, di, tc, avatar)
        say(f"eval: clip {ci + 1}/{len(clips)} {clip.clip_id} ({time.perf_counter() - t_start:.0f} s)")

    # Speed: batch 1, after warm-up, on the default device.
    clip = clips[0]
    src = _resize(clip.source[None], size)
    avatar = runner.encode(src)
    z1 = jax.tree.map(lambda x: x[:1], runner.motion(_resize(clip.driving[:1], size)))
    w2c1 = jnp.asarray(clip.target_w2c[:1])
    intr1 = jnp.asarray(render.scale_intrinsics(clip.target_intrinsics[:1], res, size))
    anim_s = _timed(lambda: runner.animate(avatar, z1, w2c1, intr1, size), max(1, timing_repeats))
    enc_s = _timed(lambda: runner.encode(src), max(1, min(timing_repeats, 10)))
    dev = jax.devices()[0]
    notes.append(f"timing: batch 1 at {size}x{size}, jitted, after warm-up, on {dev.platform} "
                 f"({getattr(dev, 'device_kind', dev.platform)}); animate = fusion + decoder + splatting, "
                 f"encode = encoder + instantiation + decoder + source motion")

    for task in ("self", "cross"):
        if consistency and acc[task].frames and acc[task].cons_count == 0:
            notes.append(f"consistency ({task}): absent, no pixel has alpha > {cons.ALPHA_MIN} in both views "
                         f"(translucent output, e.g. an untrained model)")
    result = {
        "checkpoint": str(trained.checkpoints / str(trained.step)),
        "step": int(trained.step),
        "split": str(split),
        "config_name": str(cfg.name),
        "fusion": str(cfg.model.fusion),
        "num_gaussians": int(model.num_gaussians),
        "image_size": size,
        "self": acc["self"].summary(),
        "cross": acc["cross"].summary(),
        "animate_fps": float(1.0 / max(anim_s, 1e-9)),
        "encode_ms": float(enc_s * 1e3),
        "notes": notes,
        "dataset": {"name": str(cfg.data.dataset), "path": str(path), "split": data_split, "clips": len(clips),
                    "resolution": res},
        "used_ema": bool(trained.used_ema),
        "timing_device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "expression_regressor": None if reg is None else {k: v for k, v in reg.info.items()},
        "expression_resolution": expr_res,
        "motion_weights": {"weights": str(cfg.model.motion.weights), "sha256": str(cfg.model.motion.weights_sha256),
                           "freeze": bool(cfg.model.motion.freeze)},
        "consistency_degrees": float(consistency_degrees) if consistency else None,
    }
    if write:
        out = Path(out) if out else workdir / f"eval_{split}.json"
        md = Path(markdown) if markdown else out.with_suffix(".md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(paper.markdown_report(result))
        result_paths = {"json": str(out), "markdown": str(md)}
        say(f"eval: wrote {result_paths['json']} and {result_paths['markdown']}")
    return result


def load_result(path: str | Path) -> dict:
    """Reads an eval JSON (the sweep report's input); names the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval result not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"eval result {path} is not valid JSON: {e}") from e

