"""A zoo of clean compact VGG-16s, to measure detectors' false positives: `python -m lie_cam.zoo --out DIR`.

Ten models that differ in how they were trained, plus the embedded model itself:
    ft-*      fine-tunes of the embedded model (`lie_cam.models.load_embedded`): each its own seed,
              its own disjoint slice of the training scenes, length (steps) and learning rate;
    narrow-*  width 1/16 networks trained briefly from scratch in the vgg16_bn layout and then
              folded (`lie_cam.models.fold_batchnorm`), like the embedded model's recipe.
Every model is trained with `lie_cam.train.train_step` (AdamW, cross-entropy, dropout on), on one
CPU thread by default, from fixed seeds: the command is deterministic. Each model is written as
NAME.safetensors with its recipe and sha256 in NAME.json (loadable with `load_zoo`), and the
list in zoo.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lie_cam import data as synth
from lie_cam.models import compact_vgg16, fold_batchnorm, load_embedded, sha256_file

__all__ = ["ZooRecipe", "RECIPES", "build_zoo", "load_zoo", "zoo_names", "main"]


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is trained: from the embedded model (`init="embedded"`) or from scratch
    (`init="scratch"`, vgg16_bn layout at `width`, folded after training), `steps` AdamW steps of
    `batch` scenes from training seeds [data_start, data_start + data_size), learning rate `lr`."""

    name: str
    init: str
    seed: int
    steps: int
    lr: float
    data_start: int
    data_size: int
    width: float = 0.125
    batch: int = 32


RECIPES: tuple[ZooRecipe, ...] = (
    ZooRecipe("ft-s1-10", "embedded", 1, 10, 3e-4, 0, 320),
    ZooRecipe("ft-s2-20", "embedded", 2, 20, 1e-4, 1000, 320),
    ZooRecipe("ft-s3-20", "embedded", 3, 20, 3e-4, 2000, 640),
    ZooRecipe("ft-s4-30", "embedded", 4, 30, 1e-4, 3000, 480),
    ZooRecipe("ft-s5-30", "embedded", 5, 30, 3e-4, 4000, 320),
    ZooRecipe("ft-s6-40", "embedded", 6, 40, 1e-4, 5000, 640),
    ZooRecipe("ft-s7-40", "embedded", 7, 40, 5e-4, 6000, 480),
    ZooRecipe("ft-s8-15", "embedded", 8, 15, 2e-4, 7000, 480),
    ZooRecipe("narrow-s0", "scratch", 0, 60, 2e-3, 8000, 480, width=0.0625),
    ZooRecipe("narrow-s1", "scratch", 1, 60, 2e-3, 9000, 480, width=0.0625),
)


def zoo_names(include_embedded: bool = True) -> list[str]:
    return (["embedded"] if include_embedded else []) + [r.name for r in RECIPES]


def _flip_turn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and one random quarter turn of B x H x W x 3 images."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(2), batch)
    return torch.rot90(batch, int(torch.randint(4, (1,), generator=generator)), dims=(1, 2))


def train_recipe(recipe: ZooRecipe) -> nn.Module:
    """Train one zoo model (deterministic for a given thread count)."""
    from lie_cam.train import train_step

    torch.manual_seed(recipe.seed)
    images, labels, _ = synth._render_many(recipe.data_size, synth.SPLITS["train"] + recipe.data_start)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    if recipe.init == "embedded":
        model = load_embedded()
    elif recipe.init == "scratch":
        model = compact_vgg16(width=recipe.width, num_classes=len(synth.CLASS_NAMES), hidden=256, dropout=0.2,
                              batch_norm=True)
        for layer in model.classifier:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    else:
        raise ValueError(f"init must be 'embedded' or 'scratch', got {recipe.init!r}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(recipe.seed)
    order = torch.cat([torch.randperm(recipe.data_size, generator=generator)
                       for _ in range(recipe.steps * recipe.batch // recipe.data_size + 1)])
    for step in range(recipe.steps):
        index = order[step * recipe.batch : (step + 1) * recipe.batch]
        x = synth.uint8_to_input(_flip_turn(images_t[index], generator))
        train_step(model, optimizer, x, labels_t[index])
    model.eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model = fold_batchnorm(model)
    return model.eval()


def build_zoo(out: str | Path, threads: int = 1, test_size: int = 200, force: bool = False) -> list[dict]:
    """Train every `RECIPES` model into `out` (skipping those already there with a matching recipe),
    and record each model's test accuracy on `test_size` test scenes. Returns the zoo.json rows."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x_test, y_test, _ = synth.synthetic_split("test", test_size)
    rows = []
    try:
        for recipe in RECIPES:
            weights, meta_path = out / f"{recipe.name}.safetensors", out / f"{recipe.name}.json"
            if not force and weights.exists() and meta_path.exists():
                meta = json.loads(meta_path.read_text())
                if meta.get("recipe") == asdict(recipe) and meta.get("sha256") == sha256_file(weights):
                    rows.append(meta)
                    continue
            started = time.time()
            model = train_recipe(recipe)
            seconds = time.time() - started
            with torch.no_grad():
                accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
            meta = {"recipe": asdict(recipe),
                    "architecture": {"width": recipe.width, "num_classes": len(synth.CLASS_NAMES), "hidden": 256,
                                     "dropout": 0.2},
                    "test_accuracy": accuracy, "test_size": test_size, "seconds": round(seconds, 1),
                    "threads": threads, "torch": torch.__version__, "sha256": sha256_file(weights)}
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            print(f"{recipe.name}: test accuracy {accuracy:.3f} ({seconds:.0f}s)", flush=True)
            rows.append(meta)
    finally:
        torch.set_num_threads(previous)
    (out / "zoo.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def load_zoo(folder: str | Path, include_embedded: bool = True) -> dict[str, nn.Module]:
    """The zoo's models (eval mode) by name, loaded from safetensors and checked against their sha256;
    with the embedded model first when `include_embedded`."""
    folder = Path(folder)
    models: dict[str, nn.Module] = {"embedded": load_embedded()} if include_embedded else {}
    for recipe in RECIPES:
        path = folder / f"{recipe.name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build the zoo with `python -m lie_cam.zoo --out {folder}`")
        models[recipe.name] = load_embedded(path, verify=True)
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="retrain models already in --out")
    args = parser.parse_args(argv)
    started = time.time()
    build_zoo(args.out, threads=args.threads, force=args.force)
    print(f"zoo in {args.out} ({time.time() - started:.0f}s)")


if __name__ == "__main__":
    main()
