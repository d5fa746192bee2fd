"""Does a loss that reads the driven renders with the teacher's motion encoder carry more of the expression?

The pixel losses (L1 over the frame, L1 ×1 on the eyes + mouth) see a small action (a brow, a pucker) as a few
pixels of a 64² frame; the teacher's motion encoder, frozen, reads it as a direction of its code. The paper's
own signal beyond the pixels is its adversary conditioned on the motion codes (switched on mid-training, at
sizes our 2-core budget does not reach); a direct form of it is ``train.loss.motion``: the frozen encoder reads
the renders and the targets (the target's code carries no gradient; the render's carries one through the
encoder's input, never to its weights), and the loss compares, per driven view, the change of the render's code
from the source view with the change of the target's code from the source image
(``train.loss.motion_relative``, the default). Its weight was first set to 0.01 before any run (the teacher's
code varies by about 1 per read-out direction, 14 of them, so a term near 14 at the start would match the pixel
terms together). In both forms that term stayed at 10 to 30 in training, 1 to 2× the pixel terms together, and the
held-out PSNR fell ~4 dB below the baseline's (README): the direct form (each render's code against its target's,
``motion_relative=false``; seeds 0 and 1, stopped at step 1,400) and the relative one (seed 0, stopped at step
787). This sweep trains 0.001 (10x lower, set from those training losses, not from any evaluation) and no loss
(the baseline, on the same machine), on the teacher-data sweep's teacher (512 more identities), over seeds 0, 1
and 2; only seed 0 of each row has been trained so far (docs/sweep_motion_loss.md; collect says "1 of 3").

    instant4d sweep configs/sweeps/motion_loss.py launch --parallel 2
    instant4d sweep configs/sweeps/motion_loss.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)  # seed 0 trained so far (both rows; sweep.md says "1 of 3"); 1 and 2 complete it
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "motion_loss",
        "config": BASE,
        "workdir": "workdirs/sweeps/motion_loss",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"train.loss.motion": [0.0, 0.001]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "motion-0__seed-0__train.seed-0__shuffle_seed-0",
    }
