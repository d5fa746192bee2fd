"""``instant4d sweep``: expand a sweep file into runs, launch them (here or as a SLURM array), collect.

    instant4d sweep SWEEPFILE list                       runs, their work directories and status
    instant4d sweep SWEEPFILE launch [--parallel N]      train + eval every run not finished yet, then collect
    instant4d sweep SWEEPFILE launch --only A,B          only these runs (names or indices)
    instant4d sweep SWEEPFILE launch --dry-run           print the commands, run nothing
    instant4d sweep SWEEPFILE launch --slurm [--submit]  write (and submit) a SLURM array script, one task per run
    instant4d sweep SWEEPFILE run-one INDEX              one run (what each SLURM array task executes)
    instant4d sweep SWEEPFILE collect                    sweep.md, sweep.json and sweep.png in the sweep root

(``launch/sweep.py`` takes the same arguments; the action may also come first: ``run-one SWEEPFILE
INDEX``.) ``--config.KEY=VALUE`` arguments are added to the sweep's fixed overrides (pass the same ones to
every action of one sweep). The sweep file's format and the run directories are described in
:mod:`jax_instant4d.sweep`; launching in :mod:`sweep_local` and :mod:`sweep_slurm`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from jax_instant4d.sweep import PlotError, Sweep, SweepError, collect, load_sweep, run_state, status_text

from .sweep_local import EXIT_INTERRUPTED, Commands, launch, run_one
from .sweep_slurm import SlurmOptions, slurm_script, write_slurm

ACTIONS = ("launch", "collect", "run-one", "list")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Expand a sweep file's grid of config overrides into runs; launch them locally or as a "
                          "SLURM array; collect their eval JSON into a table and a plot.")
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.py)")
    parser.add_argument("action", nargs="?", default="launch", help=f"one of {', '.join(ACTIONS)} (default launch)")
    parser.add_argument("index", nargs="?", type=int, default=None, help="run-one: the run's index (see list)")
    g = parser.add_argument_group("launch")
    g.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1: one after another)")
    g.add_argument("--dry-run", action="store_true", help="print the commands of the runs to do (with --slurm: the "
                                                          "script), run and write nothing")
    g.add_argument("--only", default=None, help="comma-separated run names or indices (launch, list)")
    g.add_argument("--restart-stale", action="store_true",
                   help="move aside run directories made with other settings, instead of stopping")
    g.add_argument("--no-collect", action="store_true", help="do not collect at the end of launch")
    g.add_argument("--train-cmd", default=None,
                   help="command prefix of the training step (default: '<this python> -m jax_instant4d.cli train'); "
                        "gets --config BASE --workdir RUNDIR --config.KEY=VALUE...")
    g.add_argument("--eval-cmd", default=None,
                   help="command prefix of the eval step (default: '<this python> -m jax_instant4d.cli eval'); "
                        "gets --checkpoint RUNDIR --split SPLIT")
    s = parser.add_argument_group("SLURM (launch --slurm)")
    s.add_argument("--slurm", action="store_true", help="write <root>/sweep.sbatch (one array task per run) "
                                                        "instead of running")
    s.add_argument("--submit", action="store_true", help="with --slurm: submit it with sbatch")
    s.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    s.add_argument("--account", default=None, help="SLURM account (default: yours)")
    s.add_argument("--time", default=SlurmOptions.time, help="time limit of one task = one run (default %(default)s)")
    s.add_argument("--gpus", type=int, default=SlurmOptions.gpus, help="GPUs per task (default %(default)s)")
    s.add_argument("--cpus-per-task", type=int, default=SlurmOptions.cpus_per_task,
                   help="CPU cores per task (default %(default)s)")
    s.add_argument("--mem", default=None, help="memory per task, e.g. 64G (default: the partition's)")
    s.add_argument("--max-concurrent", type=int, default=None, help="array tasks at a time (default: all)")
    s.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH option, e.g. --qos=high "
                                                                     "(repeatable)")


def _commands(args: argparse.Namespace) -> Commands:
    base = Commands()
    train = tuple(shlex.split(args.train_cmd)) if args.train_cmd else base.train
    ev = tuple(shlex.split(args.eval_cmd)) if args.eval_cmd else base.eval
    if not train or not ev:
        raise SweepError("--train-cmd / --eval-cmd must not be empty")
    return Commands(train, ev)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    sweep_file, action = args.sweep, args.action
    if sweep_file in ACTIONS and action not in ACTIONS:  # `run-one SWEEPFILE INDEX`
        sweep_file, action = action, sweep_file
    if action not in ACTIONS:
        raise SweepError(f"unknown sweep action {action!r} (one of {', '.join(ACTIONS)})")
    if action == "run-one" and args.index is None:
        raise SweepError("run-one needs the run's INDEX")
    if action != "run-one" and args.index is not None:
        raise SweepError(f"{action} takes no INDEX")
    sweep = load_sweep(sweep_file, overrides)  # validates every run before anything starts
    commands = _commands(args)

    if action == "list":
        for r in sweep.select(args.only):
            st = run_state(sweep, r)
            ov = " ".join(f"{k}={v}" for k, v in sweep.overrides(r).items())
            print(f"{r.index:>3}  {r.name:<32} {status_text(st):<12}  {r.workdir}  [{ov}]")
        return 0
    if action == "collect":
        return _collect_cli(sweep)
    if action == "run-one":
        state = run_one(sweep, args.index, commands=commands, restart_stale=args.restart_stale)
        return {"finished": 0, "interrupted": EXIT_INTERRUPTED}.get(state.status, 1)
    # launch
    if args.slurm:
        if args.only:
            raise SweepError("--only does not apply to --slurm (every run is an array task; finished ones skip)")
        opts = SlurmOptions(args.partition, args.account, args.time, args.gpus, args.cpus_per_task, args.mem,
                            args.max_concurrent, tuple(args.sbatch_arg))
        if args.dry_run:  # print the script, write nothing
            print(slurm_script(sweep, opts, commands=commands, extra_overrides=overrides,
                               restart_stale=args.restart_stale), end="")
            return 0
        write_slurm(sweep, opts, submit=args.submit, commands=commands, extra_overrides=overrides,
                    restart_stale=args.restart_stale)
        return 0
    if args.submit:
        raise SweepError("--submit needs --slurm")
    result = launch(sweep, parallel=args.parallel, commands=commands, only=args.only, dry_run=args.dry_run,
                    restart_stale=args.restart_stale)
    if args.dry_run:
        return 0
    failed = {n: s for n, s in result.states.items() if s.status != "finished"}
    print(f"[sweep {sweep.name}] {len(result.states) - len(failed)} of {len(result.states)} run(s) finished"
          + ("" if not failed else "; not finished: " + ", ".join(f"{n} ({s.status})" for n, s in failed.items())),
          flush=True)
    rc = 0 if result.ok else 1
    if any(s.status == "interrupted" for s in failed.values()):
        return EXIT_INTERRUPTED
    if not args.no_collect:
        rc = max(rc, _collect_cli(sweep))
    return rc


def _collect_cli(sweep: Sweep) -> int:
    try:
        collect(sweep)
    except PlotError as e:
        print(f"instant4d sweep: error: {e}", file=sys.stderr)
        return 1
    return 0


COMMAND = ("ablation sweeps: expand a grid of overrides into runs, launch (local or SLURM), collect a table and "
           "plot", add_arguments, run)
