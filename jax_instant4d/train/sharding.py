"""Device mesh, partition rules and batch placement for training.

The mesh has three named axes: ``data`` (pure data parallelism), ``fsdp`` (data parallelism whose
devices also split the large parameters and their optimiser state) and ``model`` (room for tensor
parallelism: used by parameters whose kernels carry an ``nnx.with_partitioning`` annotation naming it).
Batches are split over ``data`` x ``fsdp``.

A parameter's ``PartitionSpec`` is decided, in order, by: the first matching rule of
``train.partition_rules`` (regex on the parameter path, e.g. ``"encoder/.*/kernel"``); the model's own
annotation (axes missing from the mesh dropped); then, for parameters with at least
``train.fsdp_min_size`` elements, the largest dimension divisible by the ``fsdp`` size is split over
``fsdp``. Everything else is replicated. A spec that does not divide a shape is an error naming the
parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

from jax_instant4d.tree_paths import path_str

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


class ShardingError(ValueError):
    """A mesh or partition rule that does not fit the devices or a parameter's shape."""


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single ``-1`` in ``shape`` with what is left of ``num_devices``; checks the product."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ShardingError(f"train.mesh must have {len(MESH_AXES)} entries {MESH_AXES}, got {tuple(shape)}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ShardingError(f"train.mesh may hold one -1 and positive sizes, got {tuple(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ShardingError(f"train.mesh {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ShardingError(f"train.mesh {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, model)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    kwargs = {} if devices == list(jax.devices()) else {"devices": devices}
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), **kwargs)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes of ``mesh``."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def _axis_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names if n is not None)


def _clean(entry, mesh: Mesh):
    """Drops axis names that the mesh lacks (annotations written for a bigger mesh)."""
    if entry is None:
        return None
    names = tuple(n for n in (entry if isinstance(entry, (tuple, list)) else (entry,)) if n in mesh.axis_names)
    if not names:
        return None
    return names if len(names) > 1 else names[0]


def param_spec(
    path: str,
    shape: Sequence[int],
    mesh: Mesh,
    *,
    rules: Sequence[tuple[str, Sequence[Any]]] = (),
    annotation: Sequence[Any] | None = None,
    fsdp_min_size: int = 1 << 18,
) -> P:
    """The ``PartitionSpec`` of one parameter (see the module docstring for the order of decisions)."""
    shape = tuple(int(s) for s in shape)
    spec: list[Any] | None = None
    for pattern, rule_spec in rules:
        if re.search(pattern, path):
            rule_spec = tuple(rule_spec)
            if len(rule_spec) > len(shape):
                raise ShardingError(f"partition rule {pattern!r} -> {rule_spec} has more entries than "
                                    f"parameter {path} has dimensions {shape}")
            spec = [_clean(e, mesh) for e in rule_spec] + [None] * (len(shape) - len(rule_spec))
            break
    if spec is None:
        spec = [None] * len(shape)
        if annotation is not None and len(tuple(annotation)) == len(shape):
            spec = [_clean(e, mesh) for e in annotation]
        fsdp = mesh.shape.get("fsdp", 1)
        used = {n for e in spec if e is not None for n in (e if isinstance(e, tuple) else (e,))}
        if fsdp > 1 and "fsdp" not in used and math.prod(shape) >= fsdp_min_size:
            free = [i for i, e in enumerate(spec) if e is None and shape[i] % fsdp == 0]
            if free:
                spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    for dim, entry in zip(shape, spec, strict=True):
        if entry is not None and dim % _axis_size(mesh, entry):
            raise ShardingError(f"parameter {path} of shape {shape}: spec {tuple(spec)} does not divide "
                                f"dimension {dim} (mesh {dict(mesh.shape)})")
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def param_shardings(
    abstract: PyTree,
    mesh: Mesh,
    *,
    rules: Sequence[tuple[str, Sequence[Any]]] = (),
    annotations: Mapping[str, Sequence[Any]] | None = None,
    fsdp_min_size: int = 1 << 18,
) -> PyTree:
    """``NamedSharding`` for every leaf of a (pure-dict) parameter tree; ``annotations`` maps paths to
    the model's own partition annotations."""
    annotations = annotations or {}

    def one(path, leaf):
        name = path_str(path)
        return NamedSharding(mesh, param_spec(name, leaf.shape, mesh, rules=rules, annotation=annotations.get(name),
                                              fsdp_min_size=fsdp_min_size))

    return jax.tree_util.tree_map_with_path(one, abstract)


def like_params_shardings(abstract: PyTree, params_shardings: PyTree, mesh: Mesh) -> PyTree:
    """Shardings for a tree that embeds copies of the parameter tree (optimiser moments, EMA):
    a leaf whose trailing path names a parameter of the same shape gets that parameter's sharding;
    every other leaf (step counters, scalars) is replicated."""
    by_path = {tuple(path_str([k]) for k in path): s
               for path, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]}

    def one(path, leaf):
        keys = tuple(path_str([k]) for k in path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and _fits(hit, leaf.shape):
                return hit
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract)


def _fits(sharding: NamedSharding, shape: Sequence[int]) -> bool:
    spec = tuple(sharding.spec)
    if len(spec) > len(shape):
        return False
    return all(e is None or d % _axis_size(sharding.mesh, e) == 0 for d, e in zip(shape, spec, strict=False))


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process NumPy batches (this process's share, leading axis) -> global arrays split over
    ``data`` x ``fsdp``. Every process must call this with batches of the same per-process size."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def describe(tree: PyTree, shardings: PyTree | None = None) -> str:
    """A table (path, shape, dtype, PartitionSpec) of a tree of arrays, for the work directory."""
    rows = [("parameter", "shape", "dtype", "sharding")]
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    specs = jax.tree.leaves(shardings) if shardings is not None else [getattr(x, "sharding", None) for _, x in leaves]
    total = 0
    for (path, x), s in zip(leaves, specs, strict=True):
        spec = getattr(s, "spec", s)
        rows.append((path_str(path), str(tuple(x.shape)), str(x.dtype), str(spec)))
        total += int(np.prod(x.shape))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total: {total:,} elements in {len(leaves)} arrays")
    return "\n".join(lines)
