"""Ablation sweeps, the library part: a sweep file's grid of config overrides expanded into runs, the state
of each run's work directory, and ``collect`` (a table, a JSON summary and a plot of the runs' evaluations).

Launching lives outside the library, in ``launch/`` (installed as ``instant4d_launch``): ``sweep_local``
runs the runs here, ``sweep_slurm`` writes a SLURM array script, ``sweep_cli`` is ``instant4d sweep``.

A sweep file is a Python file whose ``get_sweep()`` returns a dict (relative paths are relative to the
current directory, like every path on the command line):

    config     base config file of every run (required)
    name       the sweep's name (default: the sweep file's stem)
    workdir    the sweep root (default ``workdirs/sweeps/<name>``); run R lives in ``<workdir>/<R's name>``
    fixed      {key: value}: overrides of every run, not part of the run names (e.g. ``train.steps``)
    grid       {key: [values, ...]}: the cartesian product, first key varying slowest
    zip        [{key: [values], key2: [values]}, ...]: each group's lists (of equal length) are zipped and
               the group is one more axis of the product
    runs       [{key: value, ..., "name": optional}, ...]: explicit runs, after the grid's
    split      eval split (default ``heldout``)
    eval_args  extra arguments of the eval command (default none)
    baseline   a run's name: collect gives every run's paired difference to it
    seed_keys  override keys that only reseed a run: collect reports mean and spread over them

A run trains in its work directory (``config.json``, checkpoints) and is evaluated there
(``eval_<split>.json``); a launcher records ``sweep_run.json`` (status, commands, return codes) and
``sweep_run.log`` beside them. A run is *finished* when ``RUNDIR/eval_<split>.json`` exists, the run's
``config.json`` has the sweep's value for every override, and the evaluated step is ``train.steps``. A
run directory made with other values (other than ``train.steps``, which simply trains further) is
*stale*.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_instant4d.config import ConfigDict, ConfigError, apply_overrides, load_config_file

Value = str | int | float | bool | tuple | list | None

RECORD = "sweep_run.json"  # per run: status, commands, return codes, times
LOG = "sweep_run.log"  # per run: train and eval output
SWEEP_KEYS = ("name", "config", "workdir", "fixed", "grid", "zip", "runs", "split", "eval_args", "baseline",
              "seed_keys")
# Keys whose change in a run directory is no reason to start afresh: train resumes and trains further.
RESUMABLE_KEYS = ("train.steps",)
# Statuses: finished | failed | interrupted | running | incomplete | stale | pending


class SweepError(ConfigError):
    """A sweep file or sweep command is wrong (names the file, run or key)."""


class PlotError(RuntimeError):
    """The plot could not be made (matplotlib is missing); the table was written."""


# --------------------------------------------------------------------------------------------------
# Sweep files: loading, expansion into runs, validation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    index: int
    name: str
    overrides: dict[str, Value]  # this run's own overrides (the swept keys), in axis order
    workdir: Path


@dataclasses.dataclass
class Sweep:
    name: str
    path: Path  # the sweep file
    config: str  # base config file
    root: Path
    fixed: dict[str, Value]
    runs: list[Run]
    split: str = "heldout"
    eval_args: tuple[str, ...] = ()
    baseline: str | None = None  # a run's name: the table gives every run's paired difference to it
    # override keys that only reseed a run: runs equal in every other override form one group, reported as
    # the mean and spread over its seeds
    seed_keys: tuple[str, ...] = ()
    # per run index: the resolved value of every override key, JSON-normalised (tuples as lists)
    expected: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def overrides(self, run: Run) -> dict[str, str]:
        """Fixed then the run's own overrides, as command-line strings."""
        merged = {**self.fixed, **run.overrides}
        return {k: cli_value(v) for k, v in merged.items()}

    def eval_json(self, run: Run) -> Path:
        return run.workdir / f"eval_{self.split}.json"

    def select(self, only: str | None) -> list[Run]:
        """Runs named (or indexed) in a comma-separated list; all runs for ``None``."""
        if not only:
            return list(self.runs)
        by_name = {r.name: r for r in self.runs}
        chosen = []
        for item in (s.strip() for s in only.split(",")):
            if item.isdigit() and int(item) < len(self.runs):
                chosen.append(self.runs[int(item)])
            elif item in by_name:
                chosen.append(by_name[item])
            elif item:
                raise SweepError(f"--only: no run {item!r} in sweep {self.name!r} (runs: {', '.join(by_name)})")
        return sorted({r.index: r for r in chosen}.values(), key=lambda r: r.index)


def cli_value(v: Value) -> str:
    """A value as ``--config.key=VALUE`` text (converted back by the config's type of that key)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def _name_value(v: Value) -> str:
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, (tuple, list)):
        text = "-".join(_name_value(x) for x in v)
    else:
        text = str(v)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def run_name(overrides: dict[str, Value], short: dict[str, str]) -> str:
    """``fusion-local__gaussian_res-64``: each swept key (its short name) and value."""
    if not overrides:
        return "base"
    return "__".join(f"{short.get(k, k)}-{_name_value(v)}" for k, v in overrides.items())


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two keys share a last component."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _check_value(where: str, key: str, v: Any) -> None:
    if not isinstance(v, (str, int, float, bool, tuple, list, type(None))):
        raise SweepError(f"{where}: value of {key!r} must be a str, number, bool, tuple or None, "
                         f"got {type(v).__name__}")


def _axes(spec: dict[str, Any], where: str) -> list[list[dict[str, Value]]]:
    """The product axes: each a list of {key: value} choices."""
    axes: list[list[dict[str, Value]]] = []
    seen: set[str] = set()

    def claim(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise SweepError(f"{where}: override keys must be non-empty strings, got {key!r}")
        if key in seen:
            raise SweepError(f"{where}: key {key!r} appears in more than one axis")
        seen.add(key)

    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"{where}: 'grid' must be a dict of key -> list of values")
    for key, values in grid.items():
        claim(key)
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"{where}: grid[{key!r}] must be a non-empty list of values")
        for v in values:
            _check_value(f"{where}: grid", key, v)
        axes.append([{key: v} for v in values])
    zips = spec.get("zip") or []
    if isinstance(zips, dict):
        zips = [zips]
    for group in zips:
        if not isinstance(group, dict) or not group:
            raise SweepError(f"{where}: each 'zip' group must be a non-empty dict of key -> list of values")
        lengths = {k: len(v) if isinstance(v, (list, tuple)) else -1 for k, v in group.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values() or 0 in lengths.values():
            raise SweepError(f"{where}: zip group lists must be non-empty and of equal length, got {lengths}")
        for key, values in group.items():
            claim(key)
            for v in values:
                _check_value(f"{where}: zip", key, v)
        keys = list(group)
        axes.append([dict(zip(keys, vals, strict=True)) for vals in zip(*group.values(), strict=True)])
    return axes


def expand(spec: dict[str, Any], where: str = "sweep") -> list[tuple[str | None, dict[str, Value]]]:
    """(explicit name or None, overrides) of every run: the grid's product, then the explicit runs."""
    out: list[tuple[str | None, dict[str, Value]]] = []
    axes = _axes(spec, where)
    if axes:
        for combo in itertools.product(*axes):
            merged: dict[str, Value] = {}
            for choice in combo:
                merged.update(choice)
            out.append((None, merged))
    for i, run in enumerate(spec.get("runs") or []):
        if not isinstance(run, dict):
            raise SweepError(f"{where}: runs[{i}] must be a dict of overrides (and optionally 'name')")
        run = dict(run)
        name = run.pop("name", None)
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*",
                                                                                  name)):
            raise SweepError(f"{where}: runs[{i}]: name {name!r} must be a plain file name (letters, digits, ._+=-)")
        for k, v in run.items():
            _check_value(f"{where}: runs[{i}]", k, v)
        out.append((name, run))
    if not out:
        out.append((None, {}))  # no grid and no runs: the base config alone
    return out


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def normalise(v: Any) -> Any:
    return json.loads(json.dumps(v.to_dict() if isinstance(v, ConfigDict) else v))


def _load_module(path: Path):
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_instant4d_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken sweep file: name it
        raise SweepError(f"error while executing sweep file {path}: {e}") from e
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"sweep file {path} has no get_sweep()")
    return module


def load_sweep(path: str | Path, extra_overrides: Sequence[str] = ()) -> Sweep:
    """Loads a sweep file, expands its runs and validates every run's overrides against the base config.

    ``extra_overrides``: ``key=value`` / ``--config.key=value`` strings added to the fixed overrides."""
    path = Path(path)
    spec = _load_module(path).get_sweep()
    if isinstance(spec, ConfigDict):
        spec = spec.to_dict()
    where = f"sweep file {path}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: get_sweep() must return a dict")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"{where}: unknown sweep field(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(SWEEP_KEYS)})")
    if not spec.get("config"):
        raise SweepError(f"{where}: 'config' (the base config file) is required")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name):
        raise SweepError(f"{where}: sweep name {name!r} must be a plain file name")
    root = Path(spec.get("workdir") or Path("workdirs") / "sweeps" / name)
    fixed = dict(spec.get("fixed") or {})
    for k, v in fixed.items():
        _check_value(f"{where}: fixed", k, v)
    for item in extra_overrides:
        item = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in item:
            raise SweepError(f"override {item!r} must look like key.sub=value")
        k, v = item.split("=", 1)
        fixed[k] = v
    split = str(spec.get("split") or "heldout")
    eval_args = tuple(str(a) for a in (spec.get("eval_args") or ()))

    expanded = expand(spec, where)
    swept = list(dict.fromkeys(k for _, ov in expanded for k in ov))
    short = _short_names(swept)
    runs: list[Run] = []
    names: dict[str, int] = {}
    for i, (explicit, ov) in enumerate(expanded):
        rname = explicit or run_name(ov, short)
        if rname in names:
            raise SweepError(f"{where}: runs {names[rname]} and {i} are both named {rname!r} (give explicit runs a "
                             "'name')")
        names[rname] = i
        runs.append(Run(i, rname, ov, root / rname))

    baseline = spec.get("baseline")
    if baseline is not None and str(baseline) not in names:
        raise SweepError(f"{where}: baseline {baseline!r} is not one of the runs ({', '.join(names)})")
    seed_keys = tuple(str(k) for k in (spec.get("seed_keys") or ()))
    for k in seed_keys:
        if k not in swept:
            raise SweepError(f"{where}: seed key {k!r} is not swept by any run (swept: {', '.join(swept)})")
    sweep = Sweep(name, path, str(spec["config"]), root, fixed, runs, split, eval_args,
                  None if baseline is None else str(baseline), seed_keys)
    try:
        base = load_config_file(sweep.config)
    except ConfigError as e:
        raise SweepError(f"{where}: base config: {e}") from e
    for run in runs:
        ov = sweep.overrides(run)
        for k in ov:
            if k == "workdir" or k.startswith("workdir."):
                raise SweepError(f"{where}: run {run.name!r}: 'workdir' is set by the sweep (use the sweep's "
                                 "'workdir' for the root)")
        try:
            cfg = apply_overrides(base, ov)
        except ConfigError as e:
            raise SweepError(f"{where}: run {run.name!r}: {e}") from e
        expected = {k: normalise(_get(cfg, k)) for k in ov}
        expected.setdefault("train.steps", int(cfg.train.steps))
        sweep.expected[run.index] = expected
    return sweep


# --------------------------------------------------------------------------------------------------
# The state of a run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunState:
    status: str  # finished | failed | interrupted | running | incomplete | stale | pending
    detail: str = ""
    eval: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    differs: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)  # key -> (in the run, in the sweep)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (collect may read while a run writes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_state(sweep: Sweep, run: Run) -> RunState:
    """What a run's work directory holds: see the module docstring for the statuses."""
    record = _read_json(run.workdir / RECORD)
    cfg = _read_json(run.workdir / "config.json")
    ev = _read_json(sweep.eval_json(run))
    expected = sweep.expected.get(run.index, {})
    differs: dict[str, tuple[Any, Any]] = {}
    if cfg is not None:
        for key, want in expected.items():
            try:
                have = _get(cfg, key)
            except (KeyError, TypeError):
                have = "<missing>"
            if have != want:
                differs[key] = (have, want)
    diff_text = ", ".join(f"{k}: {h!r} in the run, {w!r} in the sweep" for k, (h, w) in differs.items())
    if any(k not in RESUMABLE_KEYS for k in differs):
        return RunState("stale", f"made with other settings ({diff_text})", ev, record, differs)
    if ev is not None and cfg is not None and not differs:
        step, steps = ev.get("step"), expected.get("train.steps")
        split_ok = ev.get("split", sweep.split) == sweep.split
        if split_ok and (step is None or steps is None or int(step) >= int(steps)):
            return RunState("finished", "", ev, record)
        detail = f"evaluated at step {step} of {steps}" if split_ok else f"eval JSON is of split {ev.get('split')!r}"
        return RunState("incomplete", detail, ev, record)
    if differs:
        return RunState("incomplete", diff_text, ev, record, differs)
    if record is not None and record.get("status") in ("failed", "interrupted", "running"):
        st = record["status"]
        detail = record.get("detail", "")
        if st == "running":
            detail = f"started {record.get('started', '?')} on {record.get('host', '?')} (or killed)"
        return RunState(st, detail, ev, record)
    if cfg is not None or ev is not None or record is not None:
        return RunState("incomplete", "work directory exists, run not finished", ev, record)
    return RunState("pending", "", ev, record)


# --------------------------------------------------------------------------------------------------
# Collect: table, JSON, plot
# --------------------------------------------------------------------------------------------------


def _metric(ev: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    node: Any = ev
    for p in path:
        if not isinstance(node, dict) or node.get(p) is None:
            return None
        node = node[p]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


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


def status_text(state: RunState) -> str:
    return state.status if not state.detail or state.status == "finished" else f"{state.status}: {state.detail}"


def collect(sweep: Sweep, *, plot: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Writes ``sweep.json`` and ``sweep.md`` in the sweep root, then ``sweep.png`` (which needs matplotlib;
    :class:`PlotError` after the other two are written if it is missing). Returns the JSON's content."""
    rows = []
    for run in sweep.runs:
        st = run_state(sweep, run)
        rows.append({"index": run.index, "name": run.name, "overrides": normalise(run.overrides),
                     "workdir": str(run.workdir), "status": st.status, "detail": st.detail,
                     "log": str(run.workdir / LOG) if (run.workdir / LOG).exists() else None, "eval": st.eval})
    base = next((r for r in rows if r["name"] == sweep.baseline), None)
    for r in rows:
        r["vs_baseline"] = versus_baseline(r["eval"], base["eval"] if base else None) if sweep.baseline else None
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    groups = seed_groups(sweep, rows)
    summary = {"sweep": sweep.name, "sweep_file": str(sweep.path), "config": sweep.config, "root": str(sweep.root),
               "split": sweep.split, "baseline": sweep.baseline, "seed_keys": list(sweep.seed_keys), "groups": groups,
               "fixed": {k: cli_value(v) for k, v in sweep.fixed.items()},
               "collected": now(), "counts": counts, "runs": rows}
    sweep.root.mkdir(parents=True, exist_ok=True)
    write_json(sweep.root / "sweep.json", summary)
    (sweep.root / "sweep.md").write_text(markdown_table(sweep, rows, counts) + seeds_table(sweep, groups))
    say(f"[sweep {sweep.name}] wrote {sweep.root / 'sweep.md'} and sweep.json: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if plot:
        plot_quality_speed(sweep, rows, sweep.root / "sweep.png")
        say(f"[sweep {sweep.name}] wrote {sweep.root / 'sweep.png'}")
    return summary


# Over seeds: (header, path in the eval JSON or "gap" for the expression gap closed, digits)
SEED_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("self PSNR (dB)", ("self", "psnr"), 2),
    ("self eyes+mouth PSNR (dB)", ("self", "region_psnr"), 2),
    ("eyes+mouth − undriven (dB)", ("self", "region_psnr", "-", "self", "region_psnr_undriven"), 2),
    ("self expr. err", ("self", "expression_error"), 4),
    ("self gap closed", ("gap", "self"), 2),
    ("cross expr. err", ("cross", "expression_error"), 4),
    ("cross gap closed", ("gap", "cross"), 2),
)


def _seed_value(ev: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    if path[0] == "gap":
        from jax_instant4d.eval.paper import gap_closed

        return gap_closed((ev or {}).get(path[1]) or {})
    if "-" in path:
        i = path.index("-")
        a, b = _metric(ev, path[:i]), _metric(ev, path[i + 1:])
        return None if a is None or b is None else a - b
    return _metric(ev, path)


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
    out = []
    for g in groups.values():
        stats = {}
        for h, vals in g["metrics"].items():
            a = np.asarray(vals, np.float64)
            stats[h] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                        "min": float(a.min()), "max": float(a.max()), "n": int(a.size), "values": vals}
        out.append({"overrides": g["overrides"], "runs": g["runs"], "finished": g["finished"], "stats": stats})
    return out


def seeds_table(sweep: Sweep, groups: list[dict[str, Any]]) -> str:
    if not groups:
        return ""
    head = ["group", "seeds finished", *(h for h, _p, _d in SEED_COLUMNS)]
    lines = ["", f"## Over seeds ({', '.join(f'`{k}`' for k in sweep.seed_keys)})", "",
             "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(SEED_COLUMNS)]
    for g in groups:
        name = ", ".join(f"`{k}={cli_value(v)}`" for k, v in g["overrides"].items()) or "(base)"
        cells = [name, f"{g['finished']} of {len(g['runs'])}"]
        for h, _p, d in SEED_COLUMNS:
            st = g["stats"].get(h)
            if st is None:
                cells.append(MISSING)
            elif st["std"] is None:
                cells.append(f"{st['mean']:.{d}f} (1 seed)")
            else:
                cells.append(f"{st['mean']:.{d}f} ± {st['std']:.{d}f}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the seeds (each seed a separately trained run); per-seed "
                  "values in sweep.json. Gap closed: (undriven − ours) / (undriven − reference) of the expression "
                  "error.", ""]
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
    paired = [(f"Δ {h} vs {sweep.baseline} (dB)", k) for h, k in PAIRED] if sweep.baseline else []
    head = ["run", "overrides", "status", *(c[0] for c in COLUMNS), *(p[0] for p in paired)]
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Base config `{sweep.config}`; fixed overrides: {fixed}; eval split `{sweep.split}`; "
             f"{len(rows)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"); collected {now()}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(COLUMNS) + len(paired))]
    for r in rows:
        ov = ", ".join(f"`{k}={cli_value(v)}`" for k, v in r["overrides"].items()) or "(base)"
        cells = [r["name"], ov, r["status"]]
        for _h, path, fmt in COLUMNS:
            v = _metric(r["eval"], path)
            cells.append(MISSING if v is None else fmt(v))
        for _h, key in paired:
            d = (r.get("vs_baseline") or {}).get(key)
            cells.append(MISSING if d is None else ("0 (baseline)" if r["name"] == sweep.baseline
                                                    else f"{d[0]:+.2f} ± {d[1]:.2f}"))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    problems = [r for r in rows if r["status"] not in ("finished", "pending")]
    if problems:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['name']}`: {r['status']}" + (f" ({r['detail']})" if r["detail"] else "")
                  + (f"; log `{r['log']}`" if r["log"] else "") for r in problems]
    if paired:
        lines += ["", f"Δ: the mean over the same held-out frames of each frame's difference to run "
                      f"`{sweep.baseline}`, ± the half-width of its 95% interval (1.96 standard errors)."]
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
    if any(_metric(r["eval"], ("self", "region_psnr")) is not None for r in rows):
        panels.append((("self", "region_psnr"), "eyes + mouth PSNR (dB), self-reenactment"))
    fig = Figure(figsize=(7.0 * len(panels), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    for j, (metric, ylabel) in enumerate(panels):
        points = []
        for r in rows:
            q, fps = _metric(r["eval"], metric), _metric(r["eval"], ("animate_fps",))
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


if __name__ == "__main__":  # SLURM scripts written before launching left the library call this module
    from jax_instant4d.cli import main

    sys.exit(main(["sweep", *sys.argv[1:]]))
