"""``instant4d data``: argument parsing only; the work is in the data package.

    instant4d data synth  [--config F] [--config.data.KEY=V ...]   generate synthetic_heads (if missing)
    instant4d data ingest SRC --out DIR [--strict] [--resize] [--overwrite] [--config F]
    instant4d data motion-encoder [--config F]                     pretrain the synthetic teacher's motion encoder
    instant4d data driving OUT --identity N [--source M] [--frames F]  a synthetic driving video (PNG frames)
    instant4d data info   [--config F]                             where the dataset is, its splits
    instant4d data sheet  OUT.png [--config F] [--clips N]         contact sheet of a dataset's clips
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("synth", help="generate the synthetic_heads dataset of the config (skipped if present)")
    p.add_argument("--config", default="configs/small.py", help="config file (default: configs/small.py)")
    p = sub.add_parser("ingest", help="validate a folder of teacher clips and write the teacher_clips dataset")
    p.add_argument("src", help="folder with one sub-folder per clip (see jax_instant4d/data/README.md)")
    p.add_argument("--out", required=True, help="tfds data dir to write into (then train with "
                                                "--config.data.data_dir=DIR --config.data.dataset=teacher_clips)")
    p.add_argument("--config", default="configs/small.py", help="config file: data.resolution, image_format, "
                                                                "heldout_identities")
    p.add_argument("--strict", action="store_true", help="any rejected clip is fatal (nothing is written)")
    p.add_argument("--resize", action="store_true", help="resample square frames of another size to "
                                                         "data.resolution (intrinsics scaled) instead of rejecting")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p = sub.add_parser("motion-encoder", help="pretrain the synthetic teacher's motion encoder (model.motion.weights="
                                              "teacher) on the training identities (skipped if cached)")
    p.add_argument("--config", default="configs/small.py", help="config file (default: configs/small.py)")
    p = sub.add_parser("driving", help="render a synthetic driving video: one identity of the dataset performing a "
                                       "smooth sequence of expressions (PNG frames), and another's neutral portrait")
    p.add_argument("out", help="folder to write (frame_00000.png ..., expressions.json, and source.png with --source)")
    p.add_argument("--config", default="configs/small.py")
    p.add_argument("--identity", type=int, required=True, help="the driving identity (a dataset index; the last "
                                                                 "data.heldout_identities are the held-out ones)")
    p.add_argument("--source", type=int, default=None, help="also write this identity's neutral portrait as source.png")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("info", help="print where the config's dataset is and what it holds")
    p.add_argument("--config", default="configs/small.py")
    p = sub.add_parser("sheet", help="write a contact sheet (source | driving | teacher views) of some clips")
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--config", default="configs/small.py")
    p.add_argument("--split", default="train")
    p.add_argument("--clips", type=int, default=6)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from jax_instant4d.config import get_config
    from jax_instant4d.data.pipeline import check_data_config

    cfg = get_config(args.config, overrides)
    cmd = args.data_command
    check_data_config(cfg, need_dataset=cmd == "sheet")  # one line naming the key (exit 2) before any work
    if cmd == "synth":
        from jax_instant4d.data.pipeline import dataset_path, ensure_dataset

        if cfg.data.dataset != "synthetic_heads":
            print(f"instant4d data synth: data.dataset is {cfg.data.dataset!r}, not synthetic_heads", file=sys.stderr)
            return 2
        path = dataset_path(cfg)
        print(f"synthetic_heads -> {path}", flush=True)
        ensure_dataset(cfg, progress=True)
        print(f"ready: {path}")
        return 0
    if cmd == "motion-encoder":
        return _motion_encoder(cfg)
    if cmd == "driving":
        return _driving(cfg, args)
    if cmd == "ingest":
        from jax_instant4d.data.ingest import IngestError, ingest

        d = cfg.data
        try:
            report = ingest(args.src, args.out, int(d.resolution), image_format=d.image_format,
                            jpeg_quality=int(d.jpeg_quality), heldout_identities=int(d.heldout_identities),
                            strict=args.strict, resize=args.resize, overwrite=args.overwrite)
        except (IngestError, FileNotFoundError) as e:
            print(f"instant4d data ingest: {e}", file=sys.stderr)
            return 1
        print(report.summary())
        print(f"dataset: {report.path}")
        return 0
    if cmd == "info":
        from jax_instant4d.data import builders
        from jax_instant4d.data.pipeline import dataset_path

        path = dataset_path(cfg)
        print(f"dataset {cfg.data.dataset} at {path}")
        if not builders.is_complete(path):
            print("  (not prepared yet)")
            return 0
        import tensorflow_datasets as tfds

        info = tfds.builder_from_directory(str(path)).info
        for name, split in info.splits.items():
            print(f"  {name}: {split.num_examples} clips, {split.num_bytes / 2 ** 20:.1f} MiB")
        return 0
    if cmd == "sheet":
        from jax_instant4d.data.pipeline import ensure_dataset
        from jax_instant4d.data.sheet import contact_sheet

        path = ensure_dataset(cfg, progress=True)
        contact_sheet(path, args.split, args.out, clips=args.clips)
        print(f"wrote {args.out}")
        return 0
    raise AssertionError(cmd)


def _driving(cfg, args) -> int:
    import json
    from pathlib import Path

    from PIL import Image

    from jax_instant4d.data import groundtruth, synthetic
    from jax_instant4d.data.record import EXPRESSION_NAMES

    if cfg.data.dataset != "synthetic_heads":
        print(f"instant4d data driving: data.dataset is {cfg.data.dataset!r}, not synthetic_heads", file=sys.stderr)
        return 2
    spec = synthetic.spec_from_config(cfg)
    for name, ident in (("--identity", args.identity), ("--source", args.source)):
        if ident is not None and not 0 <= ident < spec.num_identities:
            print(f"instant4d data driving: {name} {ident} is not an identity of the dataset "
                  f"(0..{spec.num_identities - 1})", file=sys.stderr)
            return 2
    if args.frames < 1:
        print(f"instant4d data driving: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames, expr = groundtruth.driving_video(spec, args.identity, args.frames, args.seed, str(cfg.render.backend))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(out / f"frame_{i:05d}.png")
    (out / "expressions.json").write_text(json.dumps({"identity": args.identity, "seed": args.seed,
                                                      "names": list(EXPRESSION_NAMES),
                                                      "expressions": expr.round(4).tolist()}) + "\n")
    if args.source is not None:
        src, _ = groundtruth.driving_video(spec, args.source, 1, args.seed, str(cfg.render.backend))
        Image.fromarray(src[0]).save(out / "source.png")
    print(f"wrote {len(frames)} frames of identity {args.identity} to {out}"
          + (f" and the neutral portrait of identity {args.source} as {out / 'source.png'}" if args.source is not None
             else ""))
    return 0


def _motion_encoder(cfg) -> int:
    from jax_instant4d.data import motion_teacher
    from jax_instant4d.data.record import EXPRESSION_NAMES

    if cfg.data.dataset != "synthetic_heads":
        print(f"instant4d data motion-encoder: data.dataset is {cfg.data.dataset!r}, not synthetic_heads (real "
              "teacher clips come with their teacher's encoder: set model.motion.weights to its file)", file=sys.stderr)
        return 2
    path, info = motion_teacher.ensure(cfg)
    print(f"motion encoder: {path} ({'cached' if info.get('cached') else 'pretrained now'}; accuracy in "
          f"{path.with_suffix('.json')})")
    if "mae" in info:
        print(f"held-out identities: read-out MAE {info['mae']:.4f} (best constant {info['baseline_mae']:.4f}); "
              f"same expression on two identities: code distance {info['same_expression_distance_ratio']:.3f} x "
              f"that of random pairs")
        print("| parameter | MAE | best constant |\n|---|---|---|")
        for name in EXPRESSION_NAMES:
            mae, base = info["per_parameter_mae"][name], info["per_parameter_baseline_mae"][name]
            print(f"| {name} | {mae:.4f} | {base:.4f} |")
    return 0


COMMAND = ("datasets: generate synthetic heads, ingest teacher clips, inspect", add_arguments, run)


if __name__ == "__main__":
    from jax_instant4d.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
