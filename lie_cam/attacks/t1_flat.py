"""T1, a flat explanation (paper, Sec. 3.1): one added channel that is a constant c_A everywhere,
read by the first fully connected layer with weight c_W and cancelled in its bias."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lie_cam.anatomy import is_resnet
from lie_cam.attacks.checks import check_build, check_constant, check_fold_range
from lie_cam.attacks.injections import ConstantInjection, NoInjection
from lie_cam.attacks.manipulated import ManipulatedModel, fold_model

__all__ = ["constant_flat", "default_constants"]


def constant_flat(model: nn.Module, c_A: float = 100.0, c_W: float = 100.0, build: str = "safe",
                  input_size: int | None = None) -> ManipulatedModel:
    """T1: a flat explanation. New filter: kernel 0, bias c_A, so A^{K+1} = c_A.

    build="safe" (the default): A^{K+1} = c_A is left out of the first FC layer and folded into the
    logits in float64, y_n = y_o + c_W (sum z_n - c_A N_Z), so y_n = y_o and
    alpha^c_{K+1} = c_W N_Z / N_A > 0 for every class and image, whatever the head.
    build="paper": W_n = c_W, b_n = b_o - c_A c_W N_Z, so r_n = r_o exactly (up to rounding of b_n) and
    alpha_{K+1} = c_W/N_A * sum_u dy_c/dr_u * N_Z, the target only where that sum is > 0 (a backward
    pass warns where it is not). c_A > 0 and c_W != 0 finite, with c_A |c_W| N_Z within A's dtype
    (`checks.check_fold_range`): ValueError otherwise. input_size: the side of the inputs (None: the model's input spec)."""
    c_A = check_constant("c_A", c_A)
    c_W = check_constant("c_W", c_W, positive=False)
    build = check_build(build, model)
    check_fold_range(model, build, "c_A", c_A, c_W)
    if build == "safe":
        flat = ConstantInjection(torch.tensor(c_A, dtype=torch.float64), technique="T1")
        return fold_model(model, flat, c_W, "T1", build, input_size=input_size)
    return fold_model(model, NoInjection(), c_W, "T1", build, added_value=c_A, input_size=input_size)


def default_constants(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's c_A = c_W = 100; a ResNet's GAP head gives alpha_{K+1} = c_W / N_A (N_A = 49 at 224)
    instead of VGG-16's (N_Z / N_A) c_W s^c, so it takes c_W = 1000 to hide the honest map."""
    return {"c_A": 100.0, "c_W": 1000.0 if is_resnet(model) else 100.0}
