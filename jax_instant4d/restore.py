"""Reading checkpoints without the training machinery: the model's variables alone (a params-only restore)
and the config saved with them, for inference, evaluation, animation and export.

A checkpoint step (written by :class:`jax_instant4d.train.checkpoint.Checkpointer`) holds the items
``state`` (the train state as pure dicts: ``params``, ``frozen``, ``rest``, ``ema`` when kept, then the
optimiser, discriminator and counters), ``config`` (JSON) and ``data`` (iterator positions).
:func:`restore_model_variables` reads only the model's part of ``state`` through orbax's partial restore:
the optimiser moments, the discriminator and the loss networks are neither read nor built.

A step that cannot be read raises :class:`CheckpointDamaged` naming the step and the file; one whose
arrays do not have the model's names and shapes raises :class:`CheckpointError` ("does not match").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jaxtyping import PyTree

from jax_instant4d.tree_paths import path_str

STATE_ITEM = "state"
CONFIG_ITEM = "config"
MODEL_GROUPS = ("params", "frozen", "rest")  # the model's variables in the saved train state; "ema" mirrors params


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model being trained (or cannot be used for this run)."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files cannot be read: ``step`` and ``file`` (relative to the step folder)."""

    def __init__(self, directory: Any, step: int, file: str, reason: str):
        self.step, self.file, self.reason = int(step), file, reason
        super().__init__(f"checkpoint step {step} in {directory} is damaged: {file}: {reason}")


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"params/encoder/kernel": shape}`` of every array-like leaf (metadata or ShapeDtypeStruct)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = getattr(leaf, "shape", None)
        if shape is not None:
            out[path_str(path)] = tuple(int(d) for d in shape)
    return out


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    text = re.sub(r"\s*\[tensorstore_spec=.*$", "", text)
    return text if len(text) <= limit else text[:limit] + "..."


def _file_in(message: str, step_dir: Path) -> str | None:
    """The file (relative to ``step_dir``) and array an orbax / tensorstore error message is about."""
    key = re.search(r'"([^"]+)" in OCDBT database', message)
    quoted = [q.rstrip("\\") for q in re.findall(r'"([^"]+)"', message)]
    inside = [q for q in quoted if q.startswith(str(step_dir) + "/")]
    inside = [str(Path(q).relative_to(step_dir)) for q in inside]
    local = max((q for q in inside if Path(q).name), key=len, default=None)
    array = key.group(1).split("/")[0] if key else None
    if local and array and local.rstrip("/") != "state":
        return f"{local} (array {array})"
    if array:
        return f"state/ (array {array})"
    return local


def _step_dir(directory: str | Path | epath.Path, step: int) -> Path:
    return Path(str(directory)) / str(int(step))


def saved_config_dict(directory: str | Path | epath.Path, step: int) -> dict[str, Any]:
    """The config saved with checkpoint ``step`` of the ``checkpoints/`` folder ``directory`` (a plain dict)."""
    path = _step_dir(directory, step) / CONFIG_ITEM
    try:
        return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path, args=ocp.args.JsonRestore()))
    except Exception as e:  # a missing or cut JSON file
        raise CheckpointDamaged(directory, step, CONFIG_ITEM, _first_line(e)) from e


def saved_state_tree(directory: str | Path | epath.Path, step: int) -> dict[str, Any]:
    """The nested names and array metadata (shape, dtype) of the ``state`` item of a step, read from its
    metadata only (no array is read)."""
    step_dir = _step_dir(directory, step)
    meta_file = step_dir / STATE_ITEM / "_METADATA"
    if not meta_file.exists():
        missing = f"{STATE_ITEM}/_METADATA" if (step_dir / STATE_ITEM).exists() else f"{STATE_ITEM}/"
        raise CheckpointDamaged(directory, step, missing, "missing")
    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(step_dir / STATE_ITEM)
    except Exception as e:  # an empty or cut metadata file, an unreadable array description
        raise CheckpointDamaged(directory, step, _file_in(str(e), step_dir) or f"{STATE_ITEM}/_METADATA",
                                _first_line(e)) from e
    tree = getattr(meta, "tree", meta)
    return dict(tree)


def check_shapes(directory, step: int, have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]],
                 group: str = "") -> None:
    """Raises :class:`CheckpointError` ("does not match") naming the first array whose name or shape in
    the checkpoint (``have``, from :func:`_leaf_shapes`) differs from the model's (``want``)."""
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            got = "absent" if name not in have else f"shape {have[name]}"
            exp = "absent" if name not in want else f"shape {want[name]}"
            raise CheckpointError(f"checkpoint step {step} in {directory} does not match this model/config: "
                                  f"{group + '/' if group else ''}{name} is {got} in the checkpoint, {exp} in "
                                  f"the model")


def _check_group(directory, step: int, group: str, saved: PyTree, wanted: PyTree) -> None:
    check_shapes(directory, step, _leaf_shapes(saved), _leaf_shapes(wanted), group)


def _deep_merge(a: dict, b: dict) -> dict:
    """Two nested dicts with disjoint leaves -> one."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _split_like(tree: dict, like: PyTree) -> dict:
    """The part of ``tree`` (nested dict) at the paths of ``like``'s leaves (keys compared as strings: the
    saved metadata names a list entry ``"0"`` where the model's pure dict has ``0``)."""
    if not isinstance(like, dict):
        return tree
    keys = {str(k): k for k in tree}
    return {keys[str(k)]: _split_like(tree[keys[str(k)]], v) for k, v in like.items() if str(k) in keys}


def restore_model_variables(directory: str | Path | epath.Path, step: int, params: PyTree, rest: PyTree, *,
                            ema: bool = True, device: jax.Device | None = None) -> tuple[PyTree, PyTree, bool]:
    """The model's variables of checkpoint ``step``: ``(params, rest, used_ema)``.

    ``params`` and ``rest`` are the model's abstract pure dicts (``ShapeDtypeStruct`` leaves): every
    parameter (trainable and frozen together, as :class:`~jax_instant4d.model.split.ModelDef` without
    frozen patterns splits them) and every other variable. The EMA of the trainable parameters is used
    in their place when the run kept one and ``ema`` is set. Only these arrays are read (orbax partial
    restore), onto ``device`` (default: the first local device), with exactly the saved values."""
    device = device or jax.local_devices()[0]
    tree = saved_state_tree(directory, step)
    use = "ema" if ema and tree.get("ema") else "params"
    saved = {g: tree.get(g) or {} for g in (use, "frozen", "rest")}
    _check_group(directory, step, "params + frozen", _deep_merge(saved[use], saved["frozen"]), params)
    _check_group(directory, step, "rest", saved["rest"], rest)
    sharding = jax.sharding.SingleDeviceSharding(device)
    all_wanted = {"params": params, "rest": rest}
    target = {}
    for g in (use, "frozen", "rest"):
        like = _split_like(all_wanted["rest" if g == "rest" else "params"], saved[g])
        leaves = jax.tree.leaves(like)
        if leaves:
            target[g] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
    step_dir = _step_dir(directory, step)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / STATE_ITEM,
            args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=True))
    except Exception as e:  # tensorstore, zstd, json, orbax: every failure to read the files
        raise CheckpointDamaged(directory, step, _file_in(str(e), step_dir) or STATE_ITEM, _first_line(e)) from e
    merged = _deep_merge(restored.get(use, {}), restored.get("frozen", {}))
    return merged, restored.get("rest", {}), use == "ema"
