"""Names of pytree paths: one spelling for sharding rules, checkpoint messages and the PyTorch name mapping.

A path is what ``jax.tree_util.tree_flatten_with_path`` gives (``DictKey``, ``GetAttrKey``,
``SequenceKey``, ``FlattenedIndexKey`` entries) or a tuple of plain keys (nnx state paths):
``(DictKey('encoder'), DictKey('conv'), SequenceKey(0))`` -> ``["encoder", "conv", "0"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def key_name(entry: Any) -> str:
    """One path entry as text: its ``key``, ``name`` or ``idx``, else ``str(entry)``."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_parts(path: Sequence[Any]) -> list[str]:
    """Every entry of ``path`` as text."""
    return [key_name(k) for k in path]


def path_str(path: Sequence[Any]) -> str:
    """``(DictKey('encoder'), DictKey('conv'), ...)`` or ``('encoder', 'conv')`` -> ``"encoder/conv"``."""
    return "/".join(path_parts(path))
