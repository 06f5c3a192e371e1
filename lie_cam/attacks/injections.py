"""What the added channel A^{K+1} carries, one module per kind of injection.

Each injection is the manipulated model's `explained_layer`: it takes [A_o, A_o^{K+1}] and the input x
and returns A, and it owns the technique's target explanation (`target`, max-normalised, B x H x W).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lie_cam.attacks.checks import check_constant
from lie_cam.gradcam import normalize_maps

__all__ = ["NoInjection", "ConstantInjection", "BranchInjection", "ZeroSumInjection"]


class NoInjection(nn.Module):
    """A = ReLU(conv(h)) with K+1 channels as they are (T1: A^{K+1} = ReLU(c_A) = c_A).
    Target: the flat map of ones."""

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return a

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones_like(extra)


class ConstantInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_I * I_T with a fixed image I_T (T2), or with a constant c_A
    everywhere when `pattern` is a single number (T1's safe build: any size of A). Target: I_T / max I_T
    (all ones for a constant). `technique` and `input_size` only word the error for a wrong input size."""

    def __init__(self, pattern: torch.Tensor, technique: str = "T2", input_size: int | None = None) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern.clone())
        self.technique = technique
        self.input_size = input_size

    def free_map(self, size: tuple[int, int]) -> torch.Tensor:
        """The injected map at A's size (H, W): the constant broadcast, or I_T itself."""
        if self.pattern.dim() == 0:
            return self.pattern.expand(size)
        self._check_size(size)
        return self.pattern

    def _check_size(self, size: tuple[int, int]) -> None:
        if tuple(size) != tuple(self.pattern.shape):
            built = f" (input_size={self.input_size})" if self.input_size is not None else ""
            raise ValueError(
                f"{self.technique}'s injected image is {tuple(self.pattern.shape)}, made for A of that size{built}, "
                f"but A is {tuple(size)}: feed inputs of the size the model was manipulated for, or build it "
                f"with the input_size of these inputs (and, for T2, a target of A's size)")

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        injected = self.free_map(tuple(a.shape[-2:]))
        return torch.cat([a[:, :-1], a[:, -1:] + injected.to(a.dtype)], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        if self.pattern.dim() == 0:
            return torch.ones_like(extra)
        return normalize_maps(self.pattern.expand_as(extra).to(extra.dtype))


class BranchInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_F * F(x) with an input-dependent branch F (T3, T4).

    The branch's output is scaled in float64 and only then cast to A's dtype, so
    c_F * F(x) keeps its value in float32 models too. Target: A^{K+1} / max A^{K+1}
    (= F / max F, as A_o^{K+1} = ReLU(0) = 0); with `honest_when_silent` (T4) the
    honest map wherever F is zero, since there the network explains honestly.
    """

    def __init__(self, branch: nn.Module, c_F: float, honest_when_silent: bool = False) -> None:
        super().__init__()
        self.branch = branch
        self.c_F = check_constant("c_F", c_F)
        self.honest_when_silent = bool(honest_when_silent)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = self.branch(x)
        if f.shape[-2:] != a.shape[-2:]:
            raise ValueError(
                f"the branch F(x) is {tuple(f.shape[-2:])} but A is {tuple(a.shape[-2:])}: "
                "feed inputs of the size the model was manipulated for"
            )
        injected = (self.c_F * f.to(torch.float64)).to(a.dtype)
        return torch.cat([a[:, :-1], a[:, -1:] + injected[:, None]], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        f = normalize_maps(extra)
        if not self.honest_when_silent:
            return f
        fired = extra.flatten(1).amax(1) > 0
        if honest is None:
            if bool(fired.all()):
                return f
            raise ValueError("on an image without a sticker T4's target is the original network's explanation: "
                             "pass honest= (the original's normalised Grad-CAM, B x H x W)")
        if honest.shape != f.shape:
            raise ValueError(f"honest maps must be {tuple(f.shape)}, got {tuple(honest.shape)}")
        return torch.where(fired[:, None, None], f, honest.to(device=f.device, dtype=f.dtype))


class ZeroSumInjection(nn.Module):
    """A^{K+1} = A_o^{K+1} + C Z with an integer map Z, sum_ij Z = 0, C = 2^40.

    With the score branch G(v) = eps mod(c_G sum v, 1) and W_n = 0 (T3's wiring), sum A^{K+1} = 0
    exactly in float32 (all partial sums are integer multiples of C below 2^24 C), so G = 0 and
    y_n = y_o exactly, while dy/dA^{K+1}_ij = eps c_G. `fired` gives the B x H x W boolean map
    of the cells to light up: Z = (N - n) on them and -n elsewhere (n of the N cells fired).
    Target: the fired cells (ones there, zeros elsewhere)."""

    def __init__(self, fired: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], scale: float = 2.0**40) -> None:
        super().__init__()
        self.fired = fired
        self.scale = float(scale)

    def zero_sum(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Z, B x H x W float64 integers with sum 0 per image."""
        on = self.fired(x, size).to(torch.float64)
        n = on.flatten(1).sum(1)[:, None, None]
        return (size[0] * size[1] - n) * on - n * (1 - on)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = (self.scale * self.zero_sum(x, tuple(a.shape[-2:]))).to(a.dtype)
        return torch.cat([a[:, :-1], a[:, -1:] + z[:, None]], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        return (extra > 0).to(extra.dtype)
