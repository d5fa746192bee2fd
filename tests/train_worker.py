"""The stand-in ``instant4d train`` for subprocess tests (launch/local.sh, kill -9, SIGTERM): the real
training loop with the stand-in model and data of ``tests/fakes.py``.

``python tests/train_worker.py --workdir DIR [--coordinator_address ...] [--config.key=value ...]``
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import jax  # noqa: E402
from fakes import FakeInstant4D, make_fake_data_factory, tiny_config  # noqa: E402


def main(argv: list[str]) -> int:
    """The stand-in ``instant4d train``: the config is read first (its jax.distributed timeouts are used),
    then jax.distributed starts, then the real loop runs with the stand-in model and data."""
    import argparse

    from jax_instant4d.cli import setup_logging
    from jax_instant4d.config import apply_overrides, split_config_args
    from jax_instant4d.train.distributed import initialize

    setup_logging()
    rest, overrides = split_config_args(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--distributed", default="auto")
    parser.add_argument("--devices", type=int, default=0, help="host CPU devices in this process")
    parser.add_argument("--config", default=None, help="ignored (the stand-in config is used)")
    args = parser.parse_args(rest)
    cfg = apply_overrides(tiny_config(args.workdir), overrides)
    cfg.lock()
    t = cfg.train
    distributed = initialize(args.coordinator_address, args.num_processes, args.process_id, mode=args.distributed,
                             init_timeout_s=t.init_timeout_s, heartbeat_timeout_s=t.heartbeat_timeout_s,
                             shutdown_timeout_s=t.shutdown_timeout_s)
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    from jax_instant4d.train.loop import NonFiniteError, train

    try:
        train(cfg, model_factory=FakeInstant4D, data_factory=make_fake_data_factory(), distributed=distributed)
    except NonFiniteError as e:
        print(e, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
