"""The headline comparison trained three times longer (``configs/medium.py``, 6,000 steps): the teacher's
frozen motion encoder (``fusion=local``) against the static avatar (``fusion=none``), seeds 0, 1 and 2.

    instant4d sweep configs/sweeps/medium.py launch     # train and evaluate each run, then collect
    instant4d sweep configs/sweeps/medium.py collect    # sweep.md: per run, paired differences, mean ± spread

The learning rate is constant after warmup, so each run's first 2,000 steps are the small sweep's
(``configs/sweeps/motion.py``) of the same seed and fusion: copying those run directories here first makes
``launch`` train them on from step 2,000 (``train.steps`` is a key that trains further, not a reason to start
afresh). The learning curves: ``instant4d curves --run ours=RUN ... --run static=RUN ...`` on the run
directories (README, "Longer training"). Run from the repository root.
"""

from pathlib import Path

from jax_instant4d.sweep import config_steps, seeded

BASE = "configs/medium.py"
SEEDS = (0, 1, 2)
MEDIUM = Path(__file__).resolve().parents[1] / "medium.py"


def get_sweep():
    return {
        "name": "medium",
        "config": BASE,
        "workdir": "workdirs/sweeps/medium",
        "fixed": {"train.steps": config_steps(MEDIUM)},
        "grid": {"model.fusion": ["local", "none"]},
        **seeded(SEEDS),
        "split": "heldout",
        "baseline": "fusion-none__seed-0__train.seed-0__shuffle_seed-0",
    }
