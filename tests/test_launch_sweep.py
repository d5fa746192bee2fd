"""The sweep launcher (launch/: instant4d_launch.sweep_local, sweep_slurm, sweep_cli): failures, resume,
--parallel, --only, --dry-run, SLURM array scripts, run-one, and ``instant4d sweep`` / ``launch/sweep.py``.

No real training: the per-run commands are replaced (``--train-cmd`` / ``Commands``) by the fake script of
tests/sweep_fakes.py.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from log_capture import captured
from sweep_fakes import FUSIONS, REPO, SMALL, calls, write_fake, write_sweep

from jax_instant4d import cli
from jax_instant4d import sweep as S
from jax_instant4d.config import get_config

runner = cli.import_launcher("instant4d_launch.sweep_local")
slurm = cli.import_launcher("instant4d_launch.sweep_slurm")


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return write_fake(tmp_path_factory.mktemp("fake"))


def fake_commands(fake: Path, *train_args: str):
    return runner.Commands((sys.executable, str(fake), "train", *train_args), (sys.executable, str(fake), "eval"))


def fake_cli(fake: Path, *train_args: str) -> list[str]:
    c = fake_commands(fake, *train_args)
    return ["--train-cmd", shlex.join(c.train), "--eval-cmd", shlex.join(c.eval)]


def test_the_library_does_not_launch():
    # the scheduler left the library: jax_instant4d.sweep imports nothing that starts or signals processes,
    # nor the launcher; the CLI finds the launcher of this checkout
    files = sorted((REPO / "jax_instant4d" / "sweep").glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "spec.py", "collect.py"}
    trees = [ast.parse(f.read_text()) for f in files]
    imported = {a.name.split(".")[0] for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for tree in trees for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported & {"subprocess", "signal", "socket", "shutil", "concurrent", "instant4d_launch"} == set()
    assert "numpy" in imported and "jax_instant4d" in imported  # the walk did see the imports
    assert cli.import_launcher("instant4d_launch.sweep_cli").__file__ == str(REPO / "launch" / "sweep_cli.py")


def test_run_commands(tmp_path):
    f = write_sweep(tmp_path / "abl.py", workdir=tmp_path / "root", fixed={"train.steps": 5},
                    grid={"model.fusion": ["local", "none"], "model.gaussian_res": [32, 64]},
                    zip=[{"train.loss.l1": [1.0, 0.5], "train.loss.delta_f": [0.001, 1e-05]}])
    sw = S.load_sweep(f)
    names = [r.name for r in sw.runs]
    train, ev = runner.run_commands(sw, sw.runs[1])
    assert train == [sys.executable, "-m", "jax_instant4d.cli", "train", "--config", SMALL,
                     "--workdir", str(tmp_path / "root" / names[1]), "--config.train.steps=5",
                     "--config.model.fusion=local", "--config.model.gaussian_res=32", "--config.train.loss.l1=0.5",
                     "--config.train.loss.delta_f=1e-05"]
    assert ev == [sys.executable, "-m", "jax_instant4d.cli", "eval", "--checkpoint",
                  str(tmp_path / "root" / names[1]), "--split", "heldout"]
    # the command-line strings resolve to the grid's values, as train will see them
    cfg = get_config(SMALL, [a[len("--config."):] for a in train if a.startswith("--config.")])
    assert cfg.train.loss.delta_f == 1e-05 and cfg.model.gaussian_res == 32 and cfg.train.steps == 5


# --------------------------------------------------------------------------------------------------
# Launching: failures, resume, parallel, dry run
# --------------------------------------------------------------------------------------------------


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
        runner.run_one(S.load_sweep(write_sweep(tmp_path / "ok.py", workdir=root, grid={"model.fusion": FUSIONS})), 7)
    assert cli.main(["sweep", str(f), "frobnicate"]) == 2
    assert "unknown sweep action 'frobnicate'" in capsys.readouterr().err


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


def test_resume_skips_finished_runs(tmp_path, fake):
    f = write_sweep(tmp_path / "two.py", workdir=tmp_path / "root", fixed={"train.steps": 3},
                    grid={"model.fusion": ["local", "none"]})
    sw = S.load_sweep(f)
    local, none = (r.workdir for r in sw.runs)
    cmds = fake_commands(fake)
    res = runner.launch(sw, commands=cmds)
    assert res.ok and res.executed == ["fusion-local", "fusion-none"] and res.skipped == []
    # launched again: both finished, nothing runs
    res = runner.launch(sw, commands=cmds)
    assert res.ok and res.executed == [] and res.skipped == ["fusion-local", "fusion-none"]
    assert calls(local) == calls(none) == ["train", "eval"]
    # an eval JSON gone: only that run runs again
    (none / "eval_heldout.json").unlink()
    assert S.run_state(sw, sw.runs[1]).status == "incomplete"
    res = runner.launch(sw, commands=cmds)
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
        runner.launch(sw, commands=cmds)
    assert calls(local) == ["train", "eval"]
    # ... or moves it aside with --restart-stale and runs afresh
    res = runner.launch(sw, commands=cmds, restart_stale=True)
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
    res = runner.launch(sw, parallel=2, commands=fake_commands(fake, "--barrier", str(barrier), "--barrier-n", "2"))
    assert {n: s.status for n, s in res.states.items()} == {"fusion-local": "finished", "fusion-global": "finished"}
    assert sorted(p.name for p in barrier.iterdir()) == ["global", "local"]
    with pytest.raises(S.SweepError, match="--parallel"):
        runner.launch(sw, parallel=0)


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
    assert exec_line == [f'exec "$PYTHON" -m jax_instant4d.cli sweep run-one {f} "$SLURM_ARRAY_TASK_ID" '
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
        slurm.write_slurm(sw, submit=True)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch_args\necho "Submitted batch job 7"\n')
    (fake_bin / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    with captured("instant4d_launch") as said:
        path = slurm.write_slurm(sw, slurm.SlurmOptions(gpus=0), submit=True)
    assert (tmp_path / "sbatch_args").read_text().strip() == str(path)
    assert said[-1] == "Submitted batch job 7"
    assert "#SBATCH --gres" not in path.read_text()


def test_run_one_takes_the_action_first_and_skips_a_finished_run(tmp_path, fake):
    # `python -m jax_instant4d.cli sweep run-one SWEEPFILE INDEX` (what a SLURM task runs), and the module form
    # that scripts written before the launcher left the library call; a finished run is skipped
    f = write_sweep(tmp_path / "one.py", workdir=tmp_path / "root", fixed={"train.steps": 2},
                    grid={"model.fusion": ["none"]})
    sw = S.load_sweep(f)
    runner.launch(sw, commands=fake_commands(fake))
    for entry in (["jax_instant4d.cli", "sweep"], ["jax_instant4d.sweep"]):
        out = subprocess.run([sys.executable, "-m", *entry, "run-one", str(f), "0", *fake_cli(fake)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert "fusion-none: finished already, skipped" in out.stderr  # logged
    assert calls(sw.runs[0].workdir) == ["train", "eval"]


def test_eval_writing_nothing_is_a_failure(tmp_path, fake):
    f = write_sweep(tmp_path / "noeval.py", workdir=tmp_path / "root", grid={"model.fusion": ["local"]})
    sw = S.load_sweep(f)
    cmds = dataclasses.replace(fake_commands(fake), eval=(sys.executable, "-c", "pass"))
    st = runner.launch(sw, commands=cmds).states["fusion-local"]
    assert st.status == "failed" and "eval_heldout.json is missing" in st.detail
    missing = dataclasses.replace(fake_commands(fake), train=(str(tmp_path / "no-such-program"),))
    shutil.rmtree(sw.root)
    st = runner.launch(sw, commands=missing).states["fusion-local"]
    assert st.status == "failed" and st.detail == "train exited with status 127"
