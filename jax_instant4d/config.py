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
    return ConfigDict({
        "dataset": "synthetic_heads",  # synthetic_heads | teacher_clips
        "data_dir": "data_cache",  # tfds data_dir; relative paths are relative to the current directory
        "resolution": 128,  # stored image size (square)
        "image_format": "png",  # png | jpeg
        "jpeg_quality": 95,
        "num_identities": 64,
        "heldout_identities": 8,
        "clips_per_identity": 2,
        "time_steps": 4,  # T
        "views": 2,  # V
        "seed": 0,
        "targets_per_example": 2,  # K (time, view) targets sampled per example
        "num_workers": 0,
        "prefetch": 2,
        "shuffle_seed": 0,
        "augment": ConfigDict({"photometric": False, "crop": False, "max_shift": 4,
                               "brightness": 0.1, "contrast": 0.1}),
    })


def _encoder_defaults() -> ConfigDict:
    """The triplane encoder (LP3D design). Owned by model/encoder.py."""
    return ConfigDict({
        "plane_res": 256,
        "plane_channels": 96,  # per plane; f = first half, m = second half
    })


def _motion_defaults() -> ConfigDict:
    """The motion encoder (X-NeMo design). Owned by model/motion.py."""
    return ConfigDict({
        "crop_size": 224,
        "code_dim": 512,
        "freeze": False,
        "weights": "",  # converted pretrained weights ("" = train from scratch)
    })


def _model_defaults() -> ConfigDict:
    return ConfigDict({
        "encoder": _encoder_defaults(),
        "motion": _motion_defaults(),
        "image_size": 512,
        "feature_dim": 48,
        "instantiate": "plane",  # plane | rays
        "gaussian_res": 512,  # plane mode: Gaussians on a gaussian_res^2 grid
        "fusion": "local",  # local | global | deform | none
    })


def _render_defaults() -> ConfigDict:
    return ConfigDict({
        "backend": "auto",  # auto | cpu | cuda | xla
        "tile_capacity": 256,  # xla backend only
        "fov_degrees": 18.837,
        "camera_radius": 2.7,
        "near": 0.01,
        "antialiased": False,
        "background": 0.0,
    })


def _train_defaults() -> ConfigDict:
    return ConfigDict({
        "steps": 1000,
        "batch_size": 32,
        "learning_rate": 1e-4,
        "seed": 0,
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


def load_config_file(path: str | Path) -> ConfigDict:
    """Runs ``get_config()`` of a Python config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_instant4d_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: name it
        raise ConfigError(f"error while executing config file {path}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    cfg = module.get_config()
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


def apply_overrides(cfg: ConfigDict, overrides: dict[str, str] | list[str]) -> ConfigDict:
    """Applies ``{"train.steps": "100"}`` or ``["train.steps=100", ...]`` (strings converted by type)."""
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            item = item[len("--config."):] if item.startswith("--config.") else item
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.sub=value")
            k, v = item.split("=", 1)
            pairs[k] = v
        overrides = pairs
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
