"""Checkpoints: an orbax ``CheckpointManager`` saving, per step, a Composite of

* ``state``: the train state (pure dicts of arrays; every process writes its own shards),
* ``data``: the grain iterator state of every process (``process_{i}-of-{n}.json``),
* ``config``: the resolved config as JSON.

Saves are asynchronous (the step loop continues while arrays are written); only complete steps are
listed, so resuming always starts from the latest complete checkpoint. Kept: the last
``keep`` checkpoints plus the best by held-out PSNR. Restoring takes an abstract state whose leaves
carry the shardings wanted now, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from jax_instant4d.config import ConfigDict
from jax_instant4d.train.state import TrainState

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


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model being trained."""


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
        data_ok = False
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None and self._has_data_for_this_process(step):
            items["data"] = gckpt.CheckpointRestore(data_iterator)
            data_ok = True
        try:
            restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} does not match this model/config: "
                                  f"{e}") from e
        d = dict(restored["state"])
        d.setdefault("ema", None)
        return TrainState.from_dict(d), data_ok

    def saved_config(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

    def _has_data_for_this_process(self, step: int) -> bool:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return any((p / name).exists() for p in self.directory.glob(f"{int(step)}/data"))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
