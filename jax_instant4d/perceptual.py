"""The fixed perceptual networks: LPIPS-VGG and the identity network (ArcFace IResNet), shared by the
training losses (:mod:`jax_instant4d.train.losses`) and the evaluation metrics (:mod:`jax_instant4d.eval`).

Both are written as pure functions over flat parameter dictionaries keyed by the names of their usual
PyTorch checkpoints, so a converted file loads as is:

* LPIPS-VGG: torchvision VGG16 ``features.{i}.weight|bias`` (also accepted as the ``lpips`` package's
  ``net.slice{k}.{i}.weight``) and the linear heads ``lin{0..4}.model.1.weight``.
* Identity: insightface's ArcFace ``iresnet{18,34,50,100}`` (``conv1.weight``, ``layer1.0.bn1.running_mean``,
  ``fc.weight``, ``features.weight``...).

Files are ``.safetensors`` or ``.npz`` holding those names with PyTorch layouts (OIHW convolutions,
[out, in] linear weights); :func:`load_weights` converts them and names any missing or misshapen key.
Images are NHWC floats in [0, 1].
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

Params = dict[str, jax.Array]

# --------------------------------------------------------------------------------------------------
# Building blocks of the fixed networks (NHWC, HWIO kernels, explicit symmetric padding as PyTorch)
# --------------------------------------------------------------------------------------------------


def _conv(x, w, b=None, stride: int = 1, pad: int = 1):
    y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if b is None else y + b


def _maxpool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _bn(p: Params, name: str, x, eps: float = 1e-5):
    inv = p[f"{name}.weight"] * jax.lax.rsqrt(p[f"{name}.running_var"] + eps)
    return (x - p[f"{name}.running_mean"]) * inv + p[f"{name}.bias"]


def _prelu(x, a):
    return jnp.where(x >= 0, x, a * x)


# --------------------------------------------------------------------------------------------------
# LPIPS-VGG
# --------------------------------------------------------------------------------------------------

_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (1, 3, 6, 9, 12)  # conv layer (0-based, counting convs only) after whose ReLU LPIPS reads
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _vgg_layers():
    """(torchvision features index, in channels, out channels) of each convolution, and pool indices."""
    convs, pools, idx, cin = [], [], 0, 3
    for item in _VGG:
        if item == "M":
            pools.append(idx)
            idx += 1
        else:
            convs.append((idx, cin, item))
            cin = item
            idx += 2  # conv then ReLU
    return convs, pools


def lpips_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names -> PyTorch shapes of LPIPS-VGG."""
    convs, _ = _vgg_layers()
    shapes = {}
    for idx, cin, cout in convs:
        shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{idx}.bias"] = (cout,)
    for k, tap in enumerate(_LPIPS_TAPS):
        shapes[f"lin{k}.model.1.weight"] = (1, convs[tap][2], 1, 1)
    return shapes


def _lpips_alias(name: str) -> str:
    m = re.fullmatch(r"(?:net\.)?slice\d+\.(\d+)\.(weight|bias)", name)
    return f"features.{m.group(1)}.{m.group(2)}" if m else name


def init_lpips(seed: int = 0) -> Params:
    """Randomly initialised LPIPS-VGG (for tests; real use loads weights with :func:`load_weights`)."""
    return _random_init(seed, lpips_shapes())


def lpips(params: Params, x: Float[Array, "B H W 3"], y: Float[Array, "B H W 3"]) -> Float[Array, " B"]:
    """LPIPS distance (VGG variant) between image batches in [0, 1]."""
    convs, pools = _vgg_layers()
    n = x.shape[0]
    h = jnp.concatenate([x, y], axis=0) * 2.0 - 1.0
    h = (h - _LPIPS_SHIFT) / _LPIPS_SCALE
    total = jnp.zeros((n,), jnp.float32)
    conv_at = {idx: (i, cin, cout) for i, (idx, cin, cout) in enumerate(convs)}
    for idx in range(max(conv_at) + 1):
        if idx in pools:
            h = _maxpool(h)
        elif idx in conv_at:
            i = conv_at[idx][0]
            h = jax.nn.relu(_conv(h, params[f"features.{idx}.weight"], params[f"features.{idx}.bias"]))
            if i in _LPIPS_TAPS:
                k = _LPIPS_TAPS.index(i)
                f = h / (jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True)) + 1e-10)
                d = (f[:n] - f[n:]) ** 2
                total = total + jnp.mean(jnp.sum(d * params[f"lin{k}.model.1.weight"], axis=-1), axis=(1, 2))
    return total


# --------------------------------------------------------------------------------------------------
# Identity: ArcFace IResNet
# --------------------------------------------------------------------------------------------------

_IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
IRESNET_DEPTHS = tuple(sorted(_IRESNET_LAYERS))  # train.loss.identity_depth values
IDENTITY_SIZE = 112
IDENTITY_DIM = 512


def _bn_shapes(name: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}


def iresnet_shapes(depth: int = 50) -> dict[str, tuple[int, ...]]:
    """Parameter names -> PyTorch shapes of insightface's ``iresnet{depth}``."""
    if depth not in _IRESNET_LAYERS:
        raise ValueError(f"train.loss.identity_depth must be one of {sorted(_IRESNET_LAYERS)}, got {depth}")
    s = {"conv1.weight": (64, 3, 3, 3), **_bn_shapes("bn1", 64), "prelu.weight": (64,)}
    cin = 64
    for li, (blocks, c) in enumerate(zip(_IRESNET_LAYERS[depth], (64, 128, 256, 512), strict=True)):
        for bi in range(blocks):
            p = f"layer{li + 1}.{bi}"
            s.update(_bn_shapes(f"{p}.bn1", cin))
            s[f"{p}.conv1.weight"] = (c, cin, 3, 3)
            s.update(_bn_shapes(f"{p}.bn2", c))
            s[f"{p}.prelu.weight"] = (c,)
            s[f"{p}.conv2.weight"] = (c, c, 3, 3)
            s.update(_bn_shapes(f"{p}.bn3", c))
            if bi == 0:
                s[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                s.update(_bn_shapes(f"{p}.downsample.1", c))
            cin = c
    s.update(_bn_shapes("bn2", 512))
    s["fc.weight"] = (IDENTITY_DIM, 512 * 7 * 7)
    s["fc.bias"] = (IDENTITY_DIM,)
    s.update(_bn_shapes("features", IDENTITY_DIM))
    return s


def init_identity(seed: int = 0, depth: int = 50) -> Params:
    """Randomly initialised identity network (for tests)."""
    return _random_init(seed, iresnet_shapes(depth))


def identity_embedding(params: Params, x: Float[Array, "B H W 3"]) -> Float[Array, "B 512"]:
    """Unit-norm ArcFace embedding of face images in [0, 1] (resized to 112 x 112)."""
    h = jax.image.resize(x, (x.shape[0], IDENTITY_SIZE, IDENTITY_SIZE, 3), method="linear", antialias=True)
    h = (h - 0.5) / 0.5
    h = _prelu(_bn(params, "bn1", _conv(h, params["conv1.weight"])), params["prelu.weight"])
    li = 1
    while f"layer{li}.0.conv1.weight" in params:
        bi = 0
        while f"layer{li}.{bi}.conv1.weight" in params:
            p = f"layer{li}.{bi}"
            stride = 2 if bi == 0 else 1
            out = _conv(_bn(params, f"{p}.bn1", h), params[f"{p}.conv1.weight"])
            out = _prelu(_bn(params, f"{p}.bn2", out), params[f"{p}.prelu.weight"])
            out = _bn(params, f"{p}.bn3", _conv(out, params[f"{p}.conv2.weight"], stride=stride))
            if f"{p}.downsample.0.weight" in params:
                h = _bn(params, f"{p}.downsample.1", _conv(h, params[f"{p}.downsample.0.weight"], stride=stride,
                                                            pad=0))
            h = out + h
            bi += 1
        li += 1
    h = _bn(params, "bn2", h)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # PyTorch's flatten order (C, H, W)
    e = _bn(params, "features", h @ params["fc.weight"] + params["fc.bias"])
    return e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-8)


# --------------------------------------------------------------------------------------------------
# Weights: random init (tests), files in PyTorch naming and layout
# --------------------------------------------------------------------------------------------------


def _to_jax_layout(name: str, a: np.ndarray) -> np.ndarray:
    if name.startswith("lin") and a.ndim == 4:
        return a.reshape(-1)  # LPIPS heads [1, C, 1, 1] -> [C]
    if a.ndim == 4:
        return np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO
    if a.ndim == 2:
        return a.T  # [out, in] -> [in, out]
    return a


def _random_init(seed: int, shapes: Mapping[str, tuple[int, ...]]) -> Params:
    out = {}
    g = np.random.default_rng(seed)
    for name, shape in sorted(shapes.items()):
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1 and "prelu" not in name):
            a = np.ones(shape, np.float32)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            a = np.zeros(shape, np.float32)
        elif "prelu" in name:
            a = np.full(shape, 0.25, np.float32)
        elif name.startswith("lin"):
            a = np.abs(g.standard_normal(shape)) / shape[1]
        else:
            fan_in = int(np.prod(shape[1:]))
            a = g.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        out[name] = jnp.asarray(_to_jax_layout(name, np.asarray(a, np.float32)))
    return out


def read_tensor_file(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` or ``.npz`` file into NumPy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    raise ValueError(f"weights file {path}: expected .safetensors or .npz (convert a .pth with torch first)")


def load_weights(path: str | Path, kind: str, depth: int = 50) -> Params:
    """Loads LPIPS-VGG (``kind="lpips"``) or identity (``kind="identity"``) weights in PyTorch naming."""
    shapes = lpips_shapes() if kind == "lpips" else iresnet_shapes(depth)
    raw = read_tensor_file(path)
    if kind == "lpips":
        raw = {_lpips_alias(k): v for k, v in raw.items()}
    missing = sorted(set(shapes) - set(raw))
    if missing:
        raise ValueError(f"{kind} weights {path}: missing {len(missing)} keys, e.g. {missing[:5]}")
    out = {}
    for name, shape in shapes.items():
        a = np.asarray(raw[name], np.float32)
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{kind} weights {path}: {name} has shape {a.shape}, expected {shape}")
        out[name] = jnp.asarray(_to_jax_layout(name, a))
    return out


def save_weights(params: Params, path: str | Path) -> None:
    """Writes parameters back in PyTorch layout (``.npz`` or ``.safetensors``); inverse of load."""
    arrays = {}
    for name, a in params.items():
        a = np.asarray(a)
        if name.startswith("lin") and a.ndim == 1:
            a = a.reshape(1, -1, 1, 1)
        elif a.ndim == 4:
            a = np.transpose(a, (3, 2, 0, 1))
        elif a.ndim == 2:
            a = a.T
        arrays[name] = np.ascontiguousarray(a)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    else:
        np.savez(path, **arrays)
