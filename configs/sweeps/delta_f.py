"""Does the δf penalty flatten the expressions? ``configs/small.py`` penalises the mean square of δf ×0.1
(``train.loss.delta_f``; the paper: ×0.001 on a δf 100x smaller). The penalty pulls every Gaussian's offset,
expression offsets included, towards zero, so a weaker one may let the driving code move the face further.
It was set to 0.1 when the motion encoder was trained from scratch (at ×0.001 the driven avatar then scored
below the static one); the frozen teacher encoder carries less of the identity, so the reason may be gone.
Three seeds at ×0.1 (the default) and ×0.01, one seed at ×0.001, each for the small demo's steps.
Result (README, "Does the δf penalty flatten the expressions?"; docs/sweep_delta_f.md): it does not; ×0.01
lowers eyes + mouth in all three seeds (−0.28 ± 0.25 dB) and leaves the gain over undriven unchanged.

    instant4d sweep configs/sweeps/delta_f.py launch --parallel 2
    instant4d sweep configs/sweeps/delta_f.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seed_overrides, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "delta_f",
        "config": BASE,
        "workdir": "workdirs/sweeps/delta_f",
        "fixed": {"train.steps": config_steps(SMALL)},
        "grid": {"train.loss.delta_f": [0.1, 0.01]},
        "runs": [{"name": "delta-f-0.001__seed-0", "train.loss.delta_f": 0.001, **seed_overrides(0)}],
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "delta_f-0.1__seed-0__train.seed-0__shuffle_seed-0",
    }
