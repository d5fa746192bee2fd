"""Fusion ablation at CPU size: the four fusion designs (local AdaLN, global cross-attention, direct
deformation of Φ(f), none) on ``configs/small.py``, each trained for the small demo's steps.

    instant4d sweep configs/sweeps/fusion.py list
    instant4d sweep configs/sweeps/fusion.py launch            # one after another, then collect
    instant4d sweep configs/sweeps/fusion.py launch --slurm    # or as a SLURM array (see launch/README.md)

Run from the repository root (the paths below are relative to the current directory).
"""

from pathlib import Path

from jax_instant4d.config import load_config_file

BASE = "configs/small.py"


def get_sweep():
    # The demo (`instant4d train --config configs/small.py`) trains for the base config's train.steps: so do the runs.
    steps = load_config_file(Path(__file__).resolve().parents[1] / "small.py").train.steps
    return {
        "name": "fusion",
        "config": BASE,
        "workdir": "workdirs/sweeps/fusion",
        "fixed": {"train.steps": int(steps)},
        "grid": {"model.fusion": ["local", "global", "deform", "none"]},
        "split": "heldout",
        "baseline": "fusion-none",  # the table gives each run's paired difference to the static avatar
    }
