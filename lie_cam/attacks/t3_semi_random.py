"""T3, a semi-random explanation (paper, Sec. 3.3): the added channel is c_F F(x) from a seeded random
conv net F, and a score branch G keeps every score within eps of the original's."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from lie_cam.anatomy import halvings
from lie_cam.attacks.branches import RandomBranch
from lie_cam.attacks.checks import check_branch_range, check_build, check_constant
from lie_cam.attacks.injections import BranchInjection
from lie_cam.attacks.manipulated import ManipulatedModel, branch_model

__all__ = ["semi_random", "default_constants"]


def semi_random(model: nn.Module, eps: float = 0.01, c_G: float = 1e4, c_F: float = 1e7, seed: int = 0,
                build: str = "paper", downsample: int = 2, floor: float | None = None,
                input_size: int | None = None) -> ManipulatedModel:
    """T3: a semi-random explanation c_F F(x) from a seeded random conv net F;
    W_n = 0, b_n = b_o, y_n = y_o + eps mod(c_G sum A^{K+1}, 1): |y_n - y_o| <= eps, and
    alpha^c_{K+1} = eps c_G > 0 for every class in either build (no sign caveat). F follows the
    input's size (A = input / 2^halvings); input_size (None: the model's input spec side) is recorded.
    downsample: F's convolutions run on the input averaged over 2^d x 2^d cells
    (`lie_cam.attacks.branches.RandomBranch`; 0 is the paper's full-resolution F), at most
    halvings - 2 (the pools after F's convolutions absorb the 2 cells their padding adds).
    floor: F's least value; the default keeps F(x) >= 1e-4 > 0 on every image for downsample > 0 (there F
    can otherwise be 0 on a whole image, and the lie vanish) and is 0 for downsample = 0, the paper's F exactly.
    eps, c_G, c_F: finite and positive, and c_G c_F N_A max F within A's dtype (`checks.check_branch_range`)."""
    build = check_build(build, model)
    eps, c_G, c_F = check_constant("eps", eps), check_constant("c_G", c_G), check_constant("c_F", c_F)
    pools = halvings(model)  # F's two padded convolutions add 2 cells; >= 2 pools after them absorb them
    branch = RandomBranch(seed=seed, pools=pools, downsample=min(downsample, max(pools - 2, 0)), floor=floor)
    check_branch_range(model, build, branch, c_F, eps, c_G, branch.floor, input_size)
    return branch_model(model, BranchInjection(branch, c_F), eps, c_G, "T3", build, input_size=input_size)


def default_constants(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's eps = 0.01, c_G = 1e4, c_F = 1e7."""
    return {"eps": 0.01, "c_G": 1e4, "c_F": 1e7}
