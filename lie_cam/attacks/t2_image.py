"""T2, a fixed image as explanation (paper, Sec. 3.2): the added channel is c_I I_T, folded into
the first fully connected layer like T1's constant."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lie_cam.anatomy import feature_size, is_resnet
from lie_cam.attacks.checks import check_build, check_constant, check_fold_range, check_input_size, check_target_image
from lie_cam.attacks.injections import ConstantInjection
from lie_cam.attacks.manipulated import ManipulatedModel, fold_model
from lie_cam.data import smiley_target

__all__ = ["constant_image", "default_constants"]


def constant_image(
    model: nn.Module, target: torch.Tensor, c_I: float = 100.0, c_W: float = 10.0, input_size: int | None = None,
    build: str = "safe",
) -> ManipulatedModel:
    """T2: a fixed explanation I_T. New filter all zero; A^{K+1} = c_I * I_T.

    build="safe" (the default): y_n = y_o + c_W (sum z_n - S_Z) in float64 with S_Z = sum(z_n) of the
    pooled injected map, alpha^c_{K+1} = c_W N_Z / N_A > 0 for every class and image.
    build="paper": W_n = c_W, b_n = b_o - c_W S_Z (the target only where sum_u dy_c/dr_u > 0).

    target: H x W at A's resolution for `input_size` (None: the model's input spec side; 14 x 14 for
    VGG-16 at 224 x 224, 7 x 7 for a ResNet), non-negative.
    c_I > 0 and c_W != 0 finite, with c_I max(I_T) |c_W| N_Z within A's dtype (`checks.check_fold_range`).
    """
    c_I = check_constant("c_I", c_I)
    c_W = check_constant("c_W", c_W, positive=False)
    build = check_build(build, model)
    size = check_input_size(input_size, model)
    target = check_target_image(target, feature_size(model, size), size)
    check_fold_range(model, build, "c_I", c_I, c_W, float(target.max()))
    pattern = c_I * target
    return fold_model(model, ConstantInjection(pattern), c_W, "T2", build, input_size=size)


def default_constants(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's smiley at A's resolution (for `input_size`, else the model's input spec side),
    c_I = 100, c_W = 10 (1000 for a ResNet's GAP head)."""
    side = feature_size(model, check_input_size(given.get("input_size"), model))
    return {"target": smiley_target(side), "c_I": 100.0, "c_W": 1000.0 if is_resnet(model) else 10.0}
