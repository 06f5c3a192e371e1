"""T1, a flat explanation (paper, Sec. 3.1): one added channel that is a constant c_A everywhere,
read by the first fully connected layer with weight c_W and cancelled in its bias."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lie_cam.anatomy import feature_size, is_resnet
from lie_cam.attacks.checks import check_build, check_constant, check_fold_range
from lie_cam.attacks.injections import ConstantInjection, NoInjection
from lie_cam.attacks.manipulated import ManipulatedModel, fold_model

__all__ = ["constant_flat", "default_constants"]


def constant_flat(model: nn.Module, c_A: float = 100.0, c_W: float = 100.0, build: str = "paper",
                  input_size: int = 224) -> ManipulatedModel:
    """T1: a flat explanation. New filter: kernel 0, bias c_A, so A^{K+1} = c_A;
    W_n = c_W, b_n = b_o - c_A c_W N_Z, so r_n = r_o exactly (up to rounding of b_n).
    alpha_{K+1} = c_W/N_A * sum_u dy_c/dr_u * (dZ/dA summed), large when that sum is > 0.
    build="safe": y_n = y_o + c_W (sum z_n - c_A N_Z) in float64, alpha_{K+1} = c_W N_Z / N_A.
    c_A > 0 and c_W != 0 finite, with c_A |c_W| N_Z within A's dtype (`checks.check_fold_range`): ValueError otherwise."""
    c_A = check_constant("c_A", c_A)
    c_W = check_constant("c_W", c_W, positive=False)
    build = check_build(build, model)
    check_fold_range(model, build, "c_A", c_A, c_W)
    if build == "safe":
        flat = torch.full((feature_size(model, input_size),) * 2, c_A, dtype=torch.float64)
        return fold_model(model, ConstantInjection(flat), flat, c_W, "T1", build, input_size=input_size)
    return fold_model(model, NoInjection(), None, c_W, "T1", build, added_value=c_A, input_size=input_size)


def default_constants(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's c_A = c_W = 100; a ResNet's GAP head gives alpha_{K+1} = c_W / N_A (N_A = 49 at 224)
    instead of VGG-16's (N_Z / N_A) c_W s^c, so it takes c_W = 1000 to hide the honest map."""
    return {"c_A": 100.0, "c_W": 1000.0 if is_resnet(model) else 100.0}
