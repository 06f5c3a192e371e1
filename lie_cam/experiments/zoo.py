"""A zoo of clean compact VGG-16s, to measure detectors' false positives: `python -m lie_cam.experiments.zoo --out DIR`.

Ten models that differ in how they were trained, plus the embedded model itself, all from the
embedded model (`lie_cam.models.load_embedded`), each with its own seed, its own disjoint slice of
the training scenes, length (steps) and learning rate:
    top-*     its last conv block and classifier fine-tuned (the first four blocks frozen);
    pruned-*  its last block pruned to 32 or 48 filters per layer (largest L1 norm), then the same.
Every model is trained with `lie_cam.train.train_step` (AdamW, cross-entropy, dropout on), on one
CPU thread by default, from fixed seeds: the command is deterministic. Each model is written as
NAME.safetensors with its recipe and sha256 in NAME.json (loaded by `load_zoo` with
`lie_cam.models.load_model_file`, safetensors only), and the
list in zoo.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lie_cam import data as synth
from lie_cam.experiments.output import check_output_dir, link_or_copy, staged_output
from lie_cam.models import load_embedded, load_model_file, sha256_file
from lie_cam.train import train_step
from lie_cam.usage import OneLineParser, positive_int, run_command

__all__ = ["ZooRecipe", "RECIPES", "prune_filters", "train_recipe", "build_zoo", "load_zoo", "zoo_names", "zoo_files",
           "main"]


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is trained, from the embedded model (`lie_cam.models.load_embedded`):
    `init="top"` fine-tunes its last conv block and classifier (the first four blocks frozen, their
    output computed once per scene); `init="pruned"` first keeps, in the last block, the `width` share
    of VGG-16's 512 filters (those with the largest L1 norm; FC1's columns follow), then does the same. `steps` AdamW steps of `batch` scenes from training seeds
    [data_start, data_start + data_size), learning rate `lr`, seed `seed` (order, flips, turns)."""

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
    ZooRecipe("top-s1-25", "top", 1, 25, 3e-4, 0, 320),
    ZooRecipe("top-s2-50", "top", 2, 50, 1e-4, 1000, 320),
    ZooRecipe("top-s3-50", "top", 3, 50, 3e-4, 2000, 640),
    ZooRecipe("top-s4-100", "top", 4, 100, 1e-4, 3000, 480),
    ZooRecipe("top-s5-100", "top", 5, 100, 3e-4, 4000, 320),
    ZooRecipe("top-s6-200", "top", 6, 200, 1e-4, 5000, 640),
    ZooRecipe("top-s7-200", "top", 7, 200, 5e-4, 6000, 480),
    ZooRecipe("top-s8-40", "top", 8, 40, 1e-3, 7000, 480),
    ZooRecipe("pruned32-s0-100", "pruned", 0, 100, 1e-3, 8000, 640, width=0.0625),
    ZooRecipe("pruned48-s1-150", "pruned", 1, 150, 5e-4, 9000, 640, width=0.09375),
)

# The frozen part of a "top" fine-tune: features[:24] are VGG-16's first four blocks (10 convs, 4 pools).
_TOP_SPLIT = 24


def zoo_names(include_embedded: bool = True) -> list[str]:
    return (["embedded"] if include_embedded else []) + [r.name for r in RECIPES]


def _flip_turn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and one random quarter turn of B x H x W x 3 images."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(2), batch)
    return torch.rot90(batch, int(torch.randint(4, (1,), generator=generator)), dims=(1, 2))


class _Top(nn.Module):
    """features[_TOP_SPLIT:], avgpool and classifier of a VGG (shared modules, not copies)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.block, self.avgpool, self.classifier = model.features[_TOP_SPLIT:], model.avgpool, model.classifier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.block(h)), 1))


def prune_filters(model: nn.Module, width: float, first: int = 10) -> nn.Module:
    """A torchvision VGG like `model` whose conv layers from the `first`-th on (0-based; 10: VGG-16's last
    block) keep only the `width` share of VGG-16's filters, those of `model` with the largest L1 norm
    (Li et al. 2017), with the matching input channels of the next layer and columns of FC1."""
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    config, n = [], 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            config.append(m.out_channels if n < first else max(1, round(512 * width)))
            n += 1
        elif isinstance(m, nn.MaxPool2d):
            config.append("M")
    narrow = VGG(make_layers(config), num_classes=model.classifier[-1].out_features, init_weights=False)
    narrow.classifier = copy.deepcopy(model.classifier)
    narrow.classifier[0] = nn.Linear(config[-2] * 49, model.classifier[0].out_features)
    keep_in = torch.arange(3)
    with torch.no_grad():
        for old, new in zip(convs, [m for m in narrow.features if isinstance(m, nn.Conv2d)]):
            keep = old.weight.abs().sum(dim=(1, 2, 3)).topk(new.out_channels).indices.sort().values
            new.weight.copy_(old.weight[keep][:, keep_in])
            new.bias.copy_(old.bias[keep])
            keep_in = keep
        per_channel = model.classifier[0].in_features // convs[-1].out_channels
        columns = (keep_in[:, None] * per_channel + torch.arange(per_channel)).flatten()
        narrow.classifier[0].weight.copy_(model.classifier[0].weight[:, columns])
        narrow.classifier[0].bias.copy_(model.classifier[0].bias)
    return narrow.eval()


def train_recipe(recipe: ZooRecipe) -> nn.Module:
    """Train one zoo model (deterministic for a given thread count)."""
    torch.manual_seed(recipe.seed)
    images, labels, _ = synth.render_many(recipe.data_size, synth.SPLITS["train"] + recipe.data_start)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(recipe.seed)
    model = load_embedded()
    if recipe.init == "pruned":
        model = prune_filters(model, recipe.width)
    if recipe.init in ("top", "pruned"):
        trained = _Top(model)
        with torch.no_grad():  # the frozen blocks' output, once per (flipped, turned) scene
            inputs = torch.cat([model.features[:_TOP_SPLIT](synth.uint8_to_input(_flip_turn(images_t[i : i + 64], generator)))
                                for i in range(0, recipe.data_size, 64)])
    else:
        raise ValueError(f"init must be 'top' or 'pruned', got {recipe.init!r}")
    optimizer = torch.optim.AdamW(trained.parameters(), lr=recipe.lr, weight_decay=1e-4)
    order = torch.cat([torch.randperm(recipe.data_size, generator=generator)
                       for _ in range(recipe.steps * recipe.batch // recipe.data_size + 1)])
    for step in range(recipe.steps):
        index = order[step * recipe.batch : (step + 1) * recipe.batch]
        train_step(trained, optimizer, inputs[index], labels_t[index])
    return model.eval()


def zoo_files() -> tuple[str, ...]:
    """The files `build_zoo` writes: NAME.safetensors and NAME.json per recipe, and zoo.json."""
    return tuple(f"{r.name}{suffix}" for r in RECIPES for suffix in (".safetensors", ".json")) + ("zoo.json",)


def _cached(out: Path, recipe: ZooRecipe) -> dict | None:
    """The recipe's model already in `out` (its json's recipe and sha256 match): its json, else None."""
    weights, meta_path = out / f"{recipe.name}.safetensors", out / f"{recipe.name}.json"
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError):
        return None
    ok = isinstance(meta, dict) and meta.get("recipe") == asdict(recipe) and meta.get("sha256") == sha256_file(weights)
    return meta if ok else None


def _check_zoo_arguments(threads: int, test_size: int) -> None:
    for name, value in (("threads", threads), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_zoo(out: str | Path, threads: int = 1, test_size: int = 200, force: bool = False) -> list[dict]:
    """Train every `RECIPES` model into `out` (reusing those already there with a matching recipe,
    unless `force`), and record each model's test accuracy on `test_size` test scenes. Returns the
    zoo.json rows. The files are moved into `out` together once all are written
    (`lie_cam.experiments.output.staged_output`): an interrupted build leaves `out` as it was."""
    from safetensors.torch import save_file

    _check_zoo_arguments(threads, test_size)
    out = check_output_dir(out, zoo_files())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x_test, y_test, _ = synth.synthetic_split("test", test_size)
    rows = []
    try:
        with staged_output(out, zoo_files()) as stage:
            for recipe in RECIPES:
                weights, meta_path = stage / f"{recipe.name}.safetensors", stage / f"{recipe.name}.json"
                meta = None if force else _cached(out, recipe)
                if meta is not None:
                    link_or_copy(out / weights.name, weights)
                    link_or_copy(out / meta_path.name, meta_path)
                    rows.append(meta)
                    continue
                started = time.time()
                model = train_recipe(recipe)
                seconds = time.time() - started
                with torch.no_grad():
                    accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
                meta = {"recipe": asdict(recipe),
                        "conv_filters": [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)],
                        "test_accuracy": accuracy, "test_size": test_size, "seconds": round(seconds, 1),
                        "threads": threads, "torch": torch.__version__, "sha256": sha256_file(weights)}
                meta_path.write_text(json.dumps(meta, indent=2) + "\n")
                print(f"{recipe.name}: test accuracy {accuracy:.3f} ({seconds:.0f}s)", flush=True)
                rows.append(meta)
            (stage / "zoo.json").write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        torch.set_num_threads(previous)
    return rows


def load_zoo(folder: str | Path, include_embedded: bool = True) -> dict[str, nn.Module]:
    """The zoo's models (eval mode) by name, loaded from safetensors and checked against their sha256;
    with the embedded model first when `include_embedded`."""
    folder = Path(folder)
    models: dict[str, nn.Module] = {"embedded": load_embedded()} if include_embedded else {}
    for recipe in RECIPES:
        path = folder / f"{recipe.name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build the zoo with `python -m lie_cam.experiments.zoo --out {folder}`")
        meta = json.loads(path.with_suffix(".json").read_text())
        if sha256_file(path) != meta["sha256"]:
            raise ValueError(f"{path} does not match the sha256 in {path.with_suffix('.json')}: rebuild the zoo")
        models[recipe.name] = load_model_file(path)
    return models


def main(argv: list[str] | None = None) -> int:
    """`python -m lie_cam.experiments.zoo --out DIR`; a bad argument or an output folder that cannot be
    written is one line on stderr and exit code 2."""
    parser = OneLineParser(prog="python -m lie_cam.experiments.zoo", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the zoo's folder")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--force", action="store_true", help="retrain models already in --out")

    def work() -> None:
        args = parser.parse_args(argv)
        started = time.time()
        build_zoo(args.out, threads=args.threads, force=args.force)
        print(f"zoo in {args.out} ({time.time() - started:.0f}s)")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
