"""Does the paper's motion-conditioned adversary teach the avatar the small actions?

At 2,000 steps the driven avatar performs jaw opening and the blinks and nothing else, even on its training
identities (README, "What the driving frame moves"): the pixel losses stop at the two actions that change the
most pixels. The paper's signal beyond the pixels is its adversary: a discriminator that sees each driven render
together with the motion codes [z_src, z_drv] (a projection discriminator, jax_instant4d/train/discriminator.py)
can tell a frame whose smile does not match its code, where an L1 over a few mouth-corner pixels barely can.

Settings, fixed before any run and not searched:

- ``train.loss.adversarial`` 0.025, the paper's weight (the config default);
- ``train.loss.adversarial_start`` 1000: the adversary on for the second half of the run (the full config
  switches it on at 250k of 400k steps);
- the discriminator's widths / 4 (``train.disc.channels`` 16, ``max_channels`` 128), as the small config
  divides the encoder's: at the default 64 / 512 a step with the adversary took 4.2-5.4 s against 0.33 s
  without it (10 steps each, AMD EPYC, AVX2, 2 cores); at 16 / 128 it takes 0.51-0.55 s.

On the teacher-data sweep's teacher (512 more identities; the best setting at 2,000 steps). The runs without the
adversary are the teacher-data sweep's (docs/sweep_teacher_data.md): the discriminator is built from its own
random stream (``seed + 1``) and the generator's step does not read it before ``adversarial_start``, so those
runs are these runs' first 1,000 steps and, from there, the baseline without the adversary.

One more run, seed 0 only: the same with an R1 penalty on the discriminator (``train.disc.r1`` 0.2, StyleGAN2-ADA's
rule of thumb 0.0002 * resolution^2 / batch = 0.0002 * 64^2 / 4), after the three runs without it had lost ~3 dB
(README, "Does the paper's adversary").

    instant4d sweep configs/sweeps/adversary.py launch --parallel 2
    instant4d sweep configs/sweeps/adversary.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "adversary",
        "config": BASE,
        "workdir": "workdirs/sweeps/adversary",
        "fixed": {"train.steps": config_steps(SMALL), "data.motion_teacher.extra_identities": 512,
                  "data.motion_teacher.pairs": 4096, "data.motion_teacher.steps": 2000,
                  "train.disc.channels": 16, "train.disc.max_channels": 128},
        "grid": {"train.loss.adversarial_start": [1000]},
        **seeded(SEEDS),
        "runs": [{"name": "adversarial_start-1000__r1-0.2__seed-0", "train.loss.adversarial_start": 1000,
                  "train.disc.r1": 0.2, "seed": 0, "train.seed": 0, "data.shuffle_seed": 0}],
        "split": "heldout",
    }
