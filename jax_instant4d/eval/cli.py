"""``instant4d eval``: argument parsing only; the work is in :mod:`jax_instant4d.eval.run`.

    instant4d eval --checkpoint DIR [--split heldout|train] [--step N] [--out FILE] [--markdown FILE]
                   [--max-clips N] [--lpips-weights F] [--identity-weights F] [--no-expression]
                   [--no-consistency] [--regressor-identities N] [--regressor-images N] [--regressor-steps N]
                   [--regressor-res R] [--expression-render-res R] [--config.KEY=V ...]

``--config.*`` overrides apply on top of the checkpoint's saved config (e.g. ``--config.render.backend=xla``,
``--config.data.data_dir=DIR`` to read the dataset from elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="work directory, its checkpoints/ folder or one step's "
                                                            "folder")
    parser.add_argument("--split", default="heldout", help="heldout (= test: held-out identities) or train")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", default=None, help="JSON file (default: <workdir>/eval_<split>.json)")
    parser.add_argument("--markdown", default=None, help="markdown table (default: the JSON's path with .md)")
    parser.add_argument("--max-clips", type=int, default=None, help="evaluate only the first N clips of the split")
    parser.add_argument("--lpips-weights", default=None, help="LPIPS-VGG weights (.safetensors/.npz); default: "
                                                              "train.loss.lpips_weights; without: LPIPS absent")
    parser.add_argument("--identity-weights", default=None, help="face-recognition (ArcFace IResNet) weights; "
                                                                 "default: train.loss.identity_weights")
    parser.add_argument("--no-expression", action="store_true", help="skip the expression error (and its regressor)")
    parser.add_argument("--no-consistency", action="store_true", help="skip the multi-view consistency score")
    # defaults named, not copied (stale copies said 3072 / 1500 / 64), and not imported: --help stays jax-free
    where = "RegressorSettings in jax_instant4d/eval/expression.py"
    parser.add_argument("--regressor-identities", type=int, default=None, help="random identities its training "
                                                                               f"renders show (default: {where})")
    parser.add_argument("--regressor-images", type=int, default=None, help="training renders of the expression "
                                                                           f"regressor (default: {where})")
    parser.add_argument("--regressor-steps", type=int, default=None, help=f"its training steps (default: {where})")
    parser.add_argument("--regressor-res", type=int, default=None, help="the resolution it reads frames at "
                                                                        f"(default: {where})")
    parser.add_argument("--expression-render-res", type=int, default=None,
                        help="render the avatar for the expression regressor at R^2 (e.g. its training size) and "
                             "resize to the regressor's resolution; default: render at the regressor's resolution")
    parser.add_argument("--timing-repeats", type=int, default=20, help="animate calls timed after warm-up")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from jax_instant4d.inference import CheckpointNotFound

    try:
        from jax_instant4d.eval import expression
        from jax_instant4d.eval.run import evaluate

        settings = None
        if args.regressor_identities or args.regressor_images or args.regressor_steps or args.regressor_res:
            from jax_instant4d.inference import resolve_checkpoint, saved_config

            folder, step = resolve_checkpoint(args.checkpoint, args.step)
            cfg = saved_config(folder, step, overrides)
            settings = expression.settings_for(cfg, identities=args.regressor_identities,
                                               train_images=args.regressor_images, steps=args.regressor_steps,
                                               resolution=args.regressor_res)
        result = evaluate(args.checkpoint, args.split, step=args.step, out=args.out, markdown=args.markdown,
                          max_clips=args.max_clips, lpips_weights=args.lpips_weights,
                          identity_weights=args.identity_weights, overrides=overrides,
                          expression=not args.no_expression, regressor=settings,
                          consistency=not args.no_consistency, timing_repeats=args.timing_repeats,
                          expression_render_res=args.expression_render_res)
    except (CheckpointNotFound, FileNotFoundError, ValueError) as e:
        print(f"instant4d eval: error: {e}", file=sys.stderr)
        return 2
    for note in result["notes"]:
        if "absent" in note or "skipped" in note:
            logger.info("note: %s", note)
    s, c = result["self"], result["cross"]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"self : psnr {fmt(s['psnr'])} ssim {fmt(s['ssim'])} lpips {fmt(s['lpips'])} "
          f"expr {fmt(s['expression_error'])} consistency {fmt(s['consistency'])} ({s['num_frames']} frames)")
    print(f"cross: psnr {fmt(c['psnr'])} ssim {fmt(c['ssim'])} identity {fmt(c['identity'])} "
          f"expr {fmt(c['expression_error'])} consistency {fmt(c['consistency'])} ({c['num_frames']} frames)")
    print(f"animate {result['animate_fps']:.1f} FPS, encode {result['encode_ms']:.1f} ms")
    return 0


COMMAND = ("evaluate a checkpoint: self/cross-reenactment metrics, expression error, consistency, speed "
           "(JSON + markdown beside the paper's Table 1)", add_arguments, run)


if __name__ == "__main__":
    from jax_instant4d.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
