"""Does a loss on the expression's *change* teach the avatar the small actions?

At 2,000 steps the driven avatar performs jaw opening and the blinks and nothing else, even when its code is the
exact expression (README, "Is the motion code the limit?"), while its renders stay blurred (PSNR 22-23 dB). The
pixel losses are L1, whose gradient at a pixel is the sign of the residual: where the reconstruction is off by more
than a smile moves the pixel, the sign is the reconstruction's and the smile adds nothing to it.
``train.loss.expression_change`` compares, at each target camera, the change the driving motion makes to the render
(driven - undriven render, the same avatar with its own motion) with the change it makes to the teacher's view
(teacher view - the teacher's undriven view, ``data.undriven_views``: the source identity at the source's
expression at that camera). The reconstruction error both renders share cancels; what is left is the expression.
The teacher can draw the undriven view (it is the teacher driven by the source itself), so the signal is one a
real teacher gives too.

Weight 1.0 (the L1 term's), fixed before any run. Everything else is the teacher-data sweep's setting
(512-identity teacher, 2,000 steps), so the runs without the loss are that sweep's (docs/sweep_teacher_data.md):
the undriven views change the dataset's name, not its clips (every stored field of every clip is as before; a test
checks it) nor the order or content of the other batch fields.

First form, seeds 0 and 1 (the run names without a weighting): every pixel alike (``"uniform"``). It held the
driving frame back: in the training logs held-out eyes + mouth equals undriven at steps 500, 1,000 and 1,500 in both
seeds (the baseline's: +0.48 / +0.95 dB at step 1,500); at 2,000 seed 0 has started (+0.45 dB, gap closed 0.06) and
seed 1 has not (0.00; every parameter's undriven - ours 0.000). Uniform L1 on the change pulls any change of the
render where the teacher's view does not change (71% of a frame's pixels) towards 0 with the full force of its
sign gradient. Its seed 2 was stopped at the start.

Second form, seeds 0 / 1 / 2 (``"change"``, now the default): each pixel weighted by how much the teacher's view
changes there, so a pixel the expression leaves alone adds nothing and one it changes a lot counts most. Result
(README, "Does a loss on the expression's change"; docs/sweep_expression_change.md): the driving frame takes hold by
step 500 instead of 1,000 and the gain over undriven doubles (eyes + mouth +2.07 +- 0.17 dB against +1.02 +- 0.06),
because the undriven avatar now shows the source's expression instead of a hedge; the driven renders are not closer
to the teacher (paired, eyes + mouth -0.47 / -0.46 dB for seeds 0 / 1) and the gap closed stays 0.12.

    instant4d sweep configs/sweeps/expression_change.py launch --parallel 2
    instant4d sweep configs/sweeps/expression_change.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seed_overrides, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "expression_change",
        "config": BASE,
        "workdir": "workdirs/sweeps/expression_change",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000,
                  "data.undriven_views": True, "train.loss.expression_change": 1.0},
        "grid": {"train.loss.expression_change_weighting": ["change"]},
        **seeded(SEEDS),
        "runs": [{"name": f"expression_change-1__seed-{s}__train.seed-{s}__shuffle_seed-{s}",
                  "train.loss.expression_change_weighting": "uniform", **seed_overrides(s)} for s in (0, 1)],
        "split": "heldout",
    }
