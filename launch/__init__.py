"""Launchers of instant4d jobs: installed as the package ``instant4d_launch`` (this folder, ``launch/``).

    sweep_local   a sweep's runs on this machine: subprocesses in their own sessions, N at a time,
                  Ctrl-C / SIGTERM forwarded so that runs checkpoint and stop
    sweep_slurm   a sweep as a SLURM array script, one task per run (written, optionally submitted)
    sweep_cli     ``instant4d sweep SWEEPFILE list | launch | run-one | collect``
    sweep.py      the same command as a script, for a checkout without an install

The library (``jax_instant4d.sweep``) holds what a sweep *is*: the sweep file, its runs, the state of a
run directory, and ``collect`` (table, JSON, plot). Nothing in the library imports this package.
The shell launchers beside these modules (local.sh, slurm.sbatch, tpu_vm.sh) start multi-host training;
README.md here describes both.
"""
