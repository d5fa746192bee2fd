"""Fusion ablation at CPU size: the four fusion designs (local AdaLN, global cross-attention, direct
deformation of Φ(f), none) on ``configs/small.py``, each trained for the small demo's steps.

    instant4d sweep configs/sweeps/fusion.py list
    instant4d sweep configs/sweeps/fusion.py launch            # one after another, then collect
    instant4d sweep configs/sweeps/fusion.py launch --slurm    # or as a SLURM array (see launch/README.md)

Run from the repository root (the paths below are relative to the current directory).
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps

BASE = "configs/small.py"
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "fusion",
        "config": BASE,
        "workdir": "workdirs/sweeps/fusion",
        "fixed": {"train.steps": config_steps(SMALL)},
        "grid": {"model.fusion": ["local", "global", "deform", "none"]},
        "split": "heldout",
        "baseline": "fusion-none",  # the table gives each run's paired difference to the static avatar
    }
