"""``python -m jax_instant4d.sweep ...``: SLURM scripts written before launching left the library call this;
it is ``instant4d sweep ...``."""

import sys

from jax_instant4d.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
