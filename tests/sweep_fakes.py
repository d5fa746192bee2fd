"""Stand-ins shared by tests/test_sweep.py (the library: sweep files, run state, collect) and
tests/test_launch_sweep.py (the launcher in launch/): a fake ``instant4d train`` / ``instant4d eval`` that
resolves the config like train (writing ``config.json``) and writes a plausible eval JSON, and helpers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = str(REPO / "configs" / "small.py")
FUSIONS = ["local", "global", "deform", "none"]

# What the fake eval reports per fusion (the table must show exactly these, formatted).
SELF_PSNR = {"local": 30.137, "global": 29.504, "deform": 27.251, "none": 24.018}
CROSS_PSNR = {"local": 22.871, "global": 22.406, "deform": 21.333, "none": 19.999}
SSIM = {"local": 0.91234, "global": 0.90101, "deform": 0.88888, "none": 0.80003}
EXPR_SELF = {"local": 0.03121, "global": 0.03333, "deform": 0.04444, "none": 0.09876}
EXPR_CROSS = {"local": 0.04561, "global": 0.04702, "deform": 0.05999, "none": None}
CONSISTENCY = {"local": 0.87654, "global": 0.86543, "deform": 0.81234, "none": 0.9}
FPS = {"local": 107.31, "global": 3.7049, "deform": 95.0, "none": 120.52}

FAKE = textwrap.dedent('''
    """Stands in for `instant4d train` and `instant4d eval` in the sweep tests."""
    import argparse, json, sys, time
    from pathlib import Path
    from jax_instant4d.config import get_config, split_config_args

    VALUES = %(values)r

    def main(argv):
        mode = argv[0]
        rest, overrides = split_config_args(argv[1:])
        p = argparse.ArgumentParser()
        for a in ("--config", "--workdir", "--checkpoint", "--split", "--barrier"):
            p.add_argument(a)
        p.add_argument("--fail", default="")
        p.add_argument("--barrier-n", type=int, default=0)
        a = p.parse_args(rest)
        wd = Path(a.workdir if mode == "train" else a.checkpoint)
        with open(wd / "calls.txt", "a") as f:
            f.write(mode + "\\n")
        if mode == "train":
            cfg = get_config(a.config, overrides + ["workdir=" + a.workdir])
            print("fake train", cfg.model.fusion, cfg.train.steps, flush=True)
            if cfg.model.fusion in a.fail.split(","):
                print("fake train: exploding on purpose", file=sys.stderr)
                return 3
            if a.barrier:  # wait until barrier-n runs are in training at the same time
                Path(a.barrier, cfg.model.fusion).touch()
                t0 = time.time()
                while len(list(Path(a.barrier).iterdir())) < a.barrier_n:
                    if time.time() - t0 > 30:
                        print("fake train: barrier timeout", file=sys.stderr)
                        return 4
                    time.sleep(0.05)
            (wd / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
            return 0
        cfg = json.loads((wd / "config.json").read_text())
        fusion = cfg["model"]["fusion"]
        v = {k: d[fusion] for k, d in VALUES.items()}
        def part(psnr, expr, consistency):
            return {"psnr": psnr, "ssim": v["ssim"], "lpips": None, "identity": None, "expression_error": expr,
                    "expression_error_teacher": None, "consistency": consistency, "num_frames": 16}
        ev = {"checkpoint": str(wd / "checkpoints" / str(cfg["train"]["steps"])), "step": cfg["train"]["steps"],
              "split": a.split, "config_name": cfg["name"], "fusion": fusion,
              "num_gaussians": cfg["model"]["gaussian_res"] ** 2, "image_size": cfg["model"]["image_size"],
              "self": part(v["self_psnr"], v["expr_self"], None),
              "cross": part(v["cross_psnr"], v["expr_cross"], v["consistency"]),
              "animate_fps": v["fps"], "encode_ms": 12.5, "notes": ["fake"]}
        (wd / ("eval_%%s.json" %% a.split)).write_text(json.dumps(ev, indent=2))
        return 0

    sys.exit(main(sys.argv[1:]))
''') % {"values": {"self_psnr": SELF_PSNR, "cross_psnr": CROSS_PSNR, "ssim": SSIM, "expr_self": EXPR_SELF,
                   "expr_cross": EXPR_CROSS, "consistency": CONSISTENCY, "fps": FPS}}


def write_fake(folder: Path) -> Path:
    """The fake ``instant4d`` (train | eval) as a script in ``folder``."""
    path = folder / "fake_instant4d.py"
    path.write_text(FAKE)
    return path


def write_sweep(path: Path, **spec) -> Path:
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.items()}
    spec.setdefault("config", SMALL)
    path.write_text(f"def get_sweep():\n    return {spec!r}\n")
    return path


def table_rows(md: str) -> dict[str, dict[str, str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0][2:-2].split(" | ")]
    rows = [dict(zip(header, [c.strip() for c in line[2:-2].split(" | ")], strict=True)) for line in lines[1:]]
    return {r["run"]: r for r in rows}


def calls(run_dir: Path) -> list[str]:
    f = run_dir / "calls.txt"
    return f.read_text().split() if f.exists() else []
