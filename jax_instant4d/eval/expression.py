"""Expression error on ``synthetic_heads``: our stand-in for the paper's AED (which needs SMIRK / FLAME).

A small CNN (plain JAX: 3x3 convolutions, the last feature map flattened, two dense layers) regresses
the 14 expression parameters (``record.EXPRESSION_NAMES``) from one rendered frame (area-resized to
``resolution``, 128 by default, and the central 60% kept: brows to lips). It is trained on ground-truth
renders of the synthetic head generator: random identities (never the dataset's: they come from their
own seeds), expressions drawn as the dataset draws them (``heads.sample_expression``), near-frontal
cameras (the driving frames' jitter: the evaluation renders every frame it scores at the frontal
camera, since our avatars can be rendered anywhere), quantised to uint8 like the stored frames, half of
them mirrored (left and right parameters swapped), half with their detail reduced to 64^2 (so the
renders of models trained at 64^2 are read too) and half blurred by a Gaussian of random width (up to 3
pixels at 128^2: an avatar's render is softer than any ground truth, and a frame whose expression cannot
be read should be read as uncertain, near the training mean), with an MSE loss. A parameter the network does not read
better than the training median on renders of other (validation) identities is predicted as that median
(``network_parameters`` lists the others), so an unreadable parameter adds a constant, not noise. The
regressor's mean absolute error on renders of yet other, held-out random identities (``test_mae``, per
parameter too) is reported beside ``baseline_mae``, the error of always predicting the training median
(the best constant): that is the metric's floor, the error it makes on perfect frames. At 64^2 and at
the teacher's cameras (yaw up to 35 degrees) it read only the jaw and the blinks (version 1 of this
regressor); version 2 (128^2, frontal, 128 identities) read 6 of the 14 parameters at half the constant's
error or better; this one (version 3: 1024 identities, 32768 frames, 8000 steps, the blur) reads 12 of 14,
test MAE 0.0845 against the constant's 0.2309 (``test_mae`` / ``baseline_mae`` in ``info``, per
parameter in ``per_parameter_mae``).

The expression error of a set of frames is the mean absolute difference between the regressor's
prediction and the ground-truth expression, over frames and the 14 parameters (each in its own range:
[0, 1] or [-1, 1]). The paper's AED is a distance between SMIRK's FLAME expression coefficients: the
numbers are not comparable, only the idea (expression read off the output by a fixed network).

The trained regressor is cached under ``<data_dir>/eval_cache/`` in a file named by a hash of every
setting that changes it (:class:`RegressorSettings`, the generator version), so it trains once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, UInt8

from jax_instant4d.cachelock import load_or_make
from jax_instant4d.data import groundtruth, heads, record, synthetic
from jax_instant4d.image_metrics import resize_to

REGRESSOR_VERSION = 3  # bump when the network, its training or its data change
BLUR_RADIUS = 8  # taps each side of the training blur's kernel (blur_sigma at most half of it)
Params = dict[str, jax.Array]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegressorSettings:
    """Everything that determines the regressor (its cache key). The defaults take about 23 minutes on 2
    CPU cores (6.5 rendering the frames, 17 training), once per data directory; the tests use a tiny
    version."""

    # frames are area-resized to this before the network. 128: at 64^2 only the jaw and the blinks are
    # readable (gaze, brows and lip shapes move a pixel or less)
    resolution: int = 128
    identities: int = 1024  # random training identities
    validation_identities: int = 8  # other random identities: which parameters the network reads better
    validation_images: int = 256  # than a constant (the others predict the training median)
    test_identities: int = 16  # yet other random identities for the reported accuracy
    train_images: int = 32768
    test_images: int = 384
    steps: int = 8000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    crop: float = 0.6  # the central crop (this fraction of the side): brows to lips at the frontal camera
    widths: tuple[int, ...] = (16, 32, 64, 128)  # per width a stride-2 and a stride-1 3x3 conv (ReLU)
    hidden: int = 128  # after the last feature map, flattened (where things are matters: left vs right eye)
    # this fraction of the training frames has its detail reduced to coarse_resolution (area down, bilinear
    # up): models trained at a lower resolution and rendered at this one must be read too
    coarse: float = 0.5
    coarse_resolution: int = 64
    # this fraction of the training frames is blurred (a Gaussian of standard deviation uniform in
    # [0, blur_sigma] pixels at ``resolution``): an avatar's render is softer than any downsampled
    # ground truth, and a frame whose expression cannot be read should be read as uncertain (near the
    # training mean), not as whatever the network extrapolates to
    blur: float = 0.5
    blur_sigma: float = 3.0
    flip: bool = True  # mirror half the training images (left/right parameters swapped, gaze_x/jaw_side negated)
    # cameras: near-frontal (the driving frames' jitter): the evaluation reads expressions at the frontal camera
    yaw_degrees: float = synthetic.SOURCE_YAW
    pitch_degrees: float = synthetic.SOURCE_PITCH
    fov_degrees: float = 18.837
    camera_radius: float = 2.7
    seed: int = 0

    def __post_init__(self):
        for k in ("resolution", "identities", "validation_identities", "test_identities", "train_images",
                  "validation_images", "test_images", "steps", "batch_size", "hidden"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"expression regressor setting {k} must be >= 1, got {getattr(self, k)}")
        for k in ("coarse", "blur"):
            if not 0.0 <= float(getattr(self, k)) <= 1.0:
                raise ValueError(f"expression regressor {k} must be in [0, 1], got {getattr(self, k)}")
        if not 0.0 <= self.blur_sigma <= BLUR_RADIUS / 2:
            raise ValueError(f"expression regressor blur_sigma must be in [0, {BLUR_RADIUS / 2}] pixels, "
                             f"got {self.blur_sigma}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"expression regressor crop must be in (0, 1], got {self.crop}")
        if self.input_size < 2 ** len(self.widths):
            raise ValueError(f"expression regressor resolution {self.resolution} is too small for "
                             f"{len(self.widths)} stride-2 stages")

    @property
    def input_size(self) -> int:
        """Side of the network's input: the central crop of the frame resized to ``resolution``."""
        return max(1, int(round(self.resolution * self.crop)))

    @property
    def key(self) -> str:
        h = hashlib.sha1(repr((sorted(asdict(self).items()), REGRESSOR_VERSION, synthetic.GENERATOR_VERSION))
                         .encode()).hexdigest()[:10]
        return f"expression_regressor-r{self.resolution}-{h}"


@dataclass
class Regressor:
    settings: RegressorSettings
    params: Params
    info: dict  # test_mae, baseline_mae, per_parameter_mae, train_seconds, path, cached

    def predict(self, images: Float[Array, "B H W 3"]) -> Float[np.ndarray, "B E"]:
        """Expression parameters of frames in [0, 1] (any square size; area-resized)."""
        return predict(self.params, images, self.settings.resolution, self.settings.crop)


# --------------------------------------------------------------------------------------------------
# The network (plain JAX: a dict of arrays, saved as .npz)
# --------------------------------------------------------------------------------------------------


def init_params(settings: RegressorSettings, key: jax.Array) -> Params:
    """He-initialised 3x3 convolutions (HWIO), the last feature map flattened, two dense layers."""
    params: Params = {}
    cin = 3
    keys = iter(jax.random.split(key, 4 * len(settings.widths) + 4))
    for i, c in enumerate(settings.widths):
        for name, ci in ((f"conv{i}a", cin), (f"conv{i}b", c)):
            params[f"{name}.w"] = jax.random.normal(next(keys), (3, 3, ci, c)) * math.sqrt(2.0 / (9 * ci))
            params[f"{name}.b"] = jnp.zeros((c,))
        cin = c
    side = settings.input_size
    for _ in settings.widths:
        side = (side + 1) // 2  # 3x3, stride 2, padding 1
    cin = cin * side * side
    params["fc1.w"] = jax.random.normal(next(keys), (cin, settings.hidden)) * math.sqrt(2.0 / cin)
    params["fc1.b"] = jnp.zeros((settings.hidden,))
    params["fc2.w"] = jax.random.normal(next(keys), (settings.hidden, record.NUM_EXPRESSION)) / math.sqrt(
        settings.hidden)
    params["fc2.b"] = jnp.zeros((record.NUM_EXPRESSION,))
    return params


def _conv(x, w, b, stride):
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b)


def apply(params: Params, images: Float[Array, "B R R 3"]) -> Float[Array, "B E"]:
    """Normalised predictions (each parameter mapped from its range to [0, 1])."""
    x = images * 2.0 - 1.0
    i = 0
    while f"conv{i}a.w" in params:
        x = _conv(x, params[f"conv{i}a.w"], params[f"conv{i}a.b"], 2)
        if f"conv{i}b.w" in params:
            x = _conv(x, params[f"conv{i}b.w"], params[f"conv{i}b.b"], 1)
        i += 1
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ params["fc1.w"] + params["fc1.b"])
    return x @ params["fc2.w"] + params["fc2.b"]


normalise = record.normalise_expression
denormalise = record.denormalise_expression


@jax.jit
def _apply_jit(params, images):
    return apply(params, images)


def centre_crop(images: Float[Array, "B H W C"], crop: float) -> Float[Array, "B h w C"]:
    """The central ``crop`` fraction of each side."""
    h, w = images.shape[1], images.shape[2]
    sh, sw = max(1, int(round(h * crop))), max(1, int(round(w * crop)))
    top, left = (h - sh) // 2, (w - sw) // 2
    return images[:, top:top + sh, left:left + sw]


def predict(params: Params, images: Float[Array, "B H W 3"], resolution: int, crop: float = 1.0,
            batch: int = 64) -> Float[np.ndarray, "B E"]:
    """Expression parameters (in their ranges) of frames in [0, 1] (resized to ``resolution``, then
    centre-cropped)."""
    images = np.asarray(images, np.float32)
    net = {k: v for k, v in params.items() if not k.startswith("select.")}
    out = []
    for s in range(0, images.shape[0], batch):
        x = centre_crop(resize_to(jnp.asarray(images[s:s + batch]), int(resolution)), crop)
        n = x.shape[0]
        if n < batch and images.shape[0] > batch:  # keep one compiled shape for long runs
            x = jnp.concatenate([x, jnp.zeros((batch - n, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(_apply_jit(net, x))[:n])
    y = denormalise(np.concatenate(out)) if out else np.zeros((0, record.NUM_EXPRESSION), np.float32)
    if "select.use" in params:  # parameters the network does not read better than a constant: the constant
        y = np.where(np.asarray(params["select.use"]) > 0.5, y, np.asarray(params["select.constant"]))
    return y.astype(np.float32)


def expression_error(predicted: Float[np.ndarray, "B E"], truth: Float[np.ndarray, "B E"]) -> Float[np.ndarray, " B"]:
    """Per frame: mean absolute error over the 14 parameters."""
    return np.mean(np.abs(np.asarray(predicted, np.float32) - np.asarray(truth, np.float32)), axis=-1)


# --------------------------------------------------------------------------------------------------
# Training data and training
# --------------------------------------------------------------------------------------------------


def make_images(settings: RegressorSettings, split: str, backend: str = "auto", group: int | None = None
                ) -> tuple[UInt8[np.ndarray, "N R R 3"], np.ndarray]:
    """Ground-truth renders and their expressions: ``split`` "train", "validation" or "test" (each of
    its own random identities)."""
    from jax_instant4d.render import orbit_camera

    s = settings
    tag, n_id, n = {"train": (1, s.identities, s.train_images), "test": (2, s.test_identities, s.test_images),
                    "validation": (3, s.validation_identities, s.validation_images)}[split]
    ids = np.stack([heads.sample_identity(np.random.default_rng([s.seed, 100 + tag, i])) for i in range(n_id)])
    rng = np.random.default_rng([s.seed, 200 + tag])
    which = rng.integers(0, n_id, n)
    expr = np.stack([heads.sample_expression(rng) for _ in range(n)]).astype(np.float32)
    rad = math.pi / 180.0
    yaw = rng.uniform(-s.yaw_degrees, s.yaw_degrees, n) * rad
    pitch = rng.uniform(-s.pitch_degrees, s.pitch_degrees, n) * rad
    cam = orbit_camera(jnp.asarray(yaw, jnp.float32), jnp.asarray(pitch, jnp.float32), radius=s.camera_radius,
                       fov_degrees=s.fov_degrees, size=s.resolution)
    t0 = time.perf_counter()
    canon = groundtruth.canonicals(ids, group)
    images = groundtruth.render_frames(canon, which, expr, np.asarray(cam.world_to_cam), np.asarray(cam.intrinsics),
                                       s.resolution, backend)
    logger.info("expression regressor: %d %s renders of %d identities in %.1f s", n, split, n_id,
                time.perf_counter() - t0)
    return images, expr


def blur(images: Float[Array, "B H W C"], sigma: Float[Array, " B"]) -> Float[Array, "B H W C"]:
    """Each image blurred by a Gaussian of its own standard deviation ``sigma`` (pixels; 0 leaves it as it
    is), separably, with the border pixels repeated."""
    t = jnp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t[None] / jnp.maximum(sigma[:, None], 1e-3)) ** 2)
    k = k / jnp.sum(k, axis=1, keepdims=True)  # [B, taps]
    h, w = images.shape[1], images.shape[2]
    r = BLUR_RADIUS
    x = jnp.pad(images, ((0, 0), (r, r), (0, 0), (0, 0)), mode="edge")
    x = sum(k[:, j, None, None, None] * x[:, j:j + h] for j in range(2 * r + 1))
    x = jnp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[:, j, None, None, None] * x[:, :, j:j + w] for j in range(2 * r + 1))


def mirror(images: UInt8[np.ndarray, "B H W 3"] | Float[np.ndarray, "B H W 3"], expr: Float[np.ndarray, "B E"]
           ) -> tuple[np.ndarray, Float[np.ndarray, "B E"]]:
    """Horizontally mirrored frames and their expressions: the subject's left and right swap (blinks,
    brows), gaze_x and jaw_side change sign."""
    return np.ascontiguousarray(np.asarray(images)[..., ::-1, :]), record.mirror_expression(expr)


def train_regressor(settings: RegressorSettings, backend: str = "auto", group: int | None = None) -> Regressor:
    """Generates the renders, trains (AdamW, cosine decay, MSE on the normalised parameters), keeps the
    network's output for the parameters where it beats the training median on the validation
    identities (the median elsewhere), measures the accuracy on the test identities. Not cached: see
    :func:`ensure_regressor`."""
    s = settings
    t0 = time.perf_counter()
    x_train, e_train = make_images(s, "train", backend, group)
    x_train = np.ascontiguousarray(centre_crop(x_train, s.crop))  # what the network sees
    x_val, e_val = make_images(s, "validation", backend, group)
    x_test, e_test = make_images(s, "test", backend, group)
    tx = optax.adamw(optax.cosine_decay_schedule(s.learning_rate, s.steps, alpha=0.05), weight_decay=s.weight_decay)
    params = init_params(s, jax.random.key(s.seed))
    opt = tx.init(params)

    coarse_side = max(1, int(round(s.input_size * s.coarse_resolution / s.resolution)))

    @jax.jit
    def step(params, opt, x, y, coarse, sigma):
        x = x.astype(jnp.float32) / 255.0
        if coarse_side < s.input_size:
            shape = (x.shape[0], coarse_side, coarse_side, x.shape[-1])
            low = jax.image.resize(jax.image.resize(x, shape, "linear", antialias=True), x.shape, "linear")
            x = jnp.where(coarse[:, None, None, None], low, x)
        if s.blur > 0.0:
            x = blur(x, sigma)

        def loss_fn(p):
            return jnp.mean((apply(p, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng([s.seed, 300])
    bs = min(s.batch_size, len(x_train))
    first = loss = None
    t1 = time.perf_counter()
    for i in range(s.steps):
        idx = rng.choice(len(x_train), bs, replace=False)
        xb, eb = x_train[idx], e_train[idx]
        if s.flip:
            f = rng.uniform(size=bs) < 0.5
            xb[f], eb[f] = mirror(xb[f], eb[f])
        coarse = jnp.asarray(rng.uniform(size=bs) < s.coarse)
        sigma = np.where(rng.uniform(size=bs) < s.blur, rng.uniform(0.0, s.blur_sigma, bs), 0.0)
        params, opt, loss = step(params, opt, jnp.asarray(xb), jnp.asarray(normalise(eb)), coarse,
                                 jnp.asarray(sigma, jnp.float32))
        if i == 0:
            first = float(loss)
        if (i + 1) % max(1, s.steps // 5) == 0:
            logger.info("expression regressor: step %d/%d loss %.4f", i + 1, s.steps, float(loss))
    last = float(loss)
    train_time = time.perf_counter() - t1
    median = np.median(e_train, axis=0).astype(np.float32)  # the best constant for an MAE
    val_net = np.abs(predict(params, x_val.astype(np.float32) / 255.0, s.resolution, s.crop) - e_val).mean(0)
    use = val_net < np.abs(median - e_val).mean(0)
    params = {**params, "select.use": jnp.asarray(use, jnp.float32), "select.constant": jnp.asarray(median)}
    pred = predict(params, x_test.astype(np.float32) / 255.0, s.resolution, s.crop)
    err = np.abs(pred - e_test)
    base = np.abs(median[None] - e_test)
    info = {
        "test_mae": float(err.mean()),
        "baseline_mae": float(base.mean()),
        "per_parameter_mae": {n: float(v) for n, v in zip(record.EXPRESSION_NAMES, err.mean(0), strict=True)},
        "per_parameter_baseline_mae": {n: float(v) for n, v in zip(record.EXPRESSION_NAMES, base.mean(0),
                                                                   strict=True)},
        "network_parameters": [n for n, u in zip(record.EXPRESSION_NAMES, use, strict=True) if u],
        "first_loss": first,
        "final_loss": last,
        "train_seconds": float(time.perf_counter() - t0),
        "fit_seconds": float(train_time),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "version": REGRESSOR_VERSION,
    }
    logger.info("expression regressor: held-out MAE %.4f (predicting the median: %.4f); %.0f s in all",
                info["test_mae"], info["baseline_mae"], info["train_seconds"])
    return Regressor(s, jax.device_get(params), info)


def cache_path(data_dir: str | os.PathLike, settings: RegressorSettings) -> Path:
    return Path(data_dir).expanduser() / "eval_cache" / f"{settings.key}.npz"


def save_regressor(reg: Regressor, path: str | os.PathLike) -> None:
    """Writes atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arrays = {f"param/{k}": np.asarray(v) for k, v in reg.params.items()}
    with open(tmp, "wb") as f:
        np.savez(f, info=np.asarray(json.dumps(reg.info)), **arrays)
    os.replace(tmp, path)


def load_regressor(path: str | os.PathLike, settings: RegressorSettings) -> Regressor:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            info = json.loads(str(f["info"]))
            params = {k[len("param/"):]: jnp.asarray(f[k]) for k in f.files if k.startswith("param/")}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"expression regressor cache {path} is unreadable ({e}); delete it to retrain") from e
    return Regressor(settings, params, info)


def ensure_regressor(data_dir: str | os.PathLike, settings: RegressorSettings | None = None, backend: str = "auto",
                     group: int | None = None) -> Regressor:
    """The cached regressor of ``settings`` under ``data_dir``, trained (and cached) first if missing."""
    settings = settings or RegressorSettings()
    path = cache_path(data_dir, settings)

    def cached() -> Regressor:
        reg = load_regressor(path, settings)
        reg.info = {**reg.info, "path": str(path), "cached": True}
        return reg

    def make() -> Regressor:
        logger.info("expression regressor: training (%s), cached at %s", settings.key, path)
        reg = train_regressor(settings, backend, group)
        save_regressor(reg, path)
        reg.info = {**reg.info, "path": str(path), "cached": False}
        return reg

    # one process trains; others starting at the same time wait for it, then load its file
    return load_or_make(path, "expression regressor", cached, make)


def settings_for(cfg, **overrides) -> RegressorSettings:
    """Default settings with the camera model of ``cfg.render`` and any field overridden."""
    base = dict(fov_degrees=float(cfg.render.fov_degrees), camera_radius=float(cfg.render.camera_radius))
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "widths" in base:
        base["widths"] = tuple(int(w) for w in base["widths"])
    return dataclasses.replace(RegressorSettings(), **base)
