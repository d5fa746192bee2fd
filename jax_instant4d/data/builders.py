"""tensorflow-datasets builders writing ArrayRecord (no TensorFlow needed): ``synthetic_heads``, ``teacher_clips``.

A dataset lives at ``<data_dir>/<builder>/<config name>/<version>/`` and is read back with
``tfds.builder_from_directory`` (so readers need neither the builder class nor its config). Both
builders are prepared with :func:`prepare_atomically`: tfds writes into a private temporary data dir
next to the destination, and only a completely written dataset is renamed into place, so an
interrupted run never leaves something that looks like a valid dataset.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from jax_instant4d.cachelock import load_or_make
from jax_instant4d.data import record, synthetic

VERSION = "1.0.0"


def _code_path(cls):
    # tfds locates a packaged builder's source through importlib_resources (not installed here); it only
    # needs the path to look for a checksums file next to it, so give it directly.
    del cls
    return epath.Path(__file__)


def dataset_dir(data_dir: str | os.PathLike, builder: str, config_name: str) -> Path:
    return Path(data_dir).expanduser().resolve() / builder / config_name / VERSION


def is_complete(path: str | os.PathLike) -> bool:
    """A prepared tfds dataset directory (what :func:`prepare_atomically` renames into place)."""
    path = Path(path)
    return (path / "dataset_info.json").is_file() and (path / "features.json").is_file()


def prepare_atomically(make_builder: Callable[[Path], tfds.core.DatasetBuilder], final: Path,
                       before_rename: Callable[[], None] | None = None) -> Path:
    """Prepares ``make_builder(tmp_data_dir)`` in a temporary dir and renames the result to ``final``.

    ``before_rename`` may raise to abandon the result (nothing is renamed). If another process renamed
    a complete dataset into ``final`` first, ours is discarded and theirs is kept (same content).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.parent.name}-", dir=final.parent))
    try:
        builder = make_builder(tmp / "data")
        from tensorflow_datasets.core.utils import tqdm_utils

        shown = tqdm_utils._active  # tfds' own bars count examples without a total: ours replace them
        tqdm_utils.display_progress_bar(False)
        try:
            builder.download_and_prepare(download_dir=str(tmp / "downloads"))
        finally:
            tqdm_utils.display_progress_bar(shown)
        built = Path(builder.data_dir)
        if not is_complete(built):
            raise RuntimeError(f"tfds did not produce a complete dataset in {built}")
        if before_rename is not None:
            before_rename()
        try:
            os.rename(built, final)
        except OSError:
            if not is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------------
# synthetic_heads
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SyntheticHeadsConfig(tfds.core.BuilderConfig):
    spec: synthetic.SyntheticSpec | None = None
    backend: str = "auto"
    progress: bool = False


class SyntheticHeads(tfds.core.GeneratorBasedBuilder):
    """Procedural Gaussian heads rendered as teacher clips (see ``synthetic.py``)."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = []
    code_path = tfds.core.utils.classproperty(classmethod(_code_path))

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.builder_config.spec
        return tfds.core.DatasetInfo(
            builder=self, features=record.features_dict(undriven=spec.undriven_views),
            description=f"Synthetic teacher clips of procedural Gaussian heads: {spec}.")

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in record.SPLITS}

    def _generate_examples(self, split):
        cfg = self.builder_config
        spec = cfg.spec
        for clip in synthetic.generate(spec, split, backend=cfg.backend, progress=cfg.progress):
            yield clip.clip_id, record.encode_clip(clip, spec.image_format, spec.jpeg_quality)


def build_synthetic(spec: synthetic.SyntheticSpec, data_dir: str | os.PathLike, backend: str = "auto",
                    progress: bool = False) -> Path:
    """Generates the synthetic dataset of ``spec`` under ``data_dir`` (if not there yet); returns its path."""
    final = dataset_dir(data_dir, "synthetic_heads", spec.name)
    cfg = SyntheticHeadsConfig(name=spec.name, spec=spec, backend=backend, progress=progress)

    def make() -> Path:
        return prepare_atomically(lambda d: SyntheticHeads(config=cfg, data_dir=str(d), file_format="array_record"),
                                  final)

    # one process generates; others starting at the same time wait for it, then read its dataset
    return load_or_make(final, "synthetic_heads", lambda: final, make, done=lambda: is_complete(final))


# --------------------------------------------------------------------------------------------------
# teacher_clips
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class TeacherClipsConfig(tfds.core.BuilderConfig):
    # split -> list of zero-argument callables, each returning one validated record dict
    loaders: dict | None = dataclasses.field(default=None, repr=False)


class TeacherClips(tfds.core.GeneratorBasedBuilder):
    """Real teacher output ingested from a folder of clips (see ``ingest.py``, which validates them)."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = []
    code_path = tfds.core.utils.classproperty(classmethod(_code_path))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=record.features_dict(),
                                     description="Teacher clips ingested by `instant4d data ingest`.")

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self.builder_config.loaders}

    def _generate_examples(self, split):
        for load in self.builder_config.loaders[split]:
            example = load()
            yield example["clip_id"], example
