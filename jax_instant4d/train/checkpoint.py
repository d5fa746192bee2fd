"""Checkpoints: an orbax ``CheckpointManager`` saving, per step, a Composite of

* ``state``: the train state (pure dicts of arrays; every process writes its own shards),
* ``data``: the grain iterator state of every process (``process_{i}-of-{n}.json``),
* ``config``: the resolved config as JSON.

Saves are asynchronous (the step loop continues while arrays are written); only complete steps are
listed, so resuming always starts from the latest complete checkpoint. Kept: the last
``keep`` checkpoints plus the best by held-out PSNR. Restoring takes an abstract state whose leaves
carry the shardings wanted now, so a checkpoint written on one mesh restores onto another.

A checkpoint that cannot be read (a truncated or altered array file, a missing manifest or metadata,
an emptied step folder) raises :class:`CheckpointDamaged` naming the step and the file; one whose
arrays do not have this model's names and shapes raises :class:`CheckpointError` ("does not match").
:meth:`Checkpointer.set_aside` moves a damaged step out of the way (``checkpoints.damaged/``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from jax_instant4d.config import ConfigDict
from jax_instant4d.restore import (
    CheckpointDamaged,
    CheckpointError,
    _file_in,
    _first_line,
    _leaf_shapes,
    check_shapes,
    saved_config_dict,
)
from jax_instant4d.train.state import TrainState

__all__ = ["BEST_METRIC", "CheckpointDamaged", "CheckpointError", "Checkpointer"]

BEST_METRIC = "eval_psnr"
# Arrays whose per-replica slice is smaller than this are written by one replica instead of being
# split across replicas (orbax's replica-parallel saving slices every array, and on CPU each slice
# shape compiles a small program: seconds per save for a model of many small arrays).
REPLICA_PARALLEL_MIN_BYTES = 1 << 20
_handler_registered = False


def _register_array_handler() -> None:
    global _handler_registered
    if not _handler_registered:
        handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES)
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
        _handler_registered = True


def _to_saveable(state: TrainState) -> dict[str, Any]:
    d = state.to_dict()
    if d["ema"] is None:
        d.pop("ema")
    return d


class Checkpointer:
    """Thin wrapper around ``ocp.CheckpointManager`` for train state + grain iterator + config."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        _register_array_handler()
        directory = str(directory)
        self.directory = epath.Path(directory if "://" in directory else Path(directory).absolute())
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=max(int(keep), 1)),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
            enable_background_delete=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_iterator: Any | None, cfg: ConfigDict,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        """Starts an (asynchronous) save; the data iterator's state is captured before returning."""
        import grain.checkpoint as gckpt

        items = {"state": ocp.args.StandardSave(_to_saveable(state)),
                 "config": ocp.args.JsonSave(cfg.to_dict())}
        if data_iterator is not None:
            items["data"] = gckpt.CheckpointSave(data_iterator)
        return self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=force)

    def restore(self, step: int, abstract_state: TrainState,
                data_iterator: Any | None = None) -> tuple[TrainState, bool]:
        """Restores ``step`` onto the shardings of ``abstract_state``; sets ``data_iterator``'s
        position when the checkpoint holds one for this process layout (returned flag)."""
        import grain.checkpoint as gckpt

        target = _to_saveable(abstract_state)
        self.check_matches(step, target)
        data_ok = False
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None and self._has_data_for_this_process(step):
            items["data"] = gckpt.CheckpointRestore(data_iterator)
            data_ok = True
        step_dir = Path(str(self.directory / str(int(step))))
        try:
            restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore, zstd, json, orbax: every failure to read the files
            text = str(e)
            raise CheckpointDamaged(self.directory, step, _file_in(text, step_dir) or "state",
                                    _first_line(e)) from e
        d = dict(restored["state"])
        d.setdefault("ema", None)
        return TrainState.from_dict(d), data_ok

    def check_matches(self, step: int, target: Any) -> None:
        """Compares the saved arrays' names and shapes with ``target``'s: :class:`CheckpointError` if they
        differ, :class:`CheckpointDamaged` if the step's metadata cannot be read."""
        step_dir = self.directory / str(int(step))
        meta_file = step_dir / "state" / "_METADATA"
        if not meta_file.exists():
            missing = "state/_METADATA" if (step_dir / "state").exists() else "state/"
            raise CheckpointDamaged(self.directory, step, missing, "missing")
        if (step_dir / "state" / "_sharding").exists() and not (step_dir / "state" / "manifest.ocdbt").exists():
            raise CheckpointDamaged(self.directory, step, "state/manifest.ocdbt", "missing")
        try:
            meta = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
        except Exception as e:  # an empty or cut metadata file, an unreadable array description
            where = _file_in(str(e), Path(str(step_dir))) or "state/_METADATA"
            raise CheckpointDamaged(self.directory, step, where, _first_line(e)) from e
        tree = getattr(meta, "tree", meta)
        saved, wanted = _leaf_shapes(tree), _leaf_shapes(target)
        if not saved:
            raise CheckpointDamaged(self.directory, step, "state/_METADATA", "lists no arrays")
        check_shapes(self.directory, step, saved, wanted)

    def set_aside(self, step: int) -> Path:
        """Moves the folder of ``step`` to ``<checkpoints>.damaged/<step>-<UTC time>`` (kept for inspection)
        and forgets it; returns the new place. Call on one process (process 0)."""
        src = Path(str(self.directory / str(int(step))))
        dst_root = src.parent.parent / f"{src.parent.name}.damaged"
        dst_root.mkdir(parents=True, exist_ok=True)
        dst = dst_root / f"{int(step)}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        n = 1
        while dst.exists():
            dst = dst.with_name(f"{dst.name.split('.')[0]}.{n}")
            n += 1
        src.rename(dst)
        return dst

    def reload(self) -> None:
        """Re-reads which steps exist (after another process moved one aside)."""
        self.manager.reload()

    def saved_config(self, step: int) -> dict[str, Any]:
        return saved_config_dict(self.directory, step)

    def _has_data_for_this_process(self, step: int) -> bool:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return any((p / name).exists() for p in self.directory.glob(f"{int(step)}/data"))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
