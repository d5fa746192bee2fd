"""``python -m jax_instant4d.cli`` with a dataset generation that lasts at least ``HOLD`` seconds.

``python tests/slow_prepare_entry.py HOLD train --config ... [--config.key=value ...]``: the real command line,
the real model and the real pipeline; only :func:`jax_instant4d.data.pipeline.ensure_dataset`, when it finds the
dataset missing and generates it (process 0 of a multi-process run), returns no sooner than ``HOLD`` seconds after
it was called, and says so in the log. Generating the tiny test dataset can be faster than gloo's 30 s limit on
a collective's set-up, and the multi-process first run must outlast that limit whatever the machine's speed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jax_instant4d import cli  # noqa: E402
from jax_instant4d.data import builders, pipeline  # noqa: E402

HELD = "test entry: the dataset's generation was held to"


def main(argv: list[str]) -> int:
    hold = float(argv[0])
    generate = pipeline.ensure_dataset

    def held(cfg, *args, **kwargs):
        t0 = time.monotonic()
        missing = not builders.is_complete(pipeline.dataset_path(cfg))
        path = generate(cfg, *args, **kwargs)
        if missing:
            took = time.monotonic() - t0
            time.sleep(max(0.0, hold - took))
            print(f"{HELD} {hold:g} s (it took {took:.1f} s)", flush=True)
        return path

    pipeline.ensure_dataset = held
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
