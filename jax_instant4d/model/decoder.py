"""The Gaussian decoder Φ: a per-Gaussian feature f (48 channels) -> one 3D Gaussian.

Φ is a two-layer MLP 48 -> 96 (softplus) -> 22 with equalised learning-rate layers (StyleGAN's
``FullyConnectedLayer``: the stored weight is N(0, 1) and is multiplied by 1/sqrt(fan_in) at run time).
Its 22 outputs follow the authors' layout, kept channel for channel so that their weights load:

=========  ========  ===================================================================
channels   name      activation
=========  ========  ===================================================================
0          density   softplus(x - 1); opacity = 1 - exp(-density)
1:4        rgb       sigmoid(x) (1 + 0.002) - 0.001 (Mip-NeRF's widened sigmoid), in [-0.001, 1.001]
4:11       unused    7 legacy channels: computed, never read (no gradient reaches them)
11:14      position  tanh: absolute position in [-1, 1]^3 (world frame, head at the origin)
14:17      scale     0.05 sigmoid: standard deviations in (0, 0.05)
17:21      rotation  quaternion (w, x, y, z), normalised
21         unused    1 legacy channel
=========  ========  ===================================================================

No spherical harmonics: colour is view independent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

# Output layout of the last layer (channel slices), as in the authors' ``GaussianDecoder``.
DENSITY = slice(0, 1)
RGB = slice(1, 4)
UNUSED_A = slice(4, 11)
POSITION = slice(11, 14)
SCALE = slice(14, 17)
ROTATION = slice(17, 21)
UNUSED_B = slice(21, 22)
NUM_OUTPUTS = 22
UNUSED_CHANNELS = tuple(range(UNUSED_A.start, UNUSED_A.stop)) + tuple(range(UNUSED_B.start, UNUSED_B.stop))

MAX_SCALE = 0.05
RGB_PAD = 0.001
DENSITY_SHIFT = 1.0

# The per-Gaussian MLPs are tiny (a few 10^4 parameters): replicate them on every device.
REPLICATED = (None, None)


class Gaussians(NamedTuple):
    """A set of 3D Gaussians per batch element (world frame: y up, the head faces +z)."""

    means: Float[Array, "*B N 3"]
    scales: Float[Array, "*B N 3"]  # standard deviations
    quats: Float[Array, "*B N 4"]  # (w, x, y, z), unit norm
    opacities: Float[Array, "*B N"]
    colors: Float[Array, "*B N 3"]
    densities: Float[Array, "*B N"]  # softplus(x - 1); opacity = 1 - exp(-density)


class EqualizedLinear(nnx.Module):
    """``y = x @ (kernel * weight_gain) + bias * bias_gain``: a dense layer with run-time weight scaling.

    The stored ``kernel`` is ``[in, out]`` (the PyTorch weight transposed) and is drawn from
    N(0, init_std^2). Two presets cover the authors' layers:

    * :meth:`fully_connected` — StyleGAN's ``FullyConnectedLayer`` (lr_multiplier 1): N(0, 1) stored,
      gain 1/sqrt(in), bias initialised to ``bias_init``.
    * :meth:`scaled` — their ``MyLinear`` with ``lr_multiplier`` l as initialised inside ``AdaLN``:
      stored N(0, (0.02/l)^2) (their truncation at +-2 is absolute, so it never bites), gain l on
      weight and bias, bias 0.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, init_std: float = 1.0,
                 weight_gain: float = 1.0, bias_gain: float = 1.0, bias_init: float = 0.0, rngs: nnx.Rngs):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight_gain = float(weight_gain)
        self.bias_gain = float(bias_gain)
        kernel_init = nnx.with_partitioning(jax.nn.initializers.normal(init_std), REPLICATED, eager_sharding=False)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (self.in_features, self.out_features), jnp.float32))
        if use_bias:
            bias_fn = nnx.with_partitioning(jax.nn.initializers.constant(bias_init), (None,), eager_sharding=False)
            self.bias = nnx.Param(bias_fn(rngs.params(), (self.out_features,), jnp.float32))
        else:
            self.bias = None

    @classmethod
    def fully_connected(cls, in_features: int, out_features: int, *, bias_init: float = 0.0,
                        rngs: nnx.Rngs) -> EqualizedLinear:
        return cls(in_features, out_features, init_std=1.0, weight_gain=1.0 / math.sqrt(in_features),
                   bias_gain=1.0, bias_init=bias_init, rngs=rngs)

    @classmethod
    def scaled(cls, in_features: int, out_features: int, *, use_bias: bool = True, lr_multiplier: float = 1.0,
               std: float = 0.02, rngs: nnx.Rngs) -> EqualizedLinear:
        return cls(in_features, out_features, use_bias=use_bias, init_std=std / lr_multiplier,
                   weight_gain=lr_multiplier, bias_gain=lr_multiplier, rngs=rngs)

    def __call__(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        y = x @ (self.kernel[...] * self.weight_gain)
        if self.bias is not None:
            y = y + self.bias[...] * self.bias_gain
        return y


def activate(raw: Float[Array, "*B N 22"]) -> Gaussians:
    """The 22 raw decoder outputs -> Gaussian attributes (see the module docstring for the layout)."""
    density = jax.nn.softplus(raw[..., DENSITY.start] - DENSITY_SHIFT)
    rgb = jax.nn.sigmoid(raw[..., RGB]) * (1.0 + 2.0 * RGB_PAD) - RGB_PAD
    position = jnp.tanh(raw[..., POSITION])
    scale = MAX_SCALE * jax.nn.sigmoid(raw[..., SCALE])
    q = raw[..., ROTATION]
    # F.normalize semantics: q / max(|q|, 1e-12)
    quat = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    opacity = -jnp.expm1(-density)
    return Gaussians(position, scale, quat, opacity, rgb, density)


class GaussianDecoder(nnx.Module):
    """Φ: features ``[..., N, 48]`` -> :class:`Gaussians` (shared by every Gaussian; cost linear in N).

    Parameters (PyTorch names in parentheses): ``net.layers[0]`` (``decoder.net.0``) 48 -> 96 and
    ``net.layers[2]`` (``decoder.net.2``) 96 -> 22, its bias initialised to zero.
    """

    def __init__(self, feature_dim: int = 48, *, position_init: float = 1.0, rngs: nnx.Rngs):
        """``position_init`` scales the initial weights of the three position outputs (1: the authors'
        initialisation). Anchored positions use a small value, so that the Gaussians start at their
        anchors: otherwise Φ's nearly constant output at initialisation shifts them all by one random
        offset of ~0.5 (the frontal view is 0.9 wide)."""
        self.feature_dim = int(feature_dim)
        hidden = 2 * self.feature_dim
        last = EqualizedLinear.fully_connected(hidden, NUM_OUTPUTS, rngs=rngs)
        if position_init != 1.0:
            last.kernel[...] = last.kernel[...].at[:, POSITION].multiply(float(position_init))
        self.net = nnx.Sequential(
            EqualizedLinear.fully_connected(self.feature_dim, hidden, rngs=rngs),
            jax.nn.softplus,
            last,
        )

    def raw(self, features: Float[Array, "*B N F"]) -> Float[Array, "*B N 22"]:
        return self.net(features)

    def __call__(self, features: Float[Array, "*B N F"]) -> Gaussians:
        return activate(self.raw(features))
