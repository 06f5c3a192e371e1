"""The audit on every clean model available offline and on every registry attack built from them, and the
audit's time on the full-size VGG-16 (issue 20's done-when). Deterministic (fixed seeds); one run:

    python benchmarks/audit_models.py --zoo ZOO_DIR --json /tmp/audit_models.json   # ZOO_DIR from
        python -m lie_cam.experiments.zoo --out ZOO_DIR (built if missing; ~20 min on one core)
    python benchmarks/audit_models.py --timing-only                                  # the VGG-16 time

Clean: the embedded compact VGG and ResNet, the clean zoo, torchvision VGG-16 and ResNet-50 with random
weights (seed 0), the tumour VGG-16 (lie_cam[real]; left out with a note when not installed). Attacked: every
attack of `lie_cam.attacks.ATTACKS` built from the embedded VGG, the embedded ResNet and each zoo model
(attacks that refuse a base, the hijack on a ResNet, are counted as not applicable); the triggered ones
audited twice, on the default images and on the same images with the attack's sticker pasted. Prints the
false alarms (clean models with exit code 1) and the detections (attacked models with exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lie_cam import data as synth  # noqa: E402
from lie_cam.anatomy import InputSpec  # noqa: E402
from lie_cam.attacks import ATTACKS  # noqa: E402
from lie_cam.audit.auditing import audit, default_images  # noqa: E402
from lie_cam.compat import import_torchvision  # noqa: E402
from lie_cam.models import load_embedded, load_embedded_resnet  # noqa: E402


def clean_models(zoo: Path | None) -> dict[str, torch.nn.Module]:
    """The clean models, by name, in a fixed order."""
    models = {"embedded VGG": load_embedded(), "embedded ResNet": load_embedded_resnet()}
    if zoo is not None:
        from lie_cam.experiments.zoo import load_zoo

        models.update({f"zoo {k}": v for k, v in load_zoo(zoo, include_embedded=False).items()})
    torchvision = import_torchvision()
    torch.manual_seed(0)
    models["torchvision VGG-16 (random)"] = torchvision.models.vgg16(weights=None).eval()
    torch.manual_seed(0)
    models["torchvision ResNet-50 (random)"] = torchvision.models.resnet50(weights=None).eval()
    try:
        from lie_cam.tumour import load_tumour_model

        models["tumour VGG-16"] = load_tumour_model()
    except ImportError as error:
        print(f"tumour model left out: {error}", file=sys.stderr)
    return models


def stickered(model: torch.nn.Module, pixels: torch.Tensor, attack: str) -> torch.Tensor:
    """The pixels with the attack's sticker pasted (3 per image, the tables' positions), in pixel space."""
    sticker = ATTACKS[attack].defaults(model, {}).get("sticker")
    out, _ = synth.paste_stickers(pixels, [synth.STICKER_SEED + i for i in range(len(pixels))], sticker=sticker,
                                  spec=InputSpec(pixels.shape[-1], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    return out


def _row(name: str, kind: str, model: torch.nn.Module, pixels: torch.Tensor | None = None, images: str | None = None
         ) -> dict:
    started = time.time()
    result = audit(model, pixels, images, maps=False, name=name)
    row = {"model": name, "kind": kind, "exit_code": result.exit_code, "flagged": result.flagged,
           "scores": {c.key: c.score for c in result.checks}, "seconds": round(time.time() - started, 1)}
    print(f"{kind:8} {name:48} exit {result.exit_code}  {','.join(result.flagged) or '-'}", flush=True)
    return row


def attacked_rows(bases: dict[str, torch.nn.Module]) -> list[dict]:
    """Every registry attack built from every base, audited (triggered ones also with the sticker)."""
    rows = []
    x_attack, y_attack, _ = synth.synthetic_split("val", 64)
    for base_name, base in bases.items():
        for attack in ATTACKS.values():
            given = {"images": x_attack, "labels": y_attack} if attack.accepts("images") else {}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    built = attack.build(base, **given)
            except (TypeError, ValueError) as error:
                rows.append({"model": f"{attack.name} of {base_name}", "kind": "n/a", "why": str(error)[:120]})
                print(f"n/a      {attack.name} of {base_name}: {str(error)[:80]}", flush=True)
                continue
            rows.append(_row(f"{attack.name} of {base_name}", "attacked", built))
            if attack.triggered:
                pixels, _ = default_images(built)
                rows.append(_row(f"{attack.name} of {base_name} (stickered images)", "attacked", built,
                                 stickered(base, pixels, attack.name), "default scenes with the sticker"))
    return rows


def vgg16_timing() -> dict:
    """The audit of torchvision's full-size VGG-16 (random weights) with default settings, maps included."""
    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    started, cpu = time.time(), time.process_time()
    result = audit(model, name="torchvision VGG-16", progress=lambda m: print(m, flush=True))
    seconds, cpu = time.time() - started, time.process_time() - cpu
    print(f"full VGG-16 audit: {seconds:.0f} s wall, {cpu:.0f} s CPU (threads {torch.get_num_threads()}), "
          f"exit {result.exit_code}")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads(),
            "exit_code": result.exit_code, "checks_run": [c.key for c in result.checks if c.ran]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="the clean zoo's folder (lie_cam.experiments.zoo)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timing-only", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    out: dict = {"timing": vgg16_timing()}
    if not args.timing_only:
        clean = clean_models(args.zoo)
        rows = [_row(name, "clean", model) for name, model in clean.items()]
        bases = {k: v for k, v in clean.items() if k.startswith(("embedded", "zoo"))}
        rows += attacked_rows(bases)
        clean_rows = [r for r in rows if r["kind"] == "clean"]
        attacked = [r for r in rows if r["kind"] == "attacked"]
        out.update(rows=rows, false_alarms=sum(r["exit_code"] for r in clean_rows), n_clean=len(clean_rows),
                   detections=sum(r["exit_code"] for r in attacked), n_attacked=len(attacked),
                   detections_without_architecture=sum(bool(set(r["flagged"]) - {"architecture"}) for r in attacked),
                   not_applicable=sum(r["kind"] == "n/a" for r in rows))
        print(f"false alarms: {out['false_alarms']} of {out['n_clean']} clean models; detections: "
              f"{out['detections']} of {out['n_attacked']} attacked models "
              f"({out['detections_without_architecture']} without the architecture check); "
              f"{out['not_applicable']} not applicable")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
