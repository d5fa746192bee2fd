"""Does a loss that reads the driven renders with the teacher's motion encoder carry more of the expression?

The pixel losses (L1 over the frame, L1 ×1 on the eyes + mouth) see a small action (a brow, a pucker) as a few
pixels of a 64² frame; the teacher's motion encoder, frozen, reads it as a direction of its code. The paper's
own signal beyond the pixels is its adversary conditioned on the motion codes (switched on mid-training, at
sizes our 2-core budget does not reach); a direct form of it is ``train.loss.motion``: the frozen encoder reads
the renders and the targets (the target's code carries no gradient; the render's carries one through the
encoder's input, never to its weights), and the loss compares, per driven view, the change of the render's code
from the source view with the change of the target's code from the source image
(``train.loss.motion_relative``, the default). Its weight, 0.01, was fixed before any run: the teacher's code
varies by about 1 per read-out direction (14 of them), so the term starts near 14 and ×0.01 makes it as large as
the pixel terms together. The first form compared each render's code with its target's directly
(``motion_relative=false``); it lowered the held-out PSNR by ~4 dB at step 1,000 in seeds 0 and 1 (README) and was
stopped at step 1,400. This sweep trains seed 0 with the loss and without it (the baseline, on the same machine),
on the teacher-data sweep's teacher (512 more identities).

    instant4d sweep configs/sweeps/motion_loss.py launch --parallel 2
    instant4d sweep configs/sweeps/motion_loss.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0,)  # one seed: marked so wherever it is reported
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "motion_loss",
        "config": BASE,
        "workdir": "workdirs/sweeps/motion_loss",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"train.loss.motion": [0.0, 0.01]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "motion-0__seed-0__train.seed-0__shuffle_seed-0",
    }
