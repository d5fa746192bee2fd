"""``instant4d export``: argument parsing only; the work is in :mod:`jax_instant4d.export`.

    instant4d export torch --checkpoint DIR --out model.safetensors        weights (official names) + config
    instant4d export ply --checkpoint DIR --source IMG [--driving IMG] --out avatar.ply   3DGS PLY file
    instant4d export import-torch FILE [--config F] --out WORKDIR [--overwrite]  PyTorch weights -> checkpoint

``--checkpoint`` takes a work directory, its ``checkpoints/`` folder or one step's folder; ``--config.x.y=v``
overrides apply to the checkpoint's saved config (torch, ply) or to ``--config`` (import-torch).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_command", required=True)

    def checkpoint_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="work directory, checkpoints/ folder or step folder")
        p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
        p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw parameters, not the EMA")

    p = sub.add_parser("torch", help="write the whole model's weights as safetensors, named like the official "
                                     "PyTorch code (config in the metadata)")
    checkpoint_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p = sub.add_parser("ply", help="write an avatar's Gaussians (at an expression) as a 3D Gaussian Splatting PLY")
    checkpoint_args(p)
    p.add_argument("--source", required=True, help="source portrait image (FFHQ-aligned; resized to "
                                                   "model.image_size, centre-cropped if not square)")
    p.add_argument("--driving", default=None, help="driving frame whose expression to use (default: the source's)")
    p.add_argument("--out", required=True, help="output .ply file")
    p.add_argument("--min-opacity", type=float, default=1.0 / 255.0,
                   help="drop Gaussians below this opacity (default 1/255: those never drawn)")
    p = sub.add_parser("import-torch", help="convert an official-style PyTorch state dict (.pt/.pth/.safetensors) "
                                            "into a checkpoint that --checkpoint loads")
    p.add_argument("file", help="state dict file: flat, {'state_dict': ...} or the authors' "
                                "{'E_state_dict', 'M_state_dict'}")
    p.add_argument("--config", default=None, help="config file of the model in FILE (default: the config in the "
                                                  "file's metadata, for files written by 'export torch')")
    p.add_argument("--out", required=True, help="work directory to write (checkpoints/0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints in --out")


def _errors() -> tuple[type[Exception], ...]:
    from jax_instant4d.export.ply import ImageError, PlyError
    from jax_instant4d.export.torch_model import StateDictMismatch, UnreadableFile
    from jax_instant4d.restore import CheckpointError

    # OSError covers missing files, existing outputs and unwritable paths
    return OSError, ImageError, PlyError, StateDictMismatch, UnreadableFile, CheckpointError


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    cmd = args.export_command
    name = f"instant4d export {cmd}"
    try:
        if cmd in ("torch", "ply"):
            from jax_instant4d.inference import load_trained

            trained = load_trained(args.checkpoint, args.step, overrides=overrides, ema=args.ema)
            what = f"step {trained.step} of {trained.checkpoints}" + (" (EMA)" if trained.used_ema else "")
            if cmd == "torch":
                from jax_instant4d.export.torch_model import export_model

                path = export_model(trained.model, trained.cfg, args.out)
                print(f"wrote {path} ({what})")
                return 0
            from jax_instant4d.export.ply import export_avatar_ply, load_image

            size = int(trained.cfg.model.image_size)
            source = load_image(args.source, size)
            driving = None if args.driving is None else load_image(args.driving, size)
            written, total = export_avatar_ply(trained.model, source, driving, args.out, args.min_opacity)
            print(f"wrote {args.out}: {written} of {total} Gaussians ({total - written} invisible ones dropped; "
                  f"{what})")
            return 0
        if cmd == "import-torch":
            from jax_instant4d.config import get_config
            from jax_instant4d.export.torch_model import import_checkpoint

            cfg = get_config(args.config, overrides) if args.config else None
            workdir = import_checkpoint(args.file, cfg, args.out, overwrite=args.overwrite,
                                        overrides=[] if args.config else overrides)
            print(f"wrote checkpoint 0 in {workdir} (load it with --checkpoint {workdir})")
            return 0
    except _errors() as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        return 1
    raise AssertionError(cmd)


COMMAND = ("use a trained avatar elsewhere: PyTorch weights (both ways), PLY Gaussians", add_arguments, run)


if __name__ == "__main__":
    from jax_instant4d.cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
