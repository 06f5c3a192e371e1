"""Command line: `python -m lie_cam reproduce ...`, `python -m lie_cam precision ...` and `python -m lie_cam train ...`."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from lie_cam.reproduce import run_reproduction

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    autocast = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    result = run_reproduction(profile=args.profile, data=args.data, limit=args.limit, device=args.device,
                              dtype=dtypes[args.dtype], out=args.out, batch_size=args.batch_size,
                              checkpoint=args.checkpoint, autocast_dtype=autocast[args.autocast], tf32=args.tf32,
                              workers=args.workers, progress=not args.no_progress)
    print(result.table1_markdown())
    print()
    print(result.table2_markdown())
    print(f"\nwrote {args.out} in {result.seconds:.0f}s")
    return 0


def _precision(args: argparse.Namespace) -> int:
    from lie_cam.precision import summary_markdown, write_precision

    result = write_precision(args.out, limit=args.limit, progress=not args.no_progress)
    print(summary_markdown(result["rows"]))
    print(f"\nwrote {args.out}/precision.json in {result['seconds']:.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lie_cam", description="Make Grad-CAM lie, and measure it.")
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("reproduce", help="Tables 1-2 and Figures 1 and 3 of the paper")
    rep.add_argument("--profile", choices=["embedded", "imagenette", "imagenet"], default="embedded")
    rep.add_argument("--data", default=None, help="dataset folder (imagenet: required; imagenette: download root)")
    rep.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    rep.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    rep.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    rep.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none",
                     help="reduced-precision trunk; the manipulations' large constants stay in float32/64")
    rep.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off by default for fidelity)")
    rep.add_argument("--batch-size", type=int, default=50)
    rep.add_argument("--workers", type=int, default=None, help="DataLoader workers for image folders")
    rep.add_argument("--checkpoint", default=None, help="a weights file (state_dict; loaded with weights_only=True)")
    rep.add_argument("--no-progress", action="store_true")
    rep.add_argument("--out", required=True, help="output folder")
    rep.set_defaults(run=_reproduce)
    prec = commands.add_parser("precision", help="float64 to float16 (tf32, bf16, fp16): score changes predicted "
                               "and measured, naive and safe builds, the sign failure (lie_cam.precision)")
    prec.add_argument("--out", required=True, help="output folder (precision.json)")
    prec.add_argument("--limit", type=int, default=64, help="the first N test scenes (default 64)")
    prec.add_argument("--no-progress", action="store_true")
    prec.set_defaults(run=_precision)
    train = commands.add_parser("train", help="retrain the embedded model (python -m lie_cam.train --help)",
                                add_help=False)
    train.set_defaults(run=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from lie_cam.train import main as train_main

        train_main(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
