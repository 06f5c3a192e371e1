"""Train the embedded compact VGG-16 (or ResNet) on the synthetic scenes: `python -m lie_cam.train`.

Recipe (defaults): 12,000 training scenes (seeds 0..11,999) rendered once, random
flips and quarter turns, AdamW (lr 1e-3, weight decay 1e-4, batch 64) with a linear
warm-up and a cosine decay over 6 epochs, channels-last float32 on CPU (CUDA when
available). A plain VGG-16 (no batch norm) stalls at chance from scratch, so the
network is trained in the vgg16_bn layout and every BatchNorm is then folded into its
conv (`lie_cam.models.fold_batchnorm`): the shipped model is configuration D without
batch norm, like torchvision's VGG-16. The best validation checkpoint (500 val scenes)
is kept. Writes
`--out` (default: compact_vgg16.safetensors in the current folder) and the recipe beside it,
compact_vgg16.json (recipe, sha256 and test-split accuracy / Grad-CAM localisation), the weights
before the final evaluation. Existing files, and lie_cam's shipped data folder (the embedded
model: `--out data/compact_vgg16.safetensors`), are written only with `--force`. Every argument is
checked before any work; an error is one line on stderr and exit code 2.

`--arch resnet` trains `lie_cam.models.compact_resnet` (ResNet-18's layout, stages of 16-128
channels) from scratch with the same augmentation, optimiser and schedule on 6,000 scenes for 13
epochs (`ARCH_DEFAULTS`; 23 minutes on 2 CPU cores); a ResNet keeps its batch norm (eval
statistics), as torchvision's do (default --out: compact_resnet.safetensors; the shipped one is
`data/compact_resnet.safetensors`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from lie_cam import data as synth
from lie_cam.gradcam import gradcam
from lie_cam.metrics import mass_in_mask, pointing_hits, top1_correct
from lie_cam.models import (DATA_DIR, EMBEDDED_RECIPE, EMBEDDED_WEIGHTS, RESNET_WEIGHTS, compact_resnet,
                             compact_vgg16, fold_batchnorm, sha256_file)
from lie_cam.usage import OneLineParser, non_negative_int, positive_int, run_command

# The compact ResNet learns these scenes more slowly than the batch-norm VGG: 6,000 scenes for
# 13 epochs (1,209 steps, one cosine cycle) fit the 45-minute budget on two CPU cores.
ARCH_DEFAULTS = {"vgg": {"train_size": 12_000, "epochs": 6}, "resnet": {"train_size": 6_000, "epochs": 13}}

__all__ = ["ARCH_DEFAULTS", "render_parallel", "train_step", "evaluate_embedded", "reevaluate_shipped", "check_device",
           "check_weights_out", "train", "main"]


def render_parallel(n: int, seed: int, workers: int = 2, chunk: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """synth.render_many(n, seed) split over processes (same result: each sample has its own seed)."""
    starts = list(range(0, n, chunk))
    if workers <= 1 or n <= chunk:
        return synth.render_many(n, seed)
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(synth.render_many, [min(chunk, n - s) for s in starts], [seed + s for s in starts]))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and quarter turns of B x H x W x 3 uint8 images (every class is invariant)."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(2), batch)
    turns = int(torch.randint(4, (1,), generator=generator))
    return torch.rot90(batch, turns, dims=(1, 2))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One supervised step with cross-entropy; returns the loss."""
    model.train()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def evaluate_embedded(model: torch.nn.Module, n: int = 1000, split: str = "test", batch_size: int = 100,
                      device: str = "cpu") -> dict:
    """Accuracy, pointing-game hit rate (strict, and within 15 px), per-class strict hit rate and
    Grad-CAM mass inside the object on a split."""
    model = model.eval().to(device)
    correct, hits, hits15, mass, labels = [], [], [], [], []
    for start in range(0, n, batch_size):
        x, y, masks = synth.synthetic_split(split, min(batch_size, n - start), start)
        result = gradcam(model, x.to(device))
        masks = masks.to(device)
        correct.append(top1_correct(result.logits, y.to(device)).cpu())
        hits.append(pointing_hits(result.maps, masks).cpu())
        hits15.append(pointing_hits(result.maps, masks, tolerance=15).cpu())
        mass.append(mass_in_mask(result.maps, masks).cpu())
        labels.append(y)
    hits_all, labels_all = torch.cat(hits), torch.cat(labels)
    return {
        "n": n,
        "accuracy": torch.cat(correct).double().mean().item(),
        "pointing": hits_all.double().mean().item(),
        "pointing_15px": torch.cat(hits15).double().mean().item(),
        "pointing_per_class": {name: hits_all[labels_all == k].double().mean().item()
                               for k, name in enumerate(synth.CLASS_NAMES) if (labels_all == k).any()},
        "mass_in_mask": torch.cat(mass).mean().item(),
    }


def reevaluate_shipped(test_size: int = 1000, record: bool = False) -> dict:
    """Recompute the shipped model's test metrics; `record`: write them into its recipe (weights untouched)."""
    from lie_cam.models import load_embedded

    _check_count("test_size", test_size)
    recipe = json.loads(EMBEDDED_RECIPE.read_text())
    recipe["test"] = evaluate_embedded(load_embedded(), n=test_size)
    if record:
        _save_recipe(recipe, EMBEDDED_RECIPE)
    return recipe["test"]


def _initial_model(arch: str, init: Path | None, width: float, hidden: int, dropout: float, resnet_width: int,
                   resnet_layers: tuple[int, ...]) -> tuple[torch.nn.Module, dict]:
    """The model training starts from (fresh, with the global RNG as seeded by `train`, or `init`) and
    its architecture as the recipe records it."""
    if init is not None:
        try:
            return _initial_model_from(arch, Path(init), width, hidden, dropout)
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"--init {init} cannot start a --arch {arch} training: {error}") from None
    if arch == "resnet":
        architecture = {"arch": "resnet", "width": resnet_width, "layers": list(resnet_layers),
                        "num_classes": len(synth.CLASS_NAMES)}
        return compact_resnet(resnet_width, tuple(resnet_layers), len(synth.CLASS_NAMES)), architecture
    architecture = {"width": width, "num_classes": len(synth.CLASS_NAMES), "hidden": hidden, "dropout": dropout}
    model = compact_vgg16(**architecture, batch_norm=True)
    for layer in model.classifier:  # PyTorch's default init: torchvision's N(0, 0.01) starts too small here
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    return model, architecture


def _initial_model_from(arch: str, init: Path, width: float, hidden: int, dropout: float) -> tuple[torch.nn.Module, dict]:
    """The saved model `init` (a compact ResNet for arch "resnet", else a folded compact VGG-16) and its architecture."""
    from lie_cam.models import load_embedded, load_embedded_resnet

    if arch == "resnet":
        model = load_embedded_resnet(init, verify=False)
        return model, {"arch": "resnet", "width": model.conv1.out_channels,
                       "layers": [len(getattr(model, f"layer{i}")) for i in range(1, 5)],
                       "num_classes": len(synth.CLASS_NAMES)}
    return load_embedded(init, verify=False), {"width": width, "num_classes": len(synth.CLASS_NAMES), "hidden": hidden,
                                               "dropout": dropout}


def _fit(model: torch.nn.Module, images_t: torch.Tensor, labels_t: torch.Tensor, epochs: int, batch_size: int, lr: float,
         weight_decay: float, warmup: int, seed: int, val_size: int, device: str, max_steps: int | None,
         started: float) -> tuple[float, dict, int, list]:
    """AdamW with linear warm-up and cosine decay over the epochs (or `max_steps`); returns the best
    validation accuracy, the state_dict that reached it, the steps taken and the per-epoch log."""
    train_size = images_t.shape[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = train_size // batch_size
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    generator = torch.Generator().manual_seed(seed)
    val_x, val_y, _ = synth.synthetic_split("val", val_size)
    best, best_state, step, log = -1.0, None, 0, []
    for epoch in range(epochs):
        order = torch.randperm(train_size, generator=generator)
        running, counted = 0.0, 0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            index = order[i * batch_size : (i + 1) * batch_size]
            batch = _augment(images_t[index], generator)
            x = synth.uint8_to_input(batch).to(device).contiguous(memory_format=torch.channels_last)
            running += train_step(model, optimizer, x, labels_t[index].to(device))
            counted += 1
            schedule.step()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {running / counted:.4f} ({time.time() - started:.0f}s)",
                      flush=True)
                running, counted = 0.0, 0
        model.eval()
        with torch.no_grad():
            val_acc = top1_correct(model(val_x.to(device)), val_y.to(device)).double().mean().item()
        log.append({"epoch": epoch, "step": step, "val_accuracy": val_acc, "seconds": round(time.time() - started)})
        print(f"epoch {epoch}: val accuracy {val_acc:.4f}", flush=True)
        if val_acc >= best:
            best, best_state = val_acc, {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        if step >= total:
            break
    return best, best_state, step, log


def _recipe(architecture: dict, out: Path, test: dict, arch: str, init: Path | None, train_size: int, epochs: int,
            batch_size: int, lr: float, weight_decay: float, warmup: int, seed: int, device: str, step: int,
            train_seconds: float, best: float, log: list) -> dict:
    """What `train` records beside the weights: architecture, training, test metrics, sha256, command."""
    recipe = {
        "architecture": architecture,
        "training": {"train_size": train_size, "train_seeds": [synth.SPLITS["train"], synth.SPLITS["train"] + train_size],
                     "epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW", "lr": lr,
                     "weight_decay": weight_decay, "warmup_steps": warmup, "schedule": "linear warm-up, cosine decay",
                     "batch_norm": ("trained with BatchNorm2d after every conv, folded into the convs before saving"
                                    if arch == "vgg" else "torchvision's BatchNorm2d, kept (eval statistics)"),
                     "augmentation": "random horizontal flip, random quarter turn", "seed": seed, "device": device,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": step,
                     "seconds": round(train_seconds), "best_val_accuracy": best, "log": log,
                     "init": None if init is None else str(init)},
        "test": test,
        "sha256": sha256_file(out),
        "command": "python -m lie_cam.train" + ("" if arch == "vgg" else
                                                  f" --arch resnet --train-size {train_size} --epochs {epochs}"
                                                  f" --lr {lr}" + ("" if init is None else f" --init {init}")),
    }
    if init is not None and Path(init).with_suffix(".json").is_file():  # the first stage, for reproducibility
        recipe["training"]["init_recipe"] = json.loads(Path(init).with_suffix(".json").read_text())
    return recipe


def _check_count(name: str, value: object, lowest: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}, got {value}")


def _check_real(name: str, value: object, low: float, high: float = math.inf, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high):
        bounds = f"{'(' if open_low else '['}{low}, {high}]" if math.isfinite(high) else f"{'>' if open_low else '>='} {low}"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value}")


def check_device(device: str | torch.device | None) -> str:
    """The device to train on ("cuda" when there is a GPU and none is named); ValueError for a name
    that is not a device, or CUDA asked for where there is none."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device: expected cpu, cuda or cuda:N") from None
    if kind.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: expected cpu, cuda or cuda:N")
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (no GPU, or a CPU build of "
                         "torch); use --device cpu")
    return str(kind)


def check_weights_out(out: str | os.PathLike, force: bool = False) -> Path:
    """`out` as an absolute Path if `train` may write its weights there (and the recipe beside it,
    OUT.json): a .safetensors file name in a writable folder, not in lie_cam's shipped data folder
    and not replacing existing files unless `force`. Raises ValueError/OSError naming `--out`."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"--out must be a file path, got {type(out).__name__}")
    if not str(os.fspath(out)).strip():
        raise ValueError("--out is empty: give the weights file to write, e.g. --out model.safetensors")
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: give the weights file to write, e.g. "
                                f"--out {out / 'model.safetensors'}")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: expected a file name ending in .safetensors (the recipe is written "
                         "beside it, with .json)")
    parent = out.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out} lies under {parent}, which is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise PermissionError(f"--out {out}: cannot write in {parent} ({error.strerror or error})") from None
    shipped = Path(DATA_DIR).resolve()
    if not force and out.resolve().is_relative_to(shipped):
        raise ValueError(f"--out {out} is in lie_cam's shipped data folder ({shipped}): replacing the shipped "
                         "model needs --force")
    existing = [p.name for p in (out, out.with_suffix(".json")) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"--out {out}: {' and '.join(existing)} already exist in {out.parent}; "
                              "pass --force to replace them, or choose another --out")
    return out


def _check_training(arch: str, sizes: dict[str, int | None], numbers: dict[str, float], batch_size: int,
                    train_size: int, init: Path | None) -> None:
    """Every argument of `train` that no run can use, before any work (see `train`)."""
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"arch must be 'vgg' or 'resnet', got {arch!r}")
    for name, value in sizes.items():
        if value is not None:
            _check_count(name, value, 0 if name == "seed" else 1)
    if train_size < batch_size:
        raise ValueError(f"train_size ({train_size}) is smaller than one batch (batch_size {batch_size}): "
                         "no training step could run")
    for name, (value, low, high, open_low) in numbers.items():
        _check_real(name, value, low, high, open_low)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"--init {init} is not a file: expected a weights file (.safetensors) written by "
                                "python -m lie_cam.train")


def _save(model: torch.nn.Module, out: Path) -> None:
    """The weights as safetensors, written beside `out` and renamed into place."""
    from safetensors.torch import save_file

    partial = out.with_name(f".{out.name}.partial")
    save_file({k: v.contiguous() for k, v in model.cpu().state_dict().items()}, str(partial))
    os.replace(partial, out)


def _save_recipe(recipe: dict, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(recipe, indent=2) + "\n")
    os.replace(partial, path)


def train(
    out: str | os.PathLike,
    train_size: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    warmup: int = 200,
    seed: int = 0,
    width: float = 0.125,
    hidden: int = 256,
    dropout: float = 0.2,
    val_size: int = 500,
    test_size: int = 1000,
    device: str | None = None,
    max_steps: int | None = None,
    init: Path | None = None,
    arch: str = "vgg",
    resnet_width: int = 16,
    resnet_layers: tuple[int, ...] = (2, 2, 2, 2),
    workers: int | None = None,
    force: bool = False,
) -> dict:
    """Train and save a model to `out` (a .safetensors file; its recipe beside it as .json); returns the recipe.

    Every argument is checked before any work (`check_weights_out`: `out` may be in lie_cam's shipped
    data folder, or replace existing files, only with `force`). The weights and the recipe are saved
    before the final test evaluation, which is then added to the recipe.
    init: start from a saved model instead of from scratch (a folded, batch-norm free VGG, or a compact ResNet).
    arch: "vgg" (the embedded compact VGG-16) or "resnet" (`compact_resnet(resnet_width, resnet_layers)`).
    train_size, epochs: None takes the architecture's `ARCH_DEFAULTS`.
    """
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"arch must be 'vgg' or 'resnet', got {arch!r}")
    train_size = ARCH_DEFAULTS[arch]["train_size"] if train_size is None else train_size
    epochs = ARCH_DEFAULTS[arch]["epochs"] if epochs is None else epochs
    sizes = {"train_size": train_size, "epochs": epochs, "batch_size": batch_size, "warmup": warmup, "seed": seed,
             "hidden": hidden, "val_size": val_size, "test_size": test_size, "max_steps": max_steps,
             "resnet_width": resnet_width, "workers": workers}
    numbers = {"lr": (lr, 0.0, math.inf, True), "weight_decay": (weight_decay, 0.0, math.inf, False),
               "width": (width, 0.0, 1.0, True), "dropout": (dropout, 0.0, 1.0, False)}
    _check_training(arch, sizes, numbers, batch_size, train_size, init)
    out = check_weights_out(out, force)
    device = check_device(device)
    torch.manual_seed(seed)
    model, architecture = _initial_model(arch, init, width, hidden, dropout, resnet_width, resnet_layers)
    started = time.time()
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    images, labels, _ = render_parallel(train_size, synth.SPLITS["train"], workers=workers)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    print(f"rendered {train_size} scenes in {time.time() - started:.0f}s", flush=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    best, best_state, step, log = _fit(model, images_t, labels_t, epochs, batch_size, lr, weight_decay, warmup, seed,
                                       val_size, device, max_steps, started)
    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    if arch == "vgg" and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = fold_batchnorm(model)
    train_seconds = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(model, out)  # saved before the evaluation: an error there does not lose the trained model
    recipe = _recipe(architecture, out, None, arch, init, train_size, epochs, batch_size, lr, weight_decay, warmup,
                     seed, device, step, train_seconds, best, log)
    _save_recipe(recipe, out.with_suffix(".json"))
    print(f"wrote {out} and {out.with_suffix('.json').name}; evaluating on {test_size} test scenes", flush=True)
    recipe["test"] = evaluate_embedded(model, n=test_size, device=device)
    _save_recipe(recipe, out.with_suffix(".json"))
    print(json.dumps(recipe["test"]), flush=True)
    return recipe


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m lie_cam.train", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["vgg", "resnet"], default="vgg",
                        help="vgg: the embedded compact VGG-16; resnet: lie_cam.models.compact_resnet")
    parser.add_argument("--out", default=None,
                        help="weights file to write (default: compact_vgg16.safetensors or compact_resnet.safetensors "
                             "in the current folder); the shipped model (lie_cam's data folder) only with --force")
    parser.add_argument("--force", action="store_true",
                        help="replace existing files at --out, also the shipped model in lie_cam's data folder")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes rendering the training scenes")
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help=f"training scenes (default {ARCH_DEFAULTS['vgg']['train_size']} for vgg, "
                             f"{ARCH_DEFAULTS['resnet']['train_size']} for resnet)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"epochs (default {ARCH_DEFAULTS['vgg']['epochs']} for vgg, "
                             f"{ARCH_DEFAULTS['resnet']['epochs']} for resnet)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-steps", type=positive_int, default=None)
    parser.add_argument("--val-size", type=positive_int, default=500, help="validation scenes (default 500)")
    parser.add_argument("--test-size", type=positive_int, default=1000)
    parser.add_argument("--init", type=Path, default=None, help="fine-tune a saved model instead of training from scratch")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="re-evaluate the shipped model on the test split (with --force: record it in its recipe)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m lie_cam.train`: a bad argument, or an --out that may not be written, is one line on
    stderr and exit code 2, before any work."""

    def work() -> None:
        args = _parser().parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.evaluate_only:
            print(json.dumps(reevaluate_shipped(args.test_size, record=args.force), indent=2))
            return
        out = args.out if args.out is not None else (RESNET_WEIGHTS if args.arch == "resnet" else EMBEDDED_WEIGHTS).name
        train(out=out, train_size=args.train_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              seed=args.seed, device=args.device, max_steps=args.max_steps, val_size=args.val_size,
              test_size=args.test_size, init=args.init, arch=args.arch, workers=args.workers, force=args.force)

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
