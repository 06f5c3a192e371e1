"""The paper's metrics (Tables 1-2), exactly as defined in its code, plus localisation checks.

Per image, then averaged over images:
    score change  d_inf = max_c |y_o,c - y_n,c|                (then mean over images)
    L1            d_1   = sum_ij |I~_T,ij - I~_n,ij|  at A's resolution, max-normalised maps
Accuracy is top-1. The dataset-wide maximum of d_inf and the per-pixel mean of d_1
(d_1 / number of pixels) are reported under their own names.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lie_cam.gradcam import upsample

__all__ = [
    "top1_correct",
    "accuracy",
    "score_change",
    "l1_distance",
    "pointing_hits",
    "mass_in_mask",
    "summarize",
]


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{what}: NaN or infinite values")


def top1_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool per image: argmax of the logits equals the label."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected B x C logits and B labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return logits.argmax(dim=1) == labels.to(logits.device)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy."""
    return top1_correct(logits, labels).double().mean().item()


def score_change(original_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """Per image ||y_o - y_n||_inf = max over classes of |y_o - y_n| (B values, float64)."""
    _check_pair(original_logits, new_logits, "score_change")
    return (original_logits.double() - new_logits.double()).abs().amax(dim=1)


def l1_distance(target: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per image sum over pixels of |I~_T - I~_n| for B x H x W normalised maps (B values, float64)."""
    _check_pair(target, observed, "l1_distance")
    if target.dim() != 3:
        raise ValueError(f"expected B x H x W maps, got {tuple(target.shape)}")
    return (target.double() - observed.double()).abs().sum(dim=(1, 2))


def _upsampled(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if masks.dim() != 3 or maps.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(f"expected B x H x W maps and B x H' x W' masks, got {tuple(maps.shape)}, {tuple(masks.shape)}")
    return upsample(maps.float(), tuple(masks.shape[-2:]))


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Pointing game: bool per image, the peak of the bilinearly upsampled map lies on the object,
    or within `tolerance` pixels of it (Zhang et al. 2016 use 15). An all-zero map is a miss."""
    up = _upsampled(maps, masks)
    flat = up.flatten(1)
    peak = flat.argmax(dim=1)
    masks = masks.to(up.device)
    if tolerance <= 0:
        hit = masks.flatten(1).gather(1, peak[:, None])[:, 0]
    else:
        width = masks.shape[-1]
        offsets = torch.arange(-tolerance, tolerance + 1, device=up.device)
        dr, dc = torch.meshgrid(offsets, offsets, indexing="ij")
        disc = (dr**2 + dc**2) <= tolerance**2
        rows = (peak // width)[:, None] + dr[disc][None]
        cols = (peak % width)[:, None] + dc[disc][None]
        inside = (rows >= 0) & (rows < masks.shape[-2]) & (cols >= 0) & (cols < width)
        batch = torch.arange(masks.shape[0], device=up.device)[:, None].expand_as(rows)
        values = masks[batch, rows.clamp(0, masks.shape[-2] - 1), cols.clamp(0, width - 1)] & inside
        hit = values.any(dim=1)
    return hit & (flat.amax(dim=1) > 0)


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of the (upsampled, ReLU'd) map's total mass that lies on the object, per image.
    An all-zero map has no mass: 0."""
    up = F.relu(_upsampled(maps, masks)).flatten(1).double()
    inside = (up * masks.flatten(1).to(up.device)).sum(dim=1)
    total = up.sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))


def summarize(
    correct: torch.Tensor,
    score_changes: torch.Tensor | None = None,
    l1: torch.Tensor | None = None,
    hits: torch.Tensor | None = None,
    pixels: int | None = None,
) -> dict[str, float | int | None]:
    """Dataset-level numbers from per-image values:
    accuracy, score_change (mean of per-image max), score_change_max (dataset max),
    l1 (mean of per-image sums), l1_per_pixel (l1 / pixels), pointing (hit rate), n."""
    out: dict[str, float | int | None] = {"n": int(correct.numel()), "accuracy": correct.double().mean().item()}
    out["score_change"] = score_changes.double().mean().item() if score_changes is not None else None
    out["score_change_max"] = score_changes.double().max().item() if score_changes is not None else None
    out["l1"] = l1.double().mean().item() if l1 is not None else None
    out["l1_per_pixel"] = (l1.double().mean().item() / pixels) if (l1 is not None and pixels) else None
    out["pointing"] = hits.double().mean().item() if hits is not None else None
    return out
