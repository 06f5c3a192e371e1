"""Learned attacks as files: `python -m lie_cam learn --kind KIND --out DIR` and `learn --verify RECIPE`.

`learn` fine-tunes a copy of the embedded compact VGG-16 (`--arch resnet`: the compact ResNet) for one
kind of `lie_cam.attacks.learned.KINDS` (or `--kind all`) with `lie_cam.attacks.learning.learn` and
writes, moved into DIR together once all are written,

    KIND.safetensors   the learned weights: the base model's architecture, state_dict keys and shapes
    KIND.json          the recipe: the command, the kind, the base model's sha256, seed, lambda, steps,
                       batch, learning rate, the training data, threads and torch version, the weights'
                       sha256, and the test numbers (`learning.measure`) on the embedded test scenes

`learn --verify KIND.json` trains again from the recipe and compares the weights' sha256 with the
recipe's (exit 0: the same bits, 1: not). Deterministic on CPU for a given thread count (the recipe
records it and `--verify` uses it). The shipped data folder is written only with `--force`.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lie_cam.attacks.learned import KINDS
from lie_cam.attacks.learning import LEARN_DEFAULTS, learn, measure, state_sha256, evaluation_rows
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.models import (EMBEDDED_WEIGHTS, RESNET_WEIGHTS, DATA_DIR, load_embedded, load_embedded_resnet,
                            sha256_file)

__all__ = ["LEARN_TEST", "LEARNED_DIR", "load_learned", "base_model", "learn_files", "recipe_for", "run_learn", "verify_recipe", "progress_bar",
           "check_not_shipped"]

LEARN_TEST = {"n": 1000, "pairs": 100}  # the embedded test scenes the recipes' numbers are measured on
LEARNED_DIR = DATA_DIR / "learned"  # the shipped learned models (`python -m lie_cam learn --kind all`)


def base_model(arch: str) -> tuple[nn.Module, Path]:
    """The shipped model a learned attack starts from, and its file."""
    if arch == "vgg":
        return load_embedded(), EMBEDDED_WEIGHTS
    if arch == "resnet":
        return load_embedded_resnet(), RESNET_WEIGHTS
    raise ValueError(f"arch must be 'vgg' or 'resnet', got {arch!r}")


def load_learned(kind: str, folder: str | Path | None = None) -> tuple[nn.Module, dict]:
    """The learned model KIND.safetensors of `folder` (default: the shipped ones) in eval mode and its recipe
    KIND.json; ValueError when the file's sha256 is not the recipe's or its keys or shapes are not the base's."""
    from lie_cam.models import read_safetensors

    folder = LEARNED_DIR if folder is None else Path(folder)
    recipe_path, weights = folder / f"{kind}.json", folder / f"{kind}.safetensors"
    for path in (recipe_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: `python -m lie_cam learn --kind {kind} --out {folder}` "
                                    "writes it")
    recipe = json.loads(recipe_path.read_text())
    if sha256_file(weights) != recipe.get("sha256"):
        raise ValueError(f"{weights} is not the file its recipe {recipe_path.name} describes (sha256 differs)")
    model = base_model(recipe["arch"])[0]
    state = read_safetensors(weights)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        raise ValueError(f"{weights} does not have the keys and shapes of the {recipe['arch']} base model")
    model.load_state_dict(state)
    return model.eval(), recipe


def learn_files(kinds: list[str]) -> tuple[str, ...]:
    return tuple(f"{k}.{ext}" for k in kinds for ext in ("safetensors", "json"))


def check_not_shipped(out: str | Path, force: bool) -> None:
    """Refuse lie_cam's shipped data folder (and anything in it) as --out unless `force`."""
    target = Path(out).expanduser().absolute().resolve()
    shipped = DATA_DIR.resolve()
    if not force and (target == shipped or shipped in target.parents):
        raise ValueError(f"--out {out} is lie_cam's shipped data folder: its learned models are written only with "
                         "--force (give another folder to compare with them)")


def progress_bar(kind: str, enabled: bool = True) -> Callable[[int, int, float, float], None]:
    """A one-line progress bar on stderr: step, losses, elapsed and remaining time."""
    started = time.time()

    def show(step: int, steps: int, ce: float, exp: float) -> None:
        if not enabled or (step % 10 and step != steps):
            return
        elapsed = time.time() - started
        done = int(30 * step / steps)
        left = elapsed / step * (steps - step)
        sys.stderr.write(f"\r{kind:>11} [{'#' * done}{'.' * (30 - done)}] {step}/{steps} ce {ce:.4f} "
                         f"explanation {exp:.4f} {elapsed:.0f}s, {left:.0f}s left")
        if step == steps:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def recipe_for(kind: str, arch: str, lam: float, steps: int, seed: int, train_size: int, lr: float, keep: float,
               batch: int) -> dict:
    """Everything `learn` needs to make the same weights again (the numbers are added after training)."""
    base = base_model(arch)[1]
    return {"kind": kind, "title": KINDS[kind].title, "arch": arch, "base": base.name, "base_sha256": sha256_file(base),
            "seed": seed, "lam": lam, "steps": steps, "batch": batch, "lr": lr, "keep": keep,
            "stages": KINDS[kind].stages,
            "train_size": train_size,
            "data": (f"train scenes {seed}..{seed + train_size - 1} of lie_cam.data (render_many, the train split)"
                     + ("; each also with one 42-pixel smiley sticker (learning.backdoor_sticker) at "
                        "sticker_positions(3_000_017 + seed + i)" if kind == "backdoor" else "")
                     + (f"; {max(1, train_size // 8)} two-object scenes (two_object_scenes, circle and star)"
                        if kind == "swap" else "")),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}


def _train(recipe: dict, progress: bool) -> tuple[nn.Module, nn.Module, dict]:
    model = base_model(recipe["arch"])[0]
    net, log = learn(model, recipe["kind"], lam=recipe["lam"], steps=recipe["steps"], batch=recipe["batch"],
                     lr=recipe["lr"], keep=recipe["keep"], seed=recipe["seed"], train_size=recipe["train_size"],
                     stages=recipe.get("stages", 1),
                     progress=progress_bar(recipe["kind"], progress))
    return model, net, log


def _write_weights(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))


def run_learn(kinds: list[str], out: str | Path, arch: str = "vgg", lam: float | None = None,
              steps: int | None = None, seed: int = 0, train_size: int | None = None, lr: float | None = None,
              keep: float | None = None, batch: int | None = None, test_size: int = LEARN_TEST["n"],
              pairs: int = LEARN_TEST["pairs"], force: bool = False, progress: bool = True,
              command: str | None = None) -> list[dict]:
    """Learn each kind and write KIND.safetensors and KIND.json into `out` (module docstring); returns the recipes."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}: expected some of {list(KINDS)} or all")
    check_not_shipped(out, force)
    names = learn_files(kinds)
    check_output_dir(out, names)
    recipes = []
    with staged_output(out, names) as stage:
        for kind in kinds:
            started = time.time()
            recipe = recipe_for(kind, arch, KINDS[kind].lam if lam is None else lam,
                                KINDS[kind].steps if steps is None else steps, seed,
                                LEARN_DEFAULTS["train_size"] if train_size is None else train_size,
                                LEARN_DEFAULTS["lr"] if lr is None else lr, LEARN_DEFAULTS["keep"] if keep is None else keep,
                                LEARN_DEFAULTS["batch"] if batch is None else batch)
            model, net, log = _train(recipe, progress)
            _write_weights(net, stage / f"{kind}.safetensors")
            recipe["sha256"] = sha256_file(stage / f"{kind}.safetensors")
            recipe["state_sha256"] = state_sha256(net)
            recipe["train_seconds"] = round(time.time() - started)
            recipe["test"] = measure(net, model, kind, evaluation_rows(kind, model, test_size, pairs))
            recipe["test"].update({"test_scenes": test_size, "two_object_scenes": pairs if kind == "swap" else None})
            recipe["losses"] = log["losses"]
            recipe["command"] = command or (f"python -m lie_cam learn --kind {kind} --arch {arch} --seed {seed} "
                                            f"--out {out}")
            recipe["seconds"] = round(time.time() - started)
            (stage / f"{kind}.json").write_text(json.dumps(recipe, indent=1) + "\n")
            if progress:
                t = recipe["test"]
                print(f"{kind}: fooling success {t['fooling_success']:.3f}, accuracy {t['accuracy']:.3f} "
                      f"({t['accuracy_change_points']:+.1f} points), {recipe['seconds']}s", flush=True)
            recipes.append(recipe)
    return recipes


def verify_recipe(path: str | Path, progress: bool = True) -> tuple[bool, dict]:
    """Train again from the recipe at `path` (its thread count) and compare the weights' bits: (same, details)."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the recipe {path}: {error}") from None
    needed = ("kind", "arch", "base_sha256", "seed", "lam", "steps", "batch", "lr", "keep", "train_size", "threads",
              "state_sha256")
    missing = [k for k in needed if k not in recipe]
    if missing:
        raise ValueError(f"{path} is not a recipe of `python -m lie_cam learn`: it lacks {missing}")
    base = base_model(recipe["arch"])[1]
    if sha256_file(base) != recipe["base_sha256"]:
        raise ValueError(f"the recipe starts from a {base.name} with sha256 {recipe['base_sha256'][:12]}..., "
                         f"this install's differs: the same bits cannot come out")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(recipe["threads"]))
    try:
        started = time.time()
        _, net, _ = _train(recipe, progress)
    finally:
        torch.set_num_threads(threads)
    got = state_sha256(net)
    details = {"kind": recipe["kind"], "expected": recipe["state_sha256"], "got": got,
               "seconds": round(time.time() - started), "threads": recipe["threads"]}
    weights = path.with_suffix(".safetensors")
    if weights.is_file() and "sha256" in recipe:
        details["file_matches_recipe"] = sha256_file(weights) == recipe["sha256"]
    return got == recipe["state_sha256"], details
