"""Does the avatar follow unseen faces better when the teacher's motion encoder has seen more faces?
``configs/small.py``'s teacher encoder is pretrained on renders of the dataset's 56 training identities only:
it fits them (training error 0.03 MSE) and reads held-out faces barely better than a constant (read-out
error 0.199 against 0.222), so on the held-out identities the avatar is driven by a code that carries little
beyond jaw opening and blinks. X-NeMo's encoder, which the paper freezes, was trained on far more faces than
the avatar's. Here the teacher's pool adds 512 random identities of the generator (never the held-out ones),
with 4,096 pairs and 2,000 pretraining steps (``data.motion_teacher.extra_identities`` / ``pairs`` /
``steps``), and the driven avatar is trained on it for the small demo's steps, seeds 0, 1, 2. The default
teacher's rows are the motion sweep's (``configs/sweeps/motion.py``, same seeds).

    instant4d data motion-encoder --config configs/small.py --config.data.motion_teacher.extra_identities=512 \\
        --config.data.motion_teacher.pairs=4096 --config.data.motion_teacher.steps=2000   # optional: launch does it
    instant4d sweep configs/sweeps/teacher_data.py launch --parallel 2
    instant4d sweep configs/sweeps/teacher_data.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "teacher_data",
        "config": BASE,
        "workdir": "workdirs/sweeps/teacher_data",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"model.fusion": ["local"]},
        **seeded(SEEDS),
        "split": "heldout",
    }
