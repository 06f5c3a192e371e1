"""Adapted attacks: T1 and T4 rebuilt so that min-max Grad-CAM, Grad-CAM++ and Score-CAM are fooled too,
with the scores exactly unchanged (chapter "Which explainers lie").

Both use T3's wiring (W_n = 0 and the score branch G) with a zero-sum channel A^{K+1} = C Z,
sum_ij Z = 0 (`lie_cam.attacks.injections.ZeroSumInjection`): G = 0 exactly, dy/dA^{K+1}_ij = eps c_G.
"""

from __future__ import annotations

import torch
from torch import nn

from lie_cam.attacks.injections import ZeroSumInjection
from lie_cam.attacks.t3_semi_random import semi_random
from lie_cam.attacks.t4_backdoor import backdoor
from lie_cam.data import smiley

__all__ = ["anchored_flat", "zero_sum_backdoor", "AllButCorner", "StickerCells"]


class AllButCorner(nn.Module):
    """Every cell of A but the corner (0, 0): the cells `anchored_flat` lights."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        on = torch.ones(x.shape[0], *size, dtype=torch.bool, device=x.device)
        on[:, 0, 0] = False
        return on


class StickerCells(nn.Module):
    """The cells where T4's sticker detector fires: the cells `zero_sum_backdoor` lights."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.detector(x) > 0


def anchored_flat(model: nn.Module, eps: float = 0.01, c_G: float = 1e4) -> nn.Module:
    """T1-adapted: a flat explanation that survives min-max normalisation and Grad-CAM++.

    A^{K+1} = C Z with Z = 1 on every cell but one corner, -(N-1) there (`ZeroSumInjection`),
    W_n = 0 and T3's score branch G: y_n = y_o exactly. Every CAM is ReLU(H + w C Z): ~w C on
    N-1 cells and 0 at the anchor, so min(I) = 0 stays put and min-max leaves the flat map."""
    net = semi_random(model, eps=eps, c_G=c_G)
    net.explained_layer = ZeroSumInjection(AllButCorner())
    net.technique = "T1-adapted"
    return net


def zero_sum_backdoor(model: nn.Module, sticker: torch.Tensor | None = None, eps: float = 0.01,
                      c_G: float = 1e4) -> nn.Module:
    """T4-adapted: T4's sticker detector, its cells lit by a zero-sum channel of size C = 2^40.

    Without a sticker Z = 0: the original network exactly. With one, sum A^{K+1} = 0 so G = 0 and
    y_n = y_o exactly; Grad-CAM++'s weight becomes N_A eps c_G / 2 (the sum_ij A term of its
    denominator vanishes) and Score-CAM's softmax weight, however small, multiplies C."""
    net = backdoor(model, smiley() if sticker is None else sticker, eps=eps, c_G=c_G)
    net.explained_layer = ZeroSumInjection(StickerCells(net.explained_layer.branch))
    net.technique = "T4-adapted"
    return net

