"""``instant4d curves``: held-out learning curves from the checkpoints a run kept.

    instant4d curves --run ours=workdirs/medium/ours_s0 --run static=workdirs/medium/static_s0 \\
                     --out docs/learning_curves.png [--steps 1000,2000] [--split heldout]

Every kept checkpoint step of every run (or those of ``--steps``) is evaluated once with
:func:`jax_instant4d.eval.run.evaluate` (the multi-view consistency score is skipped) into
``<run>/curves/eval_<split>_step<N>.json``; an evaluation found there, or the run's own ``eval_<split>.json`` when it
is of that step, is read, not redone. Runs given the
same label (``--run ours=A --run ours=B``: other seeds) are averaged per step, with the spread (sample
standard deviation) over them. The plot has three panels against the training step: self-reenactment
eyes + mouth PSNR, expression error and full-frame PSNR, each run's undriven avatar (z_drv = z_src) dashed
where the driving frame can matter, the teacher's own frames dotted (expression error). The same numbers
go to a Markdown table beside the plot (``.md``) and to a JSON (``.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jax_instant4d.eval.paper import result_value

log = logging.getLogger(__name__)

# (key in the result, path in the eval JSON)
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("region_psnr", ("self", "region_psnr")),
    ("region_psnr_undriven", ("self", "region_psnr_undriven")),
    ("expression_error", ("self", "expression_error")),
    ("expression_error_undriven", ("self", "expression_error_undriven")),
    ("expression_error_teacher", ("self", "expression_error_teacher")),
    ("cross_expression_error", ("cross", "expression_error")),
    ("cross_expression_error_undriven", ("cross", "expression_error_undriven")),
    ("psnr", ("self", "psnr")),
    ("psnr_undriven", ("self", "psnr_undriven")),
)


class CurvesError(ValueError):
    """A ``--run`` or ``--steps`` value that cannot be used (names the value)."""


def eval_path(run: Path, split: str, step: int) -> Path:
    return run / "curves" / f"eval_{split}_step{step}.json"


def kept_steps(run: Path) -> list[int]:
    """The checkpoint steps a work directory holds (non-empty step folders)."""
    from jax_instant4d.inference import checkpoint_steps  # imports JAX: not at CLI start-up

    folder = run / "checkpoints"
    if not folder.is_dir():
        raise CurvesError(f"--run {run}: no checkpoints folder")
    return checkpoint_steps(folder)


def parse_runs(values: list[str]) -> list[tuple[str, Path]]:
    """``["ours=DIR", ...]`` -> ``[("ours", Path(DIR)), ...]`` (in the given order)."""
    runs = []
    for v in values:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            raise CurvesError(f"--run {v!r}: expected LABEL=WORKDIR")
        if not Path(path).is_dir():
            raise CurvesError(f"--run {v!r}: {path} is not a directory")
        runs.append((label, Path(path)))
    if not runs:
        raise CurvesError("give at least one --run LABEL=WORKDIR")
    return runs


def evaluate_steps(run: Path, steps: list[int] | None, split: str = "heldout",
                   overrides: list[str] | None = None) -> dict[int, dict[str, Any]]:
    """``{step: eval result}`` for ``steps`` (default: every kept step), evaluating those not yet on disk."""
    have = kept_steps(run)
    want = have if steps is None else sorted(set(steps))
    missing = [s for s in want if s not in have]
    if missing:
        raise CurvesError(f"--run {run}: no checkpoint at step(s) {missing} (kept: {have})")
    results = {}
    final = run / f"eval_{split}.json"  # the run's own evaluation (instant4d eval's default output)
    final_result = json.loads(final.read_text()) if final.is_file() else None
    for s in want:
        path = eval_path(run, split, s)
        if not path.exists() and final_result is not None and final_result.get("step") == s \
                and final_result.get("split") in (split, None):
            results[s] = final_result
            continue
        if not path.exists():
            from jax_instant4d.eval.run import evaluate

            log.info("curves: evaluating %s at step %d", run, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            evaluate(run, split, step=s, out=path, markdown=path.with_suffix(".md"), consistency=False,
                     timing_repeats=2, overrides=overrides)
        results[s] = json.loads(path.read_text())
    return results


def aggregate(runs: list[tuple[str, dict[int, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per label: ``{"runs": n, "driven": bool, "steps": [...], metric: {"mean": [...], "std": [...]}}`` at the
    steps every run of the label was evaluated at (std is None for one run)."""
    by_label: dict[str, list[dict[int, dict[str, Any]]]] = {}
    for label, results in runs:
        by_label.setdefault(label, []).append(results)
    out: dict[str, dict[str, Any]] = {}
    for label, group in by_label.items():
        steps = sorted(set.intersection(*(set(r) for r in group)))
        fusions = {r[s].get("fusion") for r in group for s in steps}
        entry: dict[str, Any] = {"runs": len(group), "driven": fusions != {"none"}, "steps": steps}
        for key, path in METRICS:
            mean, std = [], []
            for s in steps:
                vals = [result_value(r[s], path) for r in group]
                if any(v is None for v in vals):
                    mean.append(None)
                    std.append(None)
                    continue
                a = np.asarray(vals, np.float64)
                mean.append(float(a.mean()))
                std.append(float(a.std(ddof=1)) if a.size > 1 else None)
            entry[key] = {"mean": mean, "std": std}
        out[label] = entry
    return out


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(curves: dict[str, dict[str, Any]], split: str) -> str:
    lines = [f"Held-out learning curves (`instant4d curves`, split {split}; self-reenactment unless marked; "
             "mean ± sample std over the runs of a label)", "",
             "| label | runs | step | eyes+mouth PSNR | undriven | expr. err | undriven | teacher frames | "
             "cross expr. err | undriven | PSNR | undriven |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, c in curves.items():
        for i, s in enumerate(c["steps"]):
            cells = []
            for key, digits in (("region_psnr", 2), ("region_psnr_undriven", 2), ("expression_error", 4),
                                ("expression_error_undriven", 4), ("expression_error_teacher", 4),
                                ("cross_expression_error", 4), ("cross_expression_error_undriven", 4),
                                ("psnr", 2), ("psnr_undriven", 2)):
                driven_only = key.endswith("_undriven")
                cells.append("–" if driven_only and not c["driven"] else
                             _fmt(c[key]["mean"][i], c[key]["std"][i], digits))
            lines.append(f"| {label} | {c['runs']} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("region_psnr", "self eyes + mouth PSNR (dB)"), ("expression_error", "self expression error"),
              ("psnr", "self PSNR (dB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (key, title), ax in zip(panels, axes, strict=True):
        for k, (label, c) in enumerate(curves.items()):
            color = colors[k % len(colors)]
            steps = np.asarray(c["steps"])
            series = [(key, "-", label)]
            if c["driven"]:
                series.append((f"{key}_undriven", "--", f"{label}, undriven"))
            for name, style, text in series:
                m = np.asarray([np.nan if v is None else v for v in c[name]["mean"]], np.float64)
                ax.plot(steps, m, style, color=color, marker="o", ms=3, label=f"{text} (n={c['runs']})")
                sd = c[name]["std"]
                if c["runs"] > 1 and all(v is not None for v in sd):
                    ax.fill_between(steps, m - np.asarray(sd), m + np.asarray(sd), color=color, alpha=0.15)
        if key == "expression_error":
            ref = [v for c in curves.values() for v in c["expression_error_teacher"]["mean"] if v is not None]
            if ref:
                ax.axhline(float(np.mean(ref)), color="gray", ls=":", label="teacher's frames")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(run_args: list[str], out: str | Path, steps: list[int] | None = None, split: str = "heldout",
           overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluates (where needed), aggregates and writes ``out`` (.png), its ``.md`` and ``.json``."""
    from jax_instant4d.data.pipeline import resolve_split

    resolve_split(split)  # ValueError naming the split
    runs = parse_runs(run_args)
    results = [(label, evaluate_steps(run, steps, split, overrides)) for label, run in runs]
    agg = aggregate(results)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(agg, split)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"split": split, "runs": [[lb, str(p)] for lb, p in runs],
                                                    "curves": agg}, indent=1) + "\n")
    try:
        plot(agg, out)
    except ImportError:
        log.warning("curves: matplotlib is not installed; wrote %s only", out.with_suffix(".md"))
    return agg


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=WORKDIR",
                        help="a run's work directory and its label (repeat a label for other seeds)")
    parser.add_argument("--out", required=True, help="the plot (.png); the table and JSON go beside it")
    parser.add_argument("--steps", default=None, help="comma-separated steps (default: every kept checkpoint)")
    parser.add_argument("--split", default="heldout", help="heldout (default) or train")


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from jax_instant4d.inference import CheckpointNotFound

    try:
        steps = None if args.steps is None else [int(s) for s in str(args.steps).split(",") if s.strip()]
    except ValueError:
        print(f"instant4d curves: error: --steps {args.steps!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    try:
        agg = curves(args.run, args.out, steps, args.split, overrides)
    except (CurvesError, CheckpointNotFound, ValueError) as e:
        print(f"instant4d curves: error: {e}", file=sys.stderr)
        return 2
    print(markdown(agg, args.split), end="")
    return 0


COMMAND = ("held-out learning curves from a run's kept checkpoints (plot, table, JSON)", _add_arguments, _run)
