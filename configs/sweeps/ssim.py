"""Does a structural loss sharpen the avatar enough to carry the small actions?

The demo trains with pixel L1 only (full frame ×1, eyes + mouth ×1): the paper's perceptual term is LPIPS,
whose VGG weights a run here does not have, so nothing in the loss rewards edges over a blur, and the avatars
are soft (docs/demo_grid.png). On them the expression regressor reads jaw opening, blinks and squint, and
the brows, gaze, pucker and jaw side worse than a constant (README): the reconstruction's sharpness is the
candidate left for the expression gap. ``train.loss.ssim`` adds 1 - SSIM over the whole frame, the structural
term of 3D Gaussian splatting's own loss, which needs no pretrained network. Its weight, 0.25, is that recipe's
ratio (0.8 L1 + 0.2 (1 - SSIM)) against our L1 ×1, fixed before any run and not searched.

On the teacher-data sweep's teacher (512 more identities; the best setting at 2,000 steps). The baseline row
(``train.loss.ssim=0``) is the teacher-data sweep's run of the same seed: the step without the term compiles
what it compiled before the term existed. On 2026-12-07 only the ``0.25`` runs were trained (AMD EPYC, AVX2);
the seed-0 baseline is the motion-loss sweep's baseline run (the same settings, made on this processor kind),
copied in with ``train.loss.ssim: 0.0`` added to its ``config.json``; seeds 1 and 2 of the baseline are the
teacher-data sweep's runs (docs/sweep_teacher_data.md), not in this sweep's folder, so collect says "1 of 3".
Result (docs/sweep_ssim.md, README "Does a structural loss"): full-frame PSNR +0.76 +- 0.57 dB and SSIM
0.691 -> 0.750 over the seeds, eyes + mouth lower in every seed, the expression gap closed unchanged.

    instant4d sweep configs/sweeps/ssim.py launch --parallel 2
    instant4d sweep configs/sweeps/ssim.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "ssim",
        "config": BASE,
        "workdir": "workdirs/sweeps/ssim",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000},
        "grid": {"train.loss.ssim": [0.0, 0.25]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "ssim-0__seed-0__train.seed-0__shuffle_seed-0",
    }
