"""Configs: the one source of defaults, loading of config files, and command-line overrides.

A config file is a Python file with ``get_config() -> ConfigDict`` (see ``configs/``); it starts from
:func:`base_config` and changes what it needs. Every key can be overridden on the command line as
``--config.train.steps=100`` (the big_vision / scenic convention). Unknown keys are errors, and a value
is converted to the type of the default it replaces.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
    """A config file or override names something that does not exist or cannot be converted."""


# --------------------------------------------------------------------------------------------------
# Defaults, one function per section (each section's owner edits only its own function).
# --------------------------------------------------------------------------------------------------


def _data_defaults() -> ConfigDict:
    """Teacher-clip datasets and the grain pipeline. Owned by jax_instant4d/data (see its README)."""
    return ConfigDict({
        "dataset": "synthetic_heads",  # synthetic_heads | teacher_clips
        "data_dir": "data_cache",  # tfds data_dir; relative paths are relative to the current directory
        "resolution": 128,  # stored and batch image size (square); batches are resampled if stored differs
        "image_format": "png",  # png | jpeg (frames; masks are always PNG)
        "jpeg_quality": 95,
        # synthetic_heads content (all part of the dataset's name): identities, of which the last
        # heldout_identities form the "test" split; clips per identity; T time steps; V teacher views
        "num_identities": 64,
        "heldout_identities": 8,  # teacher_clips: identities held out when clip.json names no split
        "clips_per_identity": 2,
        "time_steps": 4,  # T
        "views": 2,  # V
        "seed": 0,
        # synthetic_heads: also store, for every teacher view, the source identity at the source's own expression
        # at that view's camera ("undriven_images": what the teacher draws when the source drives itself), for
        # train.loss.expression_change. Part of the dataset's name when true (false keeps the names it had)
        "undriven_views": False,
        # pipeline
        "targets_per_example": 2,  # K (time, view) targets sampled per example
        "num_workers": 0,  # grain worker processes (0 = decode in this process)
        "read_threads": 2,  # decoding threads per process
        "prefetch": 2,  # batches buffered (per worker)
        "shuffle_seed": 0,
        # damaged records (a corrupt or cut ArrayRecord chunk, an empty shard) are reported with their file and
        # record, skipped and counted; more than this many in one process is fatal (0: the first one is)
        "max_bad_records": 100,
        # multi-process runs: process 0 prepares a missing synthetic_heads dataset and the others wait for it
        # this long (seconds; through the coordination service) before giving up
        "ready_timeout_s": 3600,
        # photometric: one gain for source + targets, gain / contrast (and per-channel colour) jitter of each
        # driving frame; crop: random shifts with the principal point moved along
        "augment": ConfigDict({"photometric": False, "crop": False, "max_shift": 4,
                               "brightness": 0.1, "contrast": 0.1, "color": 0.0}),
        # the synthetic teacher's motion encoder (model.motion.weights=teacher; data/motion_teacher.py): its
        # pretraining pairs (one expression on two training identities), held-out pairs (accuracy only), steps,
        # pairs per batch, Adam(W) settings, identity-invariance weight, seed, and random identities of the
        # generator added to the training identities (0: none; never the held-out ones). Part of its cache key.
        "motion_teacher": ConfigDict({"pairs": 1024, "validation_pairs": 128, "steps": 600, "batch_pairs": 16,
                                      "learning_rate": 5e-4, "weight_decay": 1e-4, "invariance": 0.0, "seed": 0,
                                      "extra_identities": 0}),
    })


def _encoder_defaults() -> ConfigDict:
    """The triplane encoder (LP3D design). Owned by model/encoder.py."""
    return ConfigDict({
        "plane_res": 256,  # = image_size / 2 (fixed by the architecture)
        "plane_channels": 96,  # per plane; f = first half, m = second half
        # DeepLabV3 on a dilated ResNet-18 (output stride 8; no normalisation layers, as the authors')
        "stem_channels": 64,
        "resnet_channels": (64, 128, 256, 512),
        "resnet_blocks": (2, 2, 2, 2),
        "aspp_channels": 256,
        "aspp_rates": (12, 24, 36),
        # SegFormer-style blocks (efficient attention + Mix-FFN) in the low-res branch and the decoder
        "transformer_dim": 1024,
        "mlp_ratio": 2.0,
        "lowres_blocks": 2,
        "lowres_heads": 4,
        "decoder_blocks": 1,
        "decoder_heads": 2,
        "decoder_sr_ratio": 2,  # spatial reduction of keys/values in the decoder's block
        "lr_multiplier": 0.5,  # transformer blocks: weights stored / lr_multiplier, scaled back at run time
        "branch_channels": 128,  # low-res branch output and high-res branch width
        "highres_layers": 4,
        "decoder_channels": (256, 128),
    })


def _motion_defaults() -> ConfigDict:
    """The motion encoder (X-NeMo design). Owned by model/motion.py."""
    return ConfigDict({
        "crop_size": 224,
        "code_dim": 512,
        # Pretrained weights: "" = the motion encoder trains from scratch with the avatar; "teacher" = the synthetic
        # teacher's encoder (data/motion_teacher.py: pretrained on the training identities, cached beside the
        # dataset); else a file (X-NeMo's state dict, .safetensors or .pt). freeze keeps them fixed (the paper).
        "weights": "",
        "freeze": False,
        "weights_sha256": "",  # filled in at the start of training; a file with another hash is refused
        # Diagnostic, not the paper: true = the motion code is the frame's ground-truth expression parameters (synthetic
        # data only), each mapped to [0, 1], centred and x4, embedded by a fixed orthonormal map into the code's
        # space plus the encoder's token positions: what a perfect teacher encoder would give, with no noise and no
        # identity in it. Training and evaluation on synthetic_heads only; reading motion from frames is an error.
        "oracle": False,
        "token_dim": 16,  # the code is code_dim / token_dim tokens of token_dim (32 x 16)
        "fan_channels": (64, 128, 256),  # FAN stem, ConvBlock width, hourglass width
        "hourglass_depth": 4,
        "hourglass_dropout": 0.0,  # the authors' module has 0.5 (active only when training)
        "landmarks": 68,
        "attn_heads": 8,  # spatial self-attention: heads x head_dim = token width
        "attn_head_dim": 128,
        "attn_patch": (4, 2, 2),  # patch sizes of the three attention modules
        "norm_groups": 32,
        "bbox_dim": 64,
    })


def _model_defaults() -> ConfigDict:
    return ConfigDict({
        "encoder": _encoder_defaults(),
        "motion": _motion_defaults(),
        "image_size": 512,
        "feature_dim": 48,  # f and m each (half of encoder.plane_channels)
        "instantiate": "plane",  # plane | rays
        "gaussian_res": 512,  # plane mode: Gaussians on a gaussian_res^2 grid
        # Gaussians whose source density (decoded from f alone) is below this keep their slot but get
        # opacity 0 (static shapes; the authors drop them).
        "density_threshold": 1.0 / 255.0,
        "rays": ConfigDict({  # rays mode: NeRF-style samples along rays of a fixed frontal camera
            "resolution": 64,  # rays on a resolution^2 grid
            "depth_samples": 24,  # stratified samples per ray
            "importance_samples": 24,  # importance samples per ray
            "ray_start": 2.25,
            "ray_end": 3.5,
            "box_warp": 1.0,  # the triplanes span [-box_warp/2, box_warp/2]^3
        }),
        # Gaussian positions: "frontal" = anchor + tanh (plane mode: the texel's point on the frontal view at
        # z = 0; rays mode: the sample point), needed to train from scratch; "none" = tanh alone, absolute
        # (the authors' code: use it for their released weights). See model/instantiate.py.
        "anchors": "frontal",
        "fusion": "local",  # local | global | deform | none
        "fusion_scale": 0.01,  # delta = fusion_scale * MLP(...)
        # initial scale of the fusion MLP's last-layer weights (1 = the authors'). With Adam the speed at which
        # delta can change grows with fusion_scale; fusion_scale * fusion_init sets its size at initialisation.
        "fusion_init": 1.0,
        "global_heads": 4,  # global fusion: attention heads (feature_dim divisible by it)
    })


def _render_defaults() -> ConfigDict:
    return ConfigDict({
        "backend": "auto",  # auto | cpu | cuda | xla | dense (the O(HWN) reference; tiny tests only)
        # xla backend only: 0 = exact (every tile/Gaussian pair, the image of cpu and cuda); K > 0 = opt-in
        # approximation keeping at most K Gaussians per 16x16 tile (the dropped pairs are logged as overflow)
        "tile_capacity": 0,
        "fov_degrees": 18.837,
        "camera_radius": 2.7,
        "near": 0.01,
        "antialiased": False,
        "background": 0.0,
    })


def _train_defaults() -> ConfigDict:
    """Training (jax_instant4d/train): losses, optimisers, schedule, sharding, checkpoints, logging."""
    return ConfigDict({
        "steps": 1000,
        "batch_size": 32,  # global batch (all processes together)
        "learning_rate": 1e-4,
        "seed": 0,  # per-step randomness (folded with the step number)
        "warmup_steps": 100,
        "lr_schedule": "constant",  # constant | cosine (after warmup)
        "min_lr_ratio": 0.1,  # cosine: final lr = min_lr_ratio * learning_rate
        "b1": 0.9,
        "b2": 0.999,
        "weight_decay": 0.0,
        "grad_clip_norm": 1.0,  # global-norm clipping (0 = off)
        "ema_decay": 0.0,  # EMA of params for evaluation (0 = off)
        "frozen": (),  # regexes on parameter paths ("motion/.*") that get no updates
        # ((regex, multiplier), ...) on trainable parameter paths ("^fusion/"): that parameter's updates (Adam's
        # step, weight decay included) times the multiplier; the first matching rule wins; a regex that matches
        # no trainable parameter is an error
        "lr_multipliers": (),
        # Render resolution ramp: ((from_step, resolution), ...); () renders at model.image_size throughout.
        "resolution_schedule": (),
        "loss": ConfigDict({
            "l1": 1.0,
            # 1 - SSIM over the whole frame (not the paper's: its perceptual term is LPIPS, whose VGG weights a
            # run may not have; 3D Gaussian splatting trains with 0.8 L1 + 0.2 (1 - SSIM))
            "ssim": 0.0,
            "lpips": 1.0,
            "lpips_weights": "",  # LPIPS-VGG weights (.safetensors/.npz); "" = loss off
            "identity": 0.1,
            "identity_weights": "",  # ArcFace-style network weights; "" = loss off
            "identity_depth": 50,  # 18 | 34 | 50 | 100: IResNet depth of the identity network
            "region": 0.1,  # L1 on eye and mouth regions
            "delta_f": 0.001,  # L2 of the fusion offsets
            # L1 between the change the driving motion makes to the render and the change it makes to the teacher's
            # view, at each target camera: (driven - undriven render) vs (teacher view - undriven teacher view), so
            # that the reconstruction error both renders share cancels and only the expression's change counts (not
            # the paper's; needs data.undriven_views=true)
            "expression_change": 0.0,
            # its pixels: "change", each weighted by how much the teacher's view changes there (pixels the expression
            # leaves alone count 0); "uniform", all alike (measured: it stops the driving frame changing the render)
            "expression_change_weighting": "change",
            # squared distance between the frozen motion encoder's codes of each driven render and of its teacher
            # frame (not the paper's: its expression signal beyond the pixels is the motion-conditioned adversary)
            "motion": 0.0,
            # true: compare the codes' changes from the source view (render vs source image), so that what the encoder
            # reads in every render alike (blur) cancels; false: compare each driven render's code with its target's
            "motion_relative": True,
            "adversarial": 0.025,
            "adversarial_start": 10000,  # step at which the adversarial loss switches on (-1 = never)
        }),
        "disc": ConfigDict({
            "learning_rate": 1e-4,
            "b1": 0.0,
            "b2": 0.99,
            "channels": 64,
            "max_channels": 512,
            "r1": 0.0,  # R1 gradient penalty on real images (0 = off)
        }),
        # Mesh (data, fsdp, model); -1 takes the remaining devices.
        "mesh": (-1, 1, 1),
        "fsdp_min_size": 1 << 18,  # parameters with fewer elements are replicated
        "partition_rules": (),  # ((regex on path, PartitionSpec tuple), ...) checked before the defaults
        "checkpoint_every": 500,
        "keep_checkpoints": 3,  # keep-last-K (plus the best by held-out PSNR)
        "async_checkpoint": True,
        "max_nonfinite": 10,  # stop after this many skipped (non-finite) steps in a row
        "log_every": 10,
        "image_every": 200,
        "eval_every": 500,
        "eval_batches": 4,
        "eval_batch_size": 8,
        "progress": True,  # console progress bar (process 0)
        # resuming from a checkpoint without this process layout's data-iterator state is an error unless this
        # is true (then the data stream starts afresh: another order of examples than the interrupted run's)
        "allow_fresh_data_order": False,
        # JAX's persistent compilation cache: "user" (~/.cache/jax_instant4d/xla, or JAX_COMPILATION_CACHE_DIR
        # if set), "workdir" (WORKDIR/xla_cache), "" = off, or a folder
        "compilation_cache": "user",
        # jax.distributed (seconds): all processes must connect within init_timeout_s; a process without a
        # heartbeat for heartbeat_timeout_s is declared dead and the others exit (status 75) naming it;
        # shutdown_timeout_s bounds the barrier at exit
        "init_timeout_s": 300,
        "heartbeat_timeout_s": 60,
        "shutdown_timeout_s": 60,
    })


def base_config() -> ConfigDict:
    """Every key that exists; config files start from here."""
    return ConfigDict({
        "name": "base",
        "workdir": "workdirs/base",
        "seed": 0,
        "data": _data_defaults(),
        "model": _model_defaults(),
        "render": _render_defaults(),
        "train": _train_defaults(),
    })


# --------------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------------


def load_python_file(path: str | Path, entry: str, kind: str = "config", error: type[Exception] = ConfigError):
    """Executes a Python file (a config or sweep file) and returns it as a module that has ``entry``.
    A missing file, an exception while executing it, or no ``entry`` raises ``error`` naming the
    ``"<kind> file"`` and its path."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_instant4d_{kind}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken file: name it
        raise error(f"error while executing {kind} file {path}: {e}") from e
    if not hasattr(module, entry):
        raise error(f"{kind} file {path} has no {entry}()")
    return module


def load_config_file(path: str | Path) -> ConfigDict:
    """Runs ``get_config()`` of a Python config file."""
    path = Path(path)
    cfg = load_python_file(path, "get_config").get_config()
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    _check_known(cfg, base_config(), str(path))
    return cfg


def _check_known(cfg: ConfigDict, ref: ConfigDict, where: str, prefix: str = "") -> None:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in ref:
            raise ConfigError(f"{where}: unknown config key {name!r}")
        if isinstance(value, ConfigDict) and isinstance(ref[key], ConfigDict):
            _check_known(value, ref[key], where, name + ".")


def _convert(text: str, current, key: str):
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--config.{key}: expected a boolean, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}: expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"--config.{key}: expected a Python list/tuple literal, got {text!r}") from None
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    raise ConfigError(f"--config.{key}: cannot override a value of type {type(current).__name__}")


def parse_overrides(items, error: type[Exception] = ConfigError) -> dict[str, str]:
    """``["train.steps=100", "--config.seed=1"]`` -> ``{"train.steps": "100", "seed": "1"}`` (values as
    text); an item without ``=`` raises ``error``."""
    pairs = {}
    for item in items:
        item = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in item:
            raise error(f"override {item!r} must look like key.sub=value")
        k, v = item.split("=", 1)
        pairs[k] = v
    return pairs


def apply_overrides(cfg: ConfigDict, overrides: dict[str, str] | list[str]) -> ConfigDict:
    """Applies ``{"train.steps": "100"}`` or ``["train.steps=100", ...]`` (strings converted by type)."""
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    cfg = ConfigDict(cfg.to_dict())  # copy
    for key, text in overrides.items():
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ConfigDict):
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} (in --config.{key})")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node[leaf] = text if not isinstance(text, str) else _convert(text, node[leaf], key)
    return cfg


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" in arg:
                overrides.append(arg)
            else:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                overrides.append(f"{arg}={argv[i + 1]}")
                i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def get_config(path: str | Path | None = None, overrides: dict[str, str] | list[str] | None = None) -> ConfigDict:
    """Loads a config file (or the base config) and applies overrides; the result is locked."""
    cfg = load_config_file(path) if path else base_config()
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    cfg.lock()
    return cfg
