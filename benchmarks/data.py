"""Data benchmark: synthetic generation time and grain pipeline throughput (examples/s).

    python benchmarks/data.py                 # small config (its whole dataset) and full (a tiny dataset at 512^2)
    python benchmarks/data.py --quick         # tiny datasets for both, fewer batches
    python benchmarks/data.py --consumption small=workdirs/small   # beside a training run's examples/s

For each config the pipeline runs with 0, 1 and 2 worker processes; the first ``--warmup`` batches
(worker start-up, first decode) are not timed. Numbers depend on the machine's free cores: the table
prints the CPU count and the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cfg(config: str, data_dir: Path, tiny: bool, workers: int, extra: list[str]):
    from jax_instant4d.config import get_config

    ov = [f"data.data_dir={data_dir}", f"data.num_workers={workers}", *extra]
    if tiny:
        ov += ["data.num_identities=6", "data.heldout_identities=1", "data.clips_per_identity=2"]
    return get_config(str(ROOT / config), ov)


def _throughput(cfg, batch_size: int, batches: int, warmup: int) -> tuple[float, float]:
    from jax_instant4d.data import make_pipeline
    from jax_instant4d.data.pipeline import batch_nbytes

    it = make_pipeline(cfg, "train", batch_size, 0, 1)
    try:
        for _ in range(warmup):
            next(it)
        t = time.perf_counter()
        nbytes = sum(batch_nbytes(next(it)) for _ in range(batches))
        dt = time.perf_counter() - t
    finally:
        if hasattr(it, "close"):
            it.close()
    return batches * batch_size / dt, nbytes / dt / 2 ** 20


def _training_rate(workdir: Path) -> float:
    """Median examples/s of the logged training steps of a work directory (``metrics.jsonl``)."""
    import json
    import statistics

    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"--consumption: {path} not found (train with that work directory first)")
    rates = [r["examples_per_sec"] for r in map(json.loads, path.read_text().splitlines())
             if r.get("kind") == "train" and "examples_per_sec" in r]
    if not rates:
        raise SystemExit(f"--consumption: {path} has no training steps")
    return statistics.median(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny datasets, fewer batches")
    p.add_argument("--data_dir", default=None, help="keep datasets here (default: a temporary dir)")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--consumption", action="append", default=[], metavar="CONFIG=WORKDIR",
                   help="a training run of that config: its median examples/s (metrics.jsonl) is printed beside "
                        "the pipeline's, with the headroom (pipeline / training)")
    args = p.parse_args(argv)
    consumption = {}
    for item in args.consumption:
        name, _, workdir = item.partition("=")
        consumption[name] = _training_rate(Path(workdir))

    from jax_instant4d.data import ensure_dataset
    from jax_instant4d.data.pipeline import dataset_path

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="instant4d-bench-data-"))
    runs = [  # (name, config file, tiny dataset?, per-process batch, timed batches)
        ("small", "configs/small.py", args.quick, 8, 10 if args.quick else 40),
        ("full", "configs/full.py", True, 4, 4 if args.quick else 10),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {os.cpu_count()} CPUs, load average {load:.1f} at start", flush=True)
    rows, gen = [], []
    try:
        for name, config, tiny, batch, batches in runs:
            cfg = _cfg(config, data_dir, tiny, 0, [])
            d = cfg.data
            existed = dataset_path(cfg).exists()
            t = time.perf_counter()
            ensure_dataset(cfg, progress=False)
            dt = time.perf_counter() - t
            clips = d.num_identities * d.clips_per_identity
            gen.append((name, d.resolution, clips, d.time_steps, d.views, "(cached)" if existed else f"{dt:.1f} s"))
            for w in (int(x) for x in args.workers.split(",")):
                eps, mbs = _throughput(_cfg(config, data_dir, tiny, w, []), batch, batches, args.warmup)
                rows.append((name, d.resolution, d.targets_per_example, batch, w, eps, mbs))
                print(f"  {name} workers={w}: {eps:.1f} examples/s", flush=True)
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    print("\nGeneration (synthetic_heads, compilation included):\n")
    print("| config | resolution | clips | T | V | time |\n|---|---|---|---|---|---|")
    for r in gen:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print("\nPipeline throughput (decode + sample + batch, one process):\n")
    print("| config | resolution | K | batch | workers | examples/s | MiB/s | training consumes (examples/s) | "
          "headroom |\n|---|---|---|---|---|---|---|---|---|")
    for name, res, k, b, w, eps, mbs in rows:
        use = consumption.get(name)
        extra = f"{use:.1f} | {eps / use:.0f}x" if use else "— | —"
        print(f"| {name} | {res} | {k} | {b} | {w} | {eps:.1f} | {mbs:.0f} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
