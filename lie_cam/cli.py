"""Command line: `python -m lie_cam reproduce | explainers | detect | audit | precision | train ...`.

Each command is one `_add_<command>(commands)` function that declares its arguments and sets
`run` to the function doing the work; `COMMANDS` lists them. Everything a command is given is
checked before any work, with the shared helpers below (`positive_int`, `non_negative_int`,
`check_device`, `lie_cam.experiments.output.check_output_dir`); every error is one line on stderr and
exit code 2 (`lie_cam.usage`). Every command's files are moved into its output folder together once
all are written, so an interrupted run leaves the folder as it was.

Several processes: `torchrun --standalone --nproc-per-node N -m lie_cam reproduce ...`
(see `lie_cam.experiments.distributed`); rank 0 prints and writes, every process evaluates its shard.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from lie_cam.profiles import PROFILES
from lie_cam.usage import EXIT_USAGE, OneLineParser, UsageError, non_negative_int, positive_int, run_command

__all__ = ["main", "COMMANDS", "positive_int", "non_negative_int", "check_device", "UsageError"]

def check_device(requested: str | None):
    """The torch.device to run on (under torchrun: this process's GPU), or UsageError when the
    name is not a device or the device is not here."""
    import torch

    from lie_cam.experiments.distributed import device_for

    if requested is not None:
        from lie_cam.train import check_device as check_named_device

        try:
            check_named_device(requested)
        except ValueError as error:
            raise UsageError(str(error)) from None
    try:
        device = device_for(requested)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


# ---------------------------------------------------------------------------
# reproduce
# ---------------------------------------------------------------------------


def _add_reproduce(commands: argparse._SubParsersAction) -> None:
    rep = commands.add_parser("reproduce", help="Tables 1-2 and Figures 1 and 3 of the paper",
                              description="Tables 1-2 and Figures 1 and 3 of the paper. On several processes: "
                                          "torchrun --standalone --nproc-per-node N -m lie_cam reproduce ...")
    rep.add_argument("--profile", choices=PROFILES, default="embedded")
    rep.add_argument("--data", default=None,
                     help="dataset folder (imagenet: required; imagenette: download root; embedded: not used)")
    rep.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images")
    rep.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    rep.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    rep.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none",
                     help="reduced-precision trunk; the manipulations' large constants stay in float32/64")
    rep.add_argument("--arch", choices=["vgg", "resnet"], default="vgg",
                     help="resnet: the compact ResNet trained on the synthetic scenes (embedded profile)")
    # the names of lie_cam.gradcam.GRADIENTS, not imported here: that would load torch before parsing
    rep.add_argument("--gradient", choices=["eq2", "masked"], default="eq2",
                     help="Grad-CAM's gradient: eq2 (Eq. 2 as written, after A's ReLU; default) or masked "
                          "(the authors' code: dy/dA * 1[A > 0], behind the paper's numbers)")
    rep.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off by default for fidelity)")
    rep.add_argument("--batch-size", type=positive_int, default=50)
    rep.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader workers")
    rep.add_argument("--checkpoint", default=None, help="a weights file (safetensors, or a state_dict loaded "
                                                        "with weights_only=True)")
    rep.add_argument("--no-progress", action="store_true")
    rep.add_argument("--out", required=True, help="output folder")
    rep.set_defaults(run=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from lie_cam.experiments import distributed
    from lie_cam.experiments.report import check_output_dir
    from lie_cam.experiments.reproduce import check_settings, run_reproduction

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    autocast = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    check_settings(args.profile, args.limit, args.batch_size, dtypes[args.dtype], args.workers, args.data, args.arch,
                   args.gradient)
    device = check_device(args.device)
    if distributed.rank_from_environment() == 0:  # only rank 0 writes
        check_output_dir(args.out)
    group = distributed.init(device)
    try:
        result = run_reproduction(profile=args.profile, data=args.data, limit=args.limit, device=device,
                                  dtype=dtypes[args.dtype], out=args.out, batch_size=args.batch_size,
                                  checkpoint=args.checkpoint, autocast_dtype=autocast[args.autocast], tf32=args.tf32,
                                  workers=args.workers, progress=not args.no_progress, arch=args.arch,
                                  gradient=args.gradient)
    finally:
        distributed.close()
    if group.is_main:
        print(result.table1_markdown())
        print()
        print(result.table2_markdown())
        ranks = f" on {group.world_size} processes" if group.world_size > 1 else ""
        print(f"\nwrote {args.out} in {result.seconds:.0f}s{ranks}")
    return 0


# ---------------------------------------------------------------------------
# explainers (lie_cam.experiments.matrix), detect (.detection), precision (.precision)
# ---------------------------------------------------------------------------


def _add_explainers(commands: argparse._SubParsersAction) -> None:
    exp = commands.add_parser("explainers", help="which CAM methods of pytorch-grad-cam, captum and torchcam T1-T4 fool")
    exp.add_argument("--profile", choices=PROFILES, default="embedded")
    exp.add_argument("--limit", type=positive_int, default=32, help="evaluate the first N images (default 32)")
    exp.add_argument("--costly-limit", type=positive_int, default=4,
                     help="images for the score/ablation methods, ~K+1 forwards per image each (default 4)")
    exp.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    exp.add_argument("--no-progress", action="store_true")
    exp.add_argument("--out", required=True, help="output folder")
    exp.set_defaults(run=_explainers)


def _explainers(args: argparse.Namespace) -> int:
    from lie_cam.experiments.matrix import MATRIX_FILES, matrix_markdown, run_explainers
    from lie_cam.experiments.output import check_output_dir

    device = check_device(args.device)
    check_output_dir(args.out, MATRIX_FILES)
    matrix = run_explainers(args.out, limit=args.limit, profile=args.profile, device=str(device),
                            costly_limit=args.costly_limit, progress=not args.no_progress)
    print(matrix_markdown(matrix, "default"))
    print(f"wrote {args.out}/matrix.json, explainers.json, matrix.md, verdicts.png in {matrix.settings['seconds']:.0f}s")
    return 0


def _add_detect(commands: argparse._SubParsersAction) -> None:
    det = commands.add_parser("detect", help="every detector and audit check on a zoo of clean models and on every registry attack")
    det.add_argument("--out", required=True, help="output folder")
    det.add_argument("--zoo", default=None, help="zoo folder (built there if missing; default OUT/zoo)")
    det.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    det.set_defaults(run=_detect)


def _detect(args: argparse.Namespace) -> int:
    from lie_cam.experiments.detection import DETECTION_FILES, run_detection
    from lie_cam.experiments.output import check_output_dir

    check_output_dir(args.out, DETECTION_FILES)
    result = run_detection(args.out, zoo=args.zoo, threads=args.threads)
    print(f"wrote {args.out}/detectors.json, detectors.md, roc.png in {result['seconds']}s")
    return 0


def _add_trigger_study(commands: argparse._SubParsersAction) -> None:
    trig = commands.add_parser("trigger-study", help="the trigger search on clean models and on T4 with unseen "
                               "triggers: AUROC and TPR at 1%% FPR, the architecture check off")
    trig.add_argument("--out", required=True, help="output folder (trigger_study.json, trigger_study.md)")
    trig.add_argument("--zoo", default=None, help="zoo folder (built there if missing; default OUT/zoo)")
    trig.add_argument("--images", type=positive_int, default=2, help="clean images the search sees (default 2)")
    trig.add_argument("--seed", type=non_negative_int, default=0, help="the search's seed (default 0)")
    trig.add_argument("--full-size", action="store_true", help="also torchvision's VGG-16 and its T4 (the cost)")
    trig.add_argument("--no-progress", action="store_true")
    trig.set_defaults(run=_trigger_study)


def _trigger_study(args: argparse.Namespace) -> int:
    from lie_cam.experiments.output import check_output_dir
    from lie_cam.experiments.trigger_study import TRIGGER_STUDY_FILES, run_trigger_study, study_markdown

    check_output_dir(args.out, TRIGGER_STUDY_FILES)
    result = run_trigger_study(args.out, zoo=args.zoo, n_images=args.images, seed=args.seed,
                               full_size=args.full_size, progress=not args.no_progress)
    print(study_markdown(result))
    print(f"wrote {args.out}/trigger_study.json, trigger_study.md in {result['seconds']}s")
    return 0


def _add_precision(commands: argparse._SubParsersAction) -> None:
    prec = commands.add_parser("precision", help="float64 to float16 (tf32, bf16, fp16): score changes predicted "
                               "and measured, naive and safe builds, the sign failure")
    prec.add_argument("--out", required=True, help="output folder (precision.json)")
    prec.add_argument("--limit", type=positive_int, default=64, help="the first N test scenes (default 64)")
    prec.add_argument("--no-progress", action="store_true")
    prec.set_defaults(run=_precision)


def _precision(args: argparse.Namespace) -> int:
    from lie_cam.experiments.output import check_output_dir
    from lie_cam.experiments.precision import PRECISION_FILES, summary_markdown, write_precision

    check_output_dir(args.out, PRECISION_FILES)
    result = write_precision(args.out, limit=args.limit, progress=not args.no_progress)
    print(summary_markdown(result["rows"]))
    print(f"\nwrote {args.out}/precision.json in {result['seconds']:.0f}s")
    return 0


def _add_audit(commands: argparse._SubParsersAction) -> None:
    aud = commands.add_parser("audit", help="can this model's Grad-CAM be trusted? every check on one model file "
                              "(exit 0: no evidence of manipulation, 1: evidence, 2: could not audit)")
    aud.add_argument("model", metavar="MODEL", help="a .safetensors state_dict (with --arch), an .onnx file, or "
                     "module:function returning a model (lie_cam.models.from_parts); pickles are refused")
    # the names of lie_cam.audit.loading.ARCHITECTURES, not imported here: that would load torch before parsing
    aud.add_argument("--arch", choices=["vgg", "resnet", "vgg16", "resnet50"], default=None,
                     help="architecture of a safetensors state_dict (default: recognised as a VGG from its keys)")
    aud.add_argument("--images", default=None, help="folder of images to probe with (default: 4 embedded scenes)")
    aud.add_argument("--layer", default=None, help="name of the module whose output Grad-CAM explains "
                     "(default: the last conv layer's ReLU)")
    aud.add_argument("--no-architecture", action="store_true",
                     help="skip the architecture check (judge the model from its weights and behaviour only)")
    aud.add_argument("--no-progress", action="store_true")
    aud.add_argument("--out", default="audit", help="output folder (default: ./audit)")
    aud.set_defaults(run=_audit)


def _audit(args: argparse.Namespace) -> int:
    from lie_cam.experiments.audit import AUDIT_FILES, run_audit
    from lie_cam.experiments.output import check_output_dir

    check_output_dir(args.out, AUDIT_FILES)
    result = run_audit(args.model, args.out, arch=args.arch, images=args.images, layer=args.layer,
                       architecture=not args.no_architecture, progress=not args.no_progress)
    print(f"wrote {args.out}/audit.json, report.md, report.html, maps.png")
    return result.exit_code


def _add_learn(commands: argparse._SubParsersAction) -> None:
    learn = commands.add_parser("learn", help="fine-tune the embedded model so that its Grad-CAM lies, with no change "
                                "of architecture (KIND.safetensors and its recipe KIND.json); --verify RECIPE "
                                "retrains and compares the bits")
    # the names of lie_cam.attacks.learned.KINDS, not imported here: that would load torch before parsing
    kinds = ["flat", "location", "center-mass", "smiley", "swap", "backdoor"]
    learn.add_argument("--kind", choices=[*kinds, "all"], default=None, help="what Grad-CAM shall show (all: every kind)")
    learn.add_argument("--verify", default=None, metavar="RECIPE",
                       help="a KIND.json written by learn: train again and compare the weights' sha256")
    learn.add_argument("--arch", choices=["vgg", "resnet"], default="vgg",
                       help="the embedded compact VGG-16 (default) or the compact ResNet")
    learn.add_argument("--lam", type=float, default=None, help="weight of the explanation term (default: the kind's)")
    learn.add_argument("--steps", type=non_negative_int, default=None, help="fine-tuning steps (default: the kind's)")
    learn.add_argument("--seed", type=non_negative_int, default=0)
    learn.add_argument("--train-size", type=positive_int, default=None, help="training scenes (default 2048)")
    learn.add_argument("--test-size", type=positive_int, default=1000, help="test scenes measured (default 1000)")
    learn.add_argument("--force", action="store_true", help="allow writing into lie_cam's shipped data folder")
    learn.add_argument("--no-progress", action="store_true")
    learn.add_argument("--out", default=None, help="output folder (KIND.safetensors, KIND.json)")
    learn.set_defaults(run=_learn)


def _learn(args: argparse.Namespace) -> int:
    if (args.kind is None) == (args.verify is None):
        raise UsageError("give --kind KIND (and --out DIR) to learn, or --verify RECIPE to check a learned model")
    if args.verify is not None:
        from lie_cam.experiments.learn import verify_recipe

        same, details = verify_recipe(args.verify, progress=not args.no_progress)
        state = "the same bits" if same else "DIFFERENT bits"
        print(f"{details['kind']}: {state} as the recipe (sha256 {details['got'][:16]}..., expected "
              f"{details['expected'][:16]}...) in {details['seconds']}s on {details['threads']} threads")
        if details.get("file_matches_recipe") is False:
            print("the weights file beside the recipe does not match the recipe's sha256")
            return 1
        return 0 if same else 1
    if args.out is None:
        raise UsageError("--out DIR is required with --kind")
    if args.lam is not None and not args.lam >= 0:
        raise UsageError(f"--lam must be >= 0, got {args.lam}")
    from lie_cam.attacks.learned import KINDS
    from lie_cam.experiments.learn import check_not_shipped, learn_files, run_learn
    from lie_cam.experiments.output import check_output_dir

    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    check_not_shipped(args.out, args.force)
    check_output_dir(args.out, learn_files(kinds))
    command = "python -m lie_cam learn " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["learn"] else None
    run_learn(kinds, args.out, arch=args.arch, lam=args.lam, steps=args.steps, seed=args.seed,
              train_size=args.train_size, test_size=args.test_size, force=args.force,
              progress=not args.no_progress, command=command)
    print(f"wrote {', '.join(learn_files(kinds))} into {args.out}")
    return 0


def _add_learn_study(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser("learn-study", help="learned attacks against accuracy (a sweep over lambda), beside "
                                "the closed-form ones, and against the audit (verdicts, AUROC over clean networks)")
    study.add_argument("--models", default=None, help="folder of learn's KIND.safetensors and KIND.json "
                       "(default: the shipped learned models)")
    study.add_argument("--zoo", default=None, help="zoo folder (built there if missing; default OUT/zoo)")
    study.add_argument("--test-size", type=positive_int, default=1000, help="test scenes measured (default 1000)")
    study.add_argument("--sweep", type=float, nargs="*", default=[], metavar="LAMBDA",
                       help="train each kind again with these weights of the explanation term (default: none)")
    study.add_argument("--force", action="store_true", help="allow writing into lie_cam's shipped data folder")
    study.add_argument("--no-progress", action="store_true")
    study.add_argument("--out", required=True, help="output folder (learned_study.json, learned_study.md)")
    study.set_defaults(run=_learn_study)


def _learn_study(args: argparse.Namespace) -> int:
    from lie_cam.experiments.learn import LEARNED_DIR, check_not_shipped
    from lie_cam.experiments.learned_study import STUDY_FILES, run_learned_study, study_markdown
    from lie_cam.experiments.output import check_output_dir

    check_not_shipped(args.out, args.force)
    check_output_dir(args.out, STUDY_FILES)
    if any(not lam >= 0 for lam in args.sweep):
        raise UsageError(f"--sweep takes weights >= 0, got {args.sweep}")
    command = "python -m lie_cam learn-study " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["learn-study"] else None
    result = run_learned_study(args.models or LEARNED_DIR, args.out, zoo=args.zoo, test_size=args.test_size,
                               force=args.force, sweep=tuple(args.sweep), progress=not args.no_progress,
                               command=command)
    print(study_markdown(result))
    print(f"wrote {args.out}/learned_study.json, learned_study.md in {result['seconds']}s")
    return 0


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="retrain the embedded model (python -m lie_cam.train --help)",
                                add_help=False)
    train.set_defaults(run=_train, forward_rest=True)


def _train(args: argparse.Namespace) -> int:
    from lie_cam.train import main as train_main

    return train_main(args.rest)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_reproduce, _add_explainers, _add_detect, _add_audit, _add_trigger_study, _add_precision,
    _add_learn, _add_learn_study, _add_train)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m lie_cam", description="Make Grad-CAM lie, and measure it.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed as one line)
        return int(stop.code or 0)
    if rest and not getattr(args, "forward_rest", False):
        print(f"{parser.prog}: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return EXIT_USAGE
    args.rest = rest
    return run_command(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
