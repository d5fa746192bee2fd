"""Is the expression path's learning speed what limits it? A learning-rate multiplier on the fusion module.

At 2,000 steps the driven avatar performs jaw opening and the blinks and nothing else, even on its training
identities; three times the steps double the eyes + mouth gain over the undriven avatar (README, "Three times the
steps"), and the training logs show the avatar starting to use the driving code late (+0.06 to +0.12 dB over
undriven at step 1,000, +0.70 at 2,000). If the fusion module (the AdaLN and the MLP that map [z_src, z_drv] and
a Gaussian's motion basis to δf) is what learns slowly, a larger learning rate on it alone should bring the
6,000-step gain forward without touching the reconstruction's.

Settings, fixed before any run and not searched:

- ``train.lr_multipliers`` ``(("^fusion/", 4.0),)``: the fusion module's Adam steps x4 (2e-3 against the rest's
  5e-4; its AdaLN keeps the authors' equalised-learning-rate factor 0.5 on top), seeds 0 / 1 / 2.

A x16 run (seed 0) was planned as well and dropped before it ran: x4 left the gap closed where it was, and the
oracle sweep (configs/sweeps/oracle.py) showed that a faster path to the code is not what is missing.

On the teacher-data sweep's teacher (512 more identities; the best setting at 2,000 steps). The runs without the
multiplier are the teacher-data sweep's (docs/sweep_teacher_data.md), the baseline here as in the adversary and
structural-loss sweeps.

Result (README, "Is the fusion module's learning speed the limit?"; docs/sweep_fusion_lr.md): no. Eyes + mouth over
undriven +1.22 +- 0.17 dB against +1.02 +- 0.06, gap closed 0.13 +- 0.05 / 0.12 +- 0.05 against 0.12 +- 0.03 /
0.11 +- 0.03; the smile, squint and mouth stretch still do not move.

    instant4d sweep configs/sweeps/fusion_lr.py launch --parallel 2
    instant4d sweep configs/sweeps/fusion_lr.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps
FUSION = "^fusion/"


def get_sweep():
    return {
        "name": "fusion_lr",
        "config": BASE,
        "workdir": "workdirs/sweeps/fusion_lr",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"train.lr_multipliers": [((FUSION, 4.0),)]},
        **seeded(SEEDS),
        "split": "heldout",
    }
