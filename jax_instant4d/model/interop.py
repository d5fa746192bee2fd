"""Weights in the authors' PyTorch layout, NumPy only: the one name and layout mapping between our Flax
modules and the official PyTorch ones, used both to load pretrained weights into the model and to export.

* :func:`flax_to_torch_state_dict` turns a :class:`~jax_instant4d.model.encoder.TriplaneEncoder` or a
  :class:`~jax_instant4d.model.motion.MotionEncoder` into a ``{name: np.ndarray}`` state dict named and
  laid out like the official modules (the authors' ``LP3DBackbone``; X-NeMo's ``MotEncoder_withExtra``);
  :func:`torch_state_dict_to_flax` writes such a dict into a module; :func:`torch_shapes` gives the
  names and shapes without values; :func:`mapping_table` lists every entry (the table is
  ``jax_instant4d/export/MAPPING_encoder.md``). Layouts: conv kernels HWIO <-> OIHW, dense kernels
  ``[in, out]`` <-> ``[out, in]``, everything else as is; LayerNorm/GroupNorm/BatchNorm ``scale`` <->
  ``weight``, BatchNorm ``mean``/``var`` <-> ``running_mean``/``running_var``.
* :func:`gaussian_to_torch_state_dict` / :func:`gaussian_state_dict_to_flax` /
  :func:`load_gaussian_state_dict`: the same for the ``decoder`` (Φ) and ``fusion`` parameters of an
  ``Instant4D``, named like the authors' ``InstantGaussianAvatar`` (``decoder.net.0.weight``,
  ``motion_decoder.transform.mapping.weight``, ...; table in ``jax_instant4d/export/MAPPING_gaussian.md``).
* :func:`load_motion_weights` reads ``model.motion.weights`` (X-NeMo's state dict, or the synthetic
  teacher's written in the same layout) strictly into a motion encoder and returns the file's SHA-256.

Entries that exist only on the PyTorch side: BatchNorm ``num_batches_tracked`` (written as 0, ignored
on import) and the motion encoder's positional buffer ``pe`` (written from the sin-cos formula;
checked for shape on import). diffusers' ``pos_embed.pos_embed`` tables are not persistent and are
ignored if a file has them.

torch is never imported here except to read a ``.pt``/``.pth`` file; the PyTorch mirror of the modules
(for parity tests and for running exported weights) is :mod:`jax_instant4d.export.torch_encoder` and
:mod:`jax_instant4d.export.torch_gaussian`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_instant4d.model.encoder import TriplaneEncoder
from jax_instant4d.model.motion import MotionEncoder
from jax_instant4d.tree_paths import path_parts

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED_ON_IMPORT = re.compile(r"(^|\.)(num_batches_tracked|pos_embed\.pos_embed)$")

Rule = tuple[str, str | Callable[[re.Match], str]]


# --------------------------------------------------------------------------------------------------
# Names and layouts
# --------------------------------------------------------------------------------------------------


def _encoder_rules(module: TriplaneEncoder) -> list[Rule]:
    nb = len(module.low_feat_encoder.blocks)
    return [
        (r"^deep_lab_v3\.encoder\.(layer\d)\.(\d+)\.downsample\.$", r"deep_lab_v3.encoder.\1.\2.downsample.0."),
        (r"^deep_lab_v3\.decoder\.aspp\.convs\.0\.$", "deep_lab_v3.decoder.aspp.convs.0.0."),
        (r"^deep_lab_v3\.decoder\.aspp\.convs\.([123])\.$", r"deep_lab_v3.decoder.aspp.convs.\1.net.0."),
        (r"^deep_lab_v3\.decoder\.aspp\.convs\.4\.$", "deep_lab_v3.decoder.aspp.convs.4.1."),
        (r"^deep_lab_v3\.decoder\.aspp\.project\.$", "deep_lab_v3.decoder.aspp.project.0."),
        (r"^deep_lab_v3\.decoder\.project\.$", "deep_lab_v3.decoder.project.0."),
        (r"^low_feat_encoder\.patch_embed\.", "low_feat_encoder.net.0."),
        (r"^low_feat_encoder\.blocks\.(\d+)\.", lambda m: f"low_feat_encoder.net.{int(m[1]) + 1}."),
        (r"^low_feat_encoder\.conv\.$", f"low_feat_encoder.net.{nb + 3}."),
        (r"^high_feat_encoder\.layers\.(\d+)\.$", lambda m: f"high_feat_encoder.layer{int(m[1]) + 1}."),
        (r"^feat_decoder\.in_conv\.$", "feat_decoder.in_layer.0."),
        (r"^feat_decoder\.patch_embed\.", "feat_decoder.in_layer.1."),
        (r"^feat_decoder\.blocks\.(\d+)\.", lambda m: f"feat_decoder.in_layer.{int(m[1]) + 2}."),
        (r"\.mlp\.dwconv\.$", ".mlp.dwconv.dwconv."),
    ]


_MOTION_RULES: list[Rule] = [
    (r"\.downsample_bn\.$", ".downsample.0."),
    (r"\.downsample_conv\.$", ".downsample.2."),
    (r"\.to_out\.$", ".to_out.0."),
    (r"\.ff\.proj\.$", ".ff.net.0.proj."),
    (r"\.ff\.out\.$", ".ff.net.2."),
    (r"^bbox_fc1\.$", "bbox_proj.0."),
    (r"^bbox_fc2\.$", "bbox_proj.3."),
]


def _rules(module: nnx.Module) -> list[Rule]:
    if isinstance(module, TriplaneEncoder):
        return _encoder_rules(module)
    if isinstance(module, MotionEncoder):
        return _MOTION_RULES
    raise TypeError(f"no PyTorch mapping for {type(module).__name__} (TriplaneEncoder or MotionEncoder)")


def _torch_name(path: tuple, rules: list[Rule]) -> str:
    stem = "".join(f"{p}." for p in path[:-1])
    for pattern, repl in rules:
        stem = re.sub(pattern, repl, stem)
    return stem + _LEAF[str(path[-1])]


def _variables(module: nnx.Module):
    """(path, variable) of every parameter and BatchNorm statistic, in graph order."""
    for path, value in nnx.iter_graph(module):
        if isinstance(value, (nnx.Param, nnx.BatchStat)):
            yield tuple(path), value


def _to_torch_layout(leaf: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    if leaf == "kernel" and x.ndim == 4:
        return np.transpose(x, (3, 2, 0, 1)), "HWIO -> OIHW"
    if leaf == "kernel" and x.ndim == 2:
        return x.T, "transpose"
    return x, "none"


def _to_flax_layout(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and x.ndim == 4:
        return np.transpose(x, (2, 3, 1, 0))
    if leaf == "kernel" and x.ndim == 2:
        return x.T
    return x


def _extra_torch_entries(module: nnx.Module, names: list[str]) -> dict[str, np.ndarray]:
    extra = {}
    for name in names:
        if name.endswith(".running_var"):
            extra[name[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    if isinstance(module, MotionEncoder):
        extra["pe"] = module.token_positions()[None]
    return extra


def mapping_table(module: nnx.Module) -> list[tuple[str, str, str]]:
    """``(flax path "a/b/kernel", torch name "a.b.weight", layout transform)`` for every entry."""
    rules = _rules(module)
    rows = []
    for path, var in _variables(module):
        _, how = _to_torch_layout(str(path[-1]), np.zeros(var.shape, np.float32))
        rows.append(("/".join(str(p) for p in path), _torch_name(path, rules), how))
    return rows


def torch_shapes(module: nnx.Module, *, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Names and shapes of :func:`flax_to_torch_state_dict` without reading any value (so it works on an
    abstract module from ``nnx.eval_shape``)."""
    rules = _rules(module)
    out: dict[str, tuple[int, ...]] = {}
    for path, var in _variables(module):
        shape = tuple(int(d) for d in var.shape)
        if str(path[-1]) == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif str(path[-1]) == "kernel" and len(shape) == 2:
            shape = shape[::-1]
        out[_torch_name(path, rules)] = shape
    out.update({k: tuple(v.shape) for k, v in _extra_torch_entries(module, list(out)).items()})
    return {prefix + k: v for k, v in out.items()}


def flax_to_torch_state_dict(module: nnx.Module, *, prefix: str = "") -> dict[str, np.ndarray]:
    """The module's weights as an official-style PyTorch state dict of NumPy arrays (float32, C order).

    ``prefix`` is prepended to every name (e.g. ``"backbone."`` for the authors' full model).
    """
    rules = _rules(module)
    out: dict[str, np.ndarray] = {}
    for path, var in _variables(module):
        arr, _ = _to_torch_layout(str(path[-1]), np.asarray(var[...], np.float32))
        out[_torch_name(path, rules)] = np.ascontiguousarray(arr)
    out.update(_extra_torch_entries(module, list(out)))
    return {prefix + k: v for k, v in out.items()}


def torch_state_dict_to_flax(module: nnx.Module, state_dict: dict, *, prefix: str = "",
                             strict: bool = True) -> list[str]:
    """Writes an official-style PyTorch state dict (NumPy arrays or torch tensors) into ``module``.

    Every parameter and BatchNorm statistic of ``module`` must be present with the right shape
    (``ValueError`` naming it otherwise). Names that map to nothing (other than ``num_batches_tracked``
    and diffusers' non-persistent position tables) are an error with ``strict``, else returned.
    """
    rules = _rules(module)
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    used = set()
    updates = []
    for path, var in _variables(module):
        name = _torch_name(path, rules)
        if name not in sd:
            raise ValueError(f"PyTorch state dict has no {prefix + name!r} (for Flax {'/'.join(map(str, path))})")
        arr = _to_flax_layout(str(path[-1]), as_numpy(sd[name]))
        if tuple(arr.shape) != tuple(var.shape):
            raise ValueError(f"shape mismatch for {prefix + name!r}: PyTorch {tuple(as_numpy(sd[name]).shape)} "
                             f"gives {tuple(arr.shape)}, Flax {'/'.join(map(str, path))} is {tuple(var.shape)}")
        updates.append((var, arr))
        used.add(name)
    if "pe" in sd and isinstance(module, MotionEncoder):
        used.add("pe")
        if tuple(as_numpy(sd["pe"]).shape)[-2:] != module.token_positions().shape:
            raise ValueError(f"{prefix}pe has shape {tuple(as_numpy(sd['pe']).shape)}, expected "
                             f"{(1,) + module.token_positions().shape} (model.motion.code_dim / token_dim)")
    unexpected = sorted(k for k in sd if k not in used and not _IGNORED_ON_IMPORT.search(k))
    if strict and unexpected:
        raise ValueError(f"PyTorch state dict has entries with no Flax counterpart: {unexpected[:10]}"
                         + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    for var, arr in updates:
        var.set_value(jnp.asarray(arr, jnp.float32))
    return unexpected


def as_numpy(x) -> np.ndarray:
    """A NumPy array of an array or a torch tensor (recognised without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "is_floating_point"):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a state dict file: ``.safetensors`` with NumPy, anything else with ``torch.load``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (or convert it to .safetensors)") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return {k: as_numpy(v) for k, v in obj.items()}


# --------------------------------------------------------------------------------------------------
# The Gaussian decoder Φ and the fusion network (the authors' ``decoder.*`` and ``motion_decoder.*``)
# --------------------------------------------------------------------------------------------------


# Flax top-level attribute -> PyTorch prefix in the authors' model.
GAUSSIAN_PREFIXES = {"decoder": "decoder", "fusion": "motion_decoder"}


def _pure_params(model_or_state: Any) -> Mapping:
    """A nested dict of parameters from an NNX module, an ``nnx.State`` or a pure dict."""

    if isinstance(model_or_state, nnx.State):
        return nnx.to_pure_dict(model_or_state)
    if isinstance(model_or_state, Mapping):
        return model_or_state
    return nnx.to_pure_dict(nnx.state(model_or_state, nnx.Param))


def _walk_pure(tree: Mapping, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _walk_pure(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def gaussian_torch_name(path) -> tuple[str, bool]:
    """Flax parameter path -> (PyTorch name, whether the array is transposed on the way)."""
    parts = path_parts(path)
    if parts[0] not in GAUSSIAN_PREFIXES:
        raise KeyError(f"no PyTorch name for {'/'.join(parts)}: only {tuple(GAUSSIAN_PREFIXES)} are mapped here")
    out = [GAUSSIAN_PREFIXES[parts[0]]]
    transpose = False
    for p in parts[1:]:
        if p == "layers":  # nnx.Sequential keeps its children in .layers; nn.Sequential numbers them directly
            continue
        if p == "kernel":
            out.append("weight")
            transpose = True
        else:
            out.append(p)
    return ".".join(out), transpose


def _gaussian_leaves(model_or_state: Any):
    """``(torch name, transpose, value)`` of every ``decoder`` and ``fusion`` parameter."""
    params = _pure_params(model_or_state)
    for top in GAUSSIAN_PREFIXES:
        if top not in params or params[top] is None:
            continue
        for path, value in _walk_pure(params[top], (top,)):
            yield (*gaussian_torch_name(path), value)


def gaussian_to_torch_state_dict(model_or_state: Any) -> dict[str, np.ndarray]:
    """``decoder`` and ``fusion`` parameters -> ``{torch name: float32 array}`` (the other parts of the
    model, encoder and motion encoder, have their own mirrors)."""
    out = {}
    for name, transpose, value in _gaussian_leaves(model_or_state):
        arr = np.asarray(value, np.float32)
        out[name] = np.ascontiguousarray(arr.T if transpose else arr)
    return out


def gaussian_torch_shapes(model_or_state: Any) -> dict[str, tuple[int, ...]]:
    """Names and shapes of :func:`gaussian_to_torch_state_dict` without reading values (abstract models too)."""
    out = {}
    for name, transpose, value in _gaussian_leaves(model_or_state):
        shape = tuple(int(d) for d in value.shape)
        out[name] = shape[::-1] if transpose else shape
    return out


def gaussian_state_dict_to_flax(state_dict: Mapping[str, Any]) -> dict:
    """``{torch name: tensor or array}`` -> nested pure dict ``{"decoder": ..., "fusion": ...}`` of NumPy
    arrays (keys of other modules are ignored). Numbered ``net.i`` become ``net/layers/i``."""
    inverse = {v: k for k, v in GAUSSIAN_PREFIXES.items()}
    out: dict = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        if parts[0] not in inverse:
            continue
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        arr = np.asarray(arr, np.float32)
        keys: list[Any] = [inverse[parts[0]]]
        for i, p in enumerate(parts[1:-1], start=1):
            if p.isdigit():
                keys += ["layers", int(p)] if parts[i - 1] == "net" else [int(p)]
            else:
                keys.append(p)
        leaf = parts[-1]
        if leaf == "weight":
            keys.append("kernel")
            arr = arr.T
        else:
            keys.append(leaf)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = np.ascontiguousarray(arr)
    return out


def load_gaussian_state_dict(model, state_dict: Mapping[str, Any]) -> None:
    """Writes the decoder/fusion weights of a PyTorch state dict into an ``Instant4D`` (shapes checked)."""

    pure = gaussian_state_dict_to_flax(state_dict)
    state = nnx.state(model, nnx.Param)
    current = nnx.to_pure_dict(state)
    for path, value in _walk_pure(pure):
        node = current
        for k in path[:-1]:
            if k not in node:
                raise KeyError(f"parameter {'/'.join(map(str, path))} does not exist in the model")
            node = node[k]
        if path[-1] not in node:
            raise KeyError(f"parameter {'/'.join(map(str, path))} does not exist in the model")
        if tuple(node[path[-1]].shape) != value.shape:
            raise ValueError(f"parameter {'/'.join(map(str, path))}: shape {value.shape} does not match the "
                             f"model's {tuple(node[path[-1]].shape)}")
        node[path[-1]] = jnp.asarray(value)
    nnx.replace_by_pure_dict(state, current)
    nnx.update(model, state)


def official_gaussian_shapes(feature_dim: int = 48, motion_dim: int = 512) -> dict[str, tuple[int, ...]]:
    """The authors' decoder and motion-decoder parameter shapes (``InstantGaussianAvatar``, feat_dim 96)."""
    f, h = feature_dim, 2 * feature_dim
    return {
        "decoder.net.0.weight": (h, f),
        "decoder.net.0.bias": (h,),
        "decoder.net.2.weight": (22, h),
        "decoder.net.2.bias": (22,),
        "motion_decoder.transform.mapping.weight": (2 * f, 2 * motion_dim),
        "motion_decoder.transform.proj.weight": (f, f),
        "motion_decoder.transform.proj.bias": (f,),
        "motion_decoder.net.0.weight": (h, f),
        "motion_decoder.net.0.bias": (h,),
        "motion_decoder.net.2.weight": (f, h),
        "motion_decoder.net.2.bias": (f,),
    }


# --------------------------------------------------------------------------------------------------
# Loading model.motion.weights
# --------------------------------------------------------------------------------------------------


WEIGHTS_FORMAT = "jax_instant4d.motion_encoder"  # safetensors metadata "format" of the files we write


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (what checkpoints and eval results record of a weights file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torch_motion_weights(model: MotionEncoder, path: str | Path, *, strict: bool = False) -> None:
    """Loads X-NeMo's PyTorch motion-encoder weights (``MotEncoder_withExtra`` state dict) into ``model``.

    ``path``: a ``.safetensors`` file (read with NumPy) or a ``.pt``/``.pth``/``.bin`` file (read with
    torch, which must then be installed). A nested ``{"state_dict": ...}`` and the ``model.`` prefix of
    X-NeMo's wrapper ``MotEncoder`` are accepted. Every parameter must be present with the shape of the
    configured model (the pretrained weights need the full-size ``model.motion`` settings), else
    ``ValueError`` names the file and the tensor; entries with no counterpart are an error with
    ``strict``, else a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion encoder weights not found: {path} (model.motion.weights)")
    try:
        state = read_state_dict(path)
    except Exception as e:  # an unreadable or non-state-dict file: name it
        raise ValueError(f"motion encoder weights {path} (model.motion.weights) cannot be read: {e}") from e
    if "final_proj.weight" not in state and "model.final_proj.weight" in state:
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        ignored = torch_state_dict_to_flax(model, state, strict=strict)
    except ValueError as e:
        raise ValueError(f"motion encoder weights {path} (model.motion.weights): {e}") from e
    if ignored:
        warnings.warn(f"{path}: ignored {len(ignored)} entries with no counterpart: {ignored[:5]}", stacklevel=2)


def load_motion_weights(model: MotionEncoder, path: str | Path) -> str:
    """Loads ``model.motion.weights`` into ``model`` strictly and returns the file's SHA-256.

    One format serves both sources: a state dict in X-NeMo's PyTorch layout (``MotEncoder_withExtra``
    names; ``.safetensors``, or ``.pt``/``.pth`` through torch). The synthetic teacher's encoder
    (:mod:`jax_instant4d.data.motion_teacher`) is written in that layout too, so X-NeMo's own class
    loads it. A missing file, a missing or unexpected tensor, or a wrong shape is an error naming the
    file and the tensor.
    """
    load_torch_motion_weights(model, path, strict=True)
    return file_sha256(path)
