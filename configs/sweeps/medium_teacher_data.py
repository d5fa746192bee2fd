"""The teacher-data sweep trained three times longer (``configs/medium.py``, 6,000 steps): the driven avatar on a
teacher motion encoder pretrained with 512 more identities (``configs/sweeps/teacher_data.py``), and the static
avatar (``fusion=none``, which never reads the motion code) of the same seeds, 0, 1 and 2, on one machine.

    instant4d sweep configs/sweeps/medium_teacher_data.py launch --parallel 2
    instant4d sweep configs/sweeps/medium_teacher_data.py collect

The learning rate is constant after warmup, so each driven run's first 2,000 steps are the teacher-data sweep's
run of the same seed: copying those run directories here first makes ``launch`` train them on from step 2,000
(as ``configs/sweeps/medium.py`` does with the motion sweep's). Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/medium.py"
SEEDS = (0, 1, 2)
MEDIUM = Path(__file__).resolve().parents[1] / "medium.py"


def get_sweep():
    return {
        "name": "medium_teacher_data",
        "config": BASE,
        "workdir": "workdirs/sweeps/medium_teacher_data",
        "fixed": {"train.steps": config_steps(MEDIUM), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"model.fusion": ["local", "none"]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "fusion-none__seed-0__train.seed-0__shuffle_seed-0",
    }
