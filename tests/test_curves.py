"""``instant4d curves``: per-step held-out evaluations of kept checkpoints, averaged over the runs of a label,
as a table, a JSON and a plot (evaluations found on disk are read, not redone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jax_instant4d import cli
from jax_instant4d.eval import curves


def _run(root: Path, name: str, fusion: str, values: dict[int, dict[str, float]]) -> Path:
    """A work directory with non-empty checkpoint folders and an evaluation per step in ``curves/``."""
    run = root / name
    for step, v in values.items():
        (run / "checkpoints" / str(step)).mkdir(parents=True)
        (run / "checkpoints" / str(step) / "state").write_text("x")
        result = {"step": step, "fusion": fusion,
                  "self": {"region_psnr": v["rp"], "region_psnr_undriven": v["rp"] - v.get("gain", 0.0),
                           "psnr": v["p"], "psnr_undriven": v["p"], "expression_error": v["e"],
                           "expression_error_undriven": v["e"] + v.get("gain", 0.0) / 10,
                           "expression_error_teacher": 0.13},
                  "cross": {"expression_error": v["e"] + 0.01, "expression_error_undriven": None}}
        path = curves.eval_path(run, "heldout", step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return run


def test_two_seeds_are_averaged_per_step_and_written(tmp_path):
    a = _run(tmp_path, "a", "local", {1000: dict(rp=18.0, p=21.0, e=0.40, gain=0.2),
                                      2000: dict(rp=19.0, p=22.0, e=0.35, gain=0.6)})
    b = _run(tmp_path, "b", "local", {1000: dict(rp=18.4, p=21.2, e=0.38, gain=0.4),
                                      2000: dict(rp=19.6, p=22.4, e=0.31, gain=0.8),
                                      3000: dict(rp=20.0, p=22.5, e=0.30)})  # a has no 3000: not on the curve
    s = _run(tmp_path, "s", "none", {1000: dict(rp=18.1, p=21.3, e=0.41), 2000: dict(rp=18.9, p=22.3, e=0.40)})
    out = tmp_path / "docs" / "lc.png"
    agg = curves.curves([f"ours={a}", f"ours={b}", f"static={s}"], out)
    ours, static = agg["ours"], agg["static"]
    assert ours["steps"] == [1000, 2000] and ours["runs"] == 2 and ours["driven"]
    np.testing.assert_allclose(ours["region_psnr"]["mean"], [18.2, 19.3])
    np.testing.assert_allclose(ours["region_psnr"]["std"], [np.std([18.0, 18.4], ddof=1), np.std([19.0, 19.6], ddof=1)])
    np.testing.assert_allclose(ours["region_psnr_undriven"]["mean"], [(17.8 + 18.0) / 2, (18.4 + 18.8) / 2])
    assert ours["cross_expression_error_undriven"]["mean"] == [None, None]
    assert static["runs"] == 1 and not static["driven"] and static["region_psnr"]["std"] == [None, None]
    table = out.with_suffix(".md").read_text()
    assert "| ours | 2 | 2000 | 19.30 ± 0.42 |" in table
    assert "| static | 1 | 1000 | 18.10 | – |" in table
    assert json.loads(out.with_suffix(".json").read_text())["curves"]["static"]["psnr"]["mean"] == [21.3, 22.3]
    pytest.importorskip("matplotlib")
    assert out.stat().st_size > 10_000


def test_the_runs_own_evaluation_counts_for_its_step(tmp_path):
    """``RUN/eval_heldout.json`` (what ``instant4d eval`` writes by default) is read for its step; the other
    steps come from ``RUN/curves/``."""
    run = _run(tmp_path, "a", "local", {1000: dict(rp=18.0, p=21.0, e=0.4)})
    (run / "checkpoints" / "2000").mkdir()
    (run / "checkpoints" / "2000" / "state").write_text("x")
    own = json.loads(curves.eval_path(run, "heldout", 1000).read_text())
    own.update(step=2000, split="heldout")
    own["self"] = {**own["self"], "region_psnr": 19.5}
    (run / "eval_heldout.json").write_text(json.dumps(own))
    got = curves.evaluate_steps(run, None)
    assert sorted(got) == [1000, 2000] and got[2000]["self"]["region_psnr"] == 19.5
    assert got[1000]["self"]["region_psnr"] == 18.0
    assert not curves.eval_path(run, "heldout", 2000).exists()  # read where it is, not copied


def test_cli_errors_name_the_value(tmp_path, capsys):
    run = _run(tmp_path, "a", "local", {1000: dict(rp=18.0, p=21.0, e=0.4)})
    for args, expected in (([f"--run={run}"], "expected LABEL=WORKDIR"),
                           ([f"--run=x={tmp_path / 'nope'}"], "is not a directory"),
                           ([f"--run=x={run}", "--steps=1000,5000"], "no checkpoint at step(s) [5000]"),
                           ([f"--run=x={run}", "--steps=10k"], "expected comma-separated integers"),
                           ([f"--run=x={tmp_path}"], "no checkpoints folder")):
        rc = cli.main(["curves", *args, "--out", str(tmp_path / "o.png")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and expected in err and len(err.splitlines()) == 1, (args, err)
    assert not (tmp_path / "o.md").exists()
    rc = cli.main(["curves", f"--run=x={run}", "--out", str(tmp_path / "o.png")])
    assert rc == 0 and "| x | 1 | 1000 | 18.00 |" in capsys.readouterr().out
