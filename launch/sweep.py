#!/usr/bin/env python3
"""Ablation sweeps from the command line: the same as ``instant4d sweep`` (see jax_instant4d/sweep.py and
launch/README.md).

    launch/sweep.py configs/sweeps/fusion.py list
    launch/sweep.py configs/sweeps/fusion.py launch --parallel 2
    launch/sweep.py configs/sweeps/fusion.py launch --slurm --partition gpu --time 02:00:00 [--submit]
    launch/sweep.py configs/sweeps/fusion.py collect
"""

import sys
from pathlib import Path

# This checkout's package, also when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_instant4d.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
