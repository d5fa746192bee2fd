"""Layers with PyTorch semantics, shared by the triplane encoder and the motion encoder.

:class:`Conv2d`, :class:`Dense` and :class:`LayerNorm` hold their parameters under PyTorch's names
(so :mod:`jax_instant4d.model.interop` maps weights both ways) with PyTorch's initialisers; the
functions match their ``torch.nn.functional`` counterparts (exact GELU, LeakyReLU slope 0.01, bilinear
resizing with either corner rule, pixel shuffle, max pooling with -inf padding). Kernels carry a
partitioning annotation for the ``model`` mesh axis (:data:`MODEL_AXIS`) where a caller asks for one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU default
MODEL_AXIS = "model"

Sharding = tuple[str | None, ...]
Initializer = Callable[..., Array]


# --------------------------------------------------------------------------------------------------
# Layers with PyTorch semantics
# --------------------------------------------------------------------------------------------------


def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _scaled(init: Initializer, factor: float) -> Initializer:
    def scaled(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * factor

    return scaled


def _param(init: Initializer, shape: tuple[int, ...], sharding: Sharding, rngs: nnx.Rngs) -> nnx.Param:
    fn = nnx.with_partitioning(init, sharding, eager_sharding=False)
    return nnx.Param(fn(rngs.params(), shape, jnp.float32))


class Conv2d(nnx.Module):
    """A PyTorch ``nn.Conv2d`` on NHWC: symmetric explicit padding, dilation, groups; kernel HWIO.

    ``init``: ``"torch"`` (PyTorch's default: weight and bias U(+-1/sqrt(fan_in))), ``"fan_out"``
    (SegFormer's: weight N(0, 2/fan_out), bias 0) or ``"zeros"``. With ``lr_multiplier`` l the stored
    kernel and bias are the initial values / l and are multiplied by l at run time (the authors'
    ``MyConv2d``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, use_bias: bool = True,
                 init: str = "torch", lr_multiplier: float = 1.0, sharding: Sharding | None = None,
                 rngs: nnx.Rngs):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels {in_channels}->{out_channels} not divisible by groups {groups}")
        k = int(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = int(stride), int(padding), int(dilation), int(groups)
        self.lr_multiplier = float(lr_multiplier)
        fan_in = in_channels // groups * k * k
        if init == "torch":
            w_init = b_init = _uniform(1.0 / math.sqrt(fan_in))
        elif init == "fan_out":
            w_init = jax.nn.initializers.normal(math.sqrt(2.0 / (k * k * out_channels // groups)))
            b_init = jax.nn.initializers.zeros
        elif init == "zeros":
            w_init = b_init = jax.nn.initializers.zeros
        else:
            raise ValueError(f"Conv2d: unknown init {init!r}")
        inv = 1.0 / self.lr_multiplier
        sharding = sharding or (None, None, None, None)
        self.kernel = _param(_scaled(w_init, inv), (k, k, in_channels // groups, out_channels), sharding, rngs)
        self.bias = _param(_scaled(b_init, inv), (out_channels,), (sharding[-1],), rngs) if use_bias else None

    def __call__(self, x: Float[Array, "B H W Ci"]) -> Float[Array, "B h w Co"]:
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...] * self.lr_multiplier, (self.stride, self.stride), ((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias[...] * self.lr_multiplier
        return y


class Dense(nnx.Module):
    """A PyTorch ``nn.Linear`` with the kernel stored ``[in, out]`` (the PyTorch weight transposed).

    ``init``: ``"torch"`` (U(+-1/sqrt(in)) for weight and bias), ``"trunc"`` (SegFormer's N(0, 0.02^2)
    weight — the authors' truncation at +-2 is absolute and never bites — and zero bias) or ``"zeros"``.
    ``lr_multiplier`` as in :class:`Conv2d` (the authors' ``MyLinear``).
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, init: str = "torch",
                 lr_multiplier: float = 1.0, sharding: Sharding = (None, None), rngs: nnx.Rngs):
        self.lr_multiplier = float(lr_multiplier)
        if init == "torch":
            w_init = b_init = _uniform(1.0 / math.sqrt(in_features))
        elif init == "trunc":
            w_init, b_init = jax.nn.initializers.normal(0.02), jax.nn.initializers.zeros
        elif init == "zeros":
            w_init = b_init = jax.nn.initializers.zeros
        else:
            raise ValueError(f"Dense: unknown init {init!r}")
        inv = 1.0 / self.lr_multiplier
        self.kernel = _param(_scaled(w_init, inv), (in_features, out_features), sharding, rngs)
        self.bias = _param(_scaled(b_init, inv), (out_features,), (sharding[-1],), rngs) if use_bias else None

    def __call__(self, x: Float[Array, "*B I"]) -> Float[Array, "*B O"]:
        y = x @ (self.kernel[...] * self.lr_multiplier)
        if self.bias is not None:
            y = y + self.bias[...] * self.lr_multiplier
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with PyTorch's eps (1e-5) and two-pass variance; optional
    ``lr_multiplier`` (the authors' ``MyLayerNorm``: stored scale 1/l, multiplied by l)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, lr_multiplier: float = 1.0, rngs: nnx.Rngs):
        del rngs  # deterministic initialisation
        self.eps = float(eps)
        self.lr_multiplier = float(lr_multiplier)
        self.scale = nnx.Param(jnp.full((dim,), 1.0 / self.lr_multiplier, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: Float[Array, "*B C"]) -> Float[Array, "*B C"]:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return y * (self.scale[...] * self.lr_multiplier) + self.bias[...] * self.lr_multiplier


def gelu(x: Array) -> Array:
    """Exact (erf) GELU, PyTorch's ``nn.GELU()`` default (JAX's default is the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


def leaky_relu(x: Array) -> Array:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def pixel_shuffle(x: Float[Array, "B H W Cr"], r: int) -> Float[Array, "B Hr Wr C"]:
    """``nn.PixelShuffle(r)`` on NHWC: output (h*r+i, w*r+j, c) = input (h, w, c*r*r + i*r + j)."""
    b, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels not divisible by {r * r}")
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def _resize_axis(x: Array, axis: int, out: int, align_corners: bool) -> Array:
    n = x.shape[axis]
    if n == out:
        return x
    dst = np.arange(out, dtype=np.float64)
    if align_corners:
        src = dst * ((n - 1) / (out - 1)) if out > 1 else np.zeros_like(dst)
    else:  # PyTorch's half-pixel rule with the negative side clamped to 0
        src = np.maximum((dst + 0.5) * (n / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = out
    lam = jnp.asarray(lam).reshape(shape)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a * (1.0 - lam) + b * lam


def resize_bilinear(x: Float[Array, "B H W C"], size: tuple[int, int], *,
                    align_corners: bool) -> Float[Array, "B h w C"]:
    """Bilinear resize matching ``F.interpolate(mode="bilinear", align_corners=...)`` (no antialias)."""
    x = _resize_axis(x, 1, int(size[0]), align_corners)
    return _resize_axis(x, 2, int(size[1]), align_corners)


def max_pool(x: Float[Array, "B H W C"], window: int, stride: int, padding: int = 0) -> Float[Array, "B h w C"]:
    """``F.max_pool2d`` (floor mode) with -inf padding."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)
