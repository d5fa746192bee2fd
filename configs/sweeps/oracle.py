"""Is the motion code what limits the expressions? The avatar driven by the ground-truth expression itself.

At 2,000 steps the driven avatar performs jaw opening and the blinks and nothing else, even on its training
identities, while the teacher's code reads the smile at 0.67x and squint at 0.40x the constant's error held out
(README, "What the driving frame moves"). Either the code is too noisy a description of the small actions, or the
avatar does not learn to perform what its code says. ``model.motion.oracle`` separates the two: the motion code is
the frame's ground-truth expression parameters (normalised, embedded by a fixed orthonormal map into the code's
space beside the encoder's token positions; jax_instant4d/model/motion.py, ``oracle_code``), what a perfect teacher
encoder would give, with no noise and no identity in it. If the oracle avatar performs the small actions, the
teacher's encoder limits ours; if it does not, the avatar (resolution, losses, steps) does.

A diagnostic, not a method: the code comes from the generator's parameters, which no real driving video has.
Everything else is the teacher-data sweep's setting (the 512-identity teacher stays loaded and frozen, and unused),
so the runs without the oracle are that sweep's (docs/sweep_teacher_data.md), the baseline as in the adversary,
structural-loss and fusion learning-rate sweeps. Seeds 0 / 1 / 2, fixed before any run.

Result (README, "Is the motion code the limit?"; docs/sweep_oracle.md): no. With the exact expression as its code
the avatar performs what it performed with the teacher's (jaw opening, the blinks, gaze y), and not the smile,
squint or mouth stretch (undriven - ours <= 0.023 on each); eyes + mouth over undriven +1.14 +- 0.07 dB against
+1.02 +- 0.06, gap closed 0.15 +- 0.03 / 0.14 +- 0.03 against 0.12 +- 0.03 / 0.11 +- 0.03.

Two more runs, seeds 0 and 1, added after those results: the oracle with the δf penalty ten times weaker
(``train.loss.delta_f`` 0.01 against the small config's 0.1). With a noisy code ×0.01 did not help (README, "Does
the δf penalty flatten the expressions?"); with the exact code it asks whether the penalty is what keeps the small
actions out. It is not: smile, squint and mouth stretch move by at most 0.022, the gap closed is 0.13 / 0.13, and
eyes + mouth is where it was (paired, +0.04 +- 0.07 / +0.05 +- 0.09 dB).

Trained three times longer (``configs/medium.py``, 6,000 steps; seeds 0, 1, 2, commands in the README, "With the
exact expression and three times the steps"), the oracle closes 0.25 +- 0.03 / 0.24 +- 0.02 of the gap and moves the
smile in every seed, where the teacher's code at 6,000 steps closes 0.15-0.18.

    instant4d sweep configs/sweeps/oracle.py launch --parallel 2
    instant4d sweep configs/sweeps/oracle.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seed_overrides, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "oracle",
        "config": BASE,
        "workdir": "workdirs/sweeps/oracle",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"model.motion.oracle": [True]},
        **seeded(SEEDS),
        "runs": [{"name": f"oracle-true__delta_f-0.01__seed-{s}", "model.motion.oracle": True,
                  "train.loss.delta_f": 0.01, **seed_overrides(s)} for s in (0, 1)],
        "split": "heldout",
    }
