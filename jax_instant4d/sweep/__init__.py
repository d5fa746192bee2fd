"""Ablation sweeps, the library part: what a sweep *is* and what its runs produced.

    spec      sweep files (grid, zip, explicit runs) expanded into named runs and validated against the
              base config; the state of each run's work directory (finished, failed, stale, ...)
    collect   the runs' evaluations as sweep.json, a Markdown table and a quality-vs-speed plot

Launching (local processes, signals, SLURM array scripts, the ``instant4d sweep`` command) is not
library code: it lives in ``launch/``, installed as the package ``instant4d_launch``. Nothing here
starts a process.
"""

from jax_instant4d.sweep.collect import (
    COLUMNS,
    MISSING,
    PAIRED,
    SEED_COLUMNS,
    PlotError,
    baseline_partner,
    collect,
    markdown_table,
    plot_quality_speed,
    seed_groups,
    seeds_table,
    versus_baseline,
)
from jax_instant4d.sweep.spec import (
    LOG,
    RECORD,
    RESUMABLE_KEYS,
    SWEEP_KEYS,
    TRAINING_SEED_KEYS,
    Run,
    RunState,
    Sweep,
    SweepError,
    Value,
    cli_value,
    config_steps,
    expand,
    load_sweep,
    normalise,
    now,
    run_name,
    run_state,
    seed_overrides,
    seeded,
    status_text,
    write_json,
)

__all__ = [
    "COLUMNS", "LOG", "MISSING", "PAIRED", "RECORD", "RESUMABLE_KEYS", "SEED_COLUMNS", "SWEEP_KEYS",
    "TRAINING_SEED_KEYS", "PlotError", "Run", "RunState", "Sweep", "SweepError", "Value", "baseline_partner",
    "cli_value", "collect", "config_steps", "expand", "load_sweep", "markdown_table", "normalise", "now",
    "plot_quality_speed", "run_name", "run_state", "seed_groups", "seed_overrides", "seeded", "seeds_table",
    "status_text", "versus_baseline", "write_json",
]
