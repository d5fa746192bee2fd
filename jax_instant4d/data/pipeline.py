"""The grain input pipeline: teacher-clip records -> batches of the training contract.

Per process: the split's records are sliced ``[process_index::process_count]`` (every process reads
only its share), shuffled with the seed, repeated forever (every process runs the same number of
steps), and mapped by :class:`SampleTargets`, which picks K (time, view) targets of a clip, decodes the
frames and applies the augmentations switched on in ``cfg.data.augment``; then batched, and
prefetched by ``cfg.data.num_workers`` worker processes. The randomness of a record comes from
grain's per-index generator (seed, index), so a restored iterator state gives exactly the batches
that would have come.

Batch contract (NumPy, per process batch b, resolution R, K = ``cfg.data.targets_per_example``,
E = ``record.NUM_EXPRESSION``)::

    source            f32[b,R,R,3] in [0,1]     source_w2c         f32[b,4,4]
    source_intrinsics f32[b,4] (fx,fy,cx,cy px) driving            f32[b,K,R,R,3]
    target            f32[b,K,R,R,3]            target_w2c         f32[b,K,4,4]
    target_intrinsics f32[b,K,4]                target_fg          f32[b,K,R,R] (ones if absent)
    target_eyes       f32[b,K,R,R] (0 if absent) target_mouth      f32[b,K,R,R] (0 if absent)
    expression        f32[b,K,E] (0 if absent)  source_expression  f32[b,E]
    identity i32[b]   clip i32[b]               time i32[b,K]      view i32[b,K]

and, only when the pipeline is asked for them (``train.loss.expression_change`` > 0; the dataset must have been
made with ``data.undriven_views``), ``undriven f32[b,K,R,R,3]``: each target's undriven twin (the source
identity at the source's expression at that target's camera), shifted and lit as its target is.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import grain
import numpy as np

from jax_instant4d.data import record

log = logging.getLogger(__name__)

BATCH_KEYS = ("source", "source_w2c", "source_intrinsics", "driving", "target", "target_w2c", "target_intrinsics",
              "target_fg", "target_eyes", "target_mouth", "expression", "source_expression", "identity", "clip",
              "time", "view")


def resolve_split(split: str) -> str:
    split = record.SPLIT_ALIASES.get(split, split)
    if split not in record.SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {record.SPLITS} (or {sorted(record.SPLIT_ALIASES)})")
    return split


# --------------------------------------------------------------------------------------------------
# Datasets on disk
# --------------------------------------------------------------------------------------------------


DATASETS = ("synthetic_heads", "teacher_clips")


def check_data_config(cfg, need_dataset: bool = True) -> None:
    """Checks ``cfg.data`` without reading any data; raises ``ConfigError`` naming the key and what is
    allowed. ``need_dataset``: a ``teacher_clips`` dataset (which only ``instant4d data ingest`` makes)
    must already exist."""
    from jax_instant4d.config import ConfigError

    d = cfg.data

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"data.{key}={d[key]!r}: {rule}")

    def integer(key: str, low: int) -> None:
        v = d[key]
        need(isinstance(v, int) and not isinstance(v, bool) and v >= low, key, f"must be an integer >= {low}")

    need(d.dataset in DATASETS, "dataset", f"allowed: {', '.join(DATASETS)}")
    need(d.image_format in record.IMAGE_FORMATS, "image_format", f"allowed: {', '.join(record.IMAGE_FORMATS)}")
    need(isinstance(d.jpeg_quality, int) and 1 <= d.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100")
    for key, low in (("resolution", 8), ("num_identities", 2), ("clips_per_identity", 1), ("time_steps", 1),
                     ("views", 1), ("targets_per_example", 1), ("read_threads", 1), ("prefetch", 1),
                     ("heldout_identities", 0), ("num_workers", 0), ("max_bad_records", 0),
                     ("ready_timeout_s", 1)):
        integer(key, low)
    need(d.heldout_identities < d.num_identities, "heldout_identities",
         f"must be below data.num_identities={d.num_identities} (some identities must be left to train on)")
    a = d.augment
    for key in ("brightness", "contrast", "color"):
        if not 0.0 <= float(a[key]) < 1.0:
            raise ConfigError(f"data.augment.{key}={a[key]!r}: must be in [0, 1)")
    if int(a.max_shift) < 0:
        raise ConfigError(f"data.augment.max_shift={a.max_shift!r}: must be >= 0")
    if need_dataset and d.dataset == "teacher_clips":
        from jax_instant4d.data import builders

        path = dataset_path(cfg)
        if not builders.is_complete(path):
            raise ConfigError(f"data.dataset='teacher_clips': no dataset at {path}; run `instant4d data ingest SRC "
                              f"--out {d.data_dir} --config.data.resolution={d.resolution}` first (or set "
                              "data.data_dir to where it is)")
    if d.dataset == "synthetic_heads":
        from jax_instant4d.data import builders

        if not builders.is_complete(dataset_path(cfg)):  # it will be generated there: the folder must be usable
            root = Path(str(d.data_dir)).expanduser()
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"data.data_dir={str(d.data_dir)!r}: cannot create the folder for the generated "
                                  f"dataset ({e.strerror or e})") from None


def dataset_path(cfg) -> Path:
    """Where the dataset of ``cfg.data`` lives (it may not exist yet)."""
    from jax_instant4d.data import builders, synthetic

    d = cfg.data
    if d.dataset == "synthetic_heads":
        return builders.dataset_dir(d.data_dir, "synthetic_heads", synthetic.spec_from_config(cfg).name)
    if d.dataset == "teacher_clips":
        return builders.dataset_dir(d.data_dir, "teacher_clips", teacher_config_name(int(d.resolution)))
    raise ValueError(f"data.dataset must be 'synthetic_heads' or 'teacher_clips', got {d.dataset!r}")


def teacher_config_name(resolution: int) -> str:
    return f"r{resolution}"


def ensure_dataset(cfg, progress: bool = True) -> Path:
    """Returns the dataset's path, generating ``synthetic_heads`` first if it is missing.

    ``teacher_clips`` cannot be made here: if missing, the error says how to ingest it. Safe to call
    from several processes at once: one generates it, the others wait for it (``cachelock``) and read it.
    """
    from jax_instant4d.data import builders, synthetic

    path = dataset_path(cfg)
    if builders.is_complete(path):
        return path
    if cfg.data.dataset == "synthetic_heads":
        return builders.build_synthetic(synthetic.spec_from_config(cfg), cfg.data.data_dir,
                                        backend=cfg.render.backend, progress=progress)
    raise FileNotFoundError(
        f"no teacher_clips dataset at {path}: run `instant4d data ingest SRC --out {cfg.data.data_dir} "
        f"--config.data.resolution={cfg.data.resolution}` first")


def open_source(path: str | os.PathLike, split: str):
    """The ArrayRecord data source (random access, picklable) of one split of a prepared dataset."""
    import tensorflow_datasets as tfds

    split = resolve_split(split)
    builder = tfds.builder_from_directory(str(path))
    if split not in builder.info.splits:
        raise ValueError(f"dataset {path} has no {split!r} split (it has {sorted(builder.info.splits)})")
    return builder.as_data_source(split=split)


class BadRecordsError(RuntimeError):
    """More damaged records than ``data.max_bad_records`` (or none readable at all)."""


class CheckedSource:
    """Random access to one split's records that survives damaged ones (a corrupt or cut ArrayRecord
    chunk, an empty shard): a record that cannot be read is reported once with its file and record
    number, counted, and replaced by the next readable record (so batches keep their size and a resumed
    run reads the same replacement). More than ``max_bad`` damaged records in this process is fatal
    (:class:`BadRecordsError`, naming the last one)."""

    REQUIRED = ("num_times", "num_views", "resolution", "source_image", "target_images")

    def __init__(self, source, split: str, max_bad: int):
        self.source, self.split, self.max_bad = source, split, int(max_bad)
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def where(self, index: int) -> str:
        """``FILE, record R`` of the split's record ``index`` (from the ArrayRecord read instructions)."""
        inner = getattr(self.source, "data_source", None)
        offset = int(index)
        for ins in getattr(inner, "_read_instructions", None) or ():
            n = int(ins.end) - int(ins.start)
            if offset < n:
                return f"{ins.filename}, record {int(ins.start) + offset}"
            offset -= n
        return f"split {self.split!r}, record {index}"

    def __getitem__(self, index: int):
        n = len(self.source)
        for k in range(n):
            i = (int(index) + k) % n
            try:
                rec = self.source[i]
                missing = [k for k in self.REQUIRED if rec is None or rec.get(k) is None]
                if missing:  # a cut shard can read back as a record of empty fields
                    raise ValueError(f"incomplete record (no {', '.join(missing)})")
                return rec
            except Exception as e:  # array_record / tfds raise several types for damaged data
                self._damaged(i, e)
        raise BadRecordsError(f"no readable record in split {self.split!r} ({n} records, all damaged; "
                              f"e.g. {self.where(int(index))})")

    def _damaged(self, index: int, error: Exception) -> None:
        if index in self.bad:
            return
        self.bad.add(index)
        reason = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
        where = self.where(index)
        if len(self.bad) > self.max_bad:
            raise BadRecordsError(f"{len(self.bad)} damaged records in split {self.split!r}, more than "
                                  f"data.max_bad_records={self.max_bad}; the last: {where}: {reason[:200]}")
        log.warning("damaged record skipped: %s: %s (%d in this process, at most %d)", where, reason[:200],
                    len(self.bad), self.max_bad)


# --------------------------------------------------------------------------------------------------
# Per-record transform
# --------------------------------------------------------------------------------------------------


def decode_image(data: bytes, size: int, channels: int = 3) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [size, size, channels] (area-resampled if stored at another size, bilinear if
    smaller): how training and evaluation read a record's frames."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if im.size != (size, size):
            big = im.size[0] > size
            im = im.resize((size, size), Image.Resampling.BOX if big else Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr if channels == 3 else arr[..., None]


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translates the first two axes (rows by dy, columns by dx), filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


class SampleTargets(grain.transforms.RandomMap):
    """One clip record -> one example: its source and K (time, view) targets, decoded and augmented.

    Targets are K distinct (time, view) pairs when the clip has at least K of them, else drawn with
    replacement. Augmentations (``augment``, from ``cfg.data.augment``): ``crop`` shifts each image by
    up to ``max_shift`` pixels (zero fill) and moves the principal point with it, so the camera still
    explains the pixels; ``photometric`` scales source and targets by one shared gain (black stays
    black) and jitters each driving frame's gain and contrast independently, and with ``color`` > 0 each
    of its colour channels by its own gain in [1 - color, 1 + color]: the motion encoder sees the driving
    face's shape with its colours scrambled, so a motion code has less of the driver's identity to carry
    into the avatar (source and teacher views keep their colours).
    """

    def __init__(self, targets: int, resolution: int, augment: Mapping | None = None, undriven: bool = False):
        self.k = int(targets)
        self.res = int(resolution)
        self.undriven = bool(undriven)
        a = dict(augment or {})
        self.crop = bool(a.get("crop", False))
        self.photometric = bool(a.get("photometric", False))
        self.max_shift = int(a.get("max_shift", 0))
        self.brightness = float(a.get("brightness", 0.0))
        self.contrast = float(a.get("contrast", 0.0))
        self.color = float(a.get("color", 0.0))

    def random_map(self, rec: Mapping, rng: np.random.Generator) -> dict:
        res, k = self.res, self.k
        t, v = int(rec["num_times"]), int(rec["num_views"])
        stored = int(rec["resolution"])
        scale = res / stored
        n = t * v
        pick = rng.choice(n, size=k, replace=k > n)
        times, views = pick // v, pick % v

        src = decode_image(rec["source_image"], res).astype(np.float32) / 255.0
        src_k = np.asarray(rec["source_intrinsics"], np.float32) * scale
        drv = np.stack([decode_image(rec["driving_images"][ti], res) for ti in times]).astype(np.float32) / 255.0
        tgt = np.stack([decode_image(rec["target_images"][i], res) for i in pick]).astype(np.float32) / 255.0
        und = self._undriven(rec, pick) if self.undriven else None
        tgt_w2c = np.asarray(rec["target_w2c"], np.float32)[pick]
        tgt_k = np.asarray(rec["target_intrinsics"], np.float32)[pick] * scale
        has_fg, has_regions = bool(rec["has_fg"]), bool(rec["has_regions"])
        if has_fg or has_regions:
            masks = np.stack([decode_image(rec["target_masks"][i], res) for i in pick]).astype(np.float32) / 255.0
        else:
            masks = np.zeros((k, res, res, 3), np.float32)
        fg = masks[..., 0] if has_fg else np.ones((k, res, res), np.float32)
        eyes = masks[..., 1] if has_regions else np.zeros((k, res, res), np.float32)
        mouth = masks[..., 2] if has_regions else np.zeros((k, res, res), np.float32)
        if bool(rec["has_expression"]):
            expr = np.asarray(rec["expression"], np.float32)[times]
            src_expr = np.asarray(rec["source_expression"], np.float32)
        else:
            expr = np.zeros((k, record.NUM_EXPRESSION), np.float32)
            src_expr = np.zeros(record.NUM_EXPRESSION, np.float32)

        if self.crop and self.max_shift > 0:
            m = self.max_shift
            dx, dy = rng.integers(-m, m + 1, size=2)
            src = _shift(src, dx, dy)
            src_k = src_k + np.asarray([0, 0, dx, dy], np.float32)
            for i in range(k):
                dx, dy = rng.integers(-m, m + 1, size=2)
                tgt[i], fg[i], eyes[i], mouth[i] = (_shift(x, dx, dy) for x in (tgt[i], fg[i], eyes[i], mouth[i]))
                if und is not None:
                    und[i] = _shift(und[i], dx, dy)
                tgt_k[i] += np.asarray([0, 0, dx, dy], np.float32)
                dx, dy = rng.integers(-m, m + 1, size=2)
                drv[i] = _shift(drv[i], dx, dy)
        if self.photometric:
            gain = 1.0 + rng.uniform(-self.brightness, self.brightness)
            src = np.clip(src * gain, 0.0, 1.0)
            tgt = np.clip(tgt * gain, 0.0, 1.0)
            if und is not None:
                und = np.clip(und * gain, 0.0, 1.0)
            for i in range(k):
                g = 1.0 + rng.uniform(-self.brightness, self.brightness)
                c = 1.0 + rng.uniform(-self.contrast, self.contrast)
                mean = drv[i].mean()
                drv[i] = np.clip(((drv[i] - mean) * c + mean) * g, 0.0, 1.0)
                if self.color > 0:
                    drv[i] = np.clip(drv[i] * (1.0 + rng.uniform(-self.color, self.color, size=3)), 0.0, 1.0)

        out = {
            "source": src,
            "source_w2c": np.asarray(rec["source_w2c"], np.float32),
            "source_intrinsics": src_k.astype(np.float32),
            "driving": drv,
            "target": tgt,
            "target_w2c": tgt_w2c,
            "target_intrinsics": tgt_k.astype(np.float32),
            "target_fg": fg,
            "target_eyes": eyes,
            "target_mouth": mouth,
            "expression": expr,
            "source_expression": src_expr,
            "identity": np.int32(rec["identity_index"]),
            "clip": np.int32(rec["clip_index"]),
            "time": times.astype(np.int32),
            "view": views.astype(np.int32),
        }
        if und is not None:
            out["undriven"] = und
        return out

    def _undriven(self, rec: Mapping, pick: np.ndarray) -> np.ndarray:
        """The picked targets' undriven twins, floats in [0, 1]; a record without them is an error naming its clip."""
        frames = rec.get("undriven_images")
        if frames is None or len(frames) != int(rec["num_times"]) * int(rec["num_views"]):
            clip = rec.get("clip_id", b"?")
            clip = clip.decode() if isinstance(clip, bytes) else str(clip)
            raise ValueError(f"clip {clip}: no undriven views (train.loss.expression_change needs them; a "
                             f"synthetic_heads dataset has them when made with data.undriven_views=true, real teacher "
                             f"clips never)")
        return np.stack([decode_image(frames[i], self.res) for i in pick]).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def _grain_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app they are unparsed and grain fails.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_dataset(cfg, split: str, batch_size: int, process_index: int | None = None,
                 process_count: int | None = None, seed: int | None = None,
                 path: str | os.PathLike | None = None, augment: bool | None = None) -> grain.IterDataset:
    """The pipeline as a grain ``IterDataset`` (``iter()`` it, or use :func:`make_pipeline`).

    ``augment``: apply ``cfg.data.augment``; by default on the train split only (held-out batches are
    scored as recorded). Batches of the train split carry ``undriven`` when ``train.loss.expression_change``
    is on; held-out batches never do (no loss reads them there, and decoding them would cost time)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, {process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    d = cfg.data
    seed = int(d.shuffle_seed if seed is None else seed)
    source = CheckedSource(open_source(path if path is not None else dataset_path(cfg), split), split,
                           int(d.max_bad_records))
    if len(source) < process_count:
        raise ValueError(f"split {split!r} has {len(source)} clips, fewer than the {process_count} processes")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat(None)
    training = resolve_split(split) == "train"
    if augment is None:
        augment = training
    sampler = SampleTargets(d.targets_per_example, d.resolution, d.augment.to_dict() if augment else None,
                            undriven=training and float(cfg.train.loss.expression_change) > 0)
    ds = ds.random_map(sampler, seed=(seed * 1_000_003 + 7919 * process_index + 17) % (2 ** 32))
    ds = ds.batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, int(d.read_threads)),
                                              prefetch_buffer_size=max(1, int(d.prefetch))))
    if int(d.num_workers) > 0:
        _grain_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(d.num_workers),
                                                         per_worker_buffer_size=max(1, int(d.prefetch))),
                            worker_init_fn=die_with_parent)
        # Batches from workers live in shared memory blocks; plain copies free those blocks at once (a
        # block still referenced at interpreter exit makes grain print errors and leak warnings).
        it = it.map(_plain_arrays)
    return it


def die_with_parent(worker_index: int, worker_count: int, poll_s: float = 1.0) -> None:
    """Runs in each grain worker process: a thread that ends the worker once the process that started it
    is gone (a parent killed with -9 runs no clean-up, and its workers would otherwise live on). A worker
    whose parent died before this ran exits at once."""
    import multiprocessing

    del worker_index, worker_count
    parent = multiprocessing.parent_process()
    expected = parent.pid if parent is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="instant4d-parent-watch", daemon=True).start()


def _plain_arrays(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in batch.items()}


def make_pipeline(cfg, split: str, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, seed: int | None = None,
                  path: str | os.PathLike | None = None, augment: bool | None = None) -> grain.DatasetIterator:
    """An infinite iterator of per-process batches (the module docstring's contract).

    The iterator's ``get_state()`` / ``set_state()`` checkpoint its position (also through
    ``grain.checkpoint.CheckpointSave``). ``process_index`` / ``process_count`` default to JAX's;
    ``seed`` to ``cfg.data.shuffle_seed``; ``path`` to the dataset of ``cfg`` (see :func:`ensure_dataset`);
    ``augment`` (default: on the train split only) to whether ``cfg.data.augment`` applies.
    """
    return iter(make_dataset(cfg, split, batch_size, process_index, process_count, seed, path, augment))


def batch_nbytes(batch: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in batch.values()))
