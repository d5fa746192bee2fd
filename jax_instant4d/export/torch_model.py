"""The whole model in PyTorch: one state dict for every part, its file format, and a mirror to run it.

Names (checked against the authors' code, RaymondJiangkw/InstantGaussianAvatar): their checkpoint
``ckpt.pth`` holds two state dicts, ``E_state_dict`` of ``InstantGaussianAvatar`` (``backbone.*`` the
triplane encoder, ``decoder.*`` Φ, ``motion_decoder.*`` the local fusion) and ``M_state_dict`` of X-NeMo's
``MotEncoder`` wrapper (``model.*`` = ``MotEncoder_withExtra``: ``model.model.*`` the FAN trunk,
``model.bbox_proj.*``, ``model.final_proj.*``, ``model.pe``). The two sets of names do not collide, so
one flat file holds both: every name starting with ``model.`` belongs to the motion encoder
(:func:`split_official` rebuilds the authors' two dicts), everything else to the avatar model.

Part 1 (NumPy only, no torch needed):

* :func:`export_state_dict` — an :class:`~jax_instant4d.model.avatar.Instant4D` -> ``{name: array}``;
* :func:`load_state_dict` — such a dict (NumPy arrays or torch tensors) -> the model's parameters and
  BatchNorm statistics, after checking every name and shape (:class:`StateDictMismatch` lists them);
* :func:`save_file` / :func:`read_file` — safetensors written from NumPy (temp file + rename) with the
  model and render config in the metadata (``instant4d.config``, JSON) so the mirror can be rebuilt;
  ``.pt``/``.pth`` files (torch) are read too, including the authors' ``{"E_state_dict", "M_state_dict"}``.

Part 2 (needs torch): :class:`TorchInstant4D`, the whole model assembled from the part mirrors of
``torch_encoder`` and ``torch_gaussian`` (``encode``, ``motion``, ``animate`` like the Flax model, same
input conventions: NHWC images in [0, 1], OpenCV cameras in pixels), rendering with
:mod:`jax_instant4d.export.torch_render`. Both instantiation modes; rays mode is deterministic unless a
``torch.Generator`` is passed (the random draws then differ from JAX's).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from jaxtyping import Float
from ml_collections import ConfigDict

from jax_instant4d.export import torch_encoder as te
from jax_instant4d.export import torch_gaussian as tg
from jax_instant4d.model import interop

if TYPE_CHECKING:
    from jax_instant4d.model.avatar import Instant4D

ENCODER_PREFIX = "backbone."
MOTION_PREFIX = "model."  # X-NeMo's MotEncoder wrapper (the authors' M_state_dict)
AVATAR_PREFIXES = (ENCODER_PREFIX, "decoder.", "motion_decoder.")
FORMAT = "instant4d-torch"
FORMAT_VERSION = "1"
# PyTorch-only entries: written on export, optional on import (shape-checked where they carry meaning)
OPTIONAL_SUFFIXES = (".num_batches_tracked", ".pos_embed.pos_embed")
OPTIONAL_NAMES = (MOTION_PREFIX + "pe",)


class StateDictMismatch(ValueError):
    """A state dict whose names or shapes do not match the configured model (every offender named)."""


class UnreadableFile(ValueError):
    """A weights file that cannot be read as a state dict (the file is named)."""


# --------------------------------------------------------------------------------------------------
# Part 1: state dicts and files (NumPy)
# --------------------------------------------------------------------------------------------------


def export_state_dict(model: Instant4D) -> dict[str, np.ndarray]:
    """Every weight of an ``Instant4D`` named like the authors' PyTorch modules (float32, C order;
    ``num_batches_tracked`` int64): ``backbone.*``, ``decoder.*``, ``motion_decoder.*``, ``model.*``."""
    out = interop.flax_to_torch_state_dict(model.encoder, prefix=ENCODER_PREFIX)
    out.update(interop.gaussian_to_torch_state_dict(model))
    out.update(interop.flax_to_torch_state_dict(model.motion_encoder, prefix=MOTION_PREFIX))
    return out


def expected_shapes(model: Instant4D) -> dict[str, tuple[int, ...]]:
    """Names and shapes of :func:`export_state_dict` without reading values (``nnx.eval_shape`` models too)."""
    out = interop.torch_shapes(model.encoder, prefix=ENCODER_PREFIX)
    out.update(interop.gaussian_torch_shapes(model))
    out.update(interop.torch_shapes(model.motion_encoder, prefix=MOTION_PREFIX))
    return out


def _shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in (x if isinstance(x, tuple) else x.shape))


def _optional(name: str) -> bool:
    return name in OPTIONAL_NAMES or name.endswith(OPTIONAL_SUFFIXES)


def check_state_dict(expected: Mapping[str, Any], state_dict: Mapping[str, Any], where: str = "state dict") -> None:
    """Raises :class:`StateDictMismatch` naming every missing, unexpected or mis-shaped tensor
    (``expected``: name -> array or shape tuple)."""
    missing = sorted(k for k in expected if k not in state_dict and not _optional(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not k.endswith(OPTIONAL_SUFFIXES))
    shapes = sorted(f"{k}: file {_shape(state_dict[k])}, model {_shape(expected[k])}"
                    for k in expected if k in state_dict and _shape(state_dict[k]) != _shape(expected[k]))
    if not (missing or unexpected or shapes):
        return

    def show(items):
        return ", ".join(items[:12]) + (f" (+{len(items) - 12} more)" if len(items) > 12 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} with another shape: {show(shapes)}")
    raise StateDictMismatch(f"{where} does not match the configured model (check --config and its overrides): "
                            + "; ".join(parts))


def load_state_dict(model: Instant4D, state_dict: Mapping[str, Any], where: str = "state dict") -> None:
    """Writes a whole-model state dict (names of :func:`export_state_dict`) into ``model`` in place.
    Nothing is written unless every name and shape matches."""
    check_state_dict(expected_shapes(model), state_dict, where)
    interop.torch_state_dict_to_flax(model.encoder, state_dict, prefix=ENCODER_PREFIX, strict=False)
    interop.torch_state_dict_to_flax(model.motion_encoder, state_dict, prefix=MOTION_PREFIX, strict=False)
    interop.load_gaussian_state_dict(model, {k: v for k, v in state_dict.items()
                                     if k.startswith(("decoder.", "motion_decoder."))})


def split_official(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"E_state_dict": avatar part, "M_state_dict": motion encoder part}`` as in the authors' ckpt.pth."""
    return {"E_state_dict": {k: v for k, v in state_dict.items() if not k.startswith(MOTION_PREFIX)},
            "M_state_dict": {k: v for k, v in state_dict.items() if k.startswith(MOTION_PREFIX)}}


def config_metadata(cfg: ConfigDict) -> dict[str, str]:
    """safetensors metadata: the format tag and the ``model`` and ``render`` config sections (JSON)."""
    sections = {"model": cfg.model.to_dict(), "render": cfg.render.to_dict()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "instant4d.config": json.dumps(sections)}


def _typed_like(value, ref):
    """JSON turned tuples into lists: restore the type of the default ``ref``."""
    if isinstance(ref, Mapping) and isinstance(value, Mapping):
        return {k: _typed_like(v, ref[k]) if k in ref else v for k, v in value.items()}
    if isinstance(ref, tuple) and isinstance(value, list):
        return tuple(tuple(x) if isinstance(x, list) else x for x in value)
    return value


def config_from_metadata(metadata: Mapping[str, str] | None, where: str = "file") -> ConfigDict:
    """The full config (base defaults + the file's ``model`` and ``render`` sections), locked."""
    from jax_instant4d.config import ConfigError, _check_known, base_config

    if not metadata or "instant4d.config" not in metadata:
        raise ConfigError(f"{where} carries no instant4d config in its metadata: pass --config")
    try:
        sections = json.loads(metadata["instant4d.config"])
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: unreadable instant4d.config metadata ({e})") from None
    base = base_config()
    cfg = ConfigDict({k: v for k, v in sections.items() if k in ("model", "render")})
    _check_known(cfg, base, f"config in {where}")
    for key in ("model", "render"):
        if key in sections:
            base[key].update(_typed_like(sections[key], base[key].to_dict()))
    base.lock()
    return base


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename onto ``path``: never a half-written file at ``path``. The file gets
    the mode a plain ``open(path, "w")`` would give (0666 less the umask; ``mkstemp`` alone gives 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_file(state_dict: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None
              ) -> Path:
    """Writes a safetensors file from NumPy arrays (atomic). Returns the path."""
    from safetensors.numpy import save_file as st_save

    path = Path(path)
    arrays = {k: np.require(np.asarray(v), requirements="C") for k, v in state_dict.items()}  # keeps 0-d shapes
    _atomic_write(path, lambda tmp: st_save(arrays, tmp, metadata=dict(metadata or {})))
    return path


def export_model(model: Instant4D, cfg: ConfigDict, path: str | Path) -> Path:
    """``model``'s weights and ``cfg``'s model/render sections -> one safetensors file."""
    return save_file(export_state_dict(model), path, config_metadata(cfg))


def read_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(state dict, metadata)`` of a ``.safetensors`` file (NumPy) or a ``.pt``/``.pth``/``.bin`` file
    (torch; flat, ``{"state_dict": ...}`` or the authors' ``{"E_state_dict", "M_state_dict"}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                metadata = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        except Exception as e:  # safetensors raises its own error types for broken files
            raise UnreadableFile(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if te.torch is None:
        raise ImportError(f"reading {path} needs torch (or convert it to .safetensors)")
    try:
        obj = te.torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnreadableFile(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and ("E_state_dict" in obj or "M_state_dict" in obj):
        merged = dict(obj.get("E_state_dict") or {})
        merged.update(obj.get("M_state_dict") or {})
        obj = merged
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise UnreadableFile(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return {k: interop.as_numpy(v) for k, v in obj.items()}, {}


def import_checkpoint(path: str | Path, cfg: ConfigDict | None, workdir: str | Path, *, overwrite: bool = False,
                      overrides: list[str] | None = None) -> Path:
    """Converts a whole-model PyTorch state dict file into checkpoint 0 of a work directory that
    ``--checkpoint WORKDIR`` (:func:`jax_instant4d.inference.load_trained`) loads.

    ``cfg``: the config of the model the file holds (``None``: the one in the file's metadata, with
    ``overrides`` applied); its ``workdir`` becomes ``workdir``. The rest of the train state (optimiser
    moments, discriminator, counters) is freshly initialised by :class:`~jax_instant4d.train.step.Trainer`; with
    ``train.ema_decay > 0`` the EMA starts at the imported weights. Every tensor is checked before
    anything is written (:class:`StateDictMismatch`); the checkpoint is written into a temporary folder
    beside ``workdir`` and moved into place at the end.
    """
    import shutil

    import jax
    from flax import nnx

    from jax_instant4d.config import apply_overrides
    from jax_instant4d.model.avatar import Instant4D
    from jax_instant4d.train.checkpoint import Checkpointer
    from jax_instant4d.train.sharding import make_mesh
    from jax_instant4d.train.step import Trainer

    path, workdir = Path(path), Path(workdir).expanduser().absolute()
    target = workdir / "checkpoints"
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already holds checkpoints (pass --overwrite to replace them)")
    state_dict, metadata = read_file(path)
    if cfg is None:
        cfg = apply_overrides(config_from_metadata(metadata, str(path)), list(overrides or []))
    cfg = apply_overrides(cfg, {"workdir": str(workdir)})
    cfg.lock()

    abstract = nnx.eval_shape(lambda: Instant4D(cfg, rngs=nnx.Rngs(0)))
    check_state_dict(expected_shapes(abstract), state_dict, str(path))  # before the (slow) initialisation
    trainer = Trainer(cfg, make_mesh(cfg.train.mesh))
    state = trainer.init(pretrained=False)  # the file holds every parameter, the motion encoder's too
    params, frozen, rest = jax.device_get((state.params, state.frozen, state.rest))
    model = trainer.mdef.merge(params, frozen, rest, jax.random.key(0))
    load_state_dict(model, state_dict, where=str(path))
    params, frozen, rest = trainer.mdef.split(model)
    sh = trainer.state_shardings
    params = jax.device_put(params, sh.params)
    state = state.replace(params=params, frozen=jax.device_put(frozen, sh.frozen),
                          rest=jax.device_put(rest, sh.rest),
                          ema=None if state.ema is None else jax.device_put(params, sh.ema))

    workdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.import-", dir=workdir.parent))
    try:
        ckpt = Checkpointer(tmp / "checkpoints", keep=int(cfg.train.keep_checkpoints), async_save=False)
        try:
            ckpt.save(0, state, None, cfg, force=True)
            ckpt.wait()
        finally:
            ckpt.close()
        workdir.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "checkpoints", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return workdir


# --------------------------------------------------------------------------------------------------
# Part 2: the PyTorch mirror of the whole model
# --------------------------------------------------------------------------------------------------


def resample_matrix(in_size: int, out_size: int, scale: float, translation: float) -> np.ndarray:
    """``[out, in]`` weights of JAX's ``scale_and_translate`` (linear, antialiased), float32: output pixel
    i samples input position ``(i + 0.5 - translation) / scale - 0.5`` with a triangle kernel widened
    by ``max(1, 1/scale)``, weights normalised, zero where the sample falls outside the input."""
    f32 = np.float32
    scale, translation = f32(scale), f32(translation)
    inv = f32(1.0) / scale
    width = max(inv, f32(1.0))
    sample = (np.arange(out_size, dtype=f32) + f32(0.5)) * inv - translation * inv - f32(0.5)
    x = np.abs(sample[None, :] - np.arange(in_size, dtype=f32)[:, None]) / width
    w = np.maximum(f32(0.0), f32(1.0) - x)
    total = w.sum(axis=0, keepdims=True)
    w = np.where(np.abs(total) > 1000.0 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1), 0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return np.where(inside[None, :], w, 0).T.astype(f32)


def face_crop_matrices(height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column resampling matrices of :func:`jax_instant4d.model.motion.face_crop`."""
    from jax_instant4d.model.motion import CROP_BOX_256

    top, bottom, left, right = (v / 256.0 for v in CROP_BOX_256)
    sy, sx = size / ((bottom - top) * height), size / ((right - left) * width)
    return (resample_matrix(height, size, sy, -top * height * sy), resample_matrix(width, size, sx, -left * width * sx))


class TorchGaussians(NamedTuple):
    """As :class:`jax_instant4d.model.decoder.Gaussians` (world frame: y up, the head faces +z)."""

    means: Any
    scales: Any
    quats: Any  # (w, x, y, z)
    opacities: Any
    colors: Any
    densities: Any


class TorchMotion(NamedTuple):
    code: Any  # [B, Z]
    tokens: Any  # [B, T, D]


class TorchAvatar(NamedTuple):
    """What :meth:`TorchInstant4D.encode` computes once per source image."""

    planes: Any  # [B, 3, C, P, P] (the authors' layout; ours is channels-last)
    f: Any  # [B, N, F]
    m: Any  # [B, N, F]
    base: TorchGaussians
    visible: Any  # [B, N] bool
    z_src: TorchMotion
    anchors: Any  # [B, N, 3] added to Φ's positions (zeros with model.anchors = "none")


if te.torch is not None:
    import torch
    from torch import nn

    from jax_instant4d.export import torch_render

    def face_crop_torch(image: Float[torch.Tensor, "B H W 3"], size: int) -> Float[torch.Tensor, "B S S 3"]:
        """The fixed face crop of the Flax model (one antialiased bilinear resample), in torch."""
        wy, wx = face_crop_matrices(image.shape[1], image.shape[2], size)
        wy = torch.from_numpy(wy).to(image)
        wx = torch.from_numpy(wx).to(image)
        return torch.einsum("bhwc,sh,tw->bstc", image, wy, wx)

    def sample_pdf_torch(bins: Float[torch.Tensor, "R K"], weights: Float[torch.Tensor, "R L"],
                         u: Float[torch.Tensor, "R I"], eps: float = 1e-5) -> Float[torch.Tensor, "R I"]:
        """Inverse-CDF sampling (as :func:`jax_instant4d.model.instantiate.sample_pdf`)."""
        w = weights + eps
        pdf = w / w.sum(-1, keepdim=True)
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
        inds = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
        below = torch.clamp(inds - 1, min=0)
        above = torch.clamp(inds, max=weights.shape[-1])
        cdf0, cdf1 = torch.gather(cdf, -1, below), torch.gather(cdf, -1, above)
        bin0, bin1 = torch.gather(bins, -1, below), torch.gather(bins, -1, above)
        denom = cdf1 - cdf0
        denom = torch.where(denom < eps, torch.ones_like(denom), denom)
        return bin0 + (u - cdf0) / denom * (bin1 - bin0)

    def _smooth_weights_torch(weights):
        pad = torch.full(weights.shape[:-1] + (1,), -float("inf"), dtype=weights.dtype, device=weights.device)
        wp = torch.cat([pad, weights, pad], -1)
        mx = torch.maximum(wp[:, :-1], wp[:, 1:])
        return 0.5 * (mx[:, :-1] + mx[:, 1:]) + 0.01

    def instantiate_rays_torch(planes: Float[torch.Tensor, "B 3 C P P"],
                               density_fn: Callable[[torch.Tensor], torch.Tensor], rays_cfg: ConfigDict,
                               fov_degrees: float, radius: float, feature_dim: int,
                               generator: torch.Generator | None = None
                               ) -> tuple[Float[torch.Tensor, "B N C"], Float[torch.Tensor, "B N 3"]]:
        """Rays-mode instantiation (as :func:`jax_instant4d.model.instantiate.instantiate_rays`): features
        and sample points."""
        from jax_instant4d.model.instantiate import frontal_rays

        b, dev, dt = planes.shape[0], planes.device, planes.dtype
        res, s, n_imp = int(rays_cfg.resolution), int(rays_cfg.depth_samples), int(rays_cfg.importance_samples)
        start, end, box = float(rays_cfg.ray_start), float(rays_cfg.ray_end), float(rays_cfg.box_warp)
        origins, dirs = (torch.from_numpy(a).to(device=dev, dtype=dt) for a in frontal_rays(res, fov_degrees, radius))
        m = res * res
        if generator is not None:
            jitter = torch.rand((b, m, s), generator=generator, device=dev, dtype=dt)
        else:
            jitter = torch.full((b, m, s), 0.5, device=dev, dtype=dt)
        step = (end - start) / max(s - 1, 1)
        t_coarse = torch.linspace(start, end, s, device=dev, dtype=dt)[None, None, :] + jitter * step
        pts = origins[None, :, None, :] + t_coarse[..., None] * dirs[None, :, None, :]
        feats = tg.sample_triplanes_torch(planes, pts.reshape(b, m * s, 3), box)
        if n_imp == 0:
            return feats, pts.reshape(b, m * s, 3)
        dens = density_fn(feats[..., :feature_dim]).reshape(b * m, s)
        alpha = -torch.expm1(-dens)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)
        weights = _smooth_weights_torch(alpha * trans[:, :-1])
        z = t_coarse.reshape(b * m, s)
        mids = 0.5 * (z[:, :-1] + z[:, 1:])
        if generator is not None:
            u = torch.rand((b * m, n_imp), generator=generator, device=dev, dtype=dt)
        else:
            u = torch.linspace(0.0, 1.0, n_imp, device=dev, dtype=dt).expand(b * m, n_imp)
        t_fine = sample_pdf_torch(mids, weights[:, 1:-1], u).reshape(b, m, n_imp)
        pts_fine = origins[None, :, None, :] + t_fine[..., None] * dirs[None, :, None, :]
        feats_fine = tg.sample_triplanes_torch(planes, pts_fine.reshape(b, m * n_imp, 3), box)
        c = feats.shape[-1]
        out = torch.cat([feats.reshape(b, m, s, c), feats_fine.reshape(b, m, n_imp, c)], dim=2)
        all_pts = torch.cat([pts, pts_fine], dim=2)
        return out.reshape(b, m * (s + n_imp), c), all_pts.reshape(b, m * (s + n_imp), 3)

    def _camera_tensors(camera, like: torch.Tensor):
        if hasattr(camera, "world_to_cam"):
            w2c, intr = camera.world_to_cam, camera.intrinsics
        else:
            w2c, intr = camera
        conv = lambda x: (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.array(x))).to(like)  # noqa: E731
        return conv(w2c), conv(intr)

    class TorchInstant4D(nn.Module):
        """The whole model in PyTorch. Submodules carry the authors' names: ``backbone`` (LP3DBackbone),
        ``decoder`` (GaussianDecoder Φ), ``motion_decoder`` (fusion; absent for ``none``) and ``model``
        (X-NeMo's MotEncoder_withExtra, the ``model.`` of their MotEncoder wrapper), so ``state_dict()``
        has exactly the names of :func:`export_state_dict`. Built in eval mode; no gradients needed."""

        def __init__(self, cfg: ConfigDict):
            super().__init__()
            mc, rc = cfg.model, cfg.render
            if int(mc.encoder.plane_channels) != 2 * int(mc.feature_dim):
                raise ValueError("model.encoder.plane_channels must be 2 * model.feature_dim")
            self.feature_dim = int(mc.feature_dim)
            self.image_size = int(mc.image_size)
            self.fusion_kind = str(mc.fusion)
            self.instantiate_mode = str(mc.instantiate)
            self.anchor_mode = str(mc.get("anchors", "none"))  # older configs: absolute positions
            self.gaussian_res = int(mc.gaussian_res)
            self.density_threshold = float(mc.density_threshold)
            self.rays = mc.rays
            self.crop_size = int(mc.motion.crop_size)
            self.fov_degrees, self.camera_radius = float(rc.fov_degrees), float(rc.camera_radius)
            self.near, self.antialiased, self.background = float(rc.near), bool(rc.antialiased), float(rc.background)
            self.backbone = te.TorchTriplaneEncoder(mc)
            mods = tg.build_torch_modules(cfg, token_dim=int(mc.motion.token_dim))
            self.decoder = mods["decoder"]
            self.motion_decoder = mods["motion_decoder"] if "motion_decoder" in mods else None
            self.model = te.TorchMotionEncoder(mc)
            self.eval()

        @classmethod
        def from_file(cls, path: str | Path, cfg: ConfigDict | None = None,
                      device: str | torch.device = "cpu") -> TorchInstant4D:
            """A mirror with the weights of an exported file (config from its metadata unless given),
            loaded with ``strict=True``."""
            sd, metadata = read_file(path)
            cfg = cfg if cfg is not None else config_from_metadata(metadata, str(path))
            mirror = cls(cfg)
            mirror.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
            return mirror.to(device)

        # ---- parts ---------------------------------------------------------------------------------
        def decode(self, features: Float[torch.Tensor, "B N F"], anchors: Float[torch.Tensor, "B N 3"] | None = None
                   ) -> TorchGaussians:
            """Φ(features), positions offset by ``anchors`` when given."""
            out = self.decoder(features)
            means = out["means"] if anchors is None else out["means"] + anchors
            return TorchGaussians(means, out["scales"], out["quats"], out["opacities"], out["colors"],
                                  out["densities"])

        def motion(self, frame: Float[torch.Tensor, "B R R 3"]) -> TorchMotion:
            """Face crop + motion encoder: a frame in [0, 1] (NHWC) -> its motion."""
            crop = face_crop_torch(frame, self.crop_size)
            tokens = self.model(crop.permute(0, 3, 1, 2) * 2.0 - 1.0)
            return TorchMotion(tokens.reshape(tokens.shape[0], -1), tokens)

        def instantiate(self, planes: Float[torch.Tensor, "B 3 C P P"], generator: torch.Generator | None = None
                        ) -> tuple[Float[torch.Tensor, "B N C"], Float[torch.Tensor, "B N 3"]]:
            """Features [f | m] per Gaussian and the anchors added to Φ's positions (``model.anchors``)."""
            if self.instantiate_mode == "plane":
                feats = tg.instantiate_plane_torch(planes, self.gaussian_res)
                if self.anchor_mode == "frontal":
                    from jax_instant4d.model.instantiate import frontal_anchors

                    grid = frontal_anchors(self.gaussian_res, self.fov_degrees, self.camera_radius)
                    anchors = torch.from_numpy(grid).to(feats).expand(feats.shape[0], -1, -1)
                else:
                    anchors = torch.zeros(feats.shape[:2] + (3,), dtype=feats.dtype, device=feats.device)
                return feats, anchors
            feats, points = instantiate_rays_torch(planes, lambda f: self.decode(f).densities, self.rays,
                                                   self.fov_degrees, self.camera_radius, self.feature_dim, generator)
            return feats, points if self.anchor_mode == "frontal" else torch.zeros_like(points)

        def encode(self, source: Float[torch.Tensor, "B R R 3"], generator: torch.Generator | None = None
                   ) -> TorchAvatar:
            """Once per source image in [0, 1] (NHWC): triplanes, features, Φ(f), visibility, z_src."""
            if source.ndim != 4 or tuple(source.shape[1:]) != (self.image_size, self.image_size, 3):
                raise ValueError(f"encode expects images [B, {self.image_size}, {self.image_size}, 3] "
                                 f"(model.image_size), got {tuple(source.shape)}")
            planes = self.backbone(source.permute(0, 3, 1, 2) * 2.0 - 1.0)
            feats, anchors = self.instantiate(planes, generator)
            f, m = feats[..., : self.feature_dim], feats[..., self.feature_dim:]
            base = self.decode(f, anchors)
            return TorchAvatar(planes, f, m, base, base.densities >= self.density_threshold, self.motion(source),
                               anchors)

        def animate_gaussians(self, avatar: TorchAvatar, z_drv: TorchMotion) -> tuple[TorchGaussians, torch.Tensor]:
            """Animated Gaussians (opacity 0 where not visible) and the fusion output."""
            if self.motion_decoder is None:
                g, delta = avatar.base, torch.zeros_like(avatar.f)
            else:
                z_src = avatar.z_src
                delta = self.motion_decoder(avatar.m, z_src.code, z_drv.code, z_src.tokens, z_drv.tokens)
                if self.fusion_kind == "deform":
                    q = avatar.base.quats + delta[..., 6:10]
                    q = q / torch.clamp(torch.linalg.norm(q, dim=-1, keepdim=True), min=1e-12)
                    g = avatar.base._replace(means=avatar.base.means + delta[..., 0:3],
                                             scales=avatar.base.scales * torch.exp(delta[..., 3:6]), quats=q)
                else:
                    g = self.decode(avatar.f + delta, avatar.anchors)
            return g._replace(opacities=torch.where(avatar.visible, g.opacities, torch.zeros_like(g.opacities))), delta

        def render(self, g: TorchGaussians, camera: Any, width: int, height: int, backend: str = "reference"
                   ) -> torch_render.Rendered:
            w2c, intr = _camera_tensors(camera, g.means)
            return torch_render.render(g.means, g.scales, g.quats, g.opacities, g.colors, w2c, intr, int(width),
                                       int(height), self.background, near=self.near, antialiased=self.antialiased,
                                       backend=backend)

        def animate(self, avatar: TorchAvatar, z_drv: TorchMotion, camera: Any, width: int, height: int,
                    backend: str = "reference") -> tuple[Float[torch.Tensor, "B H W 3"], Float[torch.Tensor, "B H W"],
                                                         Float[torch.Tensor, "B H W"], dict[str, Any]]:
            """Per frame: fusion + Φ + splatting -> ``(rgb [B, H, W, 3], alpha [B, H, W], depth [B, H, W],
            aux)``; ``camera``: ``(world_to_cam [B, 4, 4], intrinsics [B, 4])`` or a ``render.Camera``."""
            g, delta = self.animate_gaussians(avatar, z_drv)
            out = self.render(g, camera, width, height, backend)
            return out.rgb, out.alpha, out.depth, {"delta": delta, "gaussians": g}

        def forward(self, source: Float[torch.Tensor, "B R R 3"], driving: Float[torch.Tensor, "B R R 3"], camera: Any,
                    width: int, height: int, backend: str = "reference") -> tuple:
            """``encode`` + ``motion`` + ``animate`` in one call."""
            avatar = self.encode(source)
            return self.animate(avatar, self.motion(driving), camera, width, height, backend)
