"""Splitting an NNX module into a static definition and pure dicts of its variables, and back.

:class:`ModelDef` is the static half (graph definition and abstract variable templates) of a module
split into trainable params, frozen params (regexes over ``"a/b/kernel"`` paths), other variables
(``rest``: statistics and the like) and RNG streams. Training keeps the pure dicts in its state and
checkpoints; inference rebuilds the module from them (:func:`jax_instant4d.inference.load_trained`).
RNG streams are never stored: :meth:`ModelDef.merge` seeds them from a key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import PyTree

from jax_instant4d.tree_paths import path_str


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _copy(state: nnx.State) -> nnx.State:
    return jax.tree.map(lambda x: x, state)


class ModelDef:
    """Static half of a split NNX module: rebuilds the module from pure dicts inside traced code."""

    def __init__(self, module: nnx.Module, frozen_patterns: Sequence[str] = ()):
        patterns = [re.compile(p) for p in frozen_patterns]
        self.frozen_patterns = tuple(frozen_patterns)

        def is_frozen(path) -> bool:
            name = path_str(path)
            return any(p.search(name) for p in patterns)

        trainable = lambda path, v: isinstance(v, nnx.Param) and not is_frozen(path)
        frozen = lambda path, v: isinstance(v, nnx.Param) and is_frozen(path)
        graphdef, params, frz, rngs, rest = nnx.split(module, trainable, frozen, nnx.RngState, ...)
        self.graphdef = graphdef
        self.templates = (params, frz, rngs, rest)
        self.filters = (trainable, frozen, nnx.RngState, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)))

    def abstract(self) -> tuple[PyTree, PyTree, PyTree]:
        """Abstract pure dicts (``ShapeDtypeStruct`` leaves) of params, frozen and rest."""
        params, frz, _, rest = self.templates
        to = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(s))
        return to(params), to(frz), to(rest)

    def annotations(self) -> dict[str, tuple]:
        """Partition annotations (``nnx.with_partitioning``) by parameter path."""
        out = {}
        for state in (self.templates[0], self.templates[1], self.templates[3]):
            for path, var in nnx.to_flat_state(state):
                meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
                spec = meta.get("out_sharding") or meta.get("sharding") or meta.get("sharding_names")
                if spec is not None:
                    out[path_str(path)] = tuple(spec)
        return out

    def split(self, module: nnx.Module) -> tuple[PyTree, PyTree, PyTree]:
        """Concrete pure dicts (params, frozen, rest) of a module built like the template."""
        params, frz, _, rest = (nnx.state(module, f) for f in self.filters)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(frz), nnx.to_pure_dict(rest)

    def rest_of(self, module: nnx.Module) -> PyTree:
        return nnx.to_pure_dict(nnx.state(module, self.filters[3]))

    def merge(self, params: PyTree, frozen: PyTree, rest: PyTree, key: jax.Array) -> nnx.Module:
        """A module with these variables and RNG streams freshly seeded from ``key``."""
        t_params, t_frozen, t_rngs, t_rest = (_copy(t) for t in self.templates)
        nnx.replace_by_pure_dict(t_params, params)
        nnx.replace_by_pure_dict(t_frozen, frozen)
        nnx.replace_by_pure_dict(t_rest, rest)
        leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(t_rngs))
        fresh = [jax.random.fold_in(key, i) if _is_key(x) else jnp.zeros(x.shape, x.dtype)
                 for i, x in enumerate(leaves)]
        if leaves:
            nnx.replace_by_pure_dict(t_rngs, jax.tree.unflatten(treedef, fresh))
        return nnx.merge(self.graphdef, t_params, t_frozen, t_rngs, t_rest)
