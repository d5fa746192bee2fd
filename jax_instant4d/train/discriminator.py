"""Discriminator for the adversarial loss, conditioned on the motion codes (projection discriminator).

Convolutional residual blocks downsample the image; global average pooling makes the parameters
independent of the render resolution (which ramps during training); the logit is
``linear(h) + <embed([z_src, z_drv]), h>`` so a frame is judged together with the motion that should
have produced it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

NUM_BLOCKS = 4


def _downsample(x):
    """2x2 average pooling by reshape (odd sizes drop the last row/column; 1x1 stays 1x1, so small
    render resolutions early in the ramp still work)."""
    b, h, w, c = x.shape
    if h < 2 or w < 2:
        return x
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class _DownBlock(nnx.Module):
    """Residual block that halves the resolution (stride-1 convolutions, then 2x2 average pooling)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        pad = ((1, 1), (1, 1))
        self.conv1 = nnx.Conv(cin, cout, (3, 3), padding=pad, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=pad, rngs=rngs)
        self.skip = nnx.Conv(cin, cout, (1, 1), padding=((0, 0), (0, 0)), use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = self.conv1(jax.nn.leaky_relu(x, 0.2))
        h = _downsample(self.conv2(jax.nn.leaky_relu(h, 0.2)))
        return (h + self.skip(_downsample(x))) / jnp.sqrt(2.0)


class Discriminator(nnx.Module):
    """Image [B, H, W, 3] in [0, 1] and condition [B, cond_dim] -> logits [B]."""

    def __init__(self, cond_dim: int, channels: int = 64, max_channels: int = 512, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, channels, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        blocks, c = [], channels
        for _ in range(NUM_BLOCKS):
            cout = min(2 * c, max_channels)
            blocks.append(_DownBlock(c, cout, rngs=rngs))
            c = cout
        self.blocks = nnx.List(blocks)
        self.out = nnx.Linear(c, 1, rngs=rngs)
        self.embed = nnx.Linear(cond_dim, c, use_bias=False, rngs=rngs)

    def __call__(self, image: Float[Array, "B H W 3"], cond: Float[Array, "B D"]) -> Float[Array, " B"]:
        h = self.stem(image * 2.0 - 1.0)
        for block in self.blocks:
            h = block(h)
        h = jnp.mean(jax.nn.leaky_relu(h, 0.2), axis=(1, 2))
        return self.out(h)[:, 0] + jnp.sum(self.embed(cond) * h, axis=-1) / jnp.sqrt(h.shape[-1])
