"""Command line: `python -m lie_cam reproduce | explainers | detect | precision | train ...`."""

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


def _explainers(args: argparse.Namespace) -> int:
    from lie_cam.explainers import matrix_markdown, run_explainers

    matrix = run_explainers(args.out, limit=args.limit, profile=args.profile, device=args.device,
                            costly_limit=args.costly_limit, progress=not args.no_progress)
    print(matrix_markdown(matrix, "default"))
    print(f"wrote {args.out}/matrix.json, matrix.md, verdicts.png in {matrix.settings['seconds']:.0f}s")
    return 0


def _add_explainers(commands: argparse._SubParsersAction) -> None:
    """`python -m lie_cam explainers`: the CAM-method x attack matrix (lie_cam.explainers)."""
    exp = commands.add_parser("explainers", help="which CAM methods of pytorch-grad-cam, captum and torchcam T1-T4 fool")
    exp.add_argument("--profile", choices=["embedded", "imagenette", "imagenet"], default="embedded")
    exp.add_argument("--limit", type=int, default=32, help="evaluate the first N images (default 32)")
    exp.add_argument("--costly-limit", type=int, default=4,
                     help="images for the score/ablation methods, ~K+1 forwards per image each (default 4)")
    exp.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    exp.add_argument("--no-progress", action="store_true")
    exp.add_argument("--out", required=True, help="output folder")
    exp.set_defaults(run=_explainers)


def _detect(args: argparse.Namespace) -> int:
    from lie_cam.detectors import run_detection

    result = run_detection(args.out, zoo=args.zoo, threads=args.threads)
    print(f"wrote {args.out}/detectors.json, detectors.md, roc.png in {result['seconds']}s")
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
    _add_explainers(commands)
    det = commands.add_parser("detect", help="every detector on a zoo of clean models and on T1-T4 and the hijack")
    det.add_argument("--out", required=True, help="output folder")
    det.add_argument("--zoo", default=None, help="zoo folder (built there if missing; default OUT/zoo)")
    det.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    det.set_defaults(run=_detect)
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
