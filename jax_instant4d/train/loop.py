"""The training run: set-up, resume, the step loop, evaluation, checkpoints, preemption, results.

Every process runs this same function on its own share of the data; only process 0 writes the
work directory's logs (``config.json``, ``parameters.txt``, TensorBoard events, ``metrics.jsonl``,
``results.md``). Checkpoints are written by all processes together (each its own shards).

Before anything is compiled, :func:`check_config` and the device checks in :func:`train` turn every
config value a user can get wrong into a one-line :class:`~jax_instant4d.config.ConfigError`. A damaged
latest checkpoint is set aside and the previous complete one restored; no checkpoint is written while
steps are being skipped for non-finite values, so the last checkpoint is always one of finite steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_instant4d.config import ConfigDict, ConfigError
from jax_instant4d.train import metrics as M
from jax_instant4d.train import motion_weights
from jax_instant4d.train.checkpoint import BEST_METRIC, CheckpointDamaged, Checkpointer, CheckpointError
from jax_instant4d.train.distributed import (
    PeerWatchdog,
    PreemptionWatcher,
    all_flags,
    enable_compilation_cache,
    lead_prepares,
)
from jax_instant4d.train.sharding import ShardingError, data_parallel_size, describe, make_mesh, to_global
from jax_instant4d.train.step import LOSS_NAMES, ModelFactory, Trainer, resolution_at

log = logging.getLogger(__name__)

# (cfg, split, per-process batch size, process index, process count) -> infinite checkpointable iterator
DataFactory = Callable[[ConfigDict, str, int, int, int], Iterator[dict[str, np.ndarray]]]

TRAIN_SPLIT, EVAL_SPLIT = "train", "test"


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradients."""


@dataclasses.dataclass
class RunResult:
    status: str  # "finished" | "preempted"
    step: int
    eval: dict[str, float]
    workdir: Path


def default_data_factory(cfg: ConfigDict, split: str, batch_size: int, process_index: int,
                         process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """The project's grain pipeline. Process 0 generates a missing dataset; the other processes wait for
    it through the coordination service (``data.ready_timeout_s``), then check that they see it."""
    from jax_instant4d import data
    from jax_instant4d.data import builders

    path = data.dataset_path(cfg)
    if process_count > 1:
        lead_path = lead_prepares(f"dataset-{split}", lambda: str(data.ensure_dataset(cfg)),
                                  float(cfg.data.ready_timeout_s), what=f"the dataset ({split} split)")
        if not builders.is_complete(path):
            here = "" if str(path) == lead_path else f" (this process looks at {path})"
            raise DatasetNotVisible(
                f"process {process_index} of {process_count} cannot see the dataset that process 0 prepared at "
                f"{lead_path}{here}: data.data_dir must be a folder every process sees (a shared filesystem or a "
                "bucket path; see launch/README.md)")
    else:
        data.ensure_dataset(cfg)
    return data.make_pipeline(cfg, split, batch_size, process_index=process_index, process_count=process_count)


class DatasetNotVisible(RuntimeError):
    """A process does not see the dataset process 0 prepared (``data.data_dir`` is not shared)."""


# --------------------------------------------------------------------------------------------------
# Config checks: one line naming the key, before anything is compiled
# --------------------------------------------------------------------------------------------------


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _int_at_least(section: ConfigDict, prefix: str, names: tuple[str, ...], low: int) -> None:
    for name in names:
        v = section[name]
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= low, f"{prefix}.{name}", v,
                 f"must be an integer >= {low}")


def _existing_file(key: str, value: str) -> None:
    if value and not Path(value).expanduser().is_file():
        raise ConfigError(f"{key}={value!r}: no such file")


def check_config(cfg: ConfigDict, *, real_model: bool = True, real_data: bool = True) -> None:
    """Checks every ``train`` value (and, for the project's model and pipeline, the ``model``, ``render``
    and ``data`` values they read) without touching a device; raises :class:`ConfigError` naming the key
    and what is allowed. ``real_model`` / ``real_data``: the project's model / data pipeline is used
    (other factories check their own keys)."""
    import rasterizer_ffi
    from jax_instant4d.perceptual import IRESNET_DEPTHS

    t = cfg.train
    _int_at_least(t, "train", ("steps", "batch_size", "eval_batch_size", "log_every", "checkpoint_every",
                               "eval_every", "keep_checkpoints", "max_nonfinite", "init_timeout_s",
                               "heartbeat_timeout_s", "shutdown_timeout_s"), 1)
    _int_at_least(t, "train", ("image_every", "eval_batches", "warmup_steps"), 0)
    for key in ("learning_rate", "disc.learning_rate"):
        v = t.disc.learning_rate if key.startswith("disc") else t.learning_rate
        _require(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"train.{key}", v,
                 "must be a finite number > 0")
    _require(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule", t.lr_schedule, "allowed: constant, cosine")
    _require(0.0 <= float(t.ema_decay) < 1.0, "train.ema_decay", t.ema_decay, "must be in [0, 1)")
    _require(float(t.grad_clip_norm) >= 0.0, "train.grad_clip_norm", t.grad_clip_norm, "must be >= 0 (0 = off)")
    _require(int(t.loss.adversarial_start) >= -1, "train.loss.adversarial_start", t.loss.adversarial_start,
             "must be a step >= 0, or -1 (never)")
    _require(int(t.loss.identity_depth) in IRESNET_DEPTHS, "train.loss.identity_depth", t.loss.identity_depth,
             f"allowed: {', '.join(map(str, sorted(IRESNET_DEPTHS)))}")
    for name in LOSS_NAMES:
        v = t.loss[name]
        _require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                 f"train.loss.{name}", v, "must be a finite number >= 0 (0 = off)")
    if float(t.loss.motion) > 0 and not cfg.model.motion.freeze:
        raise ConfigError(f"train.loss.motion={t.loss.motion!r} needs model.motion.freeze=true: the loss compares "
                          "the motion encoder's codes of renders and targets, and a trained encoder would learn to "
                          "read every frame alike")
    _existing_file("train.loss.lpips_weights", t.loss.lpips_weights)
    _existing_file("train.loss.identity_weights", t.loss.identity_weights)
    for entry in tuple(t.resolution_schedule):
        ok = isinstance(entry, (tuple, list)) and len(entry) == 2 and int(entry[0]) >= 0 and int(entry[1]) >= 1
        _require(ok, "train.resolution_schedule", tuple(t.resolution_schedule),
                 "must be ((from_step >= 0, resolution >= 1), ...)")
    _require(isinstance(t.compilation_cache, str), "train.compilation_cache", t.compilation_cache,
             "allowed: user, workdir, '' (off) or a folder")
    backends = (*rasterizer_ffi.BACKENDS, "dense")
    _require(cfg.render.backend in backends, "render.backend", cfg.render.backend, f"allowed: {', '.join(backends)}")
    if cfg.render.backend in ("cpu", "cuda"):
        try:
            rasterizer_ffi.resolve_backend(cfg.render.backend)
        except ValueError as e:
            raise ConfigError(f"render.backend={cfg.render.backend!r}: {e}") from None
    if real_model:
        _check_model(cfg)
    if real_data:
        from jax_instant4d.data.pipeline import check_data_config

        check_data_config(cfg)


def _check_model(cfg: ConfigDict) -> None:
    from jax_instant4d.model.encoder import check_encoder_config
    from jax_instant4d.model.fusion import FUSIONS
    from jax_instant4d.model.instantiate import ANCHORS, INSTANTIATIONS

    mc = cfg.model
    for key, allowed in (("fusion", FUSIONS), ("instantiate", INSTANTIATIONS), ("anchors", ANCHORS)):
        _require(mc[key] in allowed, f"model.{key}", mc[key], f"allowed: {', '.join(allowed)}")
    _require(int(mc.image_size) >= 16 and int(mc.image_size) % 16 == 0, "model.image_size", mc.image_size,
             "must be a multiple of 16")
    _require(int(mc.encoder.plane_channels) == 2 * int(mc.feature_dim), "model.encoder.plane_channels",
             mc.encoder.plane_channels, f"must be 2 * model.feature_dim = {2 * int(mc.feature_dim)}")
    try:
        check_encoder_config(mc)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    m = mc.motion
    _require(int(m.crop_size) >= 8 and int(m.crop_size) % 8 == 0, "model.motion.crop_size", m.crop_size,
             "must be a multiple of 8")
    _require(int(m.code_dim) % int(m.token_dim) == 0, "model.motion.code_dim", m.code_dim,
             f"must be divisible by model.motion.token_dim={m.token_dim}")
    if mc.fusion == "global":
        _require(int(mc.feature_dim) % int(mc.global_heads) == 0, "model.global_heads", mc.global_heads,
                 f"must divide model.feature_dim={mc.feature_dim}")


def check_workdir(workdir: Path, create: bool) -> None:
    """The work directory is a folder this process can write (created when ``create``)."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"workdir={str(workdir)!r}: exists and is not a folder")
    if create:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"workdir={str(workdir)!r}: cannot create it ({e.strerror or e})") from None
    if workdir.exists() and not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir={str(workdir)!r}: not writable")


def _check_batch(name: str, size: int, mesh, processes: int) -> None:
    dp = data_parallel_size(mesh)
    if size % dp or size % processes:
        raise ConfigError(f"{name}={size}: must be divisible by the data-parallel size {dp} (mesh "
                          f"{dict(mesh.shape)}) and by the process count {processes}")


def _make_mesh(shape) -> Any:
    try:
        return make_mesh(shape)
    except ShardingError as e:
        raise ConfigError(f"{e} ({jax.device_count()} devices in {jax.process_count()} process(es))") from None


def results_table(ev: dict[str, float]) -> str:
    rows = [("source image shown unchanged", "source"), ("ours, undriven (z_drv = z_src)", "static"), ("ours", "")]
    lines = ["| method | held-out PSNR (dB) | eyes + mouth PSNR (dB) |", "|---|---|---|"]
    for name, suffix in rows:
        full, region = (ev.get(k + (f"_{suffix}" if suffix else "")) for k in ("psnr", "region_psnr"))
        if full is not None:
            lines.append(f"| {name} | {full:.2f} | {'—' if region is None else f'{region:.2f}'} |")
    return "\n".join(lines)


def _restore_latest(ckpt: Checkpointer, trainer: Trainer, data_iter: Any, allow_fresh_data: bool,
                    say: Callable[[str], None]) -> tuple[Any, int | None]:
    """Restores the latest complete checkpoint that can be read, setting damaged ones aside (process 0
    moves them; every process agrees through the coordination service before going on). Returns
    ``(state or None, step or None)``."""
    lead, attempt = jax.process_index() == 0, 0
    while (step := ckpt.latest_step()) is not None:
        attempt += 1
        state, damage, data_ok = None, None, True
        try:
            state, data_ok = ckpt.restore(step, trainer.abstract_state, data_iter)
        except CheckpointDamaged as e:
            damage = e
        flags = all_flags(f"restore-{step}-{attempt}", damage is not None, 600.0)
        if not any(flags):
            if data_iter is not None and not data_ok and not allow_fresh_data:
                raise CheckpointError(
                    f"checkpoint step {step} in {ckpt.directory} has no data-iterator state for process "
                    f"{jax.process_index()} of {jax.process_count()} (written with another process layout, or its "
                    "data/ file is missing): rerun with --config.train.allow_fresh_data_order=true to resume with "
                    "a fresh order of examples")
            say(f"resumed from checkpoint step {step}" + ("" if data_ok or data_iter is None else
                " (no data-iterator state for this process layout: the data stream starts afresh)"))
            return state, step
        who = [i for i, bad in enumerate(flags) if bad]
        reason = str(damage) if damage is not None else f"process(es) {who} could not read it"

        moved = lead_prepares(f"set-aside-{step}-{attempt}", lambda step=step: str(ckpt.set_aside(step)), 600.0,
                              what=f"setting checkpoint step {step} aside")
        ckpt.reload()
        if lead:
            log.warning("%s; moved to %s; trying the previous checkpoint", reason, moved)
    return None, None


def train(cfg: ConfigDict, *, model_factory: ModelFactory | None = None, data_factory: DataFactory | None = None,
          distributed: bool = False, trainer: Trainer | None = None) -> RunResult:
    """Trains ``cfg`` in ``cfg.workdir``, resuming from its latest complete checkpoint if there is one.

    ``trainer``: an already built :class:`Trainer` for this config and mesh (its compiled steps are
    reused; tests and benchmarks pass one). Raises :class:`ConfigError` (one line, nothing compiled
    yet) for config values that cannot work."""
    t = cfg.train
    pid, pcount = jax.process_index(), jax.process_count()
    lead = pid == 0
    workdir = Path(cfg.workdir)
    check_config(cfg, real_model=model_factory is None and trainer is None, real_data=data_factory is None)
    check_workdir(workdir, create=lead)
    motion_weights.check(cfg)
    data_factory = data_factory or default_data_factory
    say = (lambda msg: print(msg, flush=True)) if lead else (lambda msg: None)

    mesh = trainer.mesh if trainer is not None else _make_mesh(t.mesh)
    _check_batch("train.batch_size", t.batch_size, mesh, pcount)
    if t.eval_batches > 0:
        _check_batch("train.eval_batch_size", t.eval_batch_size, mesh, pcount)
    # model.motion.weights: the file exists (process 0 pretrains the synthetic teacher's encoder if needed)
    # and its hash is recorded in the saved config
    cfg = motion_weights.prepare(cfg, pid, pcount)
    t = cfg.train
    cache = enable_compilation_cache(t.compilation_cache, workdir)
    say(f"{pcount} process(es), {jax.device_count()} devices, mesh {dict(mesh.shape)}"
        + (f"; compilation cache {cache}" if cache else ""))
    t_init = time.perf_counter()
    if trainer is None:
        try:
            trainer = Trainer(cfg, mesh, model_factory)
        except (ValueError, ShardingError) as e:  # the model's own checks of its config keys
            raise ConfigError(str(e).splitlines()[0]) from None
    if lead:
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        a = trainer.abstract_state
        table = describe({"model": a.params, "frozen": a.frozen, "discriminator": a.disc},
                         {"model": trainer.state_shardings.params, "frozen": trainer.state_shardings.frozen,
                          "discriminator": trainer.state_shardings.disc})
        (workdir / "parameters.txt").write_text(f"mesh {dict(mesh.shape)}\n\n{table}\n")

    peers = PeerWatchdog(distributed, float(t.heartbeat_timeout_s))
    try:
        data_iter = data_factory(cfg, TRAIN_SPLIT, t.batch_size // pcount, pid, pcount)
    except BaseException:
        peers.close()
        raise
    ckpt = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints, async_save=t.async_checkpoint)
    try:
        state, latest = _restore_latest(ckpt, trainer, data_iter, bool(t.allow_fresh_data_order), say)
    except BaseException:
        ckpt.close()
        peers.close()
        raise
    if state is None:
        state = trainer.init()
    step = int(jax.device_get(state.step))
    say(f"model ready at step {step} in {time.perf_counter() - t_init:.1f} s")

    eval_batches = []
    if t.eval_batches > 0:
        eval_iter = data_factory(cfg, EVAL_SPLIT, t.eval_batch_size // pcount, pid, pcount)
        eval_batches = [to_global(next(eval_iter), mesh) for _ in range(t.eval_batches)]

    writer = M.MetricWriter(workdir, enabled=lead, resume_step=step)
    for note in trainer.notes:
        writer.text(step, "notes", note)
    progress = M.Progress(t.steps, step, enabled=lead and t.progress, every=t.log_every, messages=lead)
    watcher = PreemptionWatcher(distributed)
    full_res = int(cfg.model.image_size)
    status, last_eval, last_good = "finished", {}, latest
    streak = 0

    def run_eval(at: int, images_only: bool = False) -> dict[str, float]:
        batches = eval_batches[:1] if images_only else eval_batches
        ev, imgs = trainer.evaluate(state, batches)
        if lead and imgs is not None:
            writer.image(at, "eval/source_driving_teacher_ours_undriven", M.image_grid(imgs))
        if not images_only:
            writer.scalars(at, ev, prefix="eval")
            progress.write(f"step {at}: held-out PSNR {ev['psnr']:.2f} dB (undriven {ev['psnr_static']:.2f}, "
                           f"source {ev['psnr_source']:.2f}); eyes+mouth {ev['region_psnr']:.2f} dB (undriven "
                           f"{ev['region_psnr_static']:.2f}, source {ev['region_psnr_source']:.2f})")
        return ev

    def save(at: int, metrics: dict[str, float] | None = None) -> None:
        nonlocal last_good
        ckpt.save(at, state, data_iter, cfg, metrics=metrics, force=True)
        last_good = at

    try:
        while step < t.steps:
            res = resolution_at(step, t.resolution_schedule, full_res)
            t0 = time.perf_counter()
            batch = to_global(next(data_iter), mesh)
            t1 = time.perf_counter()
            traces = trainer.traces
            state, m = trainer.step(state, batch, res, trainer.adversarial_at(step))
            m = jax.device_get(m)  # blocks: one step at a time (also keeps gloo collectives in order)
            t2 = time.perf_counter()
            step += 1
            step_time = t2 - t0
            if trainer.traces != traces:  # this step compiled a step function: time it apart from the rate
                progress.write(f"step {step}: compiled the step at resolution {res} and ran it in {step_time:.1f} s "
                               "(compilation; the rate and ETA count the steps after it)")
                progress.restart_clock(step)
            streak = int(m["streak"])
            if int(m["nonfinite"]):
                progress.write(f"step {step}: non-finite loss or gradients, step skipped "
                               f"({streak} in a row, {int(m['skipped'])} in total)")
                if streak >= t.max_nonfinite:
                    ckpt.wait()
                    where = (f"step {last_good} in {ckpt.directory}" if last_good is not None
                             else "none (no checkpoint yet)")
                    raise NonFiniteError(
                        f"stopping at step {step}: {streak} steps in a row (steps "
                        f"{step - streak + 1}..{step}) had a non-finite loss or gradients and were "
                        f"skipped (parameters unchanged). Last good checkpoint: {where}.")
            if step % t.log_every == 0 or step == t.steps:
                scal = {k: float(v) for k, v in m.items()}
                scal.update(step_time=step_time, data_time=t1 - t0, resolution=res,
                            examples_per_sec=t.batch_size / step_time)
                writer.scalars(step, scal)
            progress.update(step, float(m["loss"]), f"psnr {float(m['psnr']):.2f} res {res}")
            evaluated = None
            if eval_batches and (step % t.eval_every == 0 or step == t.steps):
                evaluated = last_eval = run_eval(step)
            elif eval_batches and t.image_every and step % t.image_every == 0:
                run_eval(step, images_only=True)
            # No checkpoint during a non-finite streak: the parameters may come from the update that led
            # into it, so the last checkpoint before the streak stays the newest.
            if (step % t.checkpoint_every == 0 or step == t.steps) and streak == 0:
                save(step, {BEST_METRIC: evaluated["psnr"]} if evaluated else None)
            elif step == t.steps:
                progress.write(f"step {step} is inside a non-finite streak: no checkpoint written for it (the last "
                               f"one is step {last_good})")
            if watcher.reached(step):
                if streak:
                    progress.write(f"preemption notice at step {step}, inside a non-finite streak: stopping "
                                   f"without a checkpoint (the last one is step {last_good})")
                else:
                    progress.write(f"preemption notice: saving a checkpoint at step {step} and stopping")
                    if last_good != step:
                        save(step)
                status = "preempted"
                break
        ckpt.wait()
    except Exception:
        peers.settle()  # a collective that failed because a process died: the watchdog names it and exits
        raise
    finally:
        progress.close()
        watcher.close()
        peers.close()
        ckpt.close()

    loss = float(m["loss"]) if "m" in locals() else float("nan")
    print(f"[process {pid}/{pcount}] {status} at step {step}, loss {loss:.6f}", flush=True)
    if status == "finished" and last_eval:
        _, imgs = trainer.evaluate(state, eval_batches[:1])  # every process: it is a sharded computation
        if lead:
            table = results_table(last_eval)
            print(f"\nHeld-out evaluation at step {step}\n{table}", flush=True)
            (workdir / "results.md").write_text(f"Held-out evaluation at step {step}\n\n{table}\n")
            (workdir / "results.json").write_text(json.dumps({"step": step, **last_eval}, indent=2) + "\n")
            M.save_png(M.image_grid(imgs, min_size=128, labels=True), workdir / "grid.png")
    writer.close()
    return RunResult(status, step, last_eval, workdir)


def restore_state(cfg: ConfigDict, step: int | None = None, *, model_factory: ModelFactory | None = None,
                  mesh=None) -> tuple[Trainer, Any]:
    """Loads a checkpoint of ``cfg.workdir`` onto ``mesh`` (default: all devices per ``train.mesh``)."""
    mesh = mesh or _make_mesh(cfg.train.mesh)
    trainer = Trainer(cfg, mesh, model_factory)
    ckpt = Checkpointer(Path(cfg.workdir) / "checkpoints", keep=cfg.train.keep_checkpoints, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        state, _ = ckpt.restore(step, trainer.abstract_state)
    finally:
        ckpt.close()
    return trainer, state
