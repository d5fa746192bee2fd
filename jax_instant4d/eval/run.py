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
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jax_instant4d import perceptual, render
from jax_instant4d.config import ConfigDict
from jax_instant4d.data import record
from jax_instant4d.eval import consistency as cons
from jax_instant4d.eval import expression as expr_lib
from jax_instant4d.eval import groundtruth, metrics
from jax_instant4d.image_metrics import resize_to
from jax_instant4d.perceptual import Params

if TYPE_CHECKING:
    from jax_instant4d.model.avatar import Avatar
    from jax_instant4d.model.fusion import Motion

logger = logging.getLogger(__name__)

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
# expression_error_ceiling likewise: the regressor reads the undriven avatar against the *source's* expression, so
# its error is what the reconstruction alone costs the regressor (about the error of a driven avatar that performs
# the driving expressions exactly at this reconstruction quality).
PER_FRAME_KEYS = ("psnr", "region_psnr", "psnr_undriven", "region_psnr_undriven", "psnr_source", "region_psnr_source",
                  "psnr_ceiling", "region_psnr_ceiling",
                  "expression_error", "expression_error_undriven", "expression_error_teacher",
                  "expression_error_ceiling")  # expression_*: per
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
        self.oracle = bool(model.motion_oracle)
        self._encode = jax.jit(pure.encode)
        self._motion = jax.jit(pure.motion)
        self._oracle_motion = jax.jit(pure.oracle_motion)
        self._animate = jax.jit(lambda st, avatar, z, w2c, intr, size: pure.animate(
            st, avatar, z, render.Camera(w2c, intr), size), static_argnums=5)

    def encode(self, source):
        return self._encode(self.state, source)

    def motion(self, frames):
        return self._motion(self.state, frames)

    def source_avatar(self, clip: Clip, size: int) -> Avatar:
        """Clip ``clip``'s avatar; with ``model.motion.oracle`` its z_src is the source expression's code."""
        avatar = self.encode(_resize(clip.source[None], size))
        if self.oracle:
            y = record.normalise_expression(_oracle_expression(clip, "source_expression")[None])
            avatar = avatar._replace(z_src=self._oracle_motion(self.state, jnp.asarray(y)))
        return avatar

    def driving_motion(self, clip: Clip, size: int) -> Motion:
        """The motion of clip ``clip``'s driving frames (with ``model.motion.oracle``: of their expressions)."""
        if self.oracle:
            y = record.normalise_expression(_oracle_expression(clip, "expression"))
            return self._oracle_motion(self.state, jnp.asarray(y))
        return self.motion(_resize(clip.driving, size))

    def animate(self, avatar, z, w2c, intr, size: int):
        return self._animate(self.state, avatar, z, w2c, intr, int(size))


def _oracle_expression(clip: Clip, field: str) -> np.ndarray:
    """The ground-truth expression an oracle model (``model.motion.oracle``) is driven by; an error naming the clip
    where there is none (data that is not synthetic_heads)."""
    value = getattr(clip, field)
    if value is None:
        raise ValueError(f"clip {clip.clip_id}: the model was trained with model.motion.oracle=True and needs the "
                         f"ground-truth {field.replace('_', ' ')}, which only synthetic_heads clips have")
    return np.asarray(value, np.float32)


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
        # [frames, E] per parameter: |regressor(ours) - truth| under "", of the undriven avatar under "_undriven", of
        # the undriven avatar against the source's expression under "_ceiling"
        self.expr_abs: dict[str, list[np.ndarray]] = {}
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
        if "expression_error_ceiling" in self.values:
            out["expression_error_ceiling"] = self.mean("expression_error_ceiling")
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

            for suffix, rows in self.expr_abs.items():
                per = np.concatenate(rows).mean(0)
                out[f"expression_error{suffix}_per_parameter"] = {n: float(v) for n, v in
                                                                  zip(EXPRESSION_NAMES, per, strict=True)}
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


# --------------------------------------------------------------------------------------------------
# The run's stages: arguments, loss networks, regressor and notes, the reenactments, speed, the result
# --------------------------------------------------------------------------------------------------


def _check_arguments(split: str, max_clips: int | None, lpips_weights: str | None,
                     identity_weights: str | None, expression_render_res: int | None = None) -> str:
    """The dataset split ``split`` names; errors a user can cause, raised before the (slow) model load."""
    from jax_instant4d.data.pipeline import resolve_split

    data_split = resolve_split(split)  # ValueError naming the split
    if max_clips is not None and int(max_clips) < 1:
        raise ValueError(f"--max-clips must be >= 1, got {max_clips}")
    if expression_render_res is not None and int(expression_render_res) < 1:
        raise ValueError(f"--expression-render-res must be >= 1, got {expression_render_res}")
    for given, what in ((lpips_weights, "lpips"), (identity_weights, "identity")):
        if given and not Path(given).expanduser().is_file():
            raise FileNotFoundError(f"{what} weights file not found: {given}")
    return data_split


def _perceptual_networks(cfg: ConfigDict, lpips_weights: str | None, identity_weights: str | None,
                         notes: list[str]) -> tuple[Params | None, Params | None]:
    """(LPIPS-VGG, face-recognition) parameters from the given files, else the run's
    ``train.loss.*_weights``; None where there is no file. Appends a note on each to ``notes``."""
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
    return lpips_params, id_params


def _expression_regressor(cfg: ConfigDict, synthetic: bool, expression: bool,
                          settings: expr_lib.RegressorSettings | None, backend: str, group: int | None,
                          notes: list[str]) -> tuple[expr_lib.Regressor | None, int | None]:
    """(regressor, its input resolution) where the expression error is measured (on by ``expression``,
    ground-truth expressions in every clip: ``synthetic``), trained and cached first if needed; else
    (None, None). Appends a note on the metric to ``notes``."""
    if expression and synthetic:
        settings = settings or expr_lib.settings_for(cfg)
        reg = expr_lib.ensure_regressor(cfg.data.data_dir, settings, backend=backend, group=group)
        expr_res = int(settings.resolution)
        notes.append(f"expression_error: mean |regressor(frame) - ground-truth expression| over the 14 parameters, "
                     f"read at {expr_res}x{expr_res} at the frontal camera, one frame per time step (ours, ours "
                     f"undriven with z_drv = z_src, and the reference rendered there from the ground-truth "
                     f"parameters); the regressor's own error on held-out "
                     f"ground-truth renders is {reg.info['test_mae']:.4f} (predicting the median: "
                     f"{reg.info['baseline_mae']:.4f}), the metric's floor")
        return reg, expr_res
    if not expression:
        notes.append("expression_error: not computed (switched off)")
    else:
        notes.append("expression_error: absent, the dataset has no ground-truth expressions (synthetic_heads only)")
    return None, None


def _protocol_notes(consistency_degrees: float | None, synthetic: bool) -> list[str]:
    """Notes on the consistency score (None: switched off) and on the references of each task."""
    notes = []
    if consistency_degrees is not None:
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
        notes.append("expression ceiling (self and cross): expression_error_ceiling is the regressor's error on the "
                     "undriven avatar read against the source's own expression: what the reconstruction alone costs "
                     "the metric; (undriven - ceiling) / (undriven - reference) is about the most of the expression "
                     "gap a driven avatar of this reconstruction quality could close")
        notes.append("cross reference: ground truth rendered from the source identity's parameters performing the "
                     "driving clip's expressions at the source clip's teacher cameras")
    else:
        notes.append("cross: no reference frames for real teacher clips (psnr, ssim, lpips, expression absent)")
    return notes


@dataclasses.dataclass(frozen=True)
class _Scorers:
    """What each batch of rendered frames is measured with (None: that measurement is off or absent)."""

    lpips: Params | None  # LPIPS-VGG parameters
    identity: Params | None  # face-recognition parameters
    consistency_degrees: float | None  # the partner view's orbit towards the front; None: no consistency score
    regressor: expr_lib.Regressor | None  # the expression regressor; None: no expression error
    expression_resolution: int | None  # the regressor's input resolution
    # the avatar's renders for the regressor (ours, undriven): rendered at this size at the frontal camera, then
    # resized to expression_resolution by the regressor (image_metrics.resize_to); the reference stays there
    expression_render_resolution: int | None
    expression_camera: render.Camera | None  # where the regressor reads expressions: the frontal camera


def _frontal_camera(cfg: ConfigDict, size: int) -> render.Camera:
    """The data's camera model at yaw = pitch = 0, ``size`` pixels: where the expression regressor reads expressions."""
    return render.orbit_camera(jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.float32),
                               radius=float(cfg.render.camera_radius), fov_degrees=float(cfg.render.fov_degrees),
                               size=size)


FrameCallback = Callable[[str, int, np.ndarray, np.ndarray | None], None]


class _Reenactment:
    """Self- and cross-reenactment of ``clips`` (see the module docstring) with one model: :meth:`run`
    renders every evaluated frame and adds its metrics to ``tasks["self"]`` / ``tasks["cross"]``.

    Each clip's source is encoded once; each driving clip's motion codes are computed once (``motion_of``).
    ``res`` is the evaluation resolution (the dataset's), ``size`` the model's input size."""

    def __init__(self, runner: _Model, clips: list[Clip], scorers: _Scorers, *, size: int, res: int, backend: str,
                 group: int | None, on_frames: FrameCallback | None = None):
        self.runner, self.clips, self.scorers = runner, clips, scorers
        self.size, self.res, self.backend, self.on_frames = size, res, backend, on_frames
        self.tasks = {"self": _Accumulator(), "cross": _Accumulator()}
        self.partners = cross_partners([c.identity for c in clips])
        self._motions: dict[int, Motion] = {}
        self.synthetic = all(c.expression is not None for c in clips)
        self.canon, self.canon_of_clip = None, None  # the ground truth's canonical heads, one per identity
        if self.synthetic:
            uniq, inverse = np.unique(np.stack([c.identity_params for c in clips]), axis=0, return_inverse=True)
            self.canon, self.canon_of_clip = groundtruth.canonicals(uniq, group), inverse.reshape(-1)
        self.expr_chunk = max(c.num_times for c in clips)  # expressions: one frame per time step

    def run(self, frames_per_call: int) -> None:
        """Every clip against itself and against its cross partner; frames rendered ``frames_per_call``
        at a time (memory: every target animates its own Gaussians)."""
        t_start = time.perf_counter()
        for ci, clip in enumerate(self.clips):
            avatar = self.runner.source_avatar(clip, self.size)
            modes = [("self", ci)] + ([("cross", self.partners[ci])] if self.partners[ci] is not None else [])
            for mode, di in modes:
                tc = min(clip.num_times, self.clips[di].num_times)
                total = tc * clip.num_views
                chunk = max(1, min(int(frames_per_call), total))
                for start in range(0, total, chunk):
                    self.frames(mode, ci, di, np.arange(start, min(start + chunk, total)), chunk, avatar)
                if self.scorers.regressor is not None and self.clips[di].expression is not None:
                    self.expressions(mode, ci, di, tc, avatar)
            logger.info("eval: clip %d/%d %s (%.0f s)", ci + 1, len(self.clips), clip.clip_id,
                        time.perf_counter() - t_start)

    def motion_of(self, k: int) -> Motion:
        """The motion codes of clip ``k``'s driving frames."""
        if k not in self._motions:
            self._motions[k] = self.runner.driving_motion(self.clips[k], self.size)
        return self._motions[k]

    def ground_truth(self, ci: int, expressions: Float[np.ndarray, "K E"], w2c: Float[np.ndarray, "K 4 4"],
                     intrinsics: Float[np.ndarray, "K 4"], size: int) -> Float[np.ndarray, "K S S 3"]:
        """Clip ``ci``'s identity performing ``expressions`` at the cameras (synthetic clips only), in [0, 1]."""
        return groundtruth.render_frames(self.canon, np.full(len(expressions), self.canon_of_clip[ci]), expressions,
                                         w2c, intrinsics, size, self.backend).astype(np.float32) / 255.0

    def frames(self, mode: str, ci: int, di: int, idx: Int[np.ndarray, " K"], chunk: int, avatar: Avatar) -> None:
        """Renders targets ``idx`` of clip ``ci`` driven by clip ``di`` (padded to ``chunk`` frames: one
        compiled shape) and adds their metrics to the task ``mode``'s accumulator."""
        a, clip, drv, n = self.tasks[mode], self.clips[ci], self.clips[di], len(idx)
        pad = np.concatenate([idx, np.repeat(idx[-1:], chunk - n)])
        z = jax.tree.map(lambda x: x[pad // clip.num_views][None], self.motion_of(di))  # [1, K, ...]
        rgb, alpha, depth = self.runner.animate(avatar, z, jnp.asarray(clip.target_w2c[pad])[None],
                                                jnp.asarray(clip.target_intrinsics[pad])[None], self.res)
        rgb, alpha, depth = jnp.clip(rgb[0, :n], 0.0, 1.0), alpha[0, :n], depth[0, :n]
        a.frames += n
        a.frame_ids += [f"{clip.clip_id}/{mode}/{drv.clip_id}/{i}" for i in idx]
        if mode == "self":
            ref = jnp.asarray(clip.targets[idx])
            self._baselines(a, ci, idx, pad, avatar, rgb, ref)
        elif self.synthetic:
            times = idx // clip.num_views
            ref = jnp.asarray(self.ground_truth(ci, drv.expression[times], clip.target_w2c[idx],
                                                clip.target_intrinsics[idx], self.res))
        else:
            ref = None
        if self.on_frames is not None:
            self.on_frames(mode, ci, np.asarray(rgb), None if ref is None else np.asarray(ref))
        self._image_scores(a, clip, rgb, ref)
        if self.scorers.consistency_degrees is not None:
            self._consistency(a, clip, idx, pad, avatar, z, rgb, alpha, depth)

    def _baselines(self, a: _Accumulator, ci: int, idx: Int[np.ndarray, " K"], pad: Int[np.ndarray, " C"],
                   avatar: Avatar, rgb: Float[Array, "K R R 3"], ref: Float[Array, "K R R 3"]) -> None:
        """Self-reenactment's baselines on the frames ``idx``: the same avatar undriven (z_drv = z_src) and the
        source image itself; the ceiling (synthetic); the eye + mouth PSNRs (clips that record regions)."""
        clip, n, chunk = self.clips[ci], len(idx), len(pad)
        z_und = jax.tree.map(lambda s: jnp.broadcast_to(s[:, None], (1, chunk) + s.shape[1:]), avatar.z_src)
        rgb_u = self.runner.animate(avatar, z_und, jnp.asarray(clip.target_w2c[pad])[None],
                                    jnp.asarray(clip.target_intrinsics[pad])[None], self.res)[0]
        rgb_u = jnp.clip(rgb_u[0, :n], 0.0, 1.0)
        src = jnp.broadcast_to(jnp.asarray(clip.source)[None], ref.shape)
        a.add("psnr_undriven", metrics.psnr(rgb_u, ref))
        a.add("psnr_source", metrics.psnr(src, ref))
        pairs = [("region_psnr", rgb, ref), ("region_psnr_undriven", rgb_u, ref), ("region_psnr_source", src, ref)]
        if self.synthetic:  # the ceiling: the undriven avatar against the ground truth at the source's expression
            still = jnp.asarray(self.ground_truth(ci, np.repeat(clip.source_expression[None], n, 0),
                                                  clip.target_w2c[idx], clip.target_intrinsics[idx], self.res))
            a.add("psnr_ceiling", metrics.psnr(rgb_u, still))
            pairs.append(("region_psnr_ceiling", rgb_u, still))
        if clip.target_regions is not None:
            mask = jnp.asarray(clip.target_regions[idx])
            for key, img, against in pairs:
                a.add(key, metrics.masked_psnr(img, against, mask))

    def _image_scores(self, a: _Accumulator, clip: Clip, rgb: Float[Array, "K R R 3"],
                      ref: Float[Array, "K R R 3"] | None) -> None:
        """PSNR, SSIM and LPIPS against the reference (where there is one); identity similarity to the source."""
        if ref is not None:
            p, s = _image_metrics(rgb, ref)
            a.add("psnr", p)
            a.add("ssim", s)
            if self.scorers.lpips is not None:
                a.add("lpips", _lpips(self.scorers.lpips, rgb, ref))
        if self.scorers.identity is not None:
            a.add("identity", _identity(self.scorers.identity, rgb,
                                        jnp.broadcast_to(jnp.asarray(clip.source[None]), rgb.shape)))

    def _consistency(self, a: _Accumulator, clip: Clip, idx: Int[np.ndarray, " K"], pad: Int[np.ndarray, " C"],
                     avatar: Avatar, z: Motion, rgb: Float[Array, "K R R 3"], alpha: Float[Array, "K R R"],
                     depth: Float[Array, "K R R"]) -> None:
        """The frames ``idx`` against the same frames seen from their partner cameras (orbited towards the front)."""
        n = len(idx)
        cam = render.Camera(jnp.asarray(clip.target_w2c[pad]), jnp.asarray(clip.target_intrinsics[pad]))
        cam_b = cons.orbit_about_up(cam, cons.partner_yaw(cam, self.scorers.consistency_degrees))
        rgb_b, alpha_b, depth_b = self.runner.animate(avatar, z, cam_b.world_to_cam[None], cam_b.intrinsics[None],
                                                      self.res)
        total, count, cover = jax.device_get(_consistency(
            rgb, alpha, depth, jnp.clip(rgb_b[0, :n], 0.0, 1.0), alpha_b[0, :n], depth_b[0, :n],
            jnp.asarray(clip.target_w2c[idx]), jnp.asarray(clip.target_intrinsics[idx]), cam_b.world_to_cam[:n],
            cam_b.intrinsics[:n]))
        a.cons_total += float(np.sum(total))
        a.cons_count += float(np.sum(count))
        a.coverage.append(np.asarray(cover))

    def expressions(self, mode: str, ci: int, di: int, tc: int, avatar: Avatar) -> None:
        """Expression errors of clip ``ci`` driven by clip ``di``, one frame per time step, read where the
        regressor reads expressions: at its resolution and at the frontal camera (yaw = pitch = 0). Ours and
        the same avatar undriven (z_drv = z_src) are rendered there (or at ``expression_render_resolution``,
        the same camera, and resized by the regressor), and so is the reference, from the ground-truth
        parameters (the source identity performing the driving expression: what the teacher shows)."""
        a, drv, reg, size = self.tasks[mode], self.clips[di], self.scorers.regressor, self.scorers.expression_resolution
        chunk = self.expr_chunk
        times = np.arange(tc)
        pad = np.concatenate([times, np.repeat(times[-1:], chunk - tc)])
        truth = drv.expression[times]
        z = jax.tree.map(lambda x: x[pad][None], self.motion_of(di))  # [1, K, ...]
        z_und = jax.tree.map(lambda s: jnp.broadcast_to(s[:, None], (1, chunk) + s.shape[1:]), avatar.z_src)
        cam, rsize = self.scorers.expression_camera, self.scorers.expression_render_resolution or size
        w2c = jnp.broadcast_to(cam.world_to_cam, (1, chunk, 4, 4))
        intr = jnp.broadcast_to(cam.intrinsics, (1, chunk, 4))
        rintr = render.scale_intrinsics(intr, size, rsize)
        ours = jnp.clip(self.runner.animate(avatar, z, w2c, rintr, rsize)[0][0, :tc], 0.0, 1.0)
        und = jnp.clip(self.runner.animate(avatar, z_und, w2c, rintr, rsize)[0][0, :tc], 0.0, 1.0)
        ref = self.ground_truth(ci, truth, np.asarray(w2c[0, :tc]), np.asarray(intr[0, :tc]), size)
        if self.on_frames is not None:
            self.on_frames(f"{mode}-expression", ci, np.asarray(ours), ref)
            self.on_frames(f"{mode}-expression-undriven", ci, np.asarray(und), ref)
        pred = reg.predict(ours)
        a.add("expression_error", expr_lib.expression_error(pred, truth))
        a.expr_abs.setdefault("", []).append(np.abs(pred - truth))
        pred_und = reg.predict(und)
        a.add("expression_error_undriven", expr_lib.expression_error(pred_und, truth))
        a.expr_abs.setdefault("_undriven", []).append(np.abs(pred_und - truth))
        if self.clips[ci].source_expression is not None:  # the undriven avatar shows the source's expression
            still = np.repeat(self.clips[ci].source_expression[None], tc, 0)
            a.add("expression_error_ceiling", expr_lib.expression_error(pred_und, still))
            a.expr_abs.setdefault("_ceiling", []).append(np.abs(pred_und - still))
        a.add("expression_error_teacher", expr_lib.expression_error(reg.predict(ref), truth))
        a.expression_frames += tc


def _speed(runner: _Model, clip: Clip, size: int, res: int, repeats: int) -> tuple[float, float]:
    """Seconds per animate call and per encode call: batch 1 at ``size``, jitted, after warm-up, on the
    default device (clip ``clip``'s source, first driving frame and first target camera)."""
    src = _resize(clip.source[None], size)
    avatar = runner.source_avatar(clip, size)
    z1 = jax.tree.map(lambda x: x[:1], runner.driving_motion(clip, size))
    w2c1 = jnp.asarray(clip.target_w2c[:1])
    intr1 = jnp.asarray(render.scale_intrinsics(clip.target_intrinsics[:1], res, size))
    anim_s = _timed(lambda: runner.animate(avatar, z1, w2c1, intr1, size), max(1, repeats))
    enc_s = _timed(lambda: runner.encode(src), max(1, min(repeats, 10)))
    return anim_s, enc_s


def _write(result: dict, json_path: Path, markdown_path: Path) -> None:
    from jax_instant4d.eval import paper

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(paper.markdown_report(result))
    logger.info("eval: wrote %s and %s", json_path, markdown_path)


def evaluate(checkpoint: str | Path, split: str = "heldout", *, step: int | None = None,
             out: str | Path | None = None, markdown: str | Path | None = None, max_clips: int | None = None,
             lpips_weights: str | None = None, identity_weights: str | None = None,
             overrides: list[str] | None = None, expression: bool = True,
             regressor: expr_lib.RegressorSettings | None = None, consistency: bool = True,
             consistency_degrees: float = CONSISTENCY_DEGREES, timing_repeats: int = 20, write: bool = True,
             frames_per_call: int = 8, on_frames: FrameCallback | None = None,
             expression_render_res: int | None = None) -> dict:
    """Evaluates a checkpoint on a split; returns the result dict (the JSON's content) and, with
    ``write``, writes it to ``out`` (default ``<workdir>/eval_<split>.json``) and the markdown table to
    ``markdown`` (default ``<workdir>/eval_<split>.md``). See the module docstring for the protocol;
    progress is logged (``jax_instant4d.eval.run``, INFO).

    ``overrides`` are config overrides (``"render.backend=xla"``) applied on top of the checkpoint's
    saved config; ``regressor`` sets the expression regressor (default :class:`RegressorSettings`
    with the config's camera model). ``on_frames(task, clip_index, ours, reference)`` (optional) sees
    every batch of frames (``[K, R, R, 3]`` in [0, 1]; reference None where there is none); frames are
    rendered ``frames_per_call`` at a time (memory: every target animates its own Gaussians). The frames
    expressions are read from come as tasks ``"self-expression"`` / ``"cross-expression"`` (ours) and
    ``"...-expression-undriven"``, with their reference. ``expression_render_res``: render ours and ours
    undriven for the expression regressor at this size (the same frontal camera) and let the regressor resize
    them to its resolution (e.g. the avatar's training size, to read what it was trained to draw); default: at
    the regressor's resolution. The reference is rendered at the regressor's resolution either way."""
    from jax_instant4d.data.pipeline import ensure_dataset

    data_split = _check_arguments(split, max_clips, lpips_weights, identity_weights, expression_render_res)
    trained, runner = _load(checkpoint, step, overrides)
    cfg = trained.cfg
    notes: list[str] = []
    lpips_params, id_params = _perceptual_networks(cfg, lpips_weights, identity_weights, notes)

    path = ensure_dataset(cfg, progress=False)
    res = int(cfg.data.resolution)
    clips = read_clips(path, data_split, res, max_clips)
    logger.info("eval: %d clips of %s %s (%s) at %dx%d, checkpoint step %s", len(clips), cfg.data.dataset,
                data_split, path, res, res, trained.step)
    synthetic = all(c.expression is not None for c in clips)
    backend = str(cfg.render.backend)
    group = min(16, int(cfg.data.num_identities)) if cfg.data.dataset == "synthetic_heads" else None
    reg, expr_res = _expression_regressor(cfg, synthetic, expression, regressor, backend, group, notes)
    notes += _protocol_notes(consistency_degrees if consistency else None, synthetic)

    size = int(cfg.model.image_size)
    expr_render = None if reg is None else int(expression_render_res or expr_res)
    if expr_render is not None and expr_render != expr_res:
        notes.append(f"expression render: ours and ours undriven rendered at {expr_render}x{expr_render} (the same "
                     f"frontal camera) and resized to the regressor's {expr_res}x{expr_res} "
                     f"(image_metrics.resize_to); the reference rendered at {expr_res}x{expr_res}")
    scorers = _Scorers(lpips_params, id_params, consistency_degrees if consistency else None, reg, expr_res,
                       expr_render, None if reg is None else _frontal_camera(cfg, expr_res))
    reenact = _Reenactment(runner, clips, scorers, size=size, res=res, backend=backend, group=group,
                           on_frames=on_frames)
    if all(p is None for p in reenact.partners):
        notes.append("cross: skipped, the evaluated clips share one source identity")
    reenact.run(frames_per_call)

    anim_s, enc_s = _speed(runner, clips[0], size, res, timing_repeats)
    dev = jax.devices()[0]
    notes.append(f"timing: batch 1 at {size}x{size}, jitted, after warm-up, on {dev.platform} "
                 f"({getattr(dev, 'device_kind', dev.platform)}); animate = fusion + decoder + splatting, "
                 f"encode = encoder + instantiation + decoder + source motion")
    for task, acc in reenact.tasks.items():
        if consistency and acc.frames and acc.cons_count == 0:
            notes.append(f"consistency ({task}): absent, no pixel has alpha > {cons.ALPHA_MIN} in both views "
                         f"(translucent output, e.g. an untrained model)")
    result = {
        "checkpoint": str(trained.checkpoints / str(trained.step)),
        "step": int(trained.step),
        "split": str(split),
        "config_name": str(cfg.name),
        "fusion": str(cfg.model.fusion),
        "num_gaussians": int(trained.model.num_gaussians),
        "image_size": size,
        "self": reenact.tasks["self"].summary(),
        "cross": reenact.tasks["cross"].summary(),
        "animate_fps": float(1.0 / max(anim_s, 1e-9)),
        "encode_ms": float(enc_s * 1e3),
        "notes": notes,
        "dataset": {"name": str(cfg.data.dataset), "path": str(path), "split": data_split, "clips": len(clips),
                    "resolution": res},
        "used_ema": bool(trained.used_ema),
        "timing_device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "expression_regressor": None if reg is None else {k: v for k, v in reg.info.items()},
        "expression_resolution": expr_res,
        "expression_render_resolution": expr_render,
        "motion_weights": {"weights": str(cfg.model.motion.weights), "sha256": str(cfg.model.motion.weights_sha256),
                           "freeze": bool(cfg.model.motion.freeze)},
        "consistency_degrees": float(consistency_degrees) if consistency else None,
    }
    if write:
        out = Path(out) if out else trained.checkpoints.parent / f"eval_{split}.json"
        _write(result, out, Path(markdown) if markdown else out.with_suffix(".md"))
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

