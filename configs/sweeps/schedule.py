"""Is the small demo's avatar too soft because its learning rate never decays? ``configs/small.py`` keeps
the learning rate constant after warmup, so its last steps are as noisy as its first; the driven avatar's
eyes + mouth reach only 0.4 of what exact expressions would give at its reconstruction (README, "How far
the driving frame could go"), and the reconstruction's sharpness was the candidate left untested. A cosine
decay to 0.1x over the same 2,000 steps (``train.lr_schedule=cosine``, ``train.min_lr_ratio`` 0.1) costs
nothing: same steps, same time. Three seeds of the driven model (frozen teacher encoder) and of the static
model (``fusion=none``), so the driven-vs-static comparison stays seed-matched at the new schedule; the
constant-schedule rows are the motion sweep's (``configs/sweeps/motion.py``).
Result (README, "Does a decaying learning rate sharpen the avatar?"; docs/sweep_schedule.md): it does not
where expressions show; full-frame PSNR rises in every seed (+0.10 to +0.27 dB), the eyes + mouth ceiling does
not, and the driving frame delivers less (eyes + mouth over undriven +0.51 ± 0.31 dB against +0.76 ± 0.11).

    instant4d sweep configs/sweeps/schedule.py launch --parallel 2
    instant4d sweep configs/sweeps/schedule.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "schedule",
        "config": BASE,
        "workdir": "workdirs/sweeps/schedule",
        "fixed": {"train.steps": config_steps(SMALL), "train.lr_schedule": "cosine"},
        "grid": {"model.fusion": ["local", "none"]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "fusion-none__seed-0__train.seed-0__shuffle_seed-0",
    }
