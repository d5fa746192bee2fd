"""``instant4d train``: argument parsing only; the work is in :mod:`jax_instant4d.train.loop`.

Multi-process runs pass ``--coordinator_address/--num_processes/--process_id`` (``launch/local.sh``)
or rely on detection (SLURM, Open MPI, TPU VMs with ``--distributed on``); see ``launch/``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/small.py", help="config file (default: configs/small.py)")
    parser.add_argument("--workdir", default=None, help="work directory (default: the config's workdir)")
    parser.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                        help="start jax.distributed: auto = when flags below are given or a cluster is detected")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Exit status: 0 finished or preempted (checkpoint written), 2 a config error (one line, before
    anything is compiled), 3 a non-finite streak, 1 another error a user can fix (one line), 75 a lost
    peer process (from the peer watchdog)."""
    from jax_instant4d.config import get_config
    from jax_instant4d.train.loop import check_config

    # The config is read and checked before jax.distributed starts (no device is touched by either), so
    # a bad value ends every process at once with one line instead of a timeout.
    overrides = list(overrides) + ([f"workdir={args.workdir}"] if args.workdir else [])
    cfg = get_config(args.config, overrides)
    check_config(cfg)
    t = cfg.train

    from jax_instant4d.train.distributed import DistributedError, initialize

    # Then jax.distributed, before anything touches a device.
    distributed = initialize(args.coordinator_address, args.num_processes, args.process_id, mode=args.distributed,
                             init_timeout_s=t.init_timeout_s, heartbeat_timeout_s=t.heartbeat_timeout_s,
                             shutdown_timeout_s=t.shutdown_timeout_s)

    from jax_instant4d.data.pipeline import BadRecordsError
    from jax_instant4d.train.checkpoint import CheckpointError
    from jax_instant4d.train.loop import DatasetNotVisible, NonFiniteError, train

    try:
        result = train(cfg, distributed=distributed)
    except NonFiniteError as e:
        print(f"instant4d train: {e}", file=sys.stderr, flush=True)
        return 3
    except (BadRecordsError, CheckpointError, DatasetNotVisible, DistributedError, FileNotFoundError) as e:
        print(f"instant4d train: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0 if result.status in ("finished", "preempted") else 1


COMMAND = ("train the avatar model (resumes from the work directory's latest checkpoint)", add_arguments, run)


if __name__ == "__main__":
    from jax_instant4d.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
