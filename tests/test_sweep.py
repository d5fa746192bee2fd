"""Ablation sweeps, the library part (jax_instant4d/sweep/): sweep files and their expansion into runs,
validation, the state of a run directory, collect (table, JSON, plot). Launching is tested in
tests/test_launch_sweep.py.

No training: the run directories are made by a fake script (tests/sweep_fakes.py) that resolves the config
like ``instant4d train`` (writing ``config.json``) and writes a plausible eval JSON.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sweep_fakes import FUSIONS, REPO, SELF_PSNR, SMALL, table_rows, write_fake, write_sweep

from jax_instant4d import cli
from jax_instant4d import sweep as S
from jax_instant4d.config import get_config


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return write_fake(tmp_path_factory.mktemp("fake"))


# --------------------------------------------------------------------------------------------------
# Expansion, names, validation
# --------------------------------------------------------------------------------------------------


def test_grid_zip_and_explicit_runs_expand_to_named_runs(tmp_path):
    f = write_sweep(tmp_path / "abl.py", workdir=tmp_path / "root", fixed={"train.steps": 5},
                    grid={"model.fusion": ["local", "none"], "model.gaussian_res": [32, 64]},
                    zip=[{"train.loss.l1": [1.0, 0.5], "train.loss.delta_f": [0.001, 1e-05]}],
                    runs=[{"name": "rays", "model.instantiate": "rays"}, {"render.antialiased": True}])
    sw = S.load_sweep(f)
    assert sw.name == "abl" and sw.root == tmp_path / "root" and sw.split == "heldout"
    assert len(sw.runs) == 2 * 2 * 2 + 2
    names = [r.name for r in sw.runs]
    assert names[:3] == ["fusion-local__gaussian_res-32__l1-1__delta_f-0.001",
                         "fusion-local__gaussian_res-32__l1-0.5__delta_f-1e-05",
                         "fusion-local__gaussian_res-64__l1-1__delta_f-0.001"]
    assert names[7] == "fusion-none__gaussian_res-64__l1-0.5__delta_f-1e-05"
    assert names[8:] == ["rays", "antialiased-true"]
    assert [r.index for r in sw.runs] == list(range(10))
    assert all(r.workdir == tmp_path / "root" / r.name for r in sw.runs)
    assert sw.runs[1].overrides == {"model.fusion": "local", "model.gaussian_res": 32, "train.loss.l1": 0.5,
                                    "train.loss.delta_f": 1e-05}
    # the command-line strings resolve to the grid's values, as train will see them
    cfg = get_config(SMALL, [f"{k}={v}" for k, v in sw.overrides(sw.runs[1]).items()])
    assert cfg.train.loss.delta_f == 1e-05 and cfg.model.gaussian_res == 32 and cfg.train.steps == 5
    # names are stable: loading again gives the same ones; extra command-line overrides join the fixed ones
    again = S.load_sweep(f, ["--config.train.steps=9"])
    assert [r.name for r in again.runs] == names
    assert again.overrides(again.runs[9]) == {"train.steps": "9", "render.antialiased": "true"}
    # two swept keys with the same last component keep their full names
    g = write_sweep(tmp_path / "same.py", grid={"train.learning_rate": [1e-4], "train.disc.learning_rate": [2e-4]})
    assert [r.name for r in S.load_sweep(g).runs] == ["train.learning_rate-0.0001__train.disc.learning_rate-0.0002"]
    assert S.load_sweep(write_sweep(tmp_path / "empty.py")).runs[0].name == "base"


def test_fusion_sweep_file():
    sw = S.load_sweep(REPO / "configs" / "sweeps" / "fusion.py")
    small_steps = get_config("configs/small.py").train.steps
    assert sw.name == "fusion" and sw.config == "configs/small.py" and sw.root == Path("workdirs/sweeps/fusion")
    assert sw.fixed == {"train.steps": small_steps}
    assert [r.name for r in sw.runs] == [f"fusion-{f}" for f in FUSIONS]
    assert [r.overrides for r in sw.runs] == [{"model.fusion": f} for f in FUSIONS]
    assert sw.expected[2] == {"train.steps": small_steps, "model.fusion": "deform"}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "sweeps").glob("*.py")))
def test_repo_sweep_files_reseed_every_key_together(name):
    """Every sweep file in the repo loads against its base config; its runs train for the base config's steps,
    and where it has seeds, each run sets all three training-seed keys to one seed and every group's seeds are
    the full groups' (so collect's mean ± spread and the same-seed pairing compare like with like)."""
    sw = S.load_sweep(REPO / "configs" / "sweeps" / f"{name}.py")
    assert sw.fixed["train.steps"] == get_config(sw.config).train.steps
    if not sw.seed_keys:
        return
    assert sw.seed_keys == S.TRAINING_SEED_KEYS
    by_group: dict[str, list[int]] = {}
    for run in sw.runs:
        seeds = {run.overrides[k] for k in S.TRAINING_SEED_KEYS}
        assert len(seeds) == 1, (run.name, seeds)
        rest = {k: v for k, v in run.overrides.items() if k not in S.TRAINING_SEED_KEYS}
        by_group.setdefault(repr(sorted(rest.items())), []).append(seeds.pop())
    full = set(max(by_group.values(), key=len))
    assert len(full) >= 3, by_group
    # no seed twice in a group, and a group with fewer seeds (a single-seed row) uses the same seeds
    assert all(len(set(s)) == len(s) and set(s) <= full for s in by_group.values()), by_group


def test_seeded_and_seed_overrides_build_a_seed_axis(tmp_path):
    """``seeded`` is one zip axis of the three seed keys plus ``seed_keys``; ``seed_overrides`` the same for an
    explicit run, which then joins its own seed's group."""
    assert S.seeded((4, 7)) == {"zip": [{k: [4, 7] for k in S.TRAINING_SEED_KEYS}],
                                "seed_keys": list(S.TRAINING_SEED_KEYS)}
    f = write_sweep(tmp_path / "s.py", workdir=tmp_path / "root", grid={"model.fusion": ["local", "none"]},
                    runs=[{"name": "delta-0.01__seed-7", "train.loss.delta_f": 0.01, **S.seed_overrides(7)}],
                    **S.seeded((4, 7)))
    sw = S.load_sweep(f)
    assert [r.name for r in sw.runs] == ["fusion-local__seed-4__train.seed-4__shuffle_seed-4",
                                         "fusion-local__seed-7__train.seed-7__shuffle_seed-7",
                                         "fusion-none__seed-4__train.seed-4__shuffle_seed-4",
                                         "fusion-none__seed-7__train.seed-7__shuffle_seed-7", "delta-0.01__seed-7"]
    cfg = get_config(SMALL, [f"{k}={v}" for k, v in sw.overrides(sw.runs[4]).items()])
    assert (cfg.seed, cfg.train.seed, cfg.data.shuffle_seed, cfg.train.loss.delta_f) == (7, 7, 7, 0.01)
    assert S.config_steps(SMALL) == get_config(SMALL).train.steps


@pytest.mark.parametrize("spec, match", [
    ({"grid": {"model.fusion": ["local"], "model.fusoin": ["x"]}}, "unknown config key 'model.fusoin'"),
    ({"grid": {"model.gaussian_res": [64, "big"]}}, "model.gaussian_res"),
    ({"grid": {"model.fusion": ["local"]}, "fixed": {"train.stepz": 3}}, "train.stepz"),
    ({"grids": {"model.fusion": ["local"]}}, "unknown sweep field.*'grids'"),
    ({"zip": [{"train.loss.l1": [1.0, 2.0], "train.loss.region": [0.1]}]}, "equal length"),
    ({"grid": {"model.fusion": []}}, "non-empty"),
    ({"runs": [{"name": "a", "model.fusion": "local"}, {"name": "a", "model.fusion": "none"}]}, "both named 'a'"),
    ({"grid": {"model.fusion": ["local"]}, "fixed": {"workdir": "/tmp/x"}}, "'workdir' is set by the sweep"),
    ({"grid": {"model.fusion": ["local"]}, "zip": {"model.fusion": ["none"]}}, "more than one axis"),
    ({"config": "configs/nosuch.py"}, "config file not found"),
    ({"grid": {"model.fusion": ["local", "none"]}, "baseline": "fusion-static"}, "baseline 'fusion-static' is not"),
])
def test_validation_errors_name_the_offender(tmp_path, spec, match):
    f = write_sweep(tmp_path / "bad.py", workdir=tmp_path / "root", **spec)
    with pytest.raises(S.SweepError, match=match):
        S.load_sweep(f)


# --------------------------------------------------------------------------------------------------
# Run state and collect
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, fake):
    """The four fusions' run directories as train and eval leave them (the fake stands in for both; no
    launcher), except the deform run, which failed in training and has only what a launcher records."""
    tmp = tmp_path_factory.mktemp("runs")
    f = write_sweep(tmp / "fusion4.py", name="fusion4", workdir=tmp / "root", fixed={"train.steps": 7},
                    grid={"model.fusion": FUSIONS})
    sw = S.load_sweep(f)
    for r in sw.runs:
        r.workdir.mkdir(parents=True)
        if r.overrides["model.fusion"] == "deform":
            (r.workdir / S.LOG).write_text("fake train: exploding on purpose\n")
            (r.workdir / S.RECORD).write_text(json.dumps({"name": r.name, "status": "failed", "stage": "train",
                                                          "detail": "train exited with status 3"}))
            continue
        overrides = [f"--config.{k}={v}" for k, v in sw.overrides(r).items()]
        subprocess.run([sys.executable, str(fake), "train", "--config", sw.config, "--workdir", str(r.workdir),
                        *overrides], check=True, capture_output=True, timeout=120)
        subprocess.run([sys.executable, str(fake), "eval", "--checkpoint", str(r.workdir), "--split", sw.split],
                       check=True, capture_output=True, timeout=120)
    return f, sw


def test_run_state_reads_the_run_directory(run_dirs, tmp_path):
    f, sw = run_dirs
    assert [S.run_state(sw, r).status for r in sw.runs] == ["finished", "finished", "failed", "finished"]
    assert S.run_state(sw, sw.runs[2]).detail == "train exited with status 3"
    # more steps: not finished (train resumes and trains further), not stale
    longer = S.load_sweep(f, ["train.steps=9"])
    st = S.run_state(longer, longer.runs[0])
    assert st.status == "incomplete" and st.differs == {"train.steps": (7, 9)}
    assert st.detail == "train.steps: 7 in the run, 9 in the sweep"
    # another value of a swept key: stale
    other = S.load_sweep(f, ["model.gaussian_res=32"])
    st = S.run_state(other, other.runs[1])
    assert st.status == "stale" and "model.gaussian_res: 64 in the run, 32 in the sweep" in st.detail
    # nothing there yet: pending
    moved = S.load_sweep(write_sweep(tmp_path / "elsewhere.py", workdir=tmp_path / "none",
                                     grid={"model.fusion": FUSIONS}))
    assert {S.run_state(moved, r).status for r in moved.runs} == {"pending"}


def test_collect_table_and_json_equal_the_eval_json(run_dirs):
    _f, sw = run_dirs
    summary = S.collect(sw, plot=False)
    md = (sw.root / "sweep.md").read_text()
    rows = table_rows(md)
    assert list(rows) == [f"fusion-{f}" for f in FUSIONS]
    expect = {  # the fake's values, formatted by hand
        "local": ["30.14", "22.87", "–", "0.9123", "0.0312", "0.0456", "0.8765", "107.3", "4096"],
        "global": ["29.50", "22.41", "–", "0.9010", "0.0333", "0.0470", "0.8654", "3.70", "4096"],
        "none": ["24.02", "20.00", "–", "0.8000", "0.0988", "–", "0.9000", "120.5", "4096"],
    }
    metric_cols = [c[0] for c in S.COLUMNS]
    for fusion, values in expect.items():
        row = rows[f"fusion-{fusion}"]
        assert row["status"] == "finished" and row["overrides"] == f"`model.fusion={fusion}`"
        assert [row[c] for c in metric_cols] == values
    assert rows["fusion-deform"]["status"] == "failed"
    assert [rows["fusion-deform"][c] for c in metric_cols] == ["–"] * len(metric_cols)
    assert "`fusion-deform`: failed (train exited with status 3)" in md
    assert "`train.steps=7`" in md
    # the JSON holds each run's eval JSON unchanged, and the statuses
    data = json.loads((sw.root / "sweep.json").read_text())
    assert data == json.loads(json.dumps(summary))
    assert data["counts"] == {"finished": 3, "failed": 1}
    for r, row in zip(sw.runs, data["runs"], strict=True):
        assert row["name"] == r.name and row["overrides"] == r.overrides
        if row["status"] == "finished":
            assert row["eval"] == json.loads(sw.eval_json(r).read_text())
            assert row["eval"]["self"]["psnr"] == SELF_PSNR[r.overrides["model.fusion"]]
        else:
            assert row["eval"] is None and row["log"] == str(r.workdir / S.LOG)


def test_paired_differences_to_the_baseline_run(tmp_path):
    f = write_sweep(tmp_path / "b.py", workdir=tmp_path / "root", grid={"model.fusion": ["local", "none", "global"]},
                    baseline="fusion-none")
    sw = S.load_sweep(f)
    assert sw.baseline == "fusion-none"
    rng = np.random.default_rng(0)
    base = rng.normal(22.0, 1.5, 40)
    ours = base + 0.3 + rng.normal(0.0, 0.2, 40)  # per frame: what the frames share cancels in the pairing
    reg_base, reg_ours = base - 3.0, base - 2.0
    reg_base[[3, 7]] = np.nan  # frames without region pixels (null in the JSON) are left out of the pairs

    def ev(psnr, region, frames="abc"):
        j = lambda v: [None if np.isnan(x) else float(x) for x in v]  # noqa: E731
        return {"self": {"psnr": float(np.mean(psnr)), "region_psnr": float(np.nanmean(region)), "frames": frames,
                         "per_frame": {"psnr": j(psnr), "region_psnr": j(region)}}}

    rows = [{"name": "fusion-local", "overrides": {"model.fusion": "local"}, "status": "finished",
             "eval": ev(ours, reg_ours)},
            {"name": "fusion-none", "overrides": {"model.fusion": "none"}, "status": "finished",
             "eval": ev(base, reg_base)},
            {"name": "fusion-global", "overrides": {"model.fusion": "global"}, "status": "finished",
             "eval": ev(ours, reg_ours, frames="other")}]  # evaluated on other frames: no pairing
    for r in rows:
        r["vs_baseline"] = S.versus_baseline(r["eval"], rows[1]["eval"])
    d = ours - base
    mean, half = d.mean(), 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert rows[0]["vs_baseline"]["psnr"] == pytest.approx([mean, half, 40])
    keep = ~np.isnan(reg_base)
    dr = (reg_ours - reg_base)[keep]
    assert rows[0]["vs_baseline"]["region_psnr"] == pytest.approx([dr.mean(), 1.96 * dr.std(ddof=1) / np.sqrt(38), 38])
    assert rows[2]["vs_baseline"] is None
    table = table_rows(S.markdown_table(sw, rows, {"finished": 3}))
    col = "Δ self PSNR vs fusion-none (dB)"
    assert table["fusion-local"][col] == f"{mean:+.2f} ± {half:.2f}"
    assert table["fusion-none"][col] == "0 (baseline)"
    assert table["fusion-global"][col] == "–"
    assert table["fusion-local"]["self eyes+mouth PSNR (dB)"] == f"{np.nanmean(reg_ours):.2f}"


def test_plot_is_a_png(run_dirs):
    _f, sw = run_dirs
    png = sw.root / "sweep.png"
    png.unlink(missing_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(S.PlotError, match="needs matplotlib"):
            S.collect(sw)
        return
    S.collect(sw)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (840, 576)  # 7.0 x 4.8 in at 120 dpi
    assert len(data) > 10_000  # axes, points and labels were drawn


def test_missing_matplotlib_fails_only_at_the_plot(run_dirs, monkeypatch):
    f, sw = run_dirs
    for m in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, m, None)  # import fails as if not installed
    (sw.root / "sweep.md").unlink(missing_ok=True)
    (sw.root / "sweep.json").unlink(missing_ok=True)
    with pytest.raises(S.PlotError, match=r"needs matplotlib.*pip install matplotlib"):
        S.collect(sw)
    assert "fusion-local" in (sw.root / "sweep.md").read_text()  # the table was written first
    assert json.loads((sw.root / "sweep.json").read_text())["counts"]["finished"] == 3
    assert cli.main(["sweep", str(f), "collect"]) == 1  # the command reports it


def test_seed_groups_mean_and_spread(tmp_path):
    f = write_sweep(tmp_path / "s.py", workdir=tmp_path / "root", grid={"model.fusion": ["local", "none"]},
                    zip=[{"seed": [0, 1, 2], "train.seed": [0, 1, 2]}], seed_keys=["seed", "train.seed"])
    sw = S.load_sweep(f)
    assert sw.seed_keys == ("seed", "train.seed") and len(sw.runs) == 6
    rng = np.random.default_rng(1)

    def ev(psnr, region, und, e, e_und, e_ref):
        return {"self": {"psnr": psnr, "region_psnr": region, "region_psnr_undriven": und, "expression_error": e,
                         "expression_error_undriven": e_und, "expression_error_teacher": e_ref,
                         "expression_error_ceiling": (e + e_ref) / 2, "ssim": psnr / 30},
                "cross": {"expression_error": e, "expression_error_undriven": e_und, "expression_error_teacher": e_ref}}

    rows, want = [], {}
    for run in sw.runs:
        vals = rng.uniform(0.1, 0.3, 3)
        p = float(rng.normal(22, 0.3))
        e = ev(p, p - 3, p - 4, float(vals[1]), float(vals[2]), float(vals[0] / 2))
        status = "failed" if run.overrides.get("seed") == 2 and run.overrides["model.fusion"] == "none" else "finished"
        rows.append({"name": run.name, "overrides": S.normalise(run.overrides), "status": status, "eval": e})
        if status == "finished":
            want.setdefault(run.overrides["model.fusion"], []).append(e)
    groups = {g["overrides"]["model.fusion"]: g for g in S.seed_groups(sw, rows)}
    assert set(groups) == {"local", "none"}
    assert groups["local"]["finished"] == 3 and groups["none"]["finished"] == 2 and len(groups["none"]["runs"]) == 3
    for fusion, evs in want.items():
        st = groups[fusion]["stats"]
        psnr = np.array([x["self"]["psnr"] for x in evs])
        assert st["self PSNR (dB)"]["mean"] == pytest.approx(psnr.mean())
        assert st["self PSNR (dB)"]["std"] == pytest.approx(psnr.std(ddof=1))
        assert st["eyes+mouth − undriven (dB)"]["mean"] == pytest.approx(1.0)
        gap = [(x["self"]["expression_error_undriven"] - x["self"]["expression_error"])
               / (x["self"]["expression_error_undriven"] - x["self"]["expression_error_teacher"]) for x in evs]
        assert st["self gap closed"]["values"] == pytest.approx(gap)
        reach = [(x["self"]["expression_error_undriven"] - x["self"]["expression_error_ceiling"])
                 / (x["self"]["expression_error_undriven"] - x["self"]["expression_error_teacher"]) for x in evs]
        assert st["self gap reachable"]["values"] == pytest.approx(reach)
        assert st["self SSIM"]["mean"] == pytest.approx(psnr.mean() / 30)
    md = S.seeds_table(sw, list(groups.values()))
    assert "3 of 3" in md and "2 of 3" in md and "## Over seeds (`seed`, `train.seed`)" in md
    with pytest.raises(S.SweepError, match="seed key 'data.shuffle_seed'"):
        S.load_sweep(write_sweep(tmp_path / "bad.py", grid={"model.fusion": ["local"]},
                                 seed_keys=["data.shuffle_seed"]))


def test_with_seed_keys_each_run_is_paired_with_the_baselines_run_of_its_seed(tmp_path):
    """Seeds 0 and 1 of `local` and `none` (the baseline group), `none` seed 1 missing: local/seed 0 is paired
    with none/seed 0 (not with another seed's frames), local/seed 1 with nothing; the over-seeds table has the
    paired difference per group."""
    f = write_sweep(tmp_path / "p.py", workdir=tmp_path / "root", grid={"model.fusion": ["local", "none"]},
                    zip=[{"seed": [0, 1]}], seed_keys=["seed"], baseline="fusion-none__seed-0")
    sw = S.load_sweep(f)
    rng = np.random.default_rng(3)
    per = {(fu, s): rng.normal(22.0, 1.0, 30) for fu in ("local", "none") for s in (0, 1)}
    per["local", 0] = per["none", 0] + 0.4 + rng.normal(0, 0.1, 30)

    def ev(x):
        v = [float(a) for a in x]
        return {"self": {"psnr": float(np.mean(x)), "region_psnr": float(np.mean(x)) - 3, "frames": "f",
                         "per_frame": {"psnr": v, "region_psnr": [a - 3 for a in v]}}}

    rows = []
    for run in sw.runs:
        key = (run.overrides["model.fusion"], run.overrides["seed"])
        rows.append({"name": run.name, "overrides": S.normalise(run.overrides), "eval": ev(per[key]),
                     "status": "failed" if key == ("none", 1) else "finished"})
    rows = [r for r in rows if r["name"] != "fusion-none__seed-1"]  # the baseline group's seed 1 is not in the sweep
    base = next(r for r in rows if r["name"] == sw.baseline)
    partners = {r["name"]: (S.baseline_partner(sw, rows, r, base) or {}).get("name") for r in rows}
    assert partners == {"fusion-local__seed-0": "fusion-none__seed-0", "fusion-local__seed-1": None,
                        "fusion-none__seed-0": "fusion-none__seed-0"}
    for r in rows:
        p = S.baseline_partner(sw, rows, r, base)
        r["baseline_run"] = p["name"] if p else None
        r["vs_baseline"] = S.versus_baseline(r["eval"], p["eval"]) if p else None
    d = per["local", 0] - per["none", 0]
    assert rows[0]["vs_baseline"]["psnr"] == pytest.approx([d.mean(), 1.96 * d.std(ddof=1) / np.sqrt(30), 30])
    table = table_rows(S.markdown_table(sw, rows, {"finished": 3}))
    col = "Δ self PSNR vs fusion-none__seed-0 (same seed) (dB)"
    assert table["fusion-local__seed-0"][col] == f"{d.mean():+.2f} ± {1.96 * d.std(ddof=1) / np.sqrt(30):.2f}"
    assert table["fusion-local__seed-1"][col] == "–" and table["fusion-none__seed-0"][col] == "0 (baseline)"
    groups = {g["overrides"]["model.fusion"]: g for g in S.seed_groups(sw, rows)}
    st = groups["local"]["stats"]["Δ self PSNR vs baseline, same seed (dB)"]
    assert st["n"] == 1 and st["mean"] == pytest.approx(d.mean())
    assert "Δ self PSNR vs baseline, same seed (dB)" not in groups["none"]["stats"]  # the baseline's own zeros
    assert "Δ self PSNR vs baseline, same seed (dB)" in S.seeds_table(sw, list(groups.values()))


@pytest.mark.parametrize("kind", ["sweep", "config"])
def test_broken_python_files_are_named(tmp_path, kind):
    """Sweep and config files load through one loader; each failure names the kind of file and its path."""
    from jax_instant4d.config import ConfigError, load_config_file
    from jax_instant4d.sweep import SweepError, load_sweep

    load, error, entry = ((load_sweep, SweepError, "get_sweep") if kind == "sweep"
                          else (load_config_file, ConfigError, "get_config"))
    missing = tmp_path / "missing.py"
    with pytest.raises(error, match=f"^{kind} file not found: {missing}$"):
        load(missing)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(error, match=f"^error while executing {kind} file {broken}: boom$"):
        load(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(error, match=rf"^{kind} file {empty} has no {entry}\(\)$"):
        load(empty)
