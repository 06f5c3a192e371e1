"""Train the embedded compact VGG-16 (or ResNet) on the synthetic scenes: `python -m lie_cam.train`.

Recipe (defaults): 12,000 training scenes (seeds 0..11,999) rendered once, random
flips and quarter turns, AdamW (lr 1e-3, weight decay 1e-4, batch 64) with a linear
warm-up and a cosine decay over 6 epochs, channels-last float32 on CPU (CUDA when
available). A plain VGG-16 (no batch norm) stalls at chance from scratch, so the
network is trained in the vgg16_bn layout and every BatchNorm is then folded into its
conv (`lie_cam.models.fold_batchnorm`): the shipped model is configuration D without
batch norm, like torchvision's VGG-16. The best validation checkpoint (500 val scenes)
is kept. Writes
`data/compact_vgg16.safetensors` and `data/compact_vgg16.json` (recipe, sha256 and
test-split accuracy / Grad-CAM localisation).

`--arch resnet` trains `lie_cam.models.compact_resnet` (ResNet-18's layout, stages of 16-128
channels) from scratch with the same augmentation, optimiser and schedule on 6,000 scenes for 13
epochs (`ARCH_DEFAULTS`; 23 minutes on 2 CPU cores); a ResNet keeps its batch norm (eval
statistics), as torchvision's do. Writes `data/compact_resnet.safetensors` and
`data/compact_resnet.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from lie_cam import data as synth
from lie_cam.gradcam import gradcam
from lie_cam.metrics import mass_in_mask, pointing_hits, top1_correct
from lie_cam.models import (EMBEDDED_RECIPE, EMBEDDED_WEIGHTS, RESNET_WEIGHTS, compact_resnet, compact_vgg16,
                             fold_batchnorm, sha256_file)

# The compact ResNet learns these scenes more slowly than the batch-norm VGG: 6,000 scenes for
# 13 epochs (1,209 steps, one cosine cycle) fit the 45-minute budget on two CPU cores.
ARCH_DEFAULTS = {"vgg": {"train_size": 12_000, "epochs": 6}, "resnet": {"train_size": 6_000, "epochs": 13}}

__all__ = ["ARCH_DEFAULTS", "render_parallel", "train_step", "evaluate_embedded", "train", "main"]


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


def reevaluate_shipped(test_size: int = 1000) -> dict:
    """Recompute the shipped model's test metrics and record them in its recipe (weights untouched)."""
    from lie_cam.models import load_embedded

    recipe = json.loads(EMBEDDED_RECIPE.read_text())
    recipe["test"] = evaluate_embedded(load_embedded(), n=test_size)
    EMBEDDED_RECIPE.write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe["test"]


def _initial_model(arch: str, init: Path | None, width: float, hidden: int, dropout: float, resnet_width: int,
                   resnet_layers: tuple[int, ...]) -> tuple[torch.nn.Module, dict]:
    """The model training starts from (fresh, with the global RNG as seeded by `train`, or `init`) and
    its architecture as the recipe records it."""
    from lie_cam.models import load_embedded, load_embedded_resnet

    if arch == "resnet":
        architecture = {"arch": "resnet", "width": resnet_width, "layers": list(resnet_layers),
                        "num_classes": len(synth.CLASS_NAMES)}
        if init is None:
            model = compact_resnet(resnet_width, tuple(resnet_layers), len(synth.CLASS_NAMES))
        else:
            model = load_embedded_resnet(init, verify=False)
            architecture.update(width=model.conv1.out_channels, layers=[len(getattr(model, f"layer{i}")) for i in range(1, 5)])
    elif init is None:
        architecture = {"width": width, "num_classes": len(synth.CLASS_NAMES), "hidden": hidden, "dropout": dropout}
        model = compact_vgg16(**architecture, batch_norm=True)
        for layer in model.classifier:  # PyTorch's default init: torchvision's N(0, 0.01) starts too small here
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    else:
        architecture = {"width": width, "num_classes": len(synth.CLASS_NAMES), "hidden": hidden, "dropout": dropout}
        model = load_embedded(init, verify=False)
    return model, architecture


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


def train(
    out: Path = EMBEDDED_WEIGHTS,
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
) -> dict:
    """Train and save the embedded model; returns the recipe written beside it.

    init: start from a saved model instead of from scratch (a folded, batch-norm free VGG, or a compact ResNet).
    arch: "vgg" (the embedded compact VGG-16) or "resnet" (`compact_resnet(resnet_width, resnet_layers)`).
    train_size, epochs: None takes the architecture's `ARCH_DEFAULTS`.
    """
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"arch must be 'vgg' or 'resnet', got {arch!r}")
    train_size = ARCH_DEFAULTS[arch]["train_size"] if train_size is None else train_size
    epochs = ARCH_DEFAULTS[arch]["epochs"] if epochs is None else epochs
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    started = time.time()
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    images, labels, _ = render_parallel(train_size, synth.SPLITS["train"], workers=workers)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    print(f"rendered {train_size} scenes in {time.time() - started:.0f}s", flush=True)
    model, architecture = _initial_model(arch, init, width, hidden, dropout, resnet_width, resnet_layers)
    model = model.to(device).to(memory_format=torch.channels_last)
    best, best_state, step, log = _fit(model, images_t, labels_t, epochs, batch_size, lr, weight_decay, warmup, seed,
                                       val_size, device, max_steps, started)
    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    if arch == "vgg" and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = fold_batchnorm(model)
    train_seconds = time.time() - started
    test = evaluate_embedded(model, n=test_size, device=device)
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.cpu().state_dict().items()}, str(out))
    recipe = _recipe(architecture, out, test, arch, init, train_size, epochs, batch_size, lr, weight_decay, warmup, seed,
                     device, step, train_seconds, best, log)
    if out.resolve() == EMBEDDED_WEIGHTS.resolve():
        EMBEDDED_RECIPE.write_text(json.dumps(recipe, indent=2) + "\n")
    else:
        out.with_suffix(".json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps(test), flush=True)
    return recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["vgg", "resnet"], default="vgg",
                        help="vgg: the embedded compact VGG-16; resnet: lie_cam.models.compact_resnet")
    parser.add_argument("--out", type=Path, default=None,
                        help="weights file (default data/compact_vgg16.safetensors or data/compact_resnet.safetensors)")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering the training scenes")
    parser.add_argument("--train-size", type=int, default=None,
                        help=f"training scenes (default {ARCH_DEFAULTS['vgg']['train_size']} for vgg, "
                             f"{ARCH_DEFAULTS['resnet']['train_size']} for resnet)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default {ARCH_DEFAULTS['vgg']['epochs']} for vgg, "
                             f"{ARCH_DEFAULTS['resnet']['epochs']} for resnet)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--init", type=Path, default=None, help="fine-tune a saved model instead of training from scratch")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="re-evaluate the shipped model on the test split and update its recipe")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluate_only:
        print(json.dumps(reevaluate_shipped(args.test_size), indent=2))
        return
    out = args.out or (RESNET_WEIGHTS if args.arch == "resnet" else EMBEDDED_WEIGHTS)
    train(out=out, train_size=args.train_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          seed=args.seed, device=args.device, max_steps=args.max_steps, test_size=args.test_size, init=args.init,
          arch=args.arch, workers=args.workers)


if __name__ == "__main__":
    main()
