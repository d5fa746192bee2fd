"""Where bit-determinism holds, and why runs differ between machines of the same kind.

A training run is bitwise reproducible on one machine (kill -9 + resume gives the same bits), but the
same command on another x86-64 machine may print other numbers. Two code paths depend on the
processor's instruction set:

1. the CPU rasterizer picks its tile kernels at run time (SSE2 baseline, AVX2 + FMA, or AVX-512: the
   widest the processor has); the lane width changes the order of floating-point sums in the backward
   pass and FMA contracts products differently;
2. XLA's CPU compiler generates code for the host's features (vector width, FMA), which reorders
   reductions in the model's convolutions and matrix products.

This script measures both on this machine, side by side:

* the rasterizer's forward and backward at each instruction set it supports, on one scene: how many
  values differ bitwise from the widest set's, and by how much;
* a few training steps of the small config (real model, the cpu rasterizer at its default instruction
  set) in fresh processes: twice as is, and once with ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` (what an
  AVX2-only machine compiles): the loss after each step and a hash of the final parameters.

    python benchmarks/determinism.py [--steps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ISA_NAMES = {1: "baseline (SSE2)", 2: "AVX2 + FMA", 3: "AVX-512"}


def rasterizer_isas() -> list[dict]:
    import jax.numpy as jnp

    from rasterizer_ffi import ffi
    from rasterizer_ffi.testing import batch_scenes, shell_scene

    if not ffi.available("cpu"):
        raise RuntimeError(f"the CPU rasterizer library is not built: {ffi.load_error('cpu')}")
    rng = np.random.default_rng(0)
    w = h = 64
    scene = [jnp.asarray(x) for x in batch_scenes([shell_scene(rng, 4096, w, 3) for _ in range(2)])]
    cot = None
    outs = {}
    for isa in (3, 2, 1):
        out = ffi._forward_call("cpu", w, h, *scene, isa=isa)
        if cot is None:
            cot = tuple(jnp.asarray(rng.normal(size=np.shape(o)).astype(np.float32)) for o in out[:3])
        res = tuple(scene) + (out[3], out[4])
        grads = ffi._backward_call("cpu", w, h, res, cot, isa=isa)
        outs[isa] = ([np.asarray(o) for o in out[:3]], [np.asarray(g) for g in grads])
    rows = []
    ref_f, ref_b = outs[3]
    for isa, (f, b) in outs.items():
        fd = sum(int(np.sum(x != y)) for x, y in zip(f, ref_f, strict=True))
        bd = sum(int(np.sum(x != y)) for x, y in zip(b, ref_b, strict=True))
        bmax = max(float(np.max(np.abs(x - y))) for x, y in zip(b, ref_b, strict=True))
        total_b = sum(x.size for x in b)
        rows.append({"isa": ISA_NAMES[isa], "forward values differing": fd, "backward values differing": bd,
                     "of": total_b, "max |backward difference|": bmax})
    return rows


STEPS_SCRIPT = r"""
import hashlib, json, sys
import jax, numpy as np
from jax_instant4d.config import get_config
from jax_instant4d import data
from jax_instant4d.train.sharding import make_mesh, to_global
from jax_instant4d.train.step import Trainer
cfg = get_config(sys.argv[1], ["model.motion.weights=", "model.motion.freeze=false", "train.mesh=(1,1,1)",
                               "render.backend=cpu", "train.loss.adversarial_start=-1"])
mesh = make_mesh(cfg.train.mesh)
trainer = Trainer(cfg, mesh)
state = trainer.init()
it = data.make_pipeline(cfg, "train", int(cfg.train.batch_size))
losses = []
for _ in range(int(sys.argv[2])):
    state, m = trainer.step(state, to_global(next(it), mesh), int(cfg.model.image_size))
    losses.append(float(m["loss"]).hex())
h = hashlib.sha256()
for leaf in jax.tree.leaves(jax.device_get(state.params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
print(json.dumps({"losses": losses, "params": h.hexdigest()[:16]}))
"""


def training_steps(config: str, steps: int, xla_flags: str | None) -> dict:
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    out = subprocess.run([sys.executable, "-c", STEPS_SCRIPT, config, str(steps)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "small.py"))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    print("## The CPU rasterizer at each instruction set (64x64 head-like shells of 4,096 Gaussians, 2 images)\n")
    rows = rasterizer_isas()
    print("| instruction set | forward values differing from AVX-512 | backward values differing | "
          "max abs backward difference |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['isa']} | {r['forward values differing']} | {r['backward values differing']} of {r['of']} | "
              f"{r['max |backward difference|']:.3g} |")

    print(f"\n## {args.steps} training steps of {Path(args.config).name} in fresh processes\n")
    runs = [("as is", None), ("as is, again", None), ("XLA_FLAGS=--xla_cpu_max_isa=AVX2", "--xla_cpu_max_isa=AVX2")]
    results = [(name, training_steps(args.config, args.steps, flags)) for name, flags in runs]
    first = results[0][1]
    print("| run | losses (float hex) | parameter hash | same bits as the first run |")
    print("|---|---|---|---|")
    for name, r in results:
        same = r["losses"] == first["losses"] and r["params"] == first["params"]
        print(f"| {name} | {' '.join(r['losses'])} | {r['params']} | {'yes' if same else 'no'} |")
    digest = hashlib.sha256(json.dumps(results).encode()).hexdigest()[:8]
    print(f"\n(results digest {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
