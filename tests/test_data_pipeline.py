"""The grain pipeline over the tiny synthetic dataset: the batch contract, round trips (PNG exact, JPEG close),
per-process shares, exact resume, augmentation geometry, worker processes, global arrays."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from test_data_common import records_by_clip, tiny_cfg, tiny_dataset, u8

from jax_instant4d.data import pipeline, synthetic
from jax_instant4d.data.pipeline import BATCH_KEYS, make_pipeline
from jax_instant4d.data.record import NUM_EXPRESSION, decode_image


def _batches(it, n):
    return [next(it) for _ in range(n)]


def test_batch_contract_shapes_and_dtypes():
    cfg, path = tiny_dataset()
    b = next(make_pipeline(cfg, "train", 3, 0, 1))
    r, k, e = 32, 2, NUM_EXPRESSION
    want = {"source": ((3, r, r, 3), np.float32), "source_w2c": ((3, 4, 4), np.float32),
            "source_intrinsics": ((3, 4), np.float32), "driving": ((3, k, r, r, 3), np.float32),
            "target": ((3, k, r, r, 3), np.float32), "target_w2c": ((3, k, 4, 4), np.float32),
            "target_intrinsics": ((3, k, 4), np.float32), "target_fg": ((3, k, r, r), np.float32),
            "target_eyes": ((3, k, r, r), np.float32), "target_mouth": ((3, k, r, r), np.float32),
            "expression": ((3, k, e), np.float32), "source_expression": ((3, e), np.float32),
            "identity": ((3,), np.int32), "clip": ((3,), np.int32), "time": ((3, k), np.int32),
            "view": ((3, k), np.int32)}
    assert set(b) == set(want) == set(BATCH_KEYS)
    for key, (shape, dtype) in want.items():
        assert b[key].shape == shape and b[key].dtype == dtype, key
    for key in ("source", "target", "driving", "target_fg", "target_eyes", "target_mouth"):
        assert 0.0 <= b[key].min() and b[key].max() <= 1.0
    # K distinct (time, view) targets per example (the clip has T * V = 4 >= K)
    pairs = b["time"] * 2 + b["view"]
    assert all(len(set(p)) == k for p in pairs.tolist())
    # intrinsics at R: the principal point is the image centre for the synthetic cameras
    np.testing.assert_allclose(b["target_intrinsics"][..., 2:], r / 2)


def test_round_trip_png_is_exact():
    """generate -> ArrayRecord -> pipeline gives back exactly what the generator rendered."""
    cfg, path = tiny_dataset()
    spec = synthetic.spec_from_config(cfg)
    batches = _batches(make_pipeline(cfg, "train", 2, 0, 1), 3)
    clips = sorted({int(c) for b in batches for c in b["clip"]})
    rendered = {c.clip_index: c for c in synthetic.Generator(spec).render(clips)}
    recs = records_by_clip(path, "train")
    for b in batches:
        for i, c in enumerate(b["clip"].tolist()):
            clip, rec = rendered[c], recs[c]
            assert b["identity"][i] == clip.identity_index
            assert np.array_equal(u8(b["source"][i]), clip.source_image)
            np.testing.assert_array_equal(b["source_w2c"][i], clip.source_w2c)
            for j, (t, v) in enumerate(zip(b["time"][i], b["view"][i], strict=True)):
                assert np.array_equal(u8(b["target"][i, j]), clip.target_images[t, v])
                assert np.array_equal(u8(b["driving"][i, j]), clip.driving_images[t])
                assert np.array_equal(u8(b["target_fg"][i, j]), clip.target_fg[t, v])
                assert np.array_equal(u8(b["target_eyes"][i, j]), clip.target_eyes[t, v])
                assert np.array_equal(u8(b["target_mouth"][i, j]), clip.target_mouth[t, v])
                np.testing.assert_array_equal(b["target_w2c"][i, j], clip.target_w2c[t, v])
                np.testing.assert_array_equal(b["target_intrinsics"][i, j], clip.target_intrinsics[t, v])
                np.testing.assert_array_equal(b["expression"][i, j], clip.expression[t])
                assert int(rec["num_views"]) == spec.views
    # the synthetic clips carry region masks that are not empty, and a foreground mask
    assert any(b["target_mouth"].max() == 1.0 for b in batches) and all(b["target_fg"].max() == 1.0 for b in batches)


def test_round_trip_jpeg_is_close():
    cfg, path = tiny_dataset("jpeg")
    png_cfg, png_path = tiny_dataset("png")
    assert path != png_path  # the format is part of the dataset's name
    b = next(make_pipeline(cfg, "train", 2, 0, 1))
    recs = records_by_clip(png_path, "train")  # the same clips, losslessly stored
    for i, c in enumerate(b["clip"].tolist()):
        for j, (t, v) in enumerate(zip(b["time"][i], b["view"][i], strict=True)):
            png = decode_image(recs[c]["target_images"][t * 2 + v]).astype(np.float32) / 255
            err = np.abs(b["target"][i, j] - png)
            assert 0 < err.mean() < 0.02 and err.max() < 0.35
            fg = decode_image(recs[c]["target_masks"][t * 2 + v])[..., 0] / 255
            np.testing.assert_allclose(b["target_fg"][i, j], fg, atol=1e-6)  # masks stay PNG


def test_two_processes_read_disjoint_shares_that_cover_the_split():
    cfg, path = tiny_dataset()
    n = len(records_by_clip(path, "train"))
    seen = []
    for p in range(2):
        share = len(range(p, n, 2))
        clips = [int(b["clip"][0]) for b in _batches(make_pipeline(cfg, "train", 1, p, 2), share)]
        assert len(set(clips)) == share  # one epoch of this process: each of its records once
        seen.append(set(clips))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(records_by_clip(path, "train"))
    # the test split holds the held-out identities only
    test_ids = {int(r["identity_index"]) for r in records_by_clip(path, "test").values()}
    train_ids = {int(r["identity_index"]) for r in records_by_clip(path, "train").values()}
    assert test_ids and not test_ids & train_ids
    with pytest.raises(ValueError, match="fewer than"):
        make_pipeline(cfg, "test", 1, 0, 3)


def _equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_iterator_state_restores_exactly_and_seeds_matter():
    cfg, _ = tiny_dataset()
    cfg = tiny_cfg(cfg.data.data_dir, data__augment__crop=True, data__augment__photometric=True)
    it = make_pipeline(cfg, "train", 2, 0, 1)
    _batches(it, 3)
    state = it.get_state()
    expected = _batches(it, 4)  # crosses an epoch boundary (4 train clips)
    again = make_pipeline(cfg, "train", 2, 0, 1)
    again.set_state(state)
    assert _equal(_batches(again, 4), expected)
    fresh = _batches(make_pipeline(cfg, "train", 2, 0, 1), 7)
    assert _equal(fresh[3:], expected)
    other = _batches(make_pipeline(cfg, "train", 2, 0, 1, seed=5), 7)
    assert not _equal(other, fresh)


def test_worker_processes_give_the_same_batches_and_resume():
    cfg, _ = tiny_dataset()
    mp_cfg = tiny_cfg(cfg.data.data_dir, data__num_workers=2)
    ref = _batches(make_pipeline(cfg, "train", 2, 0, 1), 5)
    it = make_pipeline(mp_cfg, "train", 2, 0, 1)
    try:
        got = _batches(it, 3)
        state = it.get_state()
        assert _equal(got, ref[:3])
    finally:
        it.close()
    it = make_pipeline(mp_cfg, "train", 2, 0, 1)
    try:
        it.set_state(state)
        assert _equal(_batches(it, 2), ref[3:])
    finally:
        it.close()


def test_crop_and_photometric_augmentation_keep_the_camera_consistent():
    cfg, _ = tiny_dataset()
    plain = next(make_pipeline(cfg, "train", 2, 0, 1))
    aug_cfg = tiny_cfg(cfg.data.data_dir, data__augment__crop=True, data__augment__photometric=True,
                       data__augment__max_shift=3, data__augment__brightness=0.3)
    aug = next(make_pipeline(aug_cfg, "train", 2, 0, 1))
    assert np.array_equal(plain["clip"], aug["clip"]) and np.array_equal(plain["time"], aug["time"])
    shifts = aug["target_intrinsics"][..., 2:] - plain["target_intrinsics"][..., 2:]
    assert np.all(np.abs(shifts) <= 3) and np.any(shifts != 0)
    np.testing.assert_array_equal(aug["target_intrinsics"][..., :2], plain["target_intrinsics"][..., :2])
    gains = []
    for i in range(2):
        for j in range(2):
            dx, dy = (int(round(s)) for s in shifts[i, j])
            moved = pipeline._shift(plain["target"][i, j], dx, dy)
            fg = pipeline._shift(plain["target_fg"][i, j], dx, dy)
            np.testing.assert_array_equal(aug["target_fg"][i, j], fg)  # masks move with their image
            lit = (moved > 0.05) & (moved < 0.7)
            gains.append(np.median(aug["target"][i, j][lit] / moved[lit]))
            np.testing.assert_allclose(aug["target"][i, j], np.clip(moved * gains[-1], 0, 1), atol=2e-6)
        # one gain per example for source and targets, so the teacher stays consistent with the source
        assert abs(gains[-1] - gains[-2]) < 1e-5
        assert 0.7 - 1e-6 <= gains[-1] <= 1.3 + 1e-6


def test_driving_colour_jitter_scales_each_channel_of_the_driving_frames_only():
    cfg, _ = tiny_dataset()
    base = tiny_cfg(cfg.data.data_dir, data__augment__photometric=True, data__augment__brightness=0.0,
                    data__augment__contrast=0.0)
    plain = next(make_pipeline(base, "train", 2, 0, 1))
    aug = next(make_pipeline(tiny_cfg(cfg.data.data_dir, data__augment__photometric=True,
                                      data__augment__brightness=0.0, data__augment__contrast=0.0,
                                      data__augment__color=0.3), "train", 2, 0, 1))
    np.testing.assert_array_equal(aug["target"], plain["target"])  # source and teacher views keep their colours
    np.testing.assert_array_equal(aug["source"], plain["source"])
    # held-out batches are never augmented (unless asked)
    held = dict(data__augment__photometric=True, data__augment__color=0.3, data__augment__crop=True)
    ref = next(make_pipeline(cfg, "heldout", 2, 0, 1))
    for key, v in next(make_pipeline(tiny_cfg(cfg.data.data_dir, **held), "heldout", 2, 0, 1)).items():
        np.testing.assert_array_equal(v, ref[key], err_msg=key)
    forced = next(make_pipeline(tiny_cfg(cfg.data.data_dir, **held), "heldout", 2, 0, 1, augment=True))
    assert not np.array_equal(forced["driving"], ref["driving"])
    for i in range(2):
        for j in range(2):
            p, a = plain["driving"][i, j], aug["driving"][i, j]
            lit = (p > 0.05) & (p < 0.6)
            g = [np.median(a[..., c][lit[..., c]] / p[..., c][lit[..., c]]) for c in range(3)]
            assert all(0.7 - 1e-6 <= x <= 1.3 + 1e-6 for x in g) and max(g) - min(g) > 1e-3
            np.testing.assert_allclose(a, np.clip(p * np.asarray(g), 0, 1), atol=2e-6)


def test_to_global_assembles_the_batch_on_the_mesh():
    from jax_instant4d.train.sharding import to_global

    cfg, _ = tiny_dataset()
    b = next(make_pipeline(cfg, "train", 4, 0, 1))
    mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    g = to_global(b, mesh)
    assert set(g) == set(b)
    for k, v in g.items():
        assert v.shape == b[k].shape and v.dtype == b[k].dtype
        np.testing.assert_array_equal(np.asarray(v), b[k])
        assert v.sharding.spec[0] == ("data", "fsdp")
        assert {s.data.shape[0] for s in v.addressable_shards} == {1}  # 4 devices, one example each
    only_data = to_global(b, jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,)))
    assert only_data["source"].sharding.spec[0] in ("data", ("data",))
    assert {s.data.shape[0] for s in only_data["source"].addressable_shards} == {1}


def test_ensure_dataset_reuses_and_explains_missing_teacher_clips(tmp_path):
    cfg, path = tiny_dataset()
    assert pipeline.ensure_dataset(cfg) == path  # present: returned without rebuilding
    teacher = tiny_cfg(tmp_path, data__dataset="teacher_clips")
    with pytest.raises(FileNotFoundError, match="instant4d data ingest"):
        pipeline.ensure_dataset(teacher)
    with pytest.raises(ValueError, match="unknown split"):
        make_pipeline(cfg, "validate", 1, 0, 1)
    assert next(make_pipeline(cfg, "heldout", 1, 0, 1))["clip"].shape == (1,)  # alias of "test"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_grain_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of the training process: its grain worker processes (started with the pipeline's
    ``die_with_parent``) end too instead of living on."""
    import signal
    import subprocess
    import sys
    import time

    script = """
import sys, time, grain
from jax_instant4d.data.pipeline import _grain_flags_parsed, die_with_parent
_grain_flags_parsed()
it = iter(grain.MapDataset.range(10**6).to_iter_dataset().mp_prefetch(
    grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=1), worker_init_fn=die_with_parent))
next(it)
print("ready", flush=True)
time.sleep(600)
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_running(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} still alive 20 s after their parent was killed"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_damaged_records_are_reported_skipped_and_bounded(tmp_path, caplog):
    """Flipped bytes in a shard: the record is named (file and record number) once, replaced by the next
    readable one (batches keep their size); more than data.max_bad_records is fatal; an empty shard
    leaves nothing readable and says so."""
    import logging
    import shutil

    cfg, path = tiny_dataset()
    copy = tmp_path / "ds"
    shutil.copytree(path, copy)
    shard = next(copy.glob("*-train.array_record-*"))
    data = bytearray(shard.read_bytes())
    for k in range(200):
        data[len(data) // 3 + k] ^= 0xFF
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="jax_instant4d"):
        it = make_pipeline(cfg, "train", 2, 0, 1, path=copy)
        batches = [next(it) for _ in range(4)]
    assert all(b["source"].shape[0] == 2 for b in batches)
    warned = [r.getMessage() for r in caplog.records if "damaged record skipped" in r.getMessage()]
    assert len(warned) == 1 and f"{shard}, record " in warned[0] and "Riegeli" in warned[0], warned
    with pytest.raises(pipeline.BadRecordsError, match=r"more than data.max_bad_records=0; the last: .*record"):
        it = make_pipeline(tiny_cfg(cfg.data.data_dir, data__max_bad_records=0), "train", 2, 0, 1, path=copy)
        for _ in range(4):
            next(it)
    for cut in (bytes(data[: len(data) // 2]), b""):  # a truncated shard, an empty one: nothing readable
        shard.write_bytes(cut)
        with pytest.raises(pipeline.BadRecordsError, match=f"no readable record|more than .*{shard.name}"):
            next(make_pipeline(cfg, "train", 2, 0, 1, path=copy))


def test_a_data_dir_that_cannot_be_created_is_a_config_error_before_any_work(tmp_path):
    """A synthetic dataset that is missing is generated in data.data_dir: a folder that cannot be made
    there (below a file, say) is one line naming the key, before any generation starts."""
    from jax_instant4d.config import ConfigError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = tiny_cfg(tmp_path)
    cfg.data.data_dir = str(blocker / "data")
    with pytest.raises(ConfigError, match=r"^data\.data_dir='.*a_file/data': cannot create the folder"):
        pipeline.check_data_config(cfg)
    assert not (blocker.is_dir())
    cfg.data.data_dir = str(tmp_path / "fresh" / "data")
    pipeline.check_data_config(cfg)  # a folder that can be made is fine (and is made)
    assert (tmp_path / "fresh" / "data").is_dir()
