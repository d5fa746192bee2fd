#!/usr/bin/env python3
"""Ablation sweeps from the command line: the same as ``instant4d sweep`` (see sweep_cli.py beside this file
and README.md here), usable from a checkout that is not installed.

    launch/sweep.py configs/sweeps/fusion.py list
    launch/sweep.py configs/sweeps/fusion.py launch --parallel 2
    launch/sweep.py configs/sweeps/fusion.py launch --slurm --partition gpu --time 02:00:00 [--submit]
    launch/sweep.py configs/sweeps/fusion.py collect
"""

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    # This checkout's packages, also when it is not installed (the CLI then loads launch/ from here too).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jax_instant4d.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
