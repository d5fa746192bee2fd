"""Is the 64^2 supervision what keeps the small actions out?

At 2,000 steps the driven avatar performs jaw opening, the blinks and gaze y and nothing else, even when its code
is the exact expression (``model.motion.oracle``; README, "Is the motion code the limit?"): the smile, squint and
mouth stretch move each parameter by at most 0.023, and the gap closed is 0.15 +- 0.03. At 64^2 a smile moves a
mouth corner by about a pixel. These runs are the oracle runs of ``configs/sweeps/oracle.py`` with one change: the
teacher's frames are stored at 128^2 (``data.resolution=128``, a dataset of the same identities, expressions and
cameras) and the avatar is rendered and supervised at 128^2 (``train.resolution_schedule=((0, 128),)``). The
encoder still reads the source at 64^2 (``model.image_size``, downsampled), the model is unchanged (4,096
Gaussians), and the expressions are scored as in every other sweep (regressor at 128^2, the avatar rendered there).

The oracle code keeps the teacher's encoder out of the comparison: it was pretrained on 64^2 renders, and a 128^2
frame downsampled to its input is not the image it was trained on. An oracle model does not read its motion
encoder, so it is left untrained and unfrozen here (no teacher to pretrain). The ``image_size-128`` runs (seeds 0
and 1) put the model at 128^2 too: the encoder reads the source at 128^2 and its planes are 64^2.

Result (README, "Is the 64^2 supervision the limit?"; docs/sweep_resolution.md): supervised at 128^2 the gap
closed is 0.16 +- 0.03 / 0.15 +- 0.04 (0.15 +- 0.03 / 0.14 +- 0.03 at 64^2), the gain over undriven +1.24 +- 0.22 dB,
and the driving frame moves jaw opening, the blinks and gaze y as before; smile and squint stay at <= 0.018. With the
model at 128^2 too it learns more slowly: gap closed 0.05 +- 0.02 at 2,000 steps.

    instant4d sweep configs/sweeps/resolution.py launch --parallel 2
    instant4d sweep configs/sweeps/resolution.py collect

Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seed_overrides, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "resolution",
        "config": BASE,
        "workdir": "workdirs/sweeps/resolution",
        "fixed": {"train.steps": config_steps(SMALL), "model.motion.oracle": True, "model.motion.weights": "",
                  "model.motion.freeze": False},
        "grid": {"data.resolution": [128], "train.resolution_schedule": [((0, 128),)]},
        **seeded(SEEDS),
        # the model at 128^2 too: the encoder reads the source at 128^2 and its planes, which hold each Gaussian's
        # features f and motion basis m, are 64^2 instead of 32^2 (4,096 Gaussians still, sampled from them)
        "runs": [{"name": f"image_size-128__seed-{s}", "data.resolution": 128, "model.image_size": 128,
                  "model.encoder.plane_res": 64, **seed_overrides(s)} for s in (0, 1)],
        "split": "heldout",
    }
