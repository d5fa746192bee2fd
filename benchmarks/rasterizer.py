"""Rasterizer benchmark: every backend side by side in one process, forward and forward + backward.

    python benchmarks/rasterizer.py                      # the full grid (several minutes on 2 cores)
    python benchmarks/rasterizer.py --sizes 256 --gaussians 50000 --channels 32     # the headline point
    python benchmarks/rasterizer.py --backends cpu,xla,xla256,cuda                  # on a GPU machine
    python benchmarks/rasterizer.py --clock process      # CPU time of this process (shared machines)

Backends (``--backends``): ``cpu``, ``cuda``, ``xla`` (the default, exact: every (tile, Gaussian) pair)
and ``xlaK`` for the opt-in fixed capacity K (``xla256`` is the capacity that was the default before).

Scenes are head-like shells of Gaussians (``rasterizer_ffi.testing.shell_scene``) filling most of the
image; projection runs once outside the timed region. Times are medians over ``--repeats`` rounds after
a warm-up (compilation excluded); each round runs every backend once, in turn, so that load from other
processes falls on all of them alike. ``MiB`` is XLA's memory analysis of the compiled forward +
backward: arguments + outputs + temporaries (XLA's buffer assignment for the whole program, a bound
on what is live at once; native kernels' own scratch is not in it). ``overflow`` is what a
fixed capacity dropped (tile, Gaussian pairs; 0 for exact backends); ``img err`` the largest difference
of its image from the first backend's. The last columns are time ratios measured in this run.
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


def parse_backend(name: str) -> tuple[str, int]:
    """``"xla256"`` -> ("xla", 256); ``"xla"`` -> ("xla", 0) (exact); others -> (name, 0)."""
    if name.startswith("xla") and name != "xla":
        digits = name[3:]
        if not digits.isdigit() or int(digits) < 1:
            raise ValueError(f"--backends: {name!r} is not xla or xlaK with a capacity K >= 1")
        return "xla", int(digits)
    if name not in ("cpu", "cuda", "xla"):
        raise ValueError(f"--backends: unknown backend {name!r} (cpu, cuda, xla or xlaK)")
    return name, 0


def _memory_mib(compiled) -> float:
    ma = compiled.memory_analysis()
    if ma is None:
        return float("nan")
    # ``peak_memory_in_bytes`` reads as arguments + outputs on CPU (no temporaries): add them up instead.
    total = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
    return total / 2**20


def prepare(name, scene, size):
    """Compiled forward and forward + backward of one backend on one scene, its overflow, its image and
    the memory of the compiled forward + backward."""
    backend, capacity = parse_backend(name)
    # cpu runs on the host, the others on the default device (the GPU on a GPU machine).
    device = jax.devices("cpu")[0] if backend == "cpu" else jax.devices()[0]
    m, c, d, r, o, f, bg = (jax.device_put(x, device) for x in scene)

    def fwd(m, c, d, o, f):
        return rasterizer_ffi.rasterize(m, c, d, r, o, f, bg, size, size, backend=backend,
                                        tile_capacity=capacity, return_overflow=True)

    def loss(m, c, d, o, f):
        img, alpha, depth, _ = fwd(m, c, d, o, f)
        return jnp.sum(img) + jnp.sum(alpha) + jnp.sum(depth)

    args = (m, c, d, o, f)
    fwd_c = jax.jit(fwd).lower(*args).compile()
    both_c = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*args).compile()
    img, _, _, overflow = fwd_c(*args)
    jax.block_until_ready(both_c(*args))  # warm up
    return dict(fwd=fwd_c, both=both_c, args=args, overflow=int(overflow), image=np.asarray(img),
                mib=_memory_mib(both_c))


def time_round_robin(prepared, repeats, clock):
    """Median time of each backend's forward and forward + backward, running them in turn."""
    times = {name: {"fwd": [], "both": []} for name in prepared}
    for _ in range(repeats):
        for name, p in prepared.items():
            for which in ("fwd", "both"):
                t0 = clock()
                jax.block_until_ready(p[which](*p["args"]))
                times[name][which].append(clock() - t0)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cpu,xla,xla256", help="comma-separated: cpu, cuda, xla, xlaK")
    p.add_argument("--sizes", default="128,256,512")
    p.add_argument("--gaussians", default="10000,50000,250000")
    p.add_argument("--channels", default="32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall-clock time, or CPU time of this process (robust to other jobs; CPU backends only)")
    args = p.parse_args(argv)
    names = [b for b in args.backends.split(",") if b]
    for name in names:
        rasterizer_ffi.resolve_backend(parse_backend(name)[0])  # clear error if a native library is missing
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; backends {names}; {args.clock} time, "
          f"median of {args.repeats}")
    cols = ["size", "N", "C"]
    for name in names:
        cols += [f"{name} fwd ms", f"{name} fwd+bwd ms", f"{name} MiB"]
    for name in names:
        if parse_backend(name)[0] == "xla":
            cols += [f"{name} overflow"]
    cols += [f"{name} img err" for name in names[1:]]
    ratios = []
    if "xla" in names:
        ratios += [("xla", other) for other in names if other != "xla"]
    cols += [f"{a}/{b} fwd+bwd" for a, b in ratios]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols), flush=True)
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(s) for s in args.gaussians.split(",")):
            for ch in (int(s) for s in args.channels.split(",")):
                scene = shell_scene(rng, n, size, ch)
                prepared = {name: prepare(name, scene, size) for name in names}
                res = time_round_robin(prepared, args.repeats, clock)
                row = [str(size), str(n), str(ch)]
                for name in names:
                    row += [f"{1e3 * res[name]['fwd']:.1f}", f"{1e3 * res[name]['both']:.1f}",
                            f"{prepared[name]['mib']:.0f}"]
                for name in names:
                    if parse_backend(name)[0] == "xla":
                        row.append(str(prepared[name]["overflow"]))
                first = prepared[names[0]]["image"]
                row += [f"{np.abs(prepared[name]['image'] - first).max():.1e}" for name in names[1:]]
                row += [f"{res[a]['both'] / res[b]['both']:.2f}x" for a, b in ratios]
                print("| " + " | ".join(row) + " |", flush=True)
                del prepared


if __name__ == "__main__":
    main()
