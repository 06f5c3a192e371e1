"""Fine-tuning through Grad-CAM: `learn(model, kind)` returns a copy whose explanations lie (the kinds and
their losses are in `lie_cam.attacks.learned`), with the same architecture, state_dict keys and shapes.

The network is read as x --frozen--> F --stage--> A --head--> y (`learning_parts`): `frozen` is the
trunk up to its last downsampling (VGG: up to the fourth max-pool; ResNet: up to layer4's first
block), `stage` the layers at A's resolution (VGG: the last three convs and their ReLUs; ResNet: the
blocks after it), `head` the rest (`lie_cam.anatomy.cut_at_a`). Only `stage` and `head` are trained:
a lie in Grad-CAM needs only A and dy/dA, which these layers make, and F is computed once per training
image instead of at every step. Each step draws `batch` rows for the cross-entropy and `batch` rows for
the explanation term from fixed, seeded training rows and takes one Adam step on Eq. (1) of
`lie_cam.attacks.learned`; the model stays in eval mode (no dropout), so the steps are deterministic
on a given machine and thread count: the same recipe gives the same bits.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lie_cam import data as synth
from lie_cam.anatomy import cut_at_a, input_spec
from lie_cam.attacks.learned import (FOOLED_L1, KINDS, SWAP_CLASSES, cell_l1, centre_of_mass, explanation_loss, fooled,
                                     normalised, share_on, target_map)
from lie_cam.gradcam import gradcam, trainable_maps
from lie_cam.metrics import mass_in_mask, score_change, top1_correct

__all__ = ["LearningParts", "learning_parts", "Rows", "training_rows", "learn", "state_sha256", "measure",
           "evaluation_rows", "STICKER_SEED_TRAIN", "LEARN_DEFAULTS", "BACKDOOR_SIDE", "backdoor_sticker"]

_DISTANCE = {"center-mass": "shift", "swap": "share_on_other", "backdoor": "share_on_sticker"}  # what `measure` reports beside the success
BACKDOOR_SIDE = 42  # the learned backdoor's sticker: the smiley, 6 pixels a cell (19% of a 224-pixel side)
STICKER_SEED_TRAIN = 3_000_017  # the training images' sticker places: sticker_positions(STICKER_SEED_TRAIN + i)
LEARN_DEFAULTS = {"train_size": 2048, "batch": 32, "lr": 3e-4, "keep": 0.1, "seed": 0}


@dataclass
class LearningParts:
    """x -> frozen -> F -> stage -> A -> head -> y, references into the model (nothing copied)."""

    frozen: nn.Sequential
    stage: nn.Sequential
    head: nn.Module

    def trained_parameters(self) -> list[nn.Parameter]:
        return [*self.stage.parameters(), *self.head.parameters()]


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Conv2d))
               and (m.stride[0] if isinstance(m.stride, tuple) else m.stride) == 2 for m in module.modules())


def learning_parts(model: nn.Module, stages: int = 1) -> LearningParts:
    """The frozen trunk, the trained stage and the head of a torchvision VGG or ResNet: the stage is what
    follows the trunk's last downsampling (stages=1: the layers at A's resolution) or its stages-th last."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be a positive int, got {stages!r}")
    cut = cut_at_a(model)
    trunk = list(cut.trunk)
    downsampling = [i for i, m in enumerate(trunk) if _downsamples(m)]
    last = downsampling[-stages] if len(downsampling) >= stages else -1
    return LearningParts(nn.Sequential(*trunk[: last + 1]), nn.Sequential(*trunk[last + 1 :], cut.pre, cut.activation),
                         cut.head)


def state_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict's keys, dtypes, shapes and bytes (the bits of the weights)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Rows:
    """Training or test rows: inputs, the label (-1: none, no cross-entropy), the explained class, the
    target map (for `center-mass` the original's map) and whether the explanation term applies."""

    x: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    targets: torch.Tensor
    explained: torch.Tensor
    sticker: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    objects: torch.Tensor | None = None  # swap: per explained row, the masks of its own and of the other object

    def take(self, index: torch.Tensor) -> "Rows":
        """The rows at `index` (without `objects`, which only `measure` reads)."""
        return Rows(self.x[index], self.labels[index], self.classes[index], self.targets[index], self.explained[index],
                    self.sticker[index] if len(self.sticker) else self.sticker)


def backdoor_sticker() -> torch.Tensor:
    """The learned backdoor's trigger: `data.smiley_7x7()` upsampled to BACKDOOR_SIDE pixels (nearest)."""
    k = BACKDOOR_SIDE // 7
    return synth.smiley_7x7().repeat_interleave(k, 0).repeat_interleave(k, 1)


def _original_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """The model's max-normalised Grad-CAM maps of `classes` on x (B x h x w)."""
    maps = [gradcam(model, x[i:i + batch], classes[i:i + batch]).normalized for i in range(0, len(x), batch)]
    return torch.cat(maps)


def _rows(kind: str, model: nn.Module, images, labels: torch.Tensor, sticker_seed: int, pairs) -> Rows:
    """The rows of `kind` from uint8 scenes (and, for `swap`, two-object scenes `pairs`)."""
    x = synth.uint8_to_input(images)
    n = len(x)
    honest = _original_maps(model, x, labels)
    side = honest.shape[-1]
    yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    if kind in ("flat", "location", "smiley"):
        return Rows(x, labels, labels, target_map(kind, side).expand(n, side, side).clone(), yes, no)
    if kind == "center-mass":
        return Rows(x, labels, labels, honest, yes, no)
    if kind == "backdoor":
        stuck, corners = synth.paste_stickers(x, [sticker_seed + i for i in range(n)], backdoor_sticker(), count=1,
                                              spec=input_spec(model), high=x.shape[-1] - 14 - BACKDOOR_SIDE)
        where = torch.zeros(n, *x.shape[-2:])  # the sticker's square
        for i, [(r, c)] in enumerate(corners):
            where[i, r:r + BACKDOOR_SIDE, c:c + BACKDOOR_SIDE] = 1
        on_sticker = F.adaptive_avg_pool2d(where[:, None], side)[:, 0]
        return Rows(torch.cat([x, stuck]), torch.cat([labels, labels]), torch.cat([labels, labels]),
                    torch.cat([honest, on_sticker]), torch.cat([yes, yes]), torch.cat([no, yes]))
    if kind == "swap":
        both = synth.uint8_to_input(pairs[0])
        m = len(both)
        a, b = (torch.full((m,), c) for c in SWAP_CLASSES)
        none = torch.full((m,), -1)
        z = torch.zeros(n, side, side)
        own_a, own_b = (torch.from_numpy(mask) for mask in pairs[1:])
        pooled_a, pooled_b = (F.adaptive_avg_pool2d(mask[:, None].float(), side)[:, 0] for mask in (own_a, own_b))
        objects = torch.cat([torch.stack([own_a, own_b], 1), torch.stack([own_b, own_a], 1)])
        return Rows(torch.cat([x, both, both]), torch.cat([labels, none, none]), torch.cat([labels, a, b]),
                    torch.cat([z, pooled_b, pooled_a]), torch.cat([no, torch.ones(2 * m, dtype=torch.bool)]),
                    torch.zeros(n + 2 * m, dtype=torch.bool), objects)
    raise ValueError(f"unknown kind {kind!r}: expected one of {list(KINDS)}")


def training_rows(kind: str, model: nn.Module, train_size: int, seed: int = 0) -> Rows:
    """The training rows of `kind`: train scenes seed .. seed + train_size - 1 (stickers for `backdoor`,
    train_size // 8 two-object scenes for `swap`), targets from `model` (the original)."""
    images, labels, _ = synth.render_many(train_size, synth.SPLITS["train"] + seed)
    pairs = synth.two_object_scenes(max(1, train_size // 8), SWAP_CLASSES, synth.SPLITS["train"] + 5_000_000 + seed) \
        if kind == "swap" else None
    return _rows(kind, model, images, torch.from_numpy(labels), STICKER_SEED_TRAIN + seed, pairs)


def evaluation_rows(kind: str, model: nn.Module, n: int, pairs: int) -> Rows:
    """The test rows of `kind` on the embedded test scenes 0 .. n-1 (stickers at `sticker_positions`(
    STICKER_SEED + i), `pairs` two-object test scenes for `swap`), targets from `model` (the original)."""
    images, labels, _ = synth.render_many(n, synth.SPLITS["test"])
    both = synth.two_object_scenes(pairs, SWAP_CLASSES, synth.SPLITS["test"]) if kind == "swap" else None
    return _rows(kind, model, images, torch.from_numpy(labels), synth.STICKER_SEED, both)


def _features(frozen: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([frozen(x[i:i + batch]) for i in range(0, len(x), batch)])


def learn(model: nn.Module, kind: str, lam: float | None = None, steps: int | None = None, batch: int = 32,
          lr: float = 1e-4, keep: float = 0.0, seed: int = 0, train_size: int = 2048, stages: int | None = None,
          rows: Rows | None = None,
          checkpoints: tuple[int, ...] = (), progress: Callable[[int, int, float, float], None] | None = None
          ) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of `model` (untouched) on Eq. (1) of `lie_cam.attacks.learned` for `kind`.

    lam, steps, stages: the kind's defaults (`KINDS`) unless given; Adam(lr) on the stage and head
    (`learning_parts(model, stages)`); keep: the weight mu of the score term ||y - y_o||^2 / C; rows: the
    training rows (default `training_rows(kind, model, train_size, seed)`).
    Returns (the fine-tuned copy in eval mode, a log: the losses every 10 steps and `state_sha256` at
    each step in `checkpoints`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {list(KINDS)}")
    lam = KINDS[kind].lam if lam is None else float(lam)
    steps = KINDS[kind].steps if steps is None else int(steps)
    stages = KINDS[kind].stages if stages is None else stages
    if not lam >= 0 or steps < 0 or batch < 1 or not lr > 0:
        raise ValueError(f"expected lam >= 0, steps >= 0, batch >= 1 and lr > 0, got {lam}, {steps}, {batch}, {lr}")
    net = copy.deepcopy(model).eval()
    parts = learning_parts(net, stages)
    rows = training_rows(kind, net, train_size, seed) if rows is None else rows
    for p in net.parameters():
        p.requires_grad_(False)
    trained = parts.trained_parameters()
    for p in trained:
        p.requires_grad_(True)
    feats = _features(parts.frozen, rows.x)
    with torch.no_grad():
        scores = torch.cat([parts.head(parts.stage(feats[i:i + 256])) for i in range(0, len(feats), 256)])
    labelled = torch.nonzero(rows.labels >= 0)[:, 0]
    explained = torch.nonzero(rows.explained)[:, 0]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(trained, lr=lr)
    log: dict = {"losses": [], "checkpoints": {}}
    for step in range(1, steps + 1):
        pick = torch.cat([labelled[torch.randint(len(labelled), (batch,), generator=generator)],
                          explained[torch.randint(len(explained), (batch,), generator=generator)]])
        part = rows.take(pick)
        maps, logits = trainable_maps(parts.head, parts.stage(feats[pick]), part.classes, relu=False)
        has_label = part.labels >= 0
        ce = F.cross_entropy(logits[has_label], part.labels[has_label])
        if keep:
            ce = ce + keep * (logits[has_label] - scores[pick][has_label]).pow(2).mean()
        exp = explanation_loss(kind, maps[part.explained], part.targets[part.explained],
                               part.sticker[part.explained] if len(part.sticker) else None).mean()
        loss = ce + lam * exp
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps:
            log["losses"].append({"step": step, "ce": round(ce.item(), 5), "explanation": round(exp.item(), 5)})
        if step in checkpoints:
            log["checkpoints"][str(step)] = state_sha256(net)
        if progress is not None:
            progress(step, steps, ce.item(), exp.item())
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval(), log


def measure(model: nn.Module, original: nn.Module, kind: str, rows: Rows, batch: int = 100) -> dict:
    """Test numbers of a (learned) model against the original on `evaluation_rows` of `kind`, Grad-CAM computed
    by `lie_cam.gradcam` as a user calls it: accuracy and its change on the clean labelled rows, the
    fooling success rate and the mean L1 (2) to the target (`center-mass`: the mean shift of the centre
    of mass; `swap`: the mean share of the map on the other object) on the explained rows (`backdoor`: those with the sticker; `swap`: a pair fools when both
    maps do), the mean score change ||y_o - y_n||_inf on the clean rows; `swap` also: the share of each
    map's mass on the other class's object and on its own at the image's resolution
    (`metrics.mass_in_mask`); `backdoor` also: the share of clean images whose map
    stays within FOOLED_L1 of the original's, and of those that show the target."""
    maps, logits, logits_o = [], [], []
    for i in range(0, len(rows.x), batch):
        sl = slice(i, i + batch)
        result = gradcam(model, rows.x[sl], rows.classes[sl])
        maps.append(result.maps)
        logits.append(result.logits)
        with torch.no_grad():
            logits_o.append(original(rows.x[sl]))
    maps, logits, logits_o = torch.cat(maps), torch.cat(logits), torch.cat(logits_o)
    clean = (rows.labels >= 0) & ~rows.sticker if len(rows.sticker) else rows.labels >= 0
    acc = top1_correct(logits[clean], rows.labels[clean]).double().mean().item()
    acc_o = top1_correct(logits_o[clean], rows.labels[clean]).double().mean().item()
    lying = rows.explained & rows.sticker if kind == "backdoor" else rows.explained
    hit = fooled(kind, maps[lying], rows.targets[lying])
    if kind == "swap":
        half = len(hit) // 2
        hit = hit[:half] & hit[half:]
    if kind == "center-mass":
        distance = (centre_of_mass(normalised(maps[lying])) - centre_of_mass(rows.targets[lying])).abs().sum(-1)
    elif kind in ("swap", "backdoor"):
        distance = share_on(maps[lying], rows.targets[lying])
    else:
        distance = cell_l1(maps[lying], rows.targets[lying])
    out = {"kind": kind, "n": int(clean.sum()), "n_explained": int(len(hit)), "accuracy": acc,
           "accuracy_original": acc_o, "accuracy_change_points": round(100 * (acc - acc_o), 2),
           "fooling_success": hit.double().mean().item(), _DISTANCE.get(kind, "l1"): distance.double().mean().item(),
           "score_change": score_change(logits_o[clean], logits[clean]).mean().item()}
    if kind == "swap" and rows.objects is not None:  # the same at the image's resolution (bilinear maps)
        own, other = (mass_in_mask(maps[lying], rows.objects[:, i]) for i in (0, 1))
        out["mass_on_other_object"] = other.mean().item()
        out["mass_on_own_object"] = own.mean().item()
    if kind == "backdoor":
        quiet = rows.explained & ~rows.sticker
        out["clean_l1_to_original"] = cell_l1(maps[quiet], rows.targets[quiet]).double().mean().item()
        out["clean_kept"] = (cell_l1(maps[quiet], rows.targets[quiet]) <= FOOLED_L1).double().mean().item()
        out["clean_empty"] = (maps[quiet].flatten(1).amax(1) == 0).double().mean().item()
    return out
