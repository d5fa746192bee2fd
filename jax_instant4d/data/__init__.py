"""Teacher clips: the record format, the synthetic teacher, tfds builders, ingest, and the grain pipeline.

Public entry points (see README.md beside this file):

* :func:`ensure_dataset` (cfg) -> path: generates ``synthetic_heads`` if missing;
* :func:`make_pipeline` (cfg, split, batch_size, ...) -> infinite checkpointable iterator of batches;
* ``heads.head_gaussians`` (identity, expression) -> the synthetic head's Gaussians.

Imports are lazy so that grain worker processes and ``instant4d --help`` stay light.
"""

from __future__ import annotations

from jax_instant4d.data.record import EXPRESSION_NAMES, NUM_EXPRESSION

__all__ = ["EXPRESSION_NAMES", "NUM_EXPRESSION", "dataset_path", "ensure_dataset", "make_pipeline"]


def __getattr__(name):
    if name in ("dataset_path", "ensure_dataset", "make_pipeline", "make_dataset"):
        from jax_instant4d.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
