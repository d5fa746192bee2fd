"""Ground-truth renders for evaluation: re-exported from :mod:`jax_instant4d.data.groundtruth`, where
the synthetic teacher's own renderer lives (the teacher's motion encoder is trained on such renders too)."""

from jax_instant4d.data.groundtruth import CANONICAL_GROUP, RENDER_CHUNK, canonicals, render_frames, render_params

__all__ = ["CANONICAL_GROUP", "RENDER_CHUNK", "canonicals", "render_frames", "render_params"]
