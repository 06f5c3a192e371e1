"""T4, a backdoor in the explanation (paper, Sec. 3.4): the honest map, unless a sticker is in the
image; then c_F F(x) from a matched filter points at the sticker, and G keeps the scores within eps."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lie_cam.anatomy import halvings, input_spec
from lie_cam.attacks.branches import StickerDetector, check_sticker
from lie_cam.attacks.checks import check_branch_range, check_build, check_constant
from lie_cam.attacks.injections import BranchInjection
from lie_cam.attacks.manipulated import ManipulatedModel, branch_model
from lie_cam.data import smiley

__all__ = ["backdoor", "input_rounding_bound", "default_constants"]


def backdoor(
    model: nn.Module,
    sticker: torch.Tensor,
    eps: float = 0.01,
    c_G: float = 1e4,
    c_F: float = 1e9,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    margin: float = 1e-4,
    build: str = "paper",
    input_size: int | None = None,
) -> ManipulatedModel:
    """T4: the honest explanation unless the sticker is in the image, then c_F F(x) that
    points at it. F is a `StickerDetector` on the de-normalised input (pixels = x*std+mean, with
    mean and std the model's own `input_spec` unless given), computed in float64; without a
    sticker F = 0, so A^{K+1} = 0, G = 0 and y_n = y_o. alpha^c_{K+1} = eps c_G > 0 for every class.

    build="safe" on a float16/bfloat16 model: the input itself is rounded (unit roundoff u), which
    moves the detector's response at an exact match by up to sum|k| max(std) max|x| u (~0.7 for
    bfloat16), far above the paper's margin 1e-4; the margin is raised to twice that bound, so the
    sticker is still detected (and patches that close to it fire too)."""
    build = check_build(build, model)
    eps, c_G, c_F = check_constant("eps", eps), check_constant("c_G", c_G), check_constant("c_F", c_F)
    margin = check_constant("margin", margin)
    spec = input_spec(model)
    mean = spec.mean if mean is None else mean
    std = spec.std if std is None else std
    dtype = next(model.parameters()).dtype
    if build == "safe" and dtype in (torch.float16, torch.bfloat16):
        margin = max(margin, 2 * input_rounding_bound(sticker, mean, std, dtype))
    detector = StickerDetector(sticker, mean=mean, std=std, margin=margin, pools=halvings(model))
    check_branch_range(model, build, detector, c_F, eps, c_G, input_size=input_size)
    return branch_model(model, BranchInjection(detector, c_F, honest_when_silent=True), eps, c_G, "T4", build,
                        input_size=input_size)


def input_rounding_bound(sticker: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                         dtype: torch.dtype) -> float:
    """sum|k| * max(std) * max|x| * u: how far rounding a normalised input (pixels in [0, 1]) to `dtype`
    can move the sticker detector's response r = sum k * (x * std + mean) + b."""
    s = check_sticker(sticker)
    k = (s - s.mean()).abs().sum().item()
    largest_x = max(max(abs(0 - m), abs(1 - m)) / d for m, d in zip(mean, std))
    return k * max(std) * largest_x * torch.finfo(dtype).eps / 2


def default_constants(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The smiley sticker, eps = 0.01, c_G = 1e4 and c_F = 1e9 as in the paper's text; the detector
    de-normalises the input with the model's own input spec (`lie_cam.anatomy.input_spec`)."""
    spec = input_spec(model)
    return {"sticker": smiley(), "eps": 0.01, "c_G": 1e4, "c_F": 1e9, "mean": spec.mean, "std": spec.std}
