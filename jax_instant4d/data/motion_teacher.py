"""The synthetic teacher's motion encoder: our analogue of X-NeMo's pretrained, frozen motion encoder.

In the paper the motion encoder is the one part that is not trained with the avatar: it is the
teacher's (X-NeMo's), trained together with the teacher, and frozen. Its code is the teacher's own
description of motion. The synthetic teacher's description of motion is its expression parameters
(``record.EXPRESSION_NAMES``), so its motion encoder is our motion-encoder architecture
(``model.motion``, :class:`~jax_instant4d.model.motion.MotionEncoder`) pretrained so that its code

* carries the expression: a linear read-out of the code regresses the 14 parameters (each mapped to
  [0, 1]), mean squared error; and
* not the identity: each training example is a *pair*, one expression rendered on two different
  identities; the squared distance between the pair's codes, relative to the spread of the codes in the
  batch, can be penalised (``invariance``, off by default: it pulls the code to a constant faster than
  the read-out learns) and is always measured.

Its training frames are renders of the dataset's **training identities only** (the held-out ones are
never seen), expressions drawn as the dataset draws them, at the driving frames' near-frontal cameras,
through the generator's own renderer and uint8 quantisation, with half of the pairs mirrored (left and
right parameters swapped). Frames reach the encoder as driving frames do in training: resized to
``model.image_size``, then the fixed face crop. Its accuracy is measured on renders of the held-out
identities (which it never trains on): per parameter, the mean absolute error of the read-out beside
the best constant's (the training median), and the identity invariance: the mean distance between the
codes of one expression on two identities over the mean distance between codes of random pairs.

The weights are written in X-NeMo's PyTorch layout (``MotEncoder_withExtra`` names, safetensors, the
format tag and the settings in the metadata), so ``model.motion.weights`` loads them exactly as it
loads X-NeMo's own file, and a PyTorch user can load them into X-NeMo's class. They are cached under
``<data_dir>/motion_cache/`` in a file named by a hash of every setting that changes them (the
dataset's content, the architecture, the training settings, this module's version), with a JSON beside
them that holds the accuracy. ``model.motion.weights = "teacher"`` names this file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, UInt8

from jax_instant4d.cachelock import load_or_make
from jax_instant4d.config import ConfigDict, ConfigError, apply_overrides
from jax_instant4d.data import groundtruth, heads, record, synthetic

log = logging.getLogger(__name__)

TEACHER_VERSION = 3  # bump when the pretraining (data, loss, read-out) changes
TEACHER = "teacher"  # the value of model.motion.weights that names the synthetic teacher's encoder


@dataclass(frozen=True)
class MotionTeacherSettings:
    """Everything that determines the teacher's motion encoder (its cache key)."""

    dataset: str  # the synthetic dataset's name (its identities and generator version)
    motion: str  # the model.motion architecture (JSON, without weights / freeze)
    image_size: int  # model.image_size: frames are resized to it before the face crop
    resolution: int  # data.resolution: frames are rendered at it, as the dataset stores them
    pairs: int = 1024  # training pairs (one expression on two training identities)
    validation_pairs: int = 128  # on held-out identities: accuracy only, never trained on
    steps: int = 600
    batch_pairs: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    # weight of the identity-invariance term: 0 by default, since it drives the code to a constant before the
    # read-out has learned anything (measured: regression at the constant's error, pair ratio 0.03 at step 200 with
    # 0.1); the code's invariance is measured either way
    invariance: float = 0.0
    seed: int = 0
    # random identities of the generator added to the training identities' pool (never the dataset's: their
    # parameters come from a random stream of their own). 0: the dataset's training identities only.
    extra_identities: int = 0

    def __post_init__(self):
        for k in ("pairs", "validation_pairs", "steps", "batch_pairs", "image_size", "resolution"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"motion teacher setting {k} must be >= 1, got {getattr(self, k)}")

    @property
    def key(self) -> str:
        items = asdict(self)
        if not items["extra_identities"]:  # keys made before the setting existed stay valid
            del items["extra_identities"]
        h = hashlib.sha1(repr((sorted(items.items()), TEACHER_VERSION)).encode()).hexdigest()[:10]
        return f"motion_encoder-{h}"


# model.motion keys that do not change the encoder the teacher pretrains: which weights it starts from, whether the
# avatar trains them, and whether the avatar uses its code at all (the oracle diagnostic)
NOT_ARCHITECTURE = ("weights", "freeze", "weights_sha256", "oracle")


def settings_for(cfg: ConfigDict, **overrides) -> MotionTeacherSettings:
    """The teacher settings of a config whose dataset is ``synthetic_heads``: its pretraining settings are
    ``data.motion_teacher`` (``overrides`` replace them)."""
    if str(cfg.data.dataset) != "synthetic_heads":
        raise ValueError(f"model.motion.weights={TEACHER!r} needs data.dataset='synthetic_heads' (the synthetic "
                         f"teacher), got {cfg.data.dataset!r}; give a weights file instead")
    motion = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.model.motion.to_dict().items()
              if k not in NOT_ARCHITECTURE}
    # the dataset's identities and generator (its undriven views are no input of the teacher's)
    spec = replace(synthetic.spec_from_config(cfg), undriven_views=False)
    base = dict(dataset=spec.name, motion=json.dumps(motion, sort_keys=True),
                image_size=int(cfg.model.image_size), resolution=int(cfg.data.resolution))
    types = {f.name: f.type for f in fields(MotionTeacherSettings)}
    for k, v in cfg.data.motion_teacher.items():
        name = f"data.motion_teacher.{k}"
        if types[k] in (float, "float"):
            low = "> 0" if k == "learning_rate" else ">= 0"
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
                (v > 0 if k == "learning_rate" else v >= 0)
            if not ok:
                raise ConfigError(f"{name}={v!r}: must be a finite number {low}")
            base[k] = float(v)
        else:
            low = 0 if k in ("seed", "extra_identities") else 1
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                raise ConfigError(f"{name}={v!r}: must be an integer >= {low}")
            base[k] = int(v)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return MotionTeacherSettings(**base)


def cache_path(cfg: ConfigDict, settings: MotionTeacherSettings | None = None) -> Path:
    settings = settings or settings_for(cfg)
    return Path(cfg.data.data_dir).expanduser() / "motion_cache" / f"{settings.key}.safetensors"


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


def make_pairs(cfg: ConfigDict, settings: MotionTeacherSettings, split: str, backend: str = "auto"
               ) -> tuple[UInt8[np.ndarray, "P 2 R R 3"], Float[np.ndarray, "P E"], np.ndarray]:
    """``pairs`` expressions, each rendered on two different identities of ``split`` ("train": the
    dataset's training identities and ``extra_identities`` random ones; "validation": the dataset's
    held-out ones) at independent near-frontal (driving-frame) cameras: uint8 frames ``[P, 2, R, R, 3]``,
    the expressions ``[P, E]`` and the identity indices ``[P, 2]`` (the dataset's; the k-th extra
    identity is ``spec.num_identities + k``)."""
    spec = synthetic.spec_from_config(cfg)
    ids = list(spec.identities("train" if split == "train" else "test"))
    params = [synthetic.identity_params(spec, i) for i in ids]
    if split == "train":
        for k in range(settings.extra_identities):
            ids.append(spec.num_identities + k)
            params.append(heads.sample_identity(np.random.default_rng([settings.seed, 402, k])))
    if len(ids) < 2:
        raise ValueError(f"the motion teacher needs two identities in the {split} split, the dataset has {len(ids)}")
    n = settings.pairs if split == "train" else settings.validation_pairs
    rng = np.random.default_rng([settings.seed, 400, 0 if split == "train" else 1])
    first = rng.integers(0, len(ids), n)
    second = (first + rng.integers(1, len(ids), n)) % len(ids)  # a different identity
    expr = np.stack([heads.sample_expression(rng) for _ in range(n)]).astype(np.float32)
    rad = math.pi / 180.0
    angles = np.stack([rng.uniform(-synthetic.SOURCE_YAW, synthetic.SOURCE_YAW, (n, 2)),
                       rng.uniform(-synthetic.SOURCE_PITCH, synthetic.SOURCE_PITCH, (n, 2))], -1) * rad
    w2c, intr = synthetic.cameras(angles.reshape(2 * n, 2).astype(np.float32), spec)
    canon = groundtruth.canonicals(np.stack(params), min(groundtruth.CANONICAL_GROUP, spec.num_identities))
    which = np.stack([first, second], 1).reshape(-1)
    frames = groundtruth.render_frames(canon, which, np.repeat(expr, 2, axis=0), w2c, intr, spec.resolution, backend)
    return frames.reshape(n, 2, *frames.shape[1:]), expr, np.asarray(ids)[which].reshape(n, 2)


def motion_input(frames: Float[Array, "B R R 3"], image_size: int) -> Float[Array, "B S S 3"]:
    """Frames in [0, 1] at the dataset's resolution -> at ``model.image_size``, as training feeds driving
    frames to ``Instant4D.motion`` (which then takes the face crop)."""
    if frames.shape[1] == image_size:
        return frames
    return jax.image.resize(frames, (frames.shape[0], image_size, image_size, frames.shape[-1]), "linear",
                            antialias=True)


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------


class _Pretrain(nnx.Module):
    """The motion encoder and its linear expression read-out (the read-out is not kept)."""

    def __init__(self, model_cfg: ConfigDict, *, rngs: nnx.Rngs):
        from jax_instant4d.model.motion import MotionEncoder

        self.encoder = MotionEncoder(model_cfg, rngs=rngs)
        self.readout = nnx.Linear(int(model_cfg.motion.code_dim), record.NUM_EXPRESSION, rngs=rngs)

    def codes(self, frames: Float[Array, "B R R 3"], image_size: int) -> Float[Array, "B D"]:
        return encoder_codes(self.encoder, frames, image_size)


def encoder_codes(encoder: nnx.Module, frames: Float[Array, "B R R 3"], image_size: int) -> Float[Array, "B D"]:
    """The motion encoder's codes of frames in [0, 1], fed as training feeds driving frames (resized to
    ``image_size``, then the face crop)."""
    from jax_instant4d.model.motion import face_crop

    code, _tokens = encoder(face_crop(motion_input(frames, image_size), encoder.crop_size))
    return code


def invariance_ratio(code_a: Float[Array, "B D"], code_b: Float[Array, "B D"]) -> Float[Array, ""]:
    """Mean squared distance between the codes of each pair over the mean squared distance of all codes
    from their mean (0: the identity leaves no trace; ~2: the pair is as far apart as random codes)."""
    both = jnp.concatenate([code_a, code_b], axis=0)
    spread = jnp.mean(jnp.sum(jnp.square(both - jnp.mean(both, axis=0)), axis=-1))
    return jnp.mean(jnp.sum(jnp.square(code_a - code_b), axis=-1)) / (spread + 1e-6)


def _encoder_config(cfg: ConfigDict) -> ConfigDict:
    """``cfg.model`` with a trainable motion encoder (the pretraining trains it; use decides freezing)."""
    return apply_overrides(cfg, ["model.motion.freeze=false"]).model


def pretrain(cfg: ConfigDict, settings: MotionTeacherSettings | None = None, backend: str = "auto"
             ) -> tuple[nnx.Module, dict]:
    """Renders the pairs, trains the encoder + read-out (AdamW, cosine decay), measures it on the
    held-out identities. Returns the trained :class:`~jax_instant4d.model.motion.MotionEncoder` (in
    eval mode: BatchNorm running statistics) and its info dict. Not cached: see :func:`ensure`."""
    s = settings or settings_for(cfg)
    t0 = time.perf_counter()
    x_train, e_train, _ = make_pairs(cfg, s, "train", backend)
    x_val, e_val, _ = make_pairs(cfg, s, "validation", backend)
    render_s = time.perf_counter() - t0
    log.info("motion teacher: %d training pairs (training identities%s) and %d validation pairs (held-out "
             "identities) rendered in %.1f s", len(x_train),
             f" and {s.extra_identities} random ones" if s.extra_identities else "", len(x_val), render_s)

    model = _Pretrain(_encoder_config(cfg), rngs=nnx.Rngs(s.seed))
    model.train()
    schedule = optax.warmup_cosine_decay_schedule(0.0, s.learning_rate, min(50, s.steps // 10 + 1), s.steps,
                                                  end_value=s.learning_rate * 0.02)
    opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                           optax.adamw(schedule, weight_decay=s.weight_decay)), wrt=nnx.Param)
    size, inv_w = int(s.image_size), float(s.invariance)

    @nnx.jit
    def step(model, opt, frames, target):
        def loss_fn(model):
            b = target.shape[0]
            codes = model.codes(frames.reshape(2 * b, *frames.shape[2:]).astype(jnp.float32) / 255.0, size)
            pred = model.readout(codes).reshape(b, 2, -1)
            regression = jnp.mean(jnp.square(pred - target[:, None]))
            codes = codes.reshape(b, 2, -1)
            inv = invariance_ratio(codes[:, 0], codes[:, 1])
            return regression + inv_w * inv, (regression, inv)

        (loss, (regression, inv)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, regression, inv

    rng = np.random.default_rng([s.seed, 401])
    bs = min(s.batch_pairs, len(x_train))
    t1 = time.perf_counter()
    history = []
    for i in range(s.steps):
        idx = rng.choice(len(x_train), bs, replace=False)
        frames, expr = x_train[idx].copy(), e_train[idx].copy()
        flip = rng.uniform(size=bs) < 0.5
        frames[flip] = frames[flip][..., ::-1, :]
        expr[flip] = record.mirror_expression(expr[flip])
        loss, regression, inv = step(model, opt, jnp.asarray(frames), jnp.asarray(record.normalise_expression(expr)))
        if i == 0 or (i + 1) % max(1, s.steps // 6) == 0:
            # the held-out read-out at this step (eval mode: BatchNorm's running statistics, no update, so the
            # weights are those of a run that does not measure); a curve to read, never used to pick a step
            model.eval()
            held = float(np.abs(readout_predictions(model, x_val, size) - np.repeat(e_val, 2, axis=0)).mean())
            model.train()
            history.append({"step": i + 1, "loss": float(loss), "regression": float(regression),
                            "invariance": float(inv), "heldout_mae": held})
            log.info("motion teacher: step %d/%d loss %.4f (regression %.4f, invariance %.3f), held-out read-out "
                     "MAE %.4f", i + 1, s.steps, float(loss), float(regression), float(inv), held)
    fit_s = time.perf_counter() - t1

    model.eval()
    before = measure(model, x_val, e_val, e_train, size)
    project_to_readout(model)
    info = measure(model, x_val, e_val, e_train, size)
    info["before_projection"] = {k: before[k] for k in ("mae", "same_expression_distance_ratio", "code_norm")}
    info["code_scale"] = scale_code(model.encoder, x_train, size)
    info.update(
        history=history, render_seconds=float(render_s), fit_seconds=float(fit_s),
        seconds=float(time.perf_counter() - t0), settings=asdict(s), version=TEACHER_VERSION,
        trained_on=f"renders of the {len(synthetic.spec_from_config(cfg).identities('train'))} training identities "
                   f"of {s.dataset}" + (f" and {s.extra_identities} random identities of the generator"
                                        if s.extra_identities else ""),
        measured_on="renders of its held-out identities")
    log.info("motion teacher: held-out read-out MAE %.4f (best constant %.4f), identity invariance %.3f; %.0f s",
             info["mae"], info["baseline_mae"], info["same_expression_distance_ratio"], info["seconds"])
    return model.encoder, info


def project_to_readout(model: _Pretrain) -> None:
    """Keeps of the code only what the expression read-out reads: the encoder's last linear layer
    (``final_proj``) is followed by the orthogonal projection onto the span of the read-out's weights
    (folded into its kernel and bias, so the architecture and the weight layout stay X-NeMo's). The
    read-out's predictions do not change (its weights see only that span); what the code carried
    besides, the identity above all, is gone."""
    w = np.asarray(model.readout.kernel[...], np.float64)  # [D, E]
    proj = w @ np.linalg.pinv(w)  # [D, D]: onto the column space of w
    fp = model.encoder.final_proj
    kernel = np.asarray(fp.kernel[...], np.float64) @ proj
    fp.kernel[...] = jnp.asarray(kernel, jnp.float32)
    if fp.bias is not None:
        fp.bias[...] = jnp.asarray(np.asarray(fp.bias[...], np.float64) @ proj, jnp.float32)


CODE_SPREAD = 1.0  # after scale_code: the code's standard deviation per read-out direction, on average


def scale_code(encoder: nnx.Module, frames: UInt8[np.ndarray, "P 2 R R 3"], image_size: int,
               batch: int = 32) -> dict:
    """Centres the code over the training frames and scales it so that each read-out direction varies by
    about :data:`CODE_SPREAD` (folded into ``final_proj``, after :func:`project_to_readout`). The read-out
    leaves the code varying by ~0.03 per dimension beside the constant token positions (norm 16): a
    conditioning signal the avatar's AdaLN would need thousands of steps to amplify. Distances between
    codes scale uniformly, so the identity-invariance ratio does not change. Returns the scale and the
    spread before and after."""
    codes = _codes(encoder, frames, image_size, batch).astype(np.float64)
    out = codes - encoder.token_positions().reshape(-1)  # final_proj's output
    mean = out.mean(0)
    spread = float(np.sqrt(np.sum(out.var(0))))  # total standard deviation
    scale = CODE_SPREAD * math.sqrt(record.NUM_EXPRESSION) / max(spread, 1e-12)
    fp = encoder.final_proj
    if fp.bias is None:
        raise ValueError("scale_code needs final_proj with a bias")
    fp.kernel[...] = jnp.asarray(np.asarray(fp.kernel[...], np.float64) * scale, jnp.float32)
    fp.bias[...] = jnp.asarray((np.asarray(fp.bias[...], np.float64) - mean / fp.lr_multiplier) * scale,
                               jnp.float32)
    return {"scale": scale, "spread_before": spread, "spread_after": spread * scale}


@nnx.jit(static_argnums=2)
def _codes_jit(encoder: nnx.Module, x: Float[Array, "B R R 3"], image_size: int) -> Float[Array, "B D"]:
    return encoder_codes(encoder, x, image_size)


def _codes(encoder: nnx.Module, frames: UInt8[np.ndarray, "P 2 R R 3"], image_size: int, batch: int = 32
           ) -> Float[np.ndarray, "N D"]:
    """The encoder's codes of every frame of ``frames`` (pairs flattened: [2P, D]), ``batch`` at a time."""
    flat = frames.reshape(-1, *frames.shape[2:]).astype(np.float32) / 255.0
    return np.concatenate([np.asarray(_codes_jit(encoder, jnp.asarray(flat[i:i + batch]), image_size))
                           for i in range(0, len(flat), batch)])


def _read(model: _Pretrain, codes: Float[np.ndarray, "N D"]) -> Float[np.ndarray, "N E"]:
    """The read-out's expression parameters (denormalised) of codes."""
    return record.denormalise_expression(np.asarray(model.readout(jnp.asarray(codes))))


def readout_predictions(model: _Pretrain, frames: UInt8[np.ndarray, "P 2 R R 3"], image_size: int
                        ) -> Float[np.ndarray, "N E"]:
    """The read-out's expression parameters for every frame of ``frames`` ([2P, E])."""
    return _read(model, _codes(model.encoder, frames, image_size))


def measure(model: _Pretrain, frames: UInt8[np.ndarray, "P 2 R R 3"], expr: Float[np.ndarray, "P E"],
            train_expr: Float[np.ndarray, "N E"], image_size: int, batch: int = 32) -> dict:
    """Accuracy of a (pretrained) encoder + read-out on pairs it did not train on."""
    n = len(frames)
    codes = _codes(model.encoder, frames, image_size, batch)
    pred = _read(model, codes)
    truth = np.repeat(expr, 2, axis=0)
    err = np.abs(pred - truth).mean(0)
    median = np.median(train_expr, axis=0)
    base = np.abs(median[None] - truth).mean(0)
    codes = codes.reshape(n, 2, -1)
    same = np.linalg.norm(codes[:, 0] - codes[:, 1], axis=-1).mean()
    perm = np.random.default_rng(0).permutation(n)
    perm = np.where(perm == np.arange(n), (perm + 1) % n, perm)
    other = np.linalg.norm(codes[:, 0] - codes[perm, 1], axis=-1).mean()
    names = record.EXPRESSION_NAMES
    return {
        "mae": float(err.mean()), "baseline_mae": float(base.mean()),
        "per_parameter_mae": {k: float(v) for k, v in zip(names, err, strict=True)},
        "per_parameter_baseline_mae": {k: float(v) for k, v in zip(names, base, strict=True)},
        "same_expression_distance": float(same), "random_pair_distance": float(other),
        "same_expression_distance_ratio": float(same / max(other, 1e-12)),
        "code_norm": float(np.linalg.norm(codes, axis=-1).mean()),
    }


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def save(encoder: nnx.Module, info: dict, path: str | os.PathLike) -> None:
    """Writes the encoder in X-NeMo's layout (safetensors; format tag and info in the metadata) and the
    info as JSON beside it, each atomically (a temporary file renamed into place)."""
    from safetensors.numpy import save_file

    from jax_instant4d.model.interop import WEIGHTS_FORMAT, flax_to_torch_state_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sd = {k: np.ascontiguousarray(v, np.float32) for k, v in flax_to_torch_state_dict(encoder).items()}
    save_file(sd, str(tmp), metadata={"format": WEIGHTS_FORMAT, "info": json.dumps(info)})
    os.chmod(tmp, 0o644)
    tmp_json = path.with_name(f".{path.stem}.{os.getpid()}.json.tmp")
    tmp_json.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp_json, path.with_suffix(".json"))
    os.replace(tmp, path)  # the weights last: their presence means both are complete


def ensure(cfg: ConfigDict, backend: str | None = None) -> tuple[Path, dict]:
    """The cached teacher encoder of ``cfg`` (path and info), pretrained and cached first if missing."""
    settings = settings_for(cfg)
    path = cache_path(cfg, settings)

    def cached() -> tuple[Path, dict]:
        info_path = path.with_suffix(".json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return path, {**info, "path": str(path), "cached": True}

    def make() -> tuple[Path, dict]:
        log.info("motion teacher: pretraining %s (cached at %s)", settings.key, path)
        encoder, info = pretrain(cfg, settings, backend or str(cfg.render.backend))
        save(encoder, info, path)
        return path, {**info, "path": str(path), "cached": False}

    # one process pretrains; others starting at the same time wait for it, then load its file
    return load_or_make(path, "motion teacher", cached, make)
