"""Training throughput: step time and examples/s on 1, 2 and 4 host devices, and where a step's time goes.

    python benchmarks/train.py                        # configs/small.py on 1, 2, 4 host CPU devices
    python benchmarks/train.py --devices 1,4 --steps 10 --config.train.batch_size=8
    python benchmarks/train.py --first-step           # time to the first step, cold vs warm cache
    python benchmarks/train.py --xla-flags=--xla_backend_optimization_level=0   # compile vs run: default vs flags

Each device count runs in its own process (host devices are fixed at JAX start-up) with the mesh
(data=D, fsdp=1, model=1) and the config's global batch. Measured, after compilation, as medians over
``--steps`` blocking calls:

* data: the next batch from the grain pipeline plus placing it on the mesh (``to_global``);
* step: the compiled train step (forward, backward, optimiser, non-finite checks);
* fwd+bwd: the same loss and gradients without the optimiser update;
* render: forward + backward of rasterising the step's Gaussians at the step's cameras, alone.

Shares of a step: data = data / (data + step); render = render; model = fwd+bwd - render;
optimiser = step - fwd+bwd (the remainder: updates, clipping, EMA, the skip logic). The phases are
timed separately, so the shares are estimates (XLA overlaps and fuses differently inside one step).

``--first-step`` measures what a user waits for before the first step, twice in fresh processes
sharing a new persistent compilation cache (``train.compilation_cache``): *cold* (empty cache) and
*warm* (a rerun or a resume). Phases: model set-up and initialisation (``init``), tracing and lowering
the step (``trace``), compiling it or loading it from the cache (``compile``) and running it
(``run``); the cache's entries are counted before and after each run (a warm run adds none).

``--xla-flags=FLAGS`` measures the trade XLA flags make between compiling and running: two cold starts
in fresh processes, one with ``XLA_FLAGS`` as this process has it and one with ``FLAGS`` added, each
timed as above plus the median of ``--steps`` further steps. The tests run with
``--xla_backend_optimization_level=0`` (``tests/conftest.py``): they compile many programs and run each
for a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(args: argparse.Namespace, overrides: list[str]) -> dict:
    import jax
    import jax.numpy as jnp

    from jax_instant4d import render
    from jax_instant4d.config import get_config
    from jax_instant4d.train import motion_weights
    from jax_instant4d.train.forward import encode_batch
    from jax_instant4d.train.loop import default_data_factory
    from jax_instant4d.train.sharding import make_mesh, to_global
    from jax_instant4d.train.step import Trainer, resolution_at

    d = jax.device_count()
    cfg = get_config(args.config, [*overrides, f"train.mesh=({d},1,1)", "train.loss.adversarial_start=-1"])
    cfg = motion_weights.prepare(cfg)  # the teacher's encoder: pretrained and cached on first use, as by train
    mesh = make_mesh(cfg.train.mesh)
    trainer = Trainer(cfg, mesh)
    t0 = time.perf_counter()
    state = trainer.init()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    data = default_data_factory(cfg, "train", cfg.train.batch_size, 0, 1)
    res = resolution_at(cfg.train.steps, cfg.train.resolution_schedule, int(cfg.model.image_size))

    batches = []

    def next_batch():
        batches.append(jax.block_until_ready(to_global(next(data), mesh)))

    next_batch()  # warm-up (pipeline start)
    data_s = _median_time(next_batch, args.steps)
    batch = batches[-1]

    step = trainer.step_fn(res)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch, trainer.nets).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run_step():
        with jax.set_mesh(mesh):
            holder["state"], m = compiled(holder["state"], batch, trainer.nets)
        jax.block_until_ready(m)

    run_step()
    step_s = _median_time(run_step, args.steps)

    grads = trainer.grads_fn(res)
    with jax.set_mesh(mesh):
        jax.block_until_ready(grads(holder["state"], batch, trainer.nets))
    fwd_bwd_s = _median_time(lambda: jax.block_until_ready(grads(holder["state"], batch, trainer.nets)), args.steps)

    # The step's Gaussians and cameras, rendered alone (forward + backward).
    b_, k_ = batch["target"].shape[:2]
    cams = render.Camera(batch["target_w2c"].reshape(b_ * k_, 4, 4),
                         render.scale_intrinsics(batch["target_intrinsics"].reshape(b_ * k_, 4),
                                                 batch["target"].shape[2], res))

    @jax.jit
    def gaussians(params, frozen, rest, b):
        model = trainer.mdef.merge(params, frozen, rest, jax.random.key(0))
        avatar, _, z_drv = encode_batch(model, b, cfg.model.image_size)
        camera = render.Camera(cams.world_to_cam.reshape(b_, k_, 4, 4), cams.intrinsics.reshape(b_, k_, 4))
        _, _, _, aux = model.animate(avatar, z_drv, camera, res, res, mesh=None)
        return jax.tree.map(lambda x: x.reshape(b_ * k_, *x.shape[2:]), aux["gaussians"])

    st = holder["state"]
    with jax.set_mesh(mesh):
        g = gaussians(st.params, st.frozen, st.rest, batch)
    rmesh = mesh if mesh.size > 1 else None
    opts = dict(backend=cfg.render.backend, tile_capacity=int(cfg.render.tile_capacity), mesh=rmesh)

    @jax.jit
    def render_fwd_bwd(means, scales, quats, opac, colors):
        def f(*xs):
            return jnp.sum(render.render(*xs, cams, res, res, **opts).rgb)
        return jax.grad(f, argnums=(0, 1, 2, 3, 4))(means, scales, quats, opac, colors)

    rargs = (g.means, g.scales, g.quats, g.opacities, g.colors)
    with jax.set_mesh(mesh):
        jax.block_until_ready(render_fwd_bwd(*rargs))
        render_s = _median_time(lambda: jax.block_until_ready(render_fwd_bwd(*rargs)), args.steps)
    return {"devices": d, "batch": int(cfg.train.batch_size), "resolution": res, "init_s": init_s,
            "compile_s": compile_s, "data_s": data_s, "step_s": step_s, "fwd_bwd_s": fwd_bwd_s,
            "render_s": render_s, "targets": int(k_)}


def first_step_worker(args: argparse.Namespace, overrides: list[str]) -> dict:
    """One cold or warm start: set-up + init, trace, compile (or cache load) and the first step, timed."""
    import jax

    from jax_instant4d.config import get_config
    from jax_instant4d.train import motion_weights
    from jax_instant4d.train.distributed import enable_compilation_cache
    from jax_instant4d.train.loop import default_data_factory
    from jax_instant4d.train.sharding import make_mesh, to_global
    from jax_instant4d.train.step import Trainer, resolution_at

    cfg = motion_weights.prepare(get_config(args.config, [*overrides, "train.loss.adversarial_start=-1"]))
    cache = enable_compilation_cache(args.cache, cfg.workdir)
    entries = len(list(cache.iterdir()))
    t0 = time.perf_counter()
    mesh = make_mesh(cfg.train.mesh)
    trainer = Trainer(cfg, mesh)
    state = jax.block_until_ready(trainer.init())
    init_s = time.perf_counter() - t0
    batch = to_global(next(default_data_factory(cfg, "train", cfg.train.batch_size, 0, 1)), mesh)
    res = resolution_at(0, cfg.train.resolution_schedule, int(cfg.model.image_size))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = trainer.step_fn(res).lower(state, batch, trainer.nets)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        out = jax.block_until_ready(compiled(state, batch, trainer.nets))
    run_s = time.perf_counter() - t0
    row = {"init_s": init_s, "trace_s": trace_s, "compile_s": compile_s, "run_s": run_s,
           "first_step_s": init_s + trace_s + compile_s + run_s, "cache_entries_before": entries,
           "cache_entries_after": len(list(cache.iterdir()))}
    if args.timed_steps:
        # the next steps from the returned state (the step donates its input state)
        holder = {"state": out[0]}

        def one_step():
            with jax.set_mesh(mesh):
                holder["state"] = jax.block_until_ready(compiled(holder["state"], batch, trainer.nets))[0]

        row["step_s"] = _median_time(one_step, args.timed_steps)
    return row


def _run_worker(label: str, cmd: list[str], env: dict[str, str]) -> dict | None:
    """Runs a worker process and returns the JSON of its last ``RESULT`` line (None, with its output
    printed, when it failed or printed none)."""
    print(f"[{label}] running ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return None
    row = json.loads(lines[-1][len("RESULT "):])
    print(f"[{label}] {row}", file=sys.stderr, flush=True)
    return row


def first_step(args: argparse.Namespace, overrides: list[str]) -> int:
    import tempfile

    cache = tempfile.mkdtemp(prefix="instant4d-bench-cache-")
    rows = {}
    for name in ("cold", "warm"):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        cmd = [sys.executable, __file__, "--first-step-worker", "--cache", cache, "--config", args.config, *overrides]
        rows[name] = _run_worker(name, cmd, env)
        if rows[name] is None:
            return 1
    print(f"Time to the first training step, {Path(args.config).name} {' '.join(overrides)}, {os.cpu_count()} "
          f"cores; persistent compilation cache {cache}")
    print("| start | init (s) | trace (s) | compile (s) | run (s) | first step (s) | cache entries added |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['init_s']:.1f} | {r['trace_s']:.1f} | {r['compile_s']:.1f} | {r['run_s']:.1f} | "
              f"{r['first_step_s']:.1f} | {r['cache_entries_after'] - r['cache_entries_before']} |")
    print(f"warm / cold: {rows['warm']['first_step_s'] / rows['cold']['first_step_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def xla_flags_trade(args: argparse.Namespace, overrides: list[str]) -> int:
    """Cold starts without and with ``args.xla_flags``: compile time against step time, side by side."""
    import tempfile

    base = os.environ.get("XLA_FLAGS", "")
    rows = {}
    for name, flags in (("default", base), (args.xla_flags, f"{base} {args.xla_flags}".strip())):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        cache = tempfile.mkdtemp(prefix="instant4d-bench-cache-")
        cmd = [sys.executable, __file__, "--first-step-worker", "--cache", cache, "--timed-steps", str(args.steps),
               "--config", args.config, *overrides]
        rows[name] = _run_worker(name or "default", cmd, env)
        if rows[name] is None:
            return 1
    print(f"Cold start of the train step, {Path(args.config).name} {' '.join(overrides)}, {os.cpu_count()} cores; "
          f"step: median of {args.steps} steps after the first")
    print("| XLA_FLAGS added | trace (s) | compile (s) | first step (s) | step (s) | compile / default | "
          "step / default | steps that repay the compile saved |")
    print("|---|---|---|---|---|---|---|---|")
    ref = rows["default"]
    for name, r in rows.items():
        saved = ref["compile_s"] - r["compile_s"]
        extra = r["step_s"] - ref["step_s"]
        repay = f"{saved / extra:.0f}" if name != "default" and extra > 0 and saved > 0 else "–"
        print(f"| {'(none)' if name == 'default' else '`' + name + '`'} | {r['trace_s']:.1f} | {r['compile_s']:.1f} | "
              f"{r['first_step_s']:.1f} | {r['step_s']:.3f} | {r['compile_s'] / ref['compile_s']:.2f} | "
              f"{r['step_s'] / ref['step_s']:.2f} | {repay} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def table(rows: list[dict]) -> str:
    head = ("devices", "batch", "res", "step (s)", "examples/s", "speed-up", "data", "model", "render", "optimiser",
            "compile (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]["step_s"] + rows[0]["data_s"]
    for r in rows:
        total = r["step_s"] + r["data_s"]
        model = max(r["fwd_bwd_s"] - r["render_s"], 0.0)
        opt = max(r["step_s"] - r["fwd_bwd_s"], 0.0)
        share = lambda x, total=total: f"{100 * x / total:.0f}%"
        lines.append("| " + " | ".join([
            str(r["devices"]), str(r["batch"]), str(r["resolution"]), f"{total:.3f}", f"{r['batch'] / total:.2f}",
            f"{base / total:.2f}x", share(r["data_s"]), share(model), share(r["render_s"]), share(opt),
            f"{r['compile_s']:.0f}"]) + " |")
    return "\n".join(lines)


def main() -> int:
    from jax_instant4d.config import split_config_args

    argv, overrides = split_config_args(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "small.py"))
    parser.add_argument("--devices", default="1,2,4", help="comma-separated host device counts")
    parser.add_argument("--steps", type=int, default=5, help="timed calls per phase (medians)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the measurements here")
    parser.add_argument("--first-step", action="store_true",
                        help="time to the first step with a cold and a warm compilation cache")
    parser.add_argument("--xla-flags", default="",
                        help="compare cold starts (compile and step time) without and with these XLA flags added")
    parser.add_argument("--first-step-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timed-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_step_worker:
        print("RESULT " + json.dumps(first_step_worker(args, overrides)), flush=True)
        return 0
    if args.first_step:
        return first_step(args, overrides)
    if args.xla_flags:
        return xla_flags_trade(args, overrides)
    if args.worker:
        print("RESULT " + json.dumps(worker(args, overrides)), flush=True)
        return 0
    rows = []
    for d in (int(x) for x in args.devices.split(",")):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={d} " + os.environ.get("XLA_FLAGS", ""))
        cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--steps", str(args.steps), *overrides]
        row = _run_worker(f"{d} device(s)", cmd, env)
        if row is None:
            return 1
        rows.append(row)
    print(f"Training step, {Path(args.config).name}, host CPU devices ({os.cpu_count()} cores), medians of "
          f"{args.steps} steps")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
