"""Ablation sweeps (jax_instant4d/sweep.py): expansion, validation, launching, resume, SLURM, collect.

No real training: the per-run commands are replaced (``--train-cmd`` / ``Commands``) by a fake script that
resolves the config like ``instant4d train`` (writing ``config.json``) and writes a plausible eval JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jax_instant4d import cli
from jax_instant4d import sweep as S
from jax_instant4d.config import get_config

REPO = Path(__file__).resolve().parents[1]
SMALL = str(REPO / "configs" / "small.py")
FUSIONS = ["local", "global", "deform", "none"]

# What the fake eval reports per fusion (the table must show exactly these, formatted).
SELF_PSNR = {"local": 30.137, "global": 29.504, "deform": 27.251, "none": 24.018}
CROSS_PSNR = {"local": 22.871, "global": 22.406, "deform": 21.333, "none": 19.999}
SSIM = {"local": 0.91234, "global": 0.90101, "deform": 0.88888, "none": 0.80003}
EXPR_SELF = {"local": 0.03121, "global": 0.03333, "deform": 0.04444, "none": 0.09876}
EXPR_CROSS = {"local": 0.04561, "global": 0.04702, "deform": 0.05999, "none": None}
CONSISTENCY = {"local": 0.87654, "global": 0.86543, "deform": 0.81234, "none": 0.9}
FPS = {"local": 107.31, "global": 3.7049, "deform": 95.0, "none": 120.52}

FAKE = textwrap.dedent('''
    """Stands in for `instant4d train` and `instant4d eval` in tests/test_sweep.py."""
    import argparse, json, sys, time
    from pathlib import Path
    from jax_instant4d.config import get_config, split_config_args

    VALUES = %(values)r

    def main(argv):
        mode = argv[0]
        rest, overrides = split_config_args(argv[1:])
        p = argparse.ArgumentParser()
        for a in ("--config", "--workdir", "--checkpoint", "--split", "--barrier"):
            p.add_argument(a)
        p.add_argument("--fail", default="")
        p.add_argument("--barrier-n", type=int, default=0)
        a = p.parse_args(rest)
        wd = Path(a.workdir if mode == "train" else a.checkpoint)
        with open(wd / "calls.txt", "a") as f:
            f.write(mode + "\\n")
        if mode == "train":
            cfg = get_config(a.config, overrides + ["workdir=" + a.workdir])
            print("fake train", cfg.model.fusion, cfg.train.steps, flush=True)
            if cfg.model.fusion in a.fail.split(","):
                print("fake train: exploding on purpose", file=sys.stderr)
                return 3
            if a.barrier:  # wait until barrier-n runs are in training at the same time
                Path(a.barrier, cfg.model.fusion).touch()
                t0 = time.time()
                while len(list(Path(a.barrier).iterdir())) < a.barrier_n:
                    if time.time() - t0 > 30:
                        print("fake train: barrier timeout", file=sys.stderr)
                        return 4
                    time.sleep(0.05)
            (wd / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
            return 0
        cfg = json.loads((wd / "config.json").read_text())
        fusion = cfg["model"]["fusion"]
        v = {k: d[fusion] for k, d in VALUES.items()}
        def part(psnr, expr, consistency):
            return {"psnr": psnr, "ssim": v["ssim"], "lpips": None, "identity": None, "expression_error": expr,
                    "expression_error_teacher": None, "consistency": consistency, "num_frames": 16}
        ev = {"checkpoint": str(wd / "checkpoints" / str(cfg["train"]["steps"])), "step": cfg["train"]["steps"],
              "split": a.split, "config_name": cfg["name"], "fusion": fusion,
              "num_gaussians": cfg["model"]["gaussian_res"] ** 2, "image_size": cfg["model"]["image_size"],
              "self": part(v["self_psnr"], v["expr_self"], None),
              "cross": part(v["cross_psnr"], v["expr_cross"], v["consistency"]),
              "animate_fps": v["fps"], "encode_ms": 12.5, "notes": ["fake"]}
        (wd / ("eval_%%s.json" %% a.split)).write_text(json.dumps(ev, indent=2))
        return 0

    sys.exit(main(sys.argv[1:]))
''') % {"values": {"self_psnr": SELF_PSNR, "cross_psnr": CROSS_PSNR, "ssim": SSIM, "expr_self": EXPR_SELF,
                   "expr_cross": EXPR_CROSS, "consistency": CONSISTENCY, "fps": FPS}}


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "fake_instant4d.py"
    path.write_text(FAKE)
    return path


def fake_commands(fake: Path, *train_args: str) -> S.Commands:
    return S.Commands((sys.executable, str(fake), "train", *train_args), (sys.executable, str(fake), "eval"))


def fake_cli(fake: Path, *train_args: str) -> list[str]:
    c = fake_commands(fake, *train_args)
    return ["--train-cmd", shlex.join(c.train), "--eval-cmd", shlex.join(c.eval)]


def write_sweep(path: Path, **spec) -> Path:
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.items()}
    spec.setdefault("config", SMALL)
    path.write_text(f"def get_sweep():\n    return {spec!r}\n")
    return path


def table_rows(md: str) -> dict[str, dict[str, str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0][2:-2].split(" | ")]
    rows = [dict(zip(header, [c.strip() for c in line[2:-2].split(" | ")], strict=True)) for line in lines[1:]]
    return {r["run"]: r for r in rows}


def calls(run_dir: Path) -> list[str]:
    f = run_dir / "calls.txt"
    return f.read_text().split() if f.exists() else []


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
    train, ev = S.run_commands(sw, sw.runs[1])
    assert train == [sys.executable, "-m", "jax_instant4d.cli", "train", "--config", SMALL,
                     "--workdir", str(tmp_path / "root" / names[1]), "--config.train.steps=5",
                     "--config.model.fusion=local", "--config.model.gaussian_res=32", "--config.train.loss.l1=0.5",
                     "--config.train.loss.delta_f=1e-05"]
    assert ev == [sys.executable, "-m", "jax_instant4d.cli", "eval", "--checkpoint",
                  str(tmp_path / "root" / names[1]), "--split", "heldout"]
    # the command-line strings resolve to the grid's values, as train will see them
    cfg = get_config(SMALL, [a[len("--config."):] for a in train if a.startswith("--config.")])
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


def test_bad_key_stops_launch_before_anything_runs(tmp_path, fake, capsys):
    # the first run is fine, the third has a typo: nothing may start
    root = tmp_path / "root"
    f = write_sweep(tmp_path / "bad.py", workdir=root,
                    runs=[{"model.fusion": "local"}, {"model.fusion": "none"}, {"model.fusion": "global",
                                                                                "train.loss.lipps": 0.5}])
    rc = cli.main(["sweep", str(f), "launch", *fake_cli(fake)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.loss.lipps" in err and "fusion-global__lipps-0.5" in err
    assert not root.exists()
    with pytest.raises(S.SweepError, match="no run 7"):
        S.run_one(S.load_sweep(write_sweep(tmp_path / "ok.py", workdir=root, grid={"model.fusion": FUSIONS})), 7)
    assert cli.main(["sweep", str(f), "frobnicate"]) == 2
    assert "unknown sweep action 'frobnicate'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Launching: failures, resume, parallel, dry run
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launched(tmp_path_factory, fake):
    """The four fusions launched through the CLI with the fake commands; the deform run fails in training."""
    tmp = tmp_path_factory.mktemp("launched")
    f = write_sweep(tmp / "fusion4.py", name="fusion4", workdir=tmp / "root", fixed={"train.steps": 7},
                    grid={"model.fusion": FUSIONS})
    rc = cli.main(["sweep", str(f), "launch", "--no-collect", *fake_cli(fake, "--fail", "deform")])
    return f, S.load_sweep(f), rc


def test_failed_run_is_recorded_and_others_continue(launched):
    _f, sw, rc = launched
    assert rc == 1
    states = {r.name: S.run_state(sw, r) for r in sw.runs}
    assert {n: s.status for n, s in states.items()} == {"fusion-local": "finished", "fusion-global": "finished",
                                                        "fusion-deform": "failed", "fusion-none": "finished"}
    deform = sw.runs[2].workdir
    rec = json.loads((deform / S.RECORD).read_text())
    assert rec["status"] == "failed" and rec["stage"] == "train" and rec["returncodes"] == {"train": 3}
    assert rec["detail"] == "train exited with status 3"
    assert "exploding on purpose" in (deform / S.LOG).read_text()  # the run's output is kept
    assert calls(deform) == ["train"]  # eval was not attempted
    assert not (deform / "eval_heldout.json").exists()
    for r in (sw.runs[0], sw.runs[1], sw.runs[3]):  # the runs after the failure ran too
        assert calls(r.workdir) == ["train", "eval"]
        rec = json.loads((r.workdir / S.RECORD).read_text())
        assert rec["status"] == "finished" and rec["returncodes"] == {"train": 0, "eval": 0}
        assert rec["overrides"] == {"train.steps": "7", "model.fusion": r.overrides["model.fusion"]}
        assert json.loads((r.workdir / "config.json").read_text())["train"]["steps"] == 7


def test_list_shows_statuses(launched, capsys):
    f, _sw, _rc = launched
    assert cli.main(["sweep", str(f), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[0].split()[:3] == ["0", "fusion-local", "finished"]
    assert out[2].split()[:4] == ["2", "fusion-deform", "failed:", "train"]


def test_collect_table_and_json_equal_the_eval_json(launched):
    _f, sw, _rc = launched
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


def test_plot_is_a_png(launched):
    _f, sw, _rc = launched
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


def test_missing_matplotlib_fails_only_at_the_plot(launched, monkeypatch):
    _f, sw, _rc = launched
    for m in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, m, None)  # import fails as if not installed
    (sw.root / "sweep.md").unlink(missing_ok=True)
    (sw.root / "sweep.json").unlink(missing_ok=True)
    with pytest.raises(S.PlotError, match=r"needs matplotlib.*pip install matplotlib"):
        S.collect(sw)
    assert "fusion-local" in (sw.root / "sweep.md").read_text()  # the table was written first
    assert json.loads((sw.root / "sweep.json").read_text())["counts"]["finished"] == 3
    assert S._collect_cli(sw) == 1


def test_resume_skips_finished_runs(tmp_path, fake):
    f = write_sweep(tmp_path / "two.py", workdir=tmp_path / "root", fixed={"train.steps": 3},
                    grid={"model.fusion": ["local", "none"]})
    sw = S.load_sweep(f)
    local, none = (r.workdir for r in sw.runs)
    cmds = fake_commands(fake)
    res = S.launch(sw, commands=cmds, say=lambda _: None)
    assert res.ok and res.executed == ["fusion-local", "fusion-none"] and res.skipped == []
    # launched again: both finished, nothing runs
    res = S.launch(sw, commands=cmds, say=lambda _: None)
    assert res.ok and res.executed == [] and res.skipped == ["fusion-local", "fusion-none"]
    assert calls(local) == calls(none) == ["train", "eval"]
    # an eval JSON gone: only that run runs again
    (none / "eval_heldout.json").unlink()
    assert S.run_state(sw, sw.runs[1]).status == "incomplete"
    res = S.launch(sw, commands=cmds, say=lambda _: None)
    assert res.executed == ["fusion-none"] and res.ok
    assert calls(local) == ["train", "eval"] and calls(none) == ["train", "eval", "train", "eval"]
    # more steps: not finished (train resumes and trains further), not stale
    longer = S.load_sweep(f, ["train.steps=5"])
    st = S.run_state(longer, longer.runs[0])
    assert st.status == "incomplete" and st.differs == {"train.steps": (3, 5)}
    # a directory made with another fusion is stale: launch refuses before running anything ...
    cfg = json.loads((local / "config.json").read_text())
    cfg["model"]["fusion"] = "global"
    (local / "config.json").write_text(json.dumps(cfg))
    assert S.run_state(sw, sw.runs[0]).status == "stale"
    with pytest.raises(S.SweepError, match=r"fusion-local .*model.fusion: 'global' in the run, 'local' in the sweep"):
        S.launch(sw, commands=cmds, say=lambda _: None)
    assert calls(local) == ["train", "eval"]
    # ... or moves it aside with --restart-stale and runs afresh
    res = S.launch(sw, commands=cmds, restart_stale=True, say=lambda _: None)
    assert res.executed == ["fusion-local"] and res.ok
    aside = [p for p in (tmp_path / "root").iterdir() if p.name.startswith("fusion-local.stale-")]
    assert len(aside) == 1 and calls(aside[0]) == ["train", "eval"] and calls(local) == ["train", "eval"]


def test_parallel_two_runs_at_once(tmp_path, fake):
    # each fake training waits until both are training: only passes if they run at the same time
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    f = write_sweep(tmp_path / "par.py", workdir=tmp_path / "root", fixed={"train.steps": 2},
                    grid={"model.fusion": ["local", "global"]})
    sw = S.load_sweep(f)
    res = S.launch(sw, parallel=2, commands=fake_commands(fake, "--barrier", str(barrier), "--barrier-n", "2"),
                   say=lambda _: None)
    assert {n: s.status for n, s in res.states.items()} == {"fusion-local": "finished", "fusion-global": "finished"}
    assert sorted(p.name for p in barrier.iterdir()) == ["global", "local"]
    with pytest.raises(S.SweepError, match="--parallel"):
        S.launch(sw, parallel=0)


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, fake):
    root = tmp_path / "root"
    f = write_sweep(tmp_path / "dry.py", workdir=root, fixed={"train.steps": 4}, grid={"model.fusion": ["deform"]})
    out = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), str(f), "launch", "--dry-run",
                          *fake_cli(fake)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rundir = root / "fusion-deform"
    assert lines == ["# 0 fusion-deform: pending",
                     f"{sys.executable} {fake} train --config {SMALL} --workdir {rundir} --config.train.steps=4 "
                     "--config.model.fusion=deform",
                     f"{sys.executable} {fake} eval --checkpoint {rundir} --split heldout"]
    assert not root.exists()


# --------------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------------


def test_slurm_array_script(tmp_path, fake, monkeypatch):
    root = tmp_path / "root"
    f = write_sweep(tmp_path / "fusion4.py", name="f4", workdir=root, fixed={"train.steps": 2},
                    grid={"model.fusion": FUSIONS})
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["sweep", str(f), "launch", "--slurm", "--partition", "gpu-a100", "--account", "proj42",
                   "--time", "01:30:00", "--gpus", "2", "--max-concurrent", "2", "--sbatch-arg=--qos=high",
                   "--config.train.log_every=1", *fake_cli(fake)])
    assert rc == 0
    script = root / "sweep.sbatch"
    text = script.read_text()
    sb = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-3%2" in sb and "#SBATCH --job-name=instant4d-sweep-f4" in sb
    for want in ("--partition=gpu-a100", "--account=proj42", "--time=01:30:00", "--gres=gpu:2", "--qos=high",
                 f"--chdir={tmp_path}", f"--output={root}/slurm/%x-%A_%a.out", "--signal=B:TERM@300"):
        assert f"#SBATCH {want}" in sb
    exec_line = [line for line in text.splitlines() if line.startswith("exec ")]
    assert exec_line == [f'exec "$PYTHON" -m jax_instant4d.sweep run-one {f} "$SLURM_ARRAY_TASK_ID" '
                         f"--train-cmd '{sys.executable} {fake} train' --eval-cmd '{sys.executable} {fake} eval' "
                         "--config.train.log_every=1"]
    assert "#     2  fusion-deform" in text  # the index -> run table
    assert not any((root / r).exists() for r in ("fusion-local", "fusion-deform"))  # nothing ran
    # one array task, as SLURM would start it: runs exactly its run
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "PYTHON": sys.executable, "VENV": str(tmp_path / "novenv")}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    sw = S.load_sweep(f, ["train.log_every=1"])
    assert [S.run_state(sw, r).status for r in sw.runs] == ["pending", "pending", "finished", "pending"]
    assert json.loads((root / "fusion-deform" / "config.json").read_text())["train"]["log_every"] == 1
    # --submit: refused without sbatch; with one on PATH it is called with the script
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(S.SweepError, match="sbatch is not on PATH"):
        S.write_slurm(sw, submit=True, say=lambda _: None)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch_args\necho "Submitted batch job 7"\n')
    (fake_bin / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    said: list[str] = []
    path = S.write_slurm(sw, S.SlurmOptions(gpus=0), submit=True, say=said.append)
    assert (tmp_path / "sbatch_args").read_text().strip() == str(path)
    assert said[-1] == "Submitted batch job 7"
    assert "#SBATCH --gres" not in path.read_text()


def test_module_entry_takes_the_action_first(tmp_path, fake):
    # `python -m jax_instant4d.sweep run-one SWEEPFILE INDEX` (the SLURM task form), a finished run is skipped
    f = write_sweep(tmp_path / "one.py", workdir=tmp_path / "root", fixed={"train.steps": 2},
                    grid={"model.fusion": ["none"]})
    sw = S.load_sweep(f)
    S.launch(sw, commands=fake_commands(fake), say=lambda _: None)
    out = subprocess.run([sys.executable, "-m", "jax_instant4d.sweep", "run-one", str(f), "0", *fake_cli(fake)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "fusion-none: finished already, skipped" in out.stdout
    assert calls(sw.runs[0].workdir) == ["train", "eval"]


def test_eval_writing_nothing_is_a_failure(tmp_path, fake):
    f = write_sweep(tmp_path / "noeval.py", workdir=tmp_path / "root", grid={"model.fusion": ["local"]})
    sw = S.load_sweep(f)
    cmds = dataclasses.replace(fake_commands(fake), eval=(sys.executable, "-c", "pass"))
    st = S.launch(sw, commands=cmds, say=lambda _: None).states["fusion-local"]
    assert st.status == "failed" and "eval_heldout.json is missing" in st.detail
    missing = dataclasses.replace(fake_commands(fake), train=(str(tmp_path / "no-such-program"),))
    shutil.rmtree(sw.root)
    st = S.launch(sw, commands=missing, say=lambda _: None).states["fusion-local"]
    assert st.status == "failed" and st.detail == "train exited with status 127"


def test_seed_groups_mean_and_spread(tmp_path):
    f = write_sweep(tmp_path / "s.py", workdir=tmp_path / "root", grid={"model.fusion": ["local", "none"]},
                    zip=[{"seed": [0, 1, 2], "train.seed": [0, 1, 2]}], seed_keys=["seed", "train.seed"])
    sw = S.load_sweep(f)
    assert sw.seed_keys == ("seed", "train.seed") and len(sw.runs) == 6
    rng = np.random.default_rng(1)

    def ev(psnr, region, und, e, e_und, e_ref):
        return {"self": {"psnr": psnr, "region_psnr": region, "region_psnr_undriven": und, "expression_error": e,
                         "expression_error_undriven": e_und, "expression_error_teacher": e_ref},
                "cross": {"expression_error": e, "expression_error_undriven": e_und, "expression_error_teacher": e_ref}}

    rows, want = [], {}
    for run in sw.runs:
        vals = rng.uniform(0.1, 0.3, 3)
        p = float(rng.normal(22, 0.3))
        e = ev(p, p - 3, p - 4, float(vals[1]), float(vals[2]), float(vals[0] / 2))
        status = "failed" if run.overrides.get("seed") == 2 and run.overrides["model.fusion"] == "none" else "finished"
        rows.append({"name": run.name, "overrides": S._normalise(run.overrides), "status": status, "eval": e})
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
    md = S.seeds_table(sw, list(groups.values()))
    assert "3 of 3" in md and "2 of 3" in md and "## Over seeds (`seed`, `train.seed`)" in md
    with pytest.raises(S.SweepError, match="seed key 'data.shuffle_seed'"):
        S.load_sweep(write_sweep(tmp_path / "bad.py", grid={"model.fusion": ["local"]},
                                 seed_keys=["data.shuffle_seed"]))
