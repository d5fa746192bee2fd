"""Collect: a sweep's runs and their evaluations as ``sweep.json``, a Markdown table ``sweep.md`` (with
paired differences to a baseline run and mean +- spread over seeds) and a quality-vs-speed plot
``sweep.png``, all in the sweep root. Reads only the run directories (see :mod:`.spec`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jax_instant4d.eval.paper import result_value
from jax_instant4d.sweep.spec import LOG, Sweep, cli_value, normalise, now, run_state, write_json

logger = logging.getLogger(__name__)


class PlotError(RuntimeError):
    """The plot could not be made (matplotlib is missing); the table was written."""


# --------------------------------------------------------------------------------------------------
# Collect: table, JSON, plot
# --------------------------------------------------------------------------------------------------


def _fps(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


# (header, path in the eval JSON, format); change here to show other metrics.
COLUMNS: tuple[tuple[str, tuple[str, ...], Callable[[Any], str]], ...] = (
    ("self PSNR (dB)", ("self", "psnr"), "{:.2f}".format),
    ("cross PSNR (dB)", ("cross", "psnr"), "{:.2f}".format),
    ("self eyes+mouth PSNR (dB)", ("self", "region_psnr"), "{:.2f}".format),
    ("self SSIM", ("self", "ssim"), "{:.4f}".format),
    ("self expr. err", ("self", "expression_error"), "{:.4f}".format),
    ("cross expr. err", ("cross", "expression_error"), "{:.4f}".format),
    ("cross consistency", ("cross", "consistency"), "{:.4f}".format),
    ("animate FPS", ("animate_fps",), _fps),
    ("#Gaussians", ("num_gaussians",), lambda v: str(int(v))),
)
MISSING = "–"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def collect(sweep: Sweep, *, plot: bool = True) -> dict[str, Any]:
    """Writes ``sweep.json`` and ``sweep.md`` in the sweep root, then ``sweep.png`` (which needs matplotlib;
    :class:`PlotError` after the other two are written if it is missing); logs what it wrote (INFO). Returns
    the JSON's content."""
    rows = []
    for run in sweep.runs:
        st = run_state(sweep, run)
        rows.append({"index": run.index, "name": run.name, "overrides": normalise(run.overrides),
                     "workdir": str(run.workdir), "status": st.status, "detail": st.detail,
                     "log": str(run.workdir / LOG) if (run.workdir / LOG).exists() else None, "eval": st.eval})
    base = next((r for r in rows if r["name"] == sweep.baseline), None)
    for r in rows:
        partner = baseline_partner(sweep, rows, r, base)
        r["baseline_run"] = partner["name"] if partner else None
        r["vs_baseline"] = versus_baseline(r["eval"], partner["eval"]) if partner else None
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    groups = seed_groups(sweep, rows)
    summary = {"sweep": sweep.name, "sweep_file": str(sweep.path), "config": sweep.config, "root": str(sweep.root),
               "split": sweep.split, "baseline": sweep.baseline, "seed_keys": list(sweep.seed_keys), "groups": groups,
               "fixed": {k: cli_value(v) for k, v in sweep.fixed.items()},
               "collected": now(), "counts": counts, "runs": rows}
    sweep.root.mkdir(parents=True, exist_ok=True)
    write_json(sweep.root / "sweep.json", summary)
    (sweep.root / "sweep.md").write_text(markdown_table(sweep, rows, counts) + seeds_table(sweep, groups))
    logger.info("[sweep %s] wrote %s and sweep.json: %s", sweep.name, sweep.root / "sweep.md",
                ", ".join(f"{n} {s}" for s, n in counts.items()))
    if plot:
        plot_quality_speed(sweep, rows, sweep.root / "sweep.png")
        logger.info("[sweep %s] wrote %s", sweep.name, sweep.root / "sweep.png")
    return summary


def baseline_partner(sweep: Sweep, rows: list[dict[str, Any]], row: dict[str, Any],
                     base: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run ``row`` is paired with: the baseline run, or with ``seed_keys`` the run of the baseline's group
    (equal to the baseline in every other override) that has ``row``'s seeds (None if that run is not in the
    sweep: runs of different seeds are not paired)."""
    if not sweep.baseline or base is None:
        return None
    if not sweep.seed_keys:
        return base
    rest = {k: v for k, v in base["overrides"].items() if k not in sweep.seed_keys}
    seeds = {k: row["overrides"].get(k) for k in sweep.seed_keys}
    for r in rows:
        ov = r["overrides"]
        if {k: v for k, v in ov.items() if k not in sweep.seed_keys} == rest and \
                all(ov.get(k) == v for k, v in seeds.items()):
            return r
    return None


# Over seeds: (header, path in the eval JSON, "gap" for the expression gap closed or "reach" for the gap reachable
# at the run's reconstruction, digits)
SEED_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("self PSNR (dB)", ("self", "psnr"), 2),
    ("self SSIM", ("self", "ssim"), 4),
    ("self eyes+mouth PSNR (dB)", ("self", "region_psnr"), 2),
    ("eyes+mouth − undriven (dB)", ("self", "region_psnr", "-", "self", "region_psnr_undriven"), 2),
    ("self expr. err", ("self", "expression_error"), 4),
    ("self gap closed", ("gap", "self"), 2),
    ("cross expr. err", ("cross", "expression_error"), 4),
    ("cross gap closed", ("gap", "cross"), 2),
    ("self gap reachable", ("reach", "self"), 2),
)


def _seed_value(ev: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    if path[0] == "gap":
        from jax_instant4d.eval.paper import gap_closed

        return gap_closed((ev or {}).get(path[1]) or {})
    if path[0] == "reach":
        from jax_instant4d.eval.paper import reachable_gap

        return reachable_gap((ev or {}).get(path[1]) or {})
    if "-" in path:
        i = path.index("-")
        a, b = result_value(ev, path[:i]), result_value(ev, path[i + 1:])
        return None if a is None or b is None else a - b
    return result_value(ev, path)


def seed_groups(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs equal in every override but ``sweep.seed_keys``, with the mean and the spread (sample standard
    deviation; the range too) over their finished seeds of each :data:`SEED_COLUMNS` metric."""
    if not sweep.seed_keys:
        return []
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        rest = {k: v for k, v in r["overrides"].items() if k not in sweep.seed_keys}
        key = json.dumps(rest, sort_keys=True)
        g = groups.setdefault(key, {"overrides": rest, "runs": [], "finished": 0, "metrics": {}})
        g["runs"].append(r["name"])
        if r["status"] == "finished" and r["eval"]:
            g["finished"] += 1
            for h, path, _d in SEED_COLUMNS:
                v = _seed_value(r["eval"], path)
                if v is not None:
                    g["metrics"].setdefault(h, []).append(float(v))
            for h, key in PAIRED:  # each seed's paired difference to the baseline of the same seed
                d = (r.get("vs_baseline") or {}).get(key)
                if d is not None and r.get("baseline_run") != r["name"]:
                    g["metrics"].setdefault(_paired_seed_header(h), []).append(float(d[0]))
    out = []
    for g in groups.values():
        stats = {}
        for h, vals in g["metrics"].items():
            a = np.asarray(vals, np.float64)
            stats[h] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                        "min": float(a.min()), "max": float(a.max()), "n": int(a.size), "values": vals}
        out.append({"overrides": g["overrides"], "runs": g["runs"], "finished": g["finished"], "stats": stats})
    return out


def _paired_seed_header(h: str) -> str:
    return f"Δ {h} vs baseline, same seed (dB)"


def seeds_table(sweep: Sweep, groups: list[dict[str, Any]]) -> str:
    if not groups:
        return ""
    columns = [(h, d) for h, _p, d in SEED_COLUMNS]
    columns += [(_paired_seed_header(h), 2) for h, _k in PAIRED
                if any(_paired_seed_header(h) in g["stats"] for g in groups)]
    head = ["group", "seeds finished", *(h for h, _d in columns)]
    lines = ["", f"## Over seeds ({', '.join(f'`{k}`' for k in sweep.seed_keys)})", "",
             "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(columns)]
    for g in groups:
        name = ", ".join(f"`{k}={cli_value(v)}`" for k, v in g["overrides"].items()) or "(base)"
        cells = [name, f"{g['finished']} of {len(g['runs'])}"]
        for h, d in columns:
            st = g["stats"].get(h)
            sign = "+" if h.startswith("Δ") else ""
            if st is None:
                cells.append(MISSING)
            elif st["std"] is None:
                cells.append(f"{st['mean']:{sign}.{d}f} (1 seed)")
            else:
                cells.append(f"{st['mean']:{sign}.{d}f} ± {st['std']:.{d}f}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the seeds (each seed a separately trained run); per-seed "
                  "values in sweep.json. Gap closed: (undriven − ours) / (undriven − reference) of the expression "
                  "error." + (" Δ … same seed: over the seeds, each seed's mean per-frame difference to the "
                             "baseline's run of that seed (the per-seed intervals are in the table above)."
                             if any(h.startswith("Δ") for h, _d in columns) else ""), ""]
    return "\n".join(lines)


# Paired differences to the baseline run: (header, key of the eval's self.per_frame)
PAIRED: tuple[tuple[str, str], ...] = (("self PSNR", "psnr"), ("eyes+mouth", "region_psnr"))


def versus_baseline(ev: dict[str, Any] | None, base: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per metric of :data:`PAIRED`: [mean difference run - baseline, 95% half-width, frames], from the
    per-frame values of both evaluations; None where either lacks them or they are not the same frames."""
    from jax_instant4d.eval.metrics import paired_difference

    a = ((ev or {}).get("self") or {})
    b = ((base or {}).get("self") or {})
    if not a.get("per_frame") or not b.get("per_frame") or a.get("frames") != b.get("frames"):
        return None
    out = {}
    for _h, key in PAIRED:
        if key in a["per_frame"] and key in b["per_frame"]:
            d = paired_difference(a["per_frame"][key], b["per_frame"][key])
            out[key] = None if d is None else list(d)
    return out


def markdown_table(sweep: Sweep, rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    fixed = ", ".join(f"`{k}={cli_value(v)}`" for k, v in sweep.fixed.items()) or "none"
    same_seed = " (same seed)" if sweep.seed_keys else ""
    paired = [(f"Δ {h} vs {sweep.baseline}{same_seed} (dB)", k) for h, k in PAIRED] if sweep.baseline else []
    head = ["run", "overrides", "status", *(c[0] for c in COLUMNS), *(p[0] for p in paired)]
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Base config `{sweep.config}`; fixed overrides: {fixed}; eval split `{sweep.split}`; "
             f"{len(rows)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"); collected {now()}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(COLUMNS) + len(paired))]
    for r in rows:
        ov = ", ".join(f"`{k}={cli_value(v)}`" for k, v in r["overrides"].items()) or "(base)"
        cells = [r["name"], ov, r["status"]]
        for _h, path, fmt in COLUMNS:
            v = result_value(r["eval"], path)
            cells.append(MISSING if v is None else fmt(v))
        for _h, key in paired:
            d = (r.get("vs_baseline") or {}).get(key)
            own = r.get("baseline_run", sweep.baseline if r["name"] == sweep.baseline else None) == r["name"]
            cells.append(MISSING if d is None else ("0 (baseline)" if own else f"{d[0]:+.2f} ± {d[1]:.2f}"))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    problems = [r for r in rows if r["status"] not in ("finished", "pending")]
    if problems:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['name']}`: {r['status']}" + (f" ({r['detail']})" if r["detail"] else "")
                  + (f"; log `{r['log']}`" if r["log"] else "") for r in problems]
    if paired:
        keys = ", ".join(f"`{k}`" for k in sweep.seed_keys)
        partner = (f"the run of `{sweep.baseline}`'s group with the same seeds ({keys})" if sweep.seed_keys
                   else f"run `{sweep.baseline}`")
        lines += ["", f"Δ: the mean over the same held-out frames of each frame's difference to {partner}, ± the "
                      f"half-width of its 95% interval (1.96 standard errors)."]
    lines += ["", "![self-reenactment PSNR vs animation frames/s](sweep.png)", ""]
    return "\n".join(lines)


def plot_quality_speed(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> Path:
    """Self-reenactment PSNR (y) against animation frames/s (x, log scale), one labelled point per finished run;
    beside it the eyes + mouth PSNR where the evaluations have it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotError(f"plotting {path} needs matplotlib, which is not installed (pip install matplotlib); "
                        f"{sweep.root / 'sweep.md'} and sweep.json were written") from e
    panels = [(("self", "psnr"), f"self-reenactment PSNR (dB), split {sweep.split}")]
    if any(result_value(r["eval"], ("self", "region_psnr")) is not None for r in rows):
        panels.append((("self", "region_psnr"), "eyes + mouth PSNR (dB), self-reenactment"))
    fig = Figure(figsize=(7.0 * len(panels), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    for j, (metric, ylabel) in enumerate(panels):
        points = []
        for r in rows:
            q, fps = result_value(r["eval"], metric), result_value(r["eval"], ("animate_fps",))
            if (r["status"] == "finished" and q is not None and fps is not None and fps > 0
                    and math.isfinite(fps) and math.isfinite(q)):
                points.append((r["name"], float(fps), float(q)))
        ax = fig.add_subplot(1, len(panels), j + 1)
        if points:
            ax.set_xscale("log")
            ax.scatter([p[1] for p in points], [p[2] for p in points], s=36, zorder=3)
            for name, x, y in points:
                ax.annotate(name, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
            ax.margins(x=0.25, y=0.15)
        else:
            ax.text(0.5, 0.5, "no finished run with PSNR and FPS yet", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("animation frames/s (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"sweep {sweep.name}: quality vs animation speed ({len(points)} of {len(rows)} runs)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
