"""Native (C++ / CUDA) backends of the rasterizer behind the XLA FFI.

``librasterizer_cpu.so`` (always built) and ``librasterizer_cuda.so`` (optional; the CPU library never
needs libcudart) live next to this file. They are loaded lazily with ctypes on first use, and their
handlers are registered as FFI targets with distinct names per platform, so an explicit backend choice
is honoured (``instant4d_raster_{fwd,bwd}_cpu`` on platform ``cpu``, ``..._cuda`` on ``CUDA``).

:func:`rasterize_native` is a ``jax.custom_vjp`` whose forward and backward are ``jax.ffi.ffi_call``
with ``vmap_method="broadcast_all"`` (the handlers flatten any leading dims into the batch), so it works
under ``jit``, ``vmap``, ``grad`` and inside ``shard_map``.

Residuals kept for the backward, besides the inputs: the final transmittance ``t_final`` (float32) and
``last`` (int32: tile-list entries up to the last contributing Gaussian) per pixel, i.e. 8 bytes per
pixel (512 KiB for a 256x256 image), plus one int32 per image (CPU: a token under which the forward
left its binning in a small process-wide cache; the backward takes it over, or bins again on a miss,
with bitwise identical results). The CUDA backward always re-bins. Gradients flow to means2d,
conics, depths (through the depth output only; the order is piecewise constant), opacities, features
and background, none to radii. CPU gradients are bitwise deterministic; CUDA gradients use float
atomics and may differ run to run at float rounding.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_DIR = Path(__file__).resolve().parent
_PLATFORMS = {
    # platform: (library file, XLA platform name, forward symbol, backward symbol)
    "cpu": ("librasterizer_cpu.so", "cpu", "Instant4dRasterForwardCpu", "Instant4dRasterBackwardCpu"),
    "cuda": ("librasterizer_cuda.so", "CUDA", "Instant4dRasterForwardCuda", "Instant4dRasterBackwardCuda"),
}
_lock = threading.Lock()
_state: dict[str, tuple[bool, str]] = {}  # platform -> (loaded, error message)
_libs: dict[str, ctypes.CDLL] = {}  # keeps the libraries alive


def _target(platform: str, which: str) -> str:
    return f"instant4d_raster_{which}_{platform}"


def _check_platform(platform: str) -> str:
    if platform not in _PLATFORMS:
        raise ValueError(f"platform must be one of {tuple(_PLATFORMS)}, got {platform!r}")
    return platform


def _load(platform: str) -> tuple[bool, str]:
    platform = _check_platform(platform)
    with _lock:
        if platform in _state:
            return _state[platform]
        filename, xla_platform, fwd_sym, bwd_sym = _PLATFORMS[platform]
        path = _DIR / filename
        if not path.exists():
            result = (False, f"{path} not found (the native library was not built)")
        else:
            try:
                lib = ctypes.CDLL(str(path))
                for which, sym in (("fwd", fwd_sym), ("bwd", bwd_sym)):
                    jax.ffi.register_ffi_target(_target(platform, which), jax.ffi.pycapsule(getattr(lib, sym)),
                                                platform=xla_platform)
                _libs[platform] = lib
                result = (True, "")
            except (OSError, AttributeError, RuntimeError, ValueError) as e:
                result = (False, f"could not load {path}: {e}")
        _state[platform] = result
        return result


def available(platform: str) -> bool:
    """Whether the native library for ``platform`` ("cpu" or "cuda") is built and registered."""
    return _load(platform)[0]


def load_error(platform: str) -> str:
    """Why the library for ``platform`` is unavailable ("" when it is available)."""
    return _load(platform)[1]


def _require(platform: str) -> None:
    ok, err = _load(platform)
    if not ok:
        raise RuntimeError(f"rasterizer native backend {platform!r} is unavailable: {err}")


def _attrs(platform: str, width: int, height: int, isa: int, keep: bool | None = None) -> dict:
    attrs = {"width": np.int64(width), "height": np.int64(height)}
    if platform == "cpu":  # instruction set of the CPU kernels: 0 = best available (tests pin 1, 2, 3)
        attrs["isa"] = np.int64(isa)
        if keep is not None:  # forward: keep the binning for the backward (handed over by token)
            attrs["keep"] = np.int64(keep)
    return attrs


def _varying(x) -> frozenset:
    """Manual mesh axes (inside shard_map) along which x varies."""
    mat = getattr(jax.typeof(x), "mat", None)
    return frozenset(getattr(mat, "varying", None) or ())


def _match_varying(args):
    """Inside shard_map, casts every input to the union of the inputs' varying manual axes: an FFI call
    needs them equal (a replicated input, e.g. a shared background, is broadcast; its gradient is then
    summed over those axes by autodiff)."""
    axes = frozenset().union(*(_varying(a) for a in args))
    if not axes:
        return tuple(args)
    out = []
    for a in args:
        missing = tuple(sorted(axes - _varying(a), key=str))
        out.append(jax.lax.pcast(a, missing, to="varying") if missing else a)
    return tuple(out)


def _result(shape, dtype, like) -> jax.ShapeDtypeStruct:
    """Result type of an FFI call, varying over the same manual axes as its (matched) inputs."""
    aval = jax.typeof(like)
    mat = getattr(aval, "mat", None)
    if mat is not None and getattr(mat, "varying", None):
        sharding = jax.sharding.NamedSharding(aval.sharding.mesh, jax.sharding.PartitionSpec())
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, manual_axis_type=mat)
    return jax.ShapeDtypeStruct(shape, dtype)


def _forward_call(platform, width, height, means2d, conics, depths, radii, opacities, features, background, isa=0,
                  keep=False):
    """(image, alpha, depth, t_final, last, token). ``token`` (CPU only; zeros on CUDA) names the binning
    the CPU forward kept for its backward when ``keep``; 0 means none."""
    means2d, conics, depths, radii, opacities, features, background = _match_varying(
        (means2d, conics, depths, radii, opacities, features, background))
    lead = means2d.shape[:-2]
    c = features.shape[-1]
    f32 = jnp.float32
    out_types = (
        _result(lead + (height, width, c), f32, means2d),  # image
        _result(lead + (height, width), f32, means2d),  # alpha
        _result(lead + (height, width), f32, means2d),  # depth
        _result(lead + (height, width), f32, means2d),  # t_final (residual)
        _result(lead + (height, width), jnp.int32, means2d),  # last (residual)
    )
    if platform == "cpu":
        out_types += (_result(lead, jnp.int32, means2d),)  # token (residual)
    call = jax.ffi.ffi_call(_target(platform, "fwd"), out_types, vmap_method="broadcast_all")
    out = call(means2d, conics, depths, radii, opacities, features, background,
               **_attrs(platform, width, height, isa, keep))
    if platform != "cpu":
        out = tuple(out) + (jnp.zeros(lead, jnp.int32),)
    return tuple(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _rasterize(platform, width, height, means2d, conics, depths, radii, opacities, features, background):
    image, alpha, depth, _, _, _ = _forward_call(platform, width, height, means2d, conics, depths, radii, opacities,
                                                 features, background)
    return image, alpha, depth


def _rasterize_fwd(platform, width, height, means2d, conics, depths, radii, opacities, features, background):
    image, alpha, depth, t_final, last, token = _forward_call(platform, width, height, means2d, conics, depths, radii,
                                                              opacities, features, background, keep=True)
    res = (means2d, conics, depths, radii, opacities, features, background, t_final, last, token)
    return (image, alpha, depth), res


def _backward_call(platform, width, height, res, cts, isa=0):
    """Gradients for means2d, conics, depths, opacities, features, background. ``res`` holds the inputs,
    t_final, last and optionally the forward's token (without it, or on a cache miss, it bins again)."""
    means2d, conics, depths, radii, opacities, features, background, t_final, last = res[:9]
    token = res[9] if len(res) > 9 else jnp.zeros(means2d.shape[:-2], jnp.int32)
    g_image, g_alpha, g_depth = (jnp.asarray(g, jnp.float32) for g in cts)
    out_types = tuple(_result(x.shape, jnp.float32, x)
                      for x in (means2d, conics, depths, opacities, features, background))
    call = jax.ffi.ffi_call(_target(platform, "bwd"), out_types, vmap_method="broadcast_all")
    extra = (token,) if platform == "cpu" else ()
    return call(means2d, conics, depths, radii, opacities, features, background, t_final, last, *extra, g_image,
                g_alpha, g_depth, **_attrs(platform, width, height, isa))


def _rasterize_bwd(platform, width, height, res, cts):
    d_means, d_conics, d_depths, d_opac, d_feats, d_bg = _backward_call(platform, width, height, res, cts)
    return d_means, d_conics, d_depths, None, d_opac, d_feats, d_bg


_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)


def rasterize_native(means2d, conics, depths, radii, opacities, features, background, width: int, height: int,
                     platform: str):
    """Rasterizes batched screen-space Gaussians with the native ``platform`` backend ("cpu" or "cuda").

    Inputs: means2d f32[B,N,2], conics f32[B,N,3], depths f32[B,N], radii i32[B,N], opacities f32[B,N],
    features f32[B,N,C], background f32[B,C] (B may be several leading dims, or none as long as all
    inputs agree). Returns image f32[B,H,W,C], alpha f32[B,H,W], depth f32[B,H,W]. Semantics are those of
    ``rasterizer_ffi.reference.rasterize_dense``. Differentiable w.r.t. all float inputs.
    """
    platform = _check_platform(str(platform).lower())
    _require(platform)
    f32 = jnp.float32
    means2d, conics, depths, opacities, features, background = (
        jnp.asarray(x, f32) for x in (means2d, conics, depths, opacities, features, background))
    radii = jnp.asarray(radii, jnp.int32)
    if means2d.ndim < 2 or means2d.shape[-1] != 2:
        raise ValueError(f"means2d must have shape [*B, N, 2], got {means2d.shape}")
    if background.shape != means2d.shape[:-2] + features.shape[-1:]:
        raise ValueError(f"background must have shape {means2d.shape[:-2] + features.shape[-1:]} "
                         f"(batch dims of means2d + channels), got {background.shape}")
    means2d, conics, depths, radii, opacities, features, background = _match_varying(
        (means2d, conics, depths, radii, opacities, features, background))
    return _rasterize(platform, int(width), int(height), means2d, conics, depths, radii, opacities, features,
                      background)
