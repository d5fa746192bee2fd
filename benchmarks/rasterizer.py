"""Rasterizer benchmark: forward and forward+backward time of each backend, side by side in one process.

    python benchmarks/rasterizer.py                      # the full grid (several minutes on 2 cores)
    python benchmarks/rasterizer.py --sizes 256 --gaussians 50000 --channels 32
    python benchmarks/rasterizer.py --backends cpu,xla,cuda   # on a GPU machine
    python benchmarks/rasterizer.py --sizes 256 --gaussians 50000 --channels 32 --exact   # + xla without drops

Scenes are head-like shells of Gaussians (``rasterizer_ffi.testing.shell_scene``) filling most of the
image; projection runs once outside the timed region. Times are medians over ``--repeats`` runs after a
warm-up (compilation excluded). The last columns are the xla/cpu time ratios measured in this run.

At the default capacity the xla backend drops what does not fit in a tile (``xla overflow`` counts the
dropped pairs), so it does less work than cpu and renders another image. ``--exact`` adds xla at the
smallest power-of-two capacity that drops nothing (the same image as cpu) and its ratio to cpu.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rasterizer_ffi  # noqa: E402
from rasterizer_ffi.testing import shell_scene  # noqa: E402


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overflow_at(scene, size, capacity):
    """The xla backend's dropped (tile, Gaussian) pairs at ``capacity`` (one forward call, untimed)."""
    m, c, d, r, o, f, bg = (jnp.asarray(x) for x in scene)
    return int(rasterizer_ffi.rasterize(m, c, d, r, o, f, bg, size, size, backend="xla", tile_capacity=capacity,
                                        return_overflow=True)[3])


def bench_one(backend, scene, size, capacity, repeats):
    m, c, d, r, o, f, bg = (jnp.asarray(x) for x in scene)

    def fwd(m, c, d, o, f):
        return rasterizer_ffi.rasterize(m, c, d, r, o, f, bg, size, size, backend=backend,
                                        tile_capacity=capacity, return_overflow=True)

    def loss(m, c, d, o, f):
        img, alpha, depth, _ = fwd(m, c, d, o, f)
        return jnp.sum(img) + jnp.sum(alpha) + jnp.sum(depth)

    fwd_j = jax.jit(fwd)
    grad_j = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    args = (m, c, d, o, f)
    overflow = int(fwd_j(*args)[3])
    t_fwd = _time(fwd_j, args, repeats)
    t_both = _time(grad_j, args, repeats)
    return t_fwd, t_both, overflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cpu,xla")
    p.add_argument("--sizes", default="128,256,512")
    p.add_argument("--gaussians", default="10000,50000,250000")
    p.add_argument("--channels", default="3,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tile-capacity", type=int, default=rasterizer_ffi.DEFAULT_TILE_CAPACITY)
    p.add_argument("--exact", action="store_true", help="also time xla at a capacity that drops nothing")
    args = p.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        rasterizer_ffi.resolve_backend(b)  # clear error if a native library is missing
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; backends {backends}; "
          f"xla tile_capacity {args.tile_capacity}; median of {args.repeats}")
    cols = ["size", "N", "C"]
    for b in backends:
        cols += [f"{b} fwd ms", f"{b} fwd+bwd ms"]
    if "xla" in backends:
        cols += ["xla overflow"]
    if {"cpu", "xla"} <= set(backends):
        cols += ["xla/cpu fwd", "xla/cpu fwd+bwd"]
    exact = args.exact and {"cpu", "xla"} <= set(backends)
    if exact:
        cols += ["exact K", "xla exact fwd+bwd ms", "xla exact/cpu fwd+bwd"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(s) for s in args.gaussians.split(",")):
            for ch in (int(s) for s in args.channels.split(",")):
                scene = shell_scene(rng, n, size, ch)
                row = [str(size), str(n), str(ch)]
                res = {}
                for b in backends:
                    res[b] = bench_one(b, scene, size, args.tile_capacity, args.repeats)
                    row += [f"{1e3 * res[b][0]:.1f}", f"{1e3 * res[b][1]:.1f}"]
                if "xla" in backends:
                    row.append(str(res["xla"][2]))
                if {"cpu", "xla"} <= set(backends):
                    row += [f"{res['xla'][0] / res['cpu'][0]:.1f}x", f"{res['xla'][1] / res['cpu'][1]:.1f}x"]
                if exact:
                    k, dropped = args.tile_capacity, res["xla"][2]
                    while dropped > 0 and k < 1 << 16:  # double until nothing is dropped, then time that
                        k *= 2
                        dropped = overflow_at(scene, size, k)
                    t_exact = bench_one("xla", scene, size, k, args.repeats)[1] if k != args.tile_capacity \
                        else res["xla"][1]
                    row += [str(k), f"{1e3 * t_exact:.1f}", f"{t_exact / res['cpu'][1]:.1f}x"]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
