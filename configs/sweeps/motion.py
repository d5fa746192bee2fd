"""The headline comparison at CPU size, over 3 training seeds: the paper's setting (the synthetic teacher's
pretrained, frozen motion encoder; ``configs/small.py``), the static avatar (``model.fusion=none``), the
motion encoder trained from scratch with the avatar, the teacher's encoder pretrained 5x longer
(``data.motion_teacher.steps=3000``) and the fusion's last layer initialised 10x larger
(``model.fusion_init=0.1``), each for the small demo's steps.

    instant4d sweep configs/sweeps/motion.py list
    instant4d sweep configs/sweeps/motion.py launch            # one after another, then collect
    instant4d sweep configs/sweeps/motion.py collect           # sweep.md: per run, and mean ± spread over seeds

A seed changes the model's initialisation (``seed``), the per-step randomness (``train.seed``) and the data
order (``data.shuffle_seed``); the dataset, the teacher's encoder and the evaluation frames stay the same.
Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seed_overrides, seeded

BASE = "configs/small.py"
SEEDS = (0, 1, 2)
SMALL = Path(__file__).resolve().parents[1] / "small.py"  # the demo: the runs train for its steps


def get_sweep():
    return {
        "name": "motion",
        "config": BASE,
        "workdir": "workdirs/sweeps/motion",
        "fixed": {"train.steps": config_steps(SMALL)},
        "grid": {"model.fusion": ["local", "none"]},
        "runs": [{"name": f"motion-scratch__seed-{s}", "model.motion.weights": "", "model.motion.freeze": False,
                  **seed_overrides(s)} for s in SEEDS]
        # the teacher's encoder pretrained 5x longer (3,000 steps instead of 600), frozen
        + [{"name": f"teacher-3000__seed-{s}", "data.motion_teacher.steps": 3000, **seed_overrides(s)}
           for s in SEEDS]
        # the fusion MLP's last layer initialised 10x smaller instead of 100x (delta_f at initialisation 10x the
        # paper's): does the driving frame start to matter earlier than step ~1,000?
        + [{"name": f"fusion-init-0.1__seed-{s}", "model.fusion_init": 0.1, **seed_overrides(s)} for s in SEEDS],
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "fusion-none__seed-0__train.seed-0__shuffle_seed-0",
    }
