"""How well the trigger search (`lie_cam.audit.trigger`) tells T4 from clean models when it is not told
the trigger: `python -m lie_cam trigger-study --out DIR`.

Clean models (CLEAN): the clean zoo (`lie_cam.experiments.zoo`: the embedded VGG-16 and its ten
fine-tuned or pruned copies), the embedded ResNet, and untrained compact networks (eight VGG-16s and two
ResNets, PyTorch's initialisation from fixed seeds): 22 networks of two families, trained and not.
Backdoored models: T4 (and T4-adapted) built from those networks with triggers the search was never
tuned on (`variant_triggers`: random binary grey and colour patterns, a checkerboard, a grey-level
pattern, a ring, a cross, sides 5 to 28 pixels, and the paper's smiley once), one trigger per model.
The search sees only clean images (the architecture check plays no part); it is also run on images
carrying the stickers (at the seeded places of `lie_cam.data.sticker_positions`, elsewhere than the
tables' places), on T1-T3 and the hijack, on the real brain-tumour VGG-16 of chapter 13 and its T4,
and, with `--full-size`, on torchvision's VGG-16 (random
weights) and its T4, for the cost. Writes DIR/trigger_study.json (and trigger_study.md) through
`staged_output`. Deterministic: every network, trigger, image and search from fixed seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lie_cam import data as synth
from lie_cam.anatomy import input_spec
from lie_cam.attacks import ATTACKS
from lie_cam.audit.detectors import auroc, tpr_at_fpr
from lie_cam.audit.trigger import THRESHOLD, trigger_search
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.experiments.zoo import build_zoo, load_zoo, zoo_files
from lie_cam.models import compact_resnet, compact_vgg16, load_embedded_resnet
from lie_cam.plotting import markdown_table

__all__ = ["TRIGGER_STUDY_FILES", "variant_triggers", "clean_models", "backdoored_models", "run_trigger_study",
           "study_markdown"]

TRIGGER_STUDY_FILES = ("trigger_study.json", "trigger_study.md")
TRIGGER_SEED = 2_024_117  # the variant triggers' patterns are drawn from TRIGGER_SEED + their index


def _shape(kind: str, side: int) -> torch.Tensor:
    """A side x side grey binary shape: "ring" or "cross" (1 on the shape, 0 around it)."""
    r, c = torch.meshgrid(torch.arange(side) - (side - 1) / 2, torch.arange(side) - (side - 1) / 2, indexing="ij")
    if kind == "ring":
        d = (r**2 + c**2).sqrt()
        return ((d > side / 4) & (d < side / 2)).float()
    return ((r.abs() < side / 6) | (c.abs() < side / 6)).float()


def variant_triggers() -> dict[str, torch.Tensor]:
    """Triggers of other shapes and sizes than the smiley (3 x h x w or h x w pixel values in [0, 1]), by name."""
    made: dict[str, torch.Tensor] = {}
    specs = [("grey", 6), ("grey", 10), ("grey", 20), ("grey", 28), ("colour", 8), ("colour", 16), ("colour", 24),
             ("levels", 12), ("grey", 5), ("colour", 12)]
    for i, (kind, side) in enumerate(specs):
        g = torch.Generator().manual_seed(TRIGGER_SEED + i)
        if kind == "grey":
            pattern = (torch.rand(side, side, generator=g) > 0.5).float()
        elif kind == "colour":
            pattern = (torch.rand(3, side, side, generator=g) > 0.5).float()
        else:
            pattern = torch.rand(side, side, generator=g)
        made[f"{kind}{side}"] = pattern
    made["checker12"] = ((torch.arange(12)[:, None] // 3 + torch.arange(12)[None] // 3) % 2).float()
    made["ring18"], made["cross9"] = _shape("ring", 18), _shape("cross", 9)
    made["smiley14"] = synth.smiley()
    return made


def clean_models(zoo: Path) -> dict[str, nn.Module]:
    """The 22 clean networks of the study (module docstring), in eval mode, by name."""
    models = dict(load_zoo(zoo))
    models["embedded-resnet"] = load_embedded_resnet()
    for seed in range(8):
        torch.manual_seed(seed)
        models[f"random-vgg-s{seed}"] = compact_vgg16(width=0.125 if seed % 2 else 1 / 16, num_classes=10,
                                                        hidden=256 if seed % 2 else 64)
    for seed in range(2):
        torch.manual_seed(100 + seed)
        models[f"random-resnet-s{seed}"] = compact_resnet(width=16 if seed else 8, num_classes=10)
    return {name: m.eval() for name, m in models.items()}


def backdoored_models(clean: dict[str, nn.Module]) -> dict[str, tuple[nn.Module, str, torch.Tensor]]:
    """T4 with every variant trigger, cycling over the clean networks (two rounds), and T4-adapted with four
    of them: {name: (model, base, trigger)}."""
    triggers = variant_triggers()
    bases = list(clean)
    made: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
    names = list(triggers)
    for i in range(2 * len(names)):
        trigger, base = names[i % len(names)], bases[(i + i // len(names)) % len(bases)]
        made[f"T4[{trigger}]@{base}"] = (ATTACKS["T4"].build(clean[base], sticker=triggers[trigger]).eval(), base,
                                         triggers[trigger])
    for i, trigger in enumerate(names[:4]):
        base = bases[(3 * i + 1) % len(bases)]
        made[f"T4-adapted[{trigger}]@{base}"] = (
            ATTACKS["T4-adapted"].build(clean[base], sticker=triggers[trigger]).eval(), base, triggers[trigger])
    return made


def _with_sticker(model: nn.Module, x: torch.Tensor, sticker: torch.Tensor) -> torch.Tensor:
    """x with three copies of `sticker` per image, fully opaque, at seeded places (`sticker_positions` from
    seeds other than the tables' STICKER_SEED + i, anywhere at least 4 pixels inside the image)."""
    spec = input_spec(model)
    pixels = sticker.expand(3, *sticker.shape[-2:]) if sticker.dim() == 2 else sticker
    mean = torch.tensor(spec.mean, dtype=x.dtype).reshape(3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).reshape(3, 1, 1)
    patch = (pixels.to(x.dtype) - mean) / std
    side, size = patch.shape[-1], x.shape[-1]
    out = x.clone()
    for i in range(len(x)):
        corners = synth.sticker_positions(synth.STICKER_SEED + 7919 + i, count=3, image_size=size, low=4,
                                          high=size - side - 4, cell=max(16, side + 2), size=side)
        for r, c in corners:
            out[i, :, r : r + patch.shape[-2], c : c + side] = patch
    return out


def _search(model: nn.Module, x: torch.Tensor, seed: int) -> dict:
    started, cpu = time.time(), time.process_time()
    found = trigger_search(model, x, seed=seed)
    return {**found.summary(), "seconds": round(time.time() - started, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3)}


def _fires(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether T4's lie is on for images x (A^{K+1} > 0 somewhere)."""
    with torch.no_grad():
        return bool((model.extra_channel(x) != 0).any())


def _score_all(clean: dict[str, nn.Module], backdoored: dict, x: torch.Tensor, seed: int,
               log: Callable[..., None]) -> dict:
    """The search on every clean and backdoored network, with and without stickers in the images."""
    smiley = synth.smiley()
    rows: dict = {"clean": {}, "clean_with_sticker": {}, "backdoored": {}, "backdoored_with_sticker": {}}
    for name, model in clean.items():
        rows["clean"][name] = _search(model, x, seed)
        rows["clean_with_sticker"][name] = _search(model, _with_sticker(model, x, smiley), seed)
        log(f"clean {name}: {rows['clean'][name]['score']:.2f} ({rows['clean'][name]['seconds']:.1f}s)")
    for name, (model, base, trigger) in backdoored.items():
        stickered = _with_sticker(model, x, trigger)
        rows["backdoored"][name] = {**_search(model, x, seed), "base": base, "trigger_shape": list(trigger.shape),
                                    "fires_on_clean": _fires(model, x), "fires_with_sticker": _fires(model, stickered)}
        rows["backdoored_with_sticker"][name] = _search(model, stickered, seed)
        log(f"{name}: {rows['backdoored'][name]['score']:.2f} (with its sticker "
            f"{rows['backdoored_with_sticker'][name]['score']:.2f})")
    return rows


def _other_attacks(clean: dict[str, nn.Module], x: torch.Tensor, seed: int) -> dict:
    """T1-T3 and the hijack from the embedded VGG and (T1-T3) the embedded ResNet: the search's score."""
    x_attack, _, _ = synth.synthetic_split("val", 16)
    rows = {}
    for base in ("embedded", "embedded-resnet"):
        for name in ("T1", "T2", "T3", "hijack"):
            if name == "hijack" and base != "embedded":
                continue
            given = {"images": x_attack} if name == "hijack" else {}
            rows[f"{name}@{base}"] = _search(ATTACKS[name].build(clean[base], **given).eval(), x, seed)
    return rows


def _full_size(x: torch.Tensor, seed: int) -> dict:
    """torchvision's VGG-16 (random weights, seed 0) and its T4 (smiley): score and seconds."""
    from lie_cam.compat import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16().eval()
    return {"vgg16": _search(vgg, x, seed), "vgg16-T4": _search(ATTACKS["T4"].build(vgg).eval(), x, seed)}


def _tumour(seed: int) -> dict:
    """The real trained third-party VGG-16 of chapter 13 (`lie_cam.tumour`) on two MNI152 slices, clean and
    with T4 (smiley); {"unavailable": why} when its package is not installed."""
    try:
        from lie_cam.tumour import setup
    except ImportError as error:  # pragma: no cover - depends on the optional package
        return {"unavailable": str(error)}
    chapter = setup(n=2, device="cpu")
    model = chapter.model.eval()
    return {"tumour": _search(model, chapter.x, seed),
            "tumour-T4": _search(ATTACKS["T4"].build(model).eval(), chapter.x, seed)}


def _statistics(rows: dict) -> dict:
    clean = [r["score"] for r in rows["clean"].values()]
    stats = {}
    for key in ("backdoored", "backdoored_with_sticker"):
        attacked = [r["score"] for r in rows[key].values()]
        stats[key] = {"auroc": auroc(clean, attacked), "tpr_at_1pct_fpr": tpr_at_fpr(clean, attacked, 0.01),
                      "flagged": sum(s > THRESHOLD for s in attacked), "n": len(attacked)}
    for key in ("clean", "clean_with_sticker"):
        scores = [r["score"] for r in rows[key].values()]
        stats[key] = {"false_alarms": sum(s > THRESHOLD for s in scores), "n": len(scores), "max": max(scores)}
    return stats


def run_trigger_study(out: str | Path, zoo: str | Path | None = None, n_images: int = 2, seed: int = 0,
                      full_size: bool = False, progress: bool = True) -> dict:
    """The study of the module docstring; writes DIR/trigger_study.json and .md, returns the json's content."""
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    given, out = out, check_output_dir(out, TRIGGER_STUDY_FILES)
    zoo = check_output_dir(zoo if zoo is not None else out / "zoo", zoo_files())
    started = time.time()
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    build_zoo(zoo, threads=torch.get_num_threads())
    clean = clean_models(zoo)
    backdoored = backdoored_models(clean)
    x, _, _ = synth.synthetic_split("val", n_images, 6000)  # the auditor's clean images
    rows = _score_all(clean, backdoored, x, seed, log)
    result = {"statistics": _statistics(rows), "threshold": THRESHOLD, "rows": rows,
              "other_attacks": _other_attacks(clean, x, seed), "n_images": n_images, "seed": seed,
              "learned_backdoors": "measured by python -m lie_cam learn-study (lie_cam.experiments.learned_study)",
              "threads": torch.get_num_threads(), "command": f"python -m lie_cam trigger-study --out {given}"}
    result["real_model"] = _tumour(seed)
    if full_size:
        result["full_size"] = _full_size(x, seed)
    result["seconds"] = round(time.time() - started)
    with staged_output(out, TRIGGER_STUDY_FILES) as stage:
        (stage / "trigger_study.json").write_text(json.dumps(result, indent=1) + "\n")
        (stage / "trigger_study.md").write_text(study_markdown(result))
    return result


def study_markdown(result: dict) -> str:
    """The AUROC / TPR table and the counts, in Markdown."""
    stats = result["statistics"]
    table = [{"auditor's images": "with the trigger" if key.endswith("sticker") else "clean",
              "AUROC": s["auroc"], "TPR at 1% FPR": s["tpr_at_1pct_fpr"], "flagged": f"{s['flagged']}/{s['n']}"}
             for key, s in stats.items() if key.startswith("backdoored")]
    other = [{"model": name, "score": r["score"]} for name, r in result["other_attacks"].items()]
    extra = [{"model": name, "score": r["score"], "seconds": r["seconds"], "cpu seconds": r["cpu_seconds"]}
             for part in ("real_model", "full_size") for name, r in result.get(part, {}).items() if "score" in r]
    return "\n\n".join([
        "# Trigger search: T4 with unseen triggers, architecture check off",
        f"Command: `{result['command']}` ({result['seconds']} s, {result['threads']} thread(s)); threshold "
        f"{result['threshold']}. False alarms: {stats['clean']['false_alarms']}/{stats['clean']['n']} clean models "
        f"(highest score {stats['clean']['max']:.2f}), {stats['clean_with_sticker']['false_alarms']}/"
        f"{stats['clean_with_sticker']['n']} with a sticker in the images.",
        markdown_table(table, ["auditor's images", "AUROC", "TPR at 1% FPR", "flagged"], floatfmt=".3f"),
        "## T1-T3 and the hijack (not the search's job)",
        markdown_table(other, ["model", "score"], floatfmt=".2f"),
        "## A real model and the cost",
        markdown_table(extra, ["model", "score", "seconds", "cpu seconds"], floatfmt=".2f") if extra else "none",
        f"Learned backdoors: {result['learned_backdoors']}.",
    ]) + "\n"
