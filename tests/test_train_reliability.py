"""Faults a user meets, made on purpose: bad config values (one line, exit 2, nothing compiled), damaged
checkpoints (set aside, the previous one restored), a real model mismatch, a missing data-iterator
state, non-finite streaks (no checkpoint inside one), replayed metrics after a resume, and the
console's rate / ETA after compilation.

The training runs use the stand-in model and data of ``tests/fakes.py`` in this process, with one
compiled :class:`Trainer` shared by the tests of this file.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from fakes import FakeInstant4D, make_fake_data_factory, tiny_config

from jax_instant4d import cli
from jax_instant4d.config import ConfigError
from jax_instant4d.train.checkpoint import Checkpointer, CheckpointError
from jax_instant4d.train.loop import NonFiniteError, check_config, train
from jax_instant4d.train.metrics import Progress, read_metrics
from jax_instant4d.train.sharding import make_mesh
from jax_instant4d.train.step import Trainer

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# config errors: one line naming the key, exit 2, before anything is built
# --------------------------------------------------------------------------------------------------

BAD_TRAIN = [
    (["--config.train.steps=-5"], "train.steps=-5: must be an integer >= 1"),
    (["--config.train.checkpoint_every=0"], "train.checkpoint_every=0"),
    (["--config.train.log_every=0"], "train.log_every=0"),
    (["--config.train.batch_size=6"], "train.batch_size=6: must be divisible by the data-parallel size 4"),
    (["--config.train.mesh=(8,1,1)"], "train.mesh (8, 1, 1) needs 8 devices, have 4"),
    (["--config.model.image_size=72"], "model.image_size=72: must be a multiple of 16"),
    (["--config.model.fusion=bogus"], "model.fusion='bogus': allowed: local, global, deform, none"),
    (["--config.render.backend=gpu"], "render.backend='gpu': allowed: auto, cpu, cuda, xla, dense"),
    (["--config.data.dataset=faces"], "data.dataset='faces': allowed: synthetic_heads, teacher_clips"),
    (["--config.data.dataset=teacher_clips"], "no dataset at"),
    (["--config.train.lr_schedule=linear"], "train.lr_schedule='linear': allowed: constant, cosine"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_TRAIN, ids=[a[0].split("=")[0][9:] for a, _ in BAD_TRAIN])
def test_bad_train_values_are_one_line_before_compilation(tmp_path, capsys, args, expected):
    rc = cli.main(["train", "--config", str(ROOT / "configs" / "small.py"), "--workdir", str(tmp_path / "run"),
                   f"--config.data.data_dir={tmp_path / 'data'}", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "parameters.txt").exists()  # stopped before the model was built


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    rc = cli.main(["train", "--config", str(ROOT / "configs" / "small.py"), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "exists and is not a folder" in err and len(err.splitlines()) == 1


def test_bad_data_values_are_one_line(tmp_path, capsys):
    rc = cli.main(["data", "synth", "--config", str(ROOT / "configs" / "small.py"),
                   f"--config.data.data_dir={tmp_path}", "--config.data.time_steps=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "data.time_steps=0: must be an integer >= 1" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing generated


def test_check_config_accepts_the_shipped_configs():
    from jax_instant4d.config import get_config

    for name in ("small.py", "base.py", "full.py"):
        path = ROOT / "configs" / name
        if path.exists():
            check_config(get_config(path), real_data=False)
    with pytest.raises(ConfigError, match="train.eval_every=0"):
        check_config(get_config(ROOT / "configs" / "small.py", ["train.eval_every=0"]), real_data=False)


# --------------------------------------------------------------------------------------------------
# checkpoints: damage is set aside, a mismatch is named, the data order is not silently replaced
# --------------------------------------------------------------------------------------------------

STEPS = 4


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("unused"), mesh=(1, 1, 1))
    return Trainer(cfg, make_mesh((1, 1, 1), jax.devices()[:1]), FakeInstant4D)


def _cfg(workdir: Path, **train):
    settings = dict(mesh=(1, 1, 1), steps=STEPS, eval_batches=0, checkpoint_every=2, async_checkpoint=False)
    return tiny_config(workdir, **{**settings, **train})


def _run(cfg, trainer, **kw):
    return train(cfg, data_factory=kw.pop("data_factory", make_fake_data_factory()), trainer=trainer, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trainer):
    """An uninterrupted run: per-step losses and final parameters."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _run(_cfg(workdir), trainer)
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    return workdir, {s: r["loss"] for s, r in read_metrics(workdir).items()}


def _losses(workdir: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in read_metrics(workdir).items()}


def _params(workdir: Path, trainer, step: int):
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        state, _ = ckpt.restore(step, trainer.abstract_state)
    finally:
        ckpt.close()
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _array_files(step_dir: Path) -> list[str]:
    return [p for p in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True)]


def _truncate(step_dir: Path) -> None:
    for p in _array_files(step_dir):
        with open(p, "r+b") as f:
            f.truncate(10)


def _flip(step_dir: Path) -> None:
    for p in _array_files(step_dir):
        data = bytearray(Path(p).read_bytes())
        for i in range(0, len(data), 7):
            data[i] ^= 0x5A
        Path(p).write_bytes(bytes(data))


def _empty_metadata(step_dir: Path) -> None:
    (step_dir / "state" / "_METADATA").write_text("")


def _no_manifest(step_dir: Path) -> None:
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _emptied(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


DAMAGE = {"truncated": (_truncate, "state/d/"), "flipped": (_flip, "state/"),
          "empty_metadata": (_empty_metadata, "state/_METADATA"), "no_manifest": (_no_manifest, "state/manifest.ocdbt"),
          "emptied": (_emptied, "state/: missing")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path, trainer, reference, damage,
                                                                             caplog):
    ref_dir, ref_losses = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    make, named = DAMAGE[damage]
    make(workdir / "checkpoints" / str(STEPS))
    with caplog.at_level(logging.WARNING, logger="jax_instant4d"):
        result = _run(_cfg(workdir), trainer)
    assert result.step == STEPS
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warned) == 1 and f"checkpoint step {STEPS} " in warned[0] and named in warned[0], warned
    assert "\n" not in warned[0] and "does not match" not in warned[0]
    aside = list((workdir / "checkpoints.damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(f"{STEPS}-")
    # resumed from step 2: the same losses and final parameters as the uninterrupted run, each step logged once
    assert _losses(workdir) == ref_losses
    steps = [json.loads(ln)["step"] for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    for a, b in zip(_params(workdir, trainer, STEPS), _params(ref_dir, trainer, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_real_mismatch_says_does_not_match_and_moves_nothing(tmp_path, trainer, reference):
    ref_dir, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    cfg = _cfg(workdir)
    cfg.model.motion.code_dim = 12  # other shapes than the checkpoint's
    other = Trainer(cfg, make_mesh((1, 1, 1), jax.devices()[:1]), FakeInstant4D)
    with pytest.raises(CheckpointError, match=r"step 4 .* does not match this model/config: \S+ is shape"):
        _run(cfg, other)
    assert not (workdir / "checkpoints.damaged").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_missing_data_iterator_state_is_an_error_unless_allowed(tmp_path, trainer, reference):
    ref_dir, ref_losses = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    for p in (workdir / "checkpoints" / "2" / "data").iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match="no data-iterator state .*allow_fresh_data_order=true"):
        _run(_cfg(workdir), trainer)
    result = _run(_cfg(workdir, allow_fresh_data_order=True), trainer)
    assert result.step == STEPS
    got = _losses(workdir)
    assert got[1] == ref_losses[1] and got[2] == ref_losses[2]
    assert got[3] != ref_losses[3]  # a fresh data order: the first batch again


# --------------------------------------------------------------------------------------------------
# non-finite streaks: nothing is saved inside one; the named checkpoint has finite parameters
# --------------------------------------------------------------------------------------------------


def test_no_checkpoint_inside_a_nonfinite_streak(tmp_path, trainer):
    workdir = tmp_path / "run"
    cfg = _cfg(workdir, steps=10, checkpoint_every=1, max_nonfinite=3, keep_checkpoints=10)
    # batches 3, 4, ... carry a NaN: steps 4, 5, 6 are skipped and stop the run
    with pytest.raises(NonFiniteError, match=r"stopping at step 6: .* Last good checkpoint: step 3 in"):
        _run(cfg, trainer, data_factory=make_fake_data_factory(nan_from=3))
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    assert ckpt.all_steps() == [1, 2, 3]
    ckpt.close()
    assert all(np.isfinite(x).all() for x in _params(workdir, trainer, 3))


# --------------------------------------------------------------------------------------------------
# the console: rate and ETA count from the step after compilation
# --------------------------------------------------------------------------------------------------


def test_progress_rate_starts_after_the_compiled_step(capsys, monkeypatch):
    import jax_instant4d.train.metrics as metrics

    now = [1000.0]
    monkeypatch.setattr(metrics.time, "time", lambda: now[0])
    p = Progress(total=100, initial=0, enabled=True, every=1)
    now[0] += 300.0  # the first step compiles for 5 minutes
    p.restart_clock(1)
    p.update(1, 0.5)
    now[0] += 2.0  # then two steps a second... one step per second
    p.update(2, 0.4)
    now[0] += 1.0
    p.update(3, 0.3)
    lines = capsys.readouterr().err.splitlines()
    assert "? it/s" in lines[0] and "ETA ?" in lines[0]
    assert "0.50 it/s" in lines[1] and "ETA 00:03:16" in lines[1]
    assert "0.67 it/s" in lines[2]


def test_eta_of_days_does_not_wrap():
    from jax_instant4d.train.metrics import format_duration

    assert format_duration(196) == "00:03:16"
    assert format_duration(2 * 86400 + 3661) == "2d 01:01:01"


def test_a_process_that_cannot_see_the_dataset_stops_at_once_naming_it(tmp_path, monkeypatch):
    """Process 1 of 2 is told by process 0 (through the coordination service, here a stand-in) where it
    prepared the dataset, but its own data.data_dir holds nothing: one error naming both folders."""
    from jax_instant4d.train import loop

    seen = {}

    def lead_prepares(key, prepare, timeout_s, what=None):
        seen.update(key=key, timeout=timeout_s)
        return "/shared/on/process0/synthetic_heads/x/1.0.0"

    monkeypatch.setattr(loop, "lead_prepares", lead_prepares)
    cfg = tiny_config(tmp_path / "run")
    cfg.data.data_dir = str(tmp_path / "local_only")
    with pytest.raises(loop.DatasetNotVisible) as e:
        loop.default_data_factory(cfg, "train", 2, 1, 2)
    msg = str(e.value)
    assert msg.startswith("process 1 of 2 cannot see the dataset that process 0 prepared at /shared/on/process0")
    assert f"(this process looks at {tmp_path / 'local_only'}" in msg and "data.data_dir" in msg
    assert seen == {"key": "dataset-train", "timeout": 3600.0}
    assert not (tmp_path / "local_only").exists()  # nothing generated by a process other than 0


def test_compilation_cache_settings(tmp_path, monkeypatch):
    from jax_instant4d.train import distributed

    before = jax.config.jax_compilation_cache_dir
    try:
        assert distributed.enable_compilation_cache("", tmp_path) is None
        got = distributed.enable_compilation_cache("workdir", tmp_path / "run")
        assert got == tmp_path / "run" / "xla_cache" and got.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(got)
        jax.jit(lambda x: x * 3 + 1)(np.arange(5.0)).block_until_ready()
        assert distributed.enable_compilation_cache("user", tmp_path) == got  # a folder already set is kept
        other = distributed.enable_compilation_cache(str(tmp_path / "mine"), tmp_path)
        assert other == tmp_path / "mine" and jax.config.jax_compilation_cache_dir == str(other)
    finally:
        from jax._src import compilation_cache

        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.reset_cache()
