"""Does a loss that reads the driven renders with the teacher's motion encoder carry more of the expression?

The pixel losses (L1 over the frame, L1 ×1 on the eyes + mouth) see a small action (a brow, a pucker) as a few
pixels of a 64² frame; the teacher's motion encoder, frozen, reads it as a direction of its code. The paper's
own signal beyond the pixels is its adversary conditioned on the motion codes (switched on mid-training, at
sizes our 2-core budget does not reach); the direct form of it is ``train.loss.motion``: the squared distance
between the frozen encoder's codes of each driven render and of its teacher frame (the target's code carries no
gradient; the render's carries one through the encoder's input, never to its weights). Its weight, 0.01, was
fixed before any run: the teacher's code varies by about 1 per read-out direction (14 of them), so a neutral
render against an expressive target starts near 14, and ×0.01 makes the term as large as the pixel terms
together at the start. The teacher is the teacher-data sweep's (512 more identities), so that sweep
(``configs/sweeps/teacher_data.py``, same seeds, same processor kind: AMD EPYC with AVX2) is the baseline.

    instant4d sweep configs/sweeps/motion_loss.py launch --parallel 2
    instant4d sweep configs/sweeps/motion_loss.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "motion_loss",
        "config": BASE,
        "workdir": "workdirs/sweeps/motion_loss",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"train.loss.motion": [0.01]},
        **seeded(SEEDS),
        "split": "heldout",
    }
