"""``instant4d bench model``: model size, FLOPs per encode and per animated frame, and frame rates.

* Size: parameters per part and in total, and their size in MB at float32 (the paper: 0.4 GB).
* FLOPs and bytes: XLA's cost analysis of the compiled HLO (ahead of time on this machine's backend,
  abstract inputs: no weights needed) for ``encode`` and for one animated frame (motion encoder on the
  driving frame + fusion + Φ + projection + rasterization). The native rasterizers are custom calls,
  whose work XLA cannot see: with ``render.backend`` cpu/cuda the frame FLOPs exclude rasterization
  (use ``--config.render.backend=xla`` to include the pure-XLA rasterizer's).
* Frame rate: measured frames per second of the jitted frame function (batch 1, render at
  ``model.image_size``) for each config in ``--fps-configs`` and each fusion in ``--fusions``, side by
  side, plus a roofline estimate of the frame time on an RTX 6000 Ada-class GPU from the FLOPs and
  bytes (assumed peak FP32 throughput and memory bandwidth: ``--gpu-tflops``, ``--gpu-bandwidth``) next
  to the paper's 107.31 FPS. Weights are random (initialisation): the rasterization cost depends on where
  the Gaussians are, so the measured rates are indicative only.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

PAPER_FPS = 107.31
PAPER_ENCODE_MS = 20.0
PAPER_SIZE_GB = 0.4
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["model"], help="what to measure")
    parser.add_argument("--config", default=None,
                        help="config file for the size and FLOPs report (default: configs/full.py)")
    parser.add_argument("--fps-configs", default="small,full",
                        help="comma-separated config names (in configs/) or paths to time; '' to skip timing")
    parser.add_argument("--fusions", default="local,global", help="fusion variants to time side by side")
    parser.add_argument("--frames", type=int, default=5, help="timed frames per variant (after one warm-up)")
    parser.add_argument("--gpu-tflops", type=float, default=91.1,
                        help="assumed GPU peak FP32 TFLOP/s (RTX 6000 Ada datasheet: 91.1)")
    parser.add_argument("--gpu-bandwidth", type=float, default=960.0,
                        help="assumed GPU memory bandwidth in GB/s (RTX 6000 Ada: 960)")
    parser.add_argument("--no-encode-timing", action="store_true",
                        help="skip running encode (the FPS avatar is then built from random features)")


def _config_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".py":
        return p
    return DEFAULT_CONFIG_DIR / f"{name}.py"


def _cost(compiled) -> tuple[float, float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return float(ca.get("flops", float("nan"))), float(ca.get("bytes accessed", float("nan")))


def _abstract(tree):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def param_table(cfg) -> list[tuple[str, int]]:
    """(part, number of parameters) for every top-level part of the model, from abstract shapes."""
    import jax
    from flax import nnx

    from jax_instant4d.model.avatar import Instant4D

    model = nnx.eval_shape(lambda: Instant4D(cfg, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return [(name, int(sum(x.size for x in jax.tree.leaves(sub)))) for name, sub in pure.items()]


class _Compiled:
    """encode / frame / fusion+decode functions of one model, compiled ahead of time."""

    def __init__(self, model, cfg, batch: int = 1):
        import jax
        import jax.numpy as jnp

        from jax_instant4d import render
        from jax_instant4d.inference import pure_model

        self.size = s = int(cfg.model.image_size)
        pure, state = pure_model(model)  # eval mode: BatchNorm on running statistics, as at inference
        self.state = state
        img = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
        cam = render.Camera(jax.ShapeDtypeStruct((batch, 4, 4), jnp.float32),
                            jax.ShapeDtypeStruct((batch, 4), jnp.float32))
        abs_state = _abstract(state)

        def frame(st, avatar, driving, c):
            return pure.animate(st, avatar, pure.motion(st, driving), c, s)

        self.abs_avatar = jax.eval_shape(pure.encode, abs_state, img)
        abs_z = jax.eval_shape(pure.motion, abs_state, img)
        self._encode_lowered = jax.jit(pure.encode).lower(abs_state, img)
        self._frame_lowered = jax.jit(frame).lower(abs_state, self.abs_avatar, img, cam)
        self._fuse_lowered = jax.jit(pure.animate_gaussians).lower(abs_state, self.abs_avatar, abs_z)
        self.encode = self.frame = None
        self._fuse_cost = None

    def bind(self, model) -> None:
        """Use the concrete weights of ``model`` (same structure as the one this was lowered for)."""
        from flax import nnx

        model.eval()
        self.state = nnx.split(model)[1]

    def compile_encode(self):
        if self.encode is None:
            self.encode = self._encode_lowered.compile()
        return _cost(self.encode)

    def compile_frame(self):
        if self.frame is None:
            self.frame = self._frame_lowered.compile()
        return _cost(self.frame)

    def fuse_decode_cost(self):
        if self._fuse_cost is None:
            self._fuse_cost = _cost(self._fuse_lowered.compile())
        return self._fuse_cost


def _random_avatar(abs_avatar, seed: int = 0):
    """An avatar with random contents of the right shapes (when encode is too slow to run)."""
    import jax
    import jax.numpy as jnp

    leaves, tree = jax.tree.flatten(abs_avatar)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for k, x in zip(keys, leaves, strict=True):
        if x.dtype == jnp.bool_:
            out.append(jnp.ones(x.shape, bool))
        else:
            out.append(0.3 * jax.random.normal(k, x.shape, x.dtype))
    return jax.tree.unflatten(tree, out)


def _with_fusion(model, cfg, kind: str):
    """A copy of ``model`` whose fusion is ``kind`` (shared encoder, motion encoder and decoder weights)."""
    from flax import nnx

    from jax_instant4d.config import apply_overrides
    from jax_instant4d.model.avatar import Instant4D
    from jax_instant4d.model.fusion import make_fusion

    cfg2 = apply_overrides(cfg, {"model.fusion": kind})
    abstract = nnx.eval_shape(lambda: Instant4D(cfg2, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    mc = cfg2.model
    fusion = make_fusion(kind, int(mc.feature_dim), int(mc.motion.code_dim), int(mc.motion.token_dim),
                         scale=float(mc.fusion_scale), heads=int(mc.global_heads), rngs=nnx.Rngs(1))
    values = nnx.to_pure_dict(nnx.state(model))
    if fusion is None:
        values.pop("fusion", None)
    else:
        values["fusion"] = nnx.to_pure_dict(nnx.state(fusion))
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state), cfg2


def _time(fn, *args, frames: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # warm-up
    t0 = time.perf_counter()
    for _ in range(frames):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / frames


def run(args, overrides) -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import rasterizer_ffi
    from jax_instant4d import render
    from jax_instant4d.config import apply_overrides, get_config
    from jax_instant4d.model.avatar import Instant4D
    from jax_instant4d.model.instantiate import num_gaussians

    cfg = get_config(args.config or DEFAULT_CONFIG_DIR / "full.py", overrides)
    raster = cfg.render.backend if cfg.render.backend == "dense" else rasterizer_ffi.resolve_backend(cfg.render.backend)
    print(f"# instant4d bench model — config {cfg.name!r}, JAX backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s), rasterizer backend {raster!r}")

    # 1. size ------------------------------------------------------------------------------------------
    parts = param_table(cfg)
    total = sum(n for _, n in parts)
    print("\n## Parameters")
    print(f"| {'part':<16} | {'parameters':>12} | {'MB (f32)':>9} |")
    print(f"|{'-' * 18}|{'-' * 14}|{'-' * 11}|")
    for name, n in parts:
        print(f"| {name:<16} | {n:>12,} | {4 * n / 1e6:>9.1f} |")
    print(f"| {'total':<16} | {total:>12,} | {4 * total / 1e6:>9.1f} |")
    print(f"(paper: {PAPER_SIZE_GB} GB)")

    # 2. FLOPs of the report config ---------------------------------------------------------------------
    logger.info("[bench] cost analysis for %s (ahead-of-time compile; large configs take minutes)", cfg.name)
    cache = {}  # (config name, fusion) -> _Compiled, reused by the timing below
    comp = cache[(cfg.name, cfg.model.fusion)] = _Compiled(nnx.eval_shape(lambda: Instant4D(cfg, rngs=nnx.Rngs(0))),
                                                             cfg)
    enc_f, enc_b = comp.compile_encode()
    frm_f, frm_b = comp.compile_frame()
    fd_f, fd_b = comp.fuse_decode_cost()
    print(f"\n## Cost analysis ({cfg.name}: {num_gaussians(cfg.model):,} Gaussians, fusion {cfg.model.fusion}, "
          f"{cfg.model.image_size}^2, batch 1)")
    print(f"| {'function':<30} | {'GFLOP':>9} | {'GB accessed':>11} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 13}|")
    print(f"| {'encode':<30} | {enc_f / 1e9:>9.2f} | {enc_b / 1e9:>11.3f} |")
    print(f"| {'frame (motion+fusion+Φ+render)':<30} | {frm_f / 1e9:>9.2f} | {frm_b / 1e9:>11.3f} |")
    print(f"| {'  of which fusion + Φ':<30} | {fd_f / 1e9:>9.2f} | {fd_b / 1e9:>11.3f} |")
    if raster not in ("xla", "dense"):
        print("(rasterization runs in a custom call: its work is not in the frame numbers)")

    # 3. frame rates --------------------------------------------------------------------------------------
    names = [n.strip() for n in args.fps_configs.split(",") if n.strip()]
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    if not names or not fusions:
        return 0
    rows = []
    peak, bw = args.gpu_tflops * 1e12, args.gpu_bandwidth * 1e9
    for name in names:
        cfg0 = apply_overrides(get_config(_config_path(name), overrides), {"model.fusion": fusions[0]})
        logger.info("[bench] %s: initialising the model", cfg0.name)
        t0 = time.perf_counter()
        model0 = Instant4D(cfg0, rngs=nnx.Rngs(0))
        logger.info("[bench] %s: init %.1f s", cfg0.name, time.perf_counter() - t0)
        s = int(cfg0.model.image_size)
        cam = render.orbit_camera(jnp.zeros((1,)), jnp.zeros((1,)), radius=float(cfg0.render.camera_radius),
                                  fov_degrees=float(cfg0.render.fov_degrees), size=s)
        rng = jax.random.split(jax.random.key(0), 2)
        source = jax.random.uniform(rng[0], (1, s, s, 3))
        driving = jax.random.uniform(rng[1], (1, s, s, 3))
        avatar, encode_ms, enc_flops = None, float("nan"), float("nan")
        for kind in fusions:
            model, cfgk = (model0, cfg0) if kind == fusions[0] else _with_fusion(model0, cfg0, kind)
            comp = cache.get((cfgk.name, kind))
            if comp is None:
                comp = cache[(cfgk.name, kind)] = _Compiled(model, cfgk)
            comp.bind(model)
            if avatar is None:
                if args.no_encode_timing:
                    avatar = _random_avatar(comp.abs_avatar)
                else:
                    logger.info("[bench] %s: compiling and running encode", cfg0.name)
                    enc_flops, _ = comp.compile_encode()
                    encode_ms = 1e3 * _time(comp.encode, comp.state, source, frames=1)
                    avatar = comp.encode(comp.state, source)
            logger.info("[bench] %s/%s: compiling the frame function", cfg0.name, kind)
            f_flops, f_bytes = comp.compile_frame()
            logger.info("[bench] %s/%s: timing %d frames", cfg0.name, kind, args.frames)
            frame_s = _time(comp.frame, comp.state, avatar, driving, cam, frames=args.frames)
            gpu_s = max(f_flops / peak, f_bytes / bw)
            rows.append((cfg0.name, kind, num_gaussians(cfgk.model), s, enc_flops, encode_ms, f_flops, f_bytes,
                         1e3 * frame_s, 1.0 / frame_s, 1e3 * gpu_s))
            comp.encode = comp.frame = None  # free the executables
            del model

    print(f"\n## Frame rate on this machine ({jax.default_backend()}, batch 1, render backend "
          f"{raster!r}); GPU = roofline max(FLOPs / {args.gpu_tflops:g} TFLOP/s, "
          f"bytes / {args.gpu_bandwidth:g} GB/s)")
    head = ["config", "fusion", "Gaussians", "px", "enc GFLOP", "enc ms", "frame GFLOP", "frame GB", "frame ms",
            "FPS", "GPU est ms", "GPU est FPS", "paper FPS"]
    body = []
    for name, kind, n, s, ef, ems, ff, fb, fms, fps, gms in rows:
        body.append([name, kind, f"{n:,}", str(s), f"{ef / 1e9:.2f}", f"{ems:.1f}", f"{ff / 1e9:.3f}",
                     f"{fb / 1e9:.3f}", f"{fms:.1f}", f"{fps:.2f}", f"{gms:.3f}", f"{1e3 / gms:.0f}",
                     f"{PAPER_FPS:.2f}" if s == 512 else "-"])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(f"(paper: encode {PAPER_ENCODE_MS:.0f} ms, {PAPER_FPS} FPS animation at 512^2 on an RTX 6000 Ada; the "
          "GPU estimate is a lower bound that assumes peak throughput and excludes launch overheads"
          + (" and rasterization)" if raster not in ("xla", "dense") else ")"))
    return 0


COMMAND = ("measure model size, FLOPs and frame rates", add_arguments, run)
