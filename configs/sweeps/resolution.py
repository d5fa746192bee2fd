"""Is the 64^2 supervision what keeps the small actions out?

At 2,000 steps the driven avatar performs jaw opening, the blinks and gaze y and nothing else, even when its code
is the exact expression (``model.motion.oracle``; README, "Is the motion code the limit?"): the smile, squint and
mouth stretch move each parameter by at most 0.023, and the gap closed is 0.15 +- 0.03. At 64^2 a smile moves a
mouth corner by about a pixel. These runs are the oracle runs of ``configs/sweeps/oracle.py`` with one change: the
teacher's frames are stored at 128^2 (``data.resolution=128``, a dataset of the same identities, expressions and
cameras) and the avatar is rendered and supervised at 128^2 (``train.resolution_schedule=((0, 128),)``). The
encoder still reads the source at 64^2 (``model.image_size``, downsampled), the model is unchanged (4,096
Gaussians), and the expressions are scored as in every other sweep (regressor at 128^2, the avatar rendered there).

The oracle code keeps the teacher's encoder out of the comparison: the 512-identity teacher was pretrained on 64^2
renders, and its codes of the same frames stored at 128^2 and downsampled move by 0.37 of a random pair's distance
(measured on the held-out driving frames), nearly as far as a change of identity moves them (0.45). The motion
encoder is not read by an oracle model, so it is left untrained and unfrozen here (no teacher to pretrain).

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
        # features f and motion basis m, are 64^2 instead of 32^2 (4,096 Gaussians still, now sampled from them)
        "runs": [{"name": f"image_size-128__seed-{s}", "data.resolution": 128, "model.image_size": 128,
                  "model.encoder.plane_res": 64, **seed_overrides(s)} for s in (0, 1)],
        "split": "heldout",
    }
