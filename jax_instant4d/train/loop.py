"""The training run: set-up, resume, the step loop, evaluation, checkpoints, preemption, results.

Every process runs this same function on its own share of the data; only process 0 writes the
work directory's logs (``config.json``, ``parameters.txt``, TensorBoard events, ``metrics.jsonl``,
``results.md``). Checkpoints are written by all processes together (each its own shards).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_instant4d.config import ConfigDict
from jax_instant4d.train import metrics as M
from jax_instant4d.train.checkpoint import BEST_METRIC, Checkpointer
from jax_instant4d.train.distributed import PreemptionWatcher
from jax_instant4d.train.sharding import data_parallel_size, describe, make_mesh, to_global
from jax_instant4d.train.step import ModelFactory, Trainer, resolution_at

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
    """The project's grain pipeline; process 0 generates the dataset if missing, the others wait."""
    from jax_instant4d import data

    if process_count > 1:
        from jax.experimental import multihost_utils

        if process_index == 0:
            data.ensure_dataset(cfg)
        multihost_utils.sync_global_devices("instant4d_dataset_ready")
    data.ensure_dataset(cfg)
    return data.make_pipeline(cfg, split, batch_size, process_index=process_index, process_count=process_count)


def _check_batch(name: str, size: int, mesh, processes: int) -> None:
    dp = data_parallel_size(mesh)
    if size % dp or size % processes:
        raise ValueError(f"{name}={size} must be divisible by the data-parallel size {dp} (mesh "
                         f"{dict(mesh.shape)}) and by the process count {processes}")


def results_table(ev: dict[str, float]) -> str:
    rows = [("source image shown unchanged", "source"), ("ours, undriven (z_drv = z_src)", "static"), ("ours", "")]
    lines = ["| method | held-out PSNR (dB) | eyes + mouth PSNR (dB) |", "|---|---|---|"]
    for name, suffix in rows:
        full, region = (ev.get(k + (f"_{suffix}" if suffix else "")) for k in ("psnr", "region_psnr"))
        if full is not None:
            lines.append(f"| {name} | {full:.2f} | {'—' if region is None else f'{region:.2f}'} |")
    return "\n".join(lines)


def train(cfg: ConfigDict, *, model_factory: ModelFactory | None = None, data_factory: DataFactory | None = None,
          distributed: bool = False, trainer: Trainer | None = None) -> RunResult:
    """Trains ``cfg`` in ``cfg.workdir``, resuming from its latest complete checkpoint if there is one.

    ``trainer``: an already built :class:`Trainer` for this config and mesh (its compiled steps are
    reused; tests and benchmarks pass one)."""
    t = cfg.train
    pid, pcount = jax.process_index(), jax.process_count()
    lead = pid == 0
    workdir = Path(cfg.workdir)
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
    data_factory = data_factory or default_data_factory
    say = (lambda msg: print(msg, flush=True)) if lead else (lambda msg: None)

    mesh = trainer.mesh if trainer is not None else make_mesh(t.mesh)
    _check_batch("train.batch_size", t.batch_size, mesh, pcount)
    _check_batch("train.eval_batch_size", t.eval_batch_size, mesh, pcount)
    say(f"{pcount} process(es), {jax.device_count()} devices, mesh {dict(mesh.shape)}")
    trainer = trainer or Trainer(cfg, mesh, model_factory, log=say)
    if lead:
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        a = trainer.abstract_state
        table = describe({"model": a.params, "frozen": a.frozen, "discriminator": a.disc},
                         {"model": trainer.state_shardings.params, "frozen": trainer.state_shardings.frozen,
                          "discriminator": trainer.state_shardings.disc})
        (workdir / "parameters.txt").write_text(f"mesh {dict(mesh.shape)}\n\n{table}\n")

    data_iter = data_factory(cfg, TRAIN_SPLIT, t.batch_size // pcount, pid, pcount)
    ckpt = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints, async_save=t.async_checkpoint)
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_ok = ckpt.restore(latest, trainer.abstract_state, data_iter)
        say(f"resumed from checkpoint step {latest}" + ("" if data_ok else
            " (no data-iterator state for this process layout: the data stream starts afresh)"))
    else:
        state = trainer.init()
    step = int(jax.device_get(state.step))

    eval_batches = []
    if t.eval_batches > 0:
        eval_iter = data_factory(cfg, EVAL_SPLIT, t.eval_batch_size // pcount, pid, pcount)
        eval_batches = [to_global(next(eval_iter), mesh) for _ in range(t.eval_batches)]

    writer = M.MetricWriter(workdir, enabled=lead)
    for note in trainer.notes:
        writer.text(step, "notes", note)
    progress = M.Progress(t.steps, step, enabled=lead and t.progress, every=t.log_every, messages=lead)
    watcher = PreemptionWatcher(distributed)
    full_res = int(cfg.model.image_size)
    status, last_eval, last_good = "finished", {}, latest
    ema_time = None

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

    try:
        while step < t.steps:
            res = resolution_at(step, t.resolution_schedule, full_res)
            t0 = time.perf_counter()
            batch = to_global(next(data_iter), mesh)
            t1 = time.perf_counter()
            state, m = trainer.step(state, batch, res, trainer.adversarial_at(step))
            m = jax.device_get(m)  # blocks: one step at a time (also keeps gloo collectives in order)
            t2 = time.perf_counter()
            step += 1
            step_time = t2 - t0
            ema_time = step_time if ema_time is None else 0.9 * ema_time + 0.1 * step_time
            if int(m["nonfinite"]):
                progress.write(f"step {step}: non-finite loss or gradients, step skipped "
                               f"({int(m['streak'])} in a row, {int(m['skipped'])} in total)")
                if int(m["streak"]) >= t.max_nonfinite:
                    ckpt.wait()
                    good = ckpt.latest_step()
                    where = f"step {good} in {ckpt.directory}" if good is not None else "none (no checkpoint yet)"
                    raise NonFiniteError(
                        f"stopping at step {step}: {int(m['streak'])} steps in a row (steps "
                        f"{step - int(m['streak']) + 1}..{step}) had a non-finite loss or gradients and were "
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
            if step % t.checkpoint_every == 0 or step == t.steps:
                ckpt_metrics = {BEST_METRIC: evaluated["psnr"]} if evaluated else None
                ckpt.save(step, state, data_iter, cfg, metrics=ckpt_metrics, force=True)
                last_good = step
            if watcher.reached(step):
                progress.write(f"preemption notice: saving a checkpoint at step {step} and stopping")
                if last_good != step:
                    ckpt.save(step, state, data_iter, cfg, force=True)
                status = "preempted"
                break
        ckpt.wait()
    finally:
        progress.close()
        watcher.close()
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
    mesh = mesh or make_mesh(cfg.train.mesh)
    trainer = Trainer(cfg, mesh, model_factory, log=lambda _: None)
    ckpt = Checkpointer(Path(cfg.workdir) / "checkpoints", keep=cfg.train.keep_checkpoints, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        state, _ = ckpt.restore(step, trainer.abstract_state)
    finally:
        ckpt.close()
    return trainer, state
