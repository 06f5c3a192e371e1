"""The surgery's argument checks, shared by every recipe: constants, builds, dtypes, target images."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from lie_cam.anatomy import EXPECTED, is_manipulated

__all__ = ["BUILDS", "check_build", "check_constant", "check_dtype", "check_target_image"]

# "paper": the paper's construction; "safe": logit fold in float64, A in >= float32 (`lie_cam.attacks.manipulated`).
BUILDS = ("paper", "safe")


def check_build(build: str, model: nn.Module) -> str:
    """`build` if it is one of `BUILDS` and `model` can be built from (a plain model with parameters,
    float32/64 for the paper build); TypeError/ValueError saying what is expected otherwise."""
    if build not in BUILDS:
        raise ValueError(f"build must be one of {BUILDS}, got {build!r}")
    if is_manipulated(model):
        raise TypeError(f"this model was already manipulated ({model.technique}); {EXPECTED}")
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"{EXPECTED}; got {type(model).__name__}")
    if build == "paper":
        check_dtype(model)
    return build


def check_constant(name: str, value: float, positive: bool = True) -> float:
    """`value` as a finite float, > 0 when `positive`, else non-zero; the error names `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or value == 0:
        raise ValueError(f"{name} must be a finite{' positive' if positive else ', non-zero'} number, got {value}")
    return value


def check_dtype(model: nn.Module) -> None:
    """The large constants (c_A c_W N_Z = 4.9e5 in T1's bias, c_F F(x) ~ 1e9) overflow float16
    (max 65504) and lose every digit of the scores in bfloat16 (step 2048 at 4.9e5)."""
    dtypes = {p.dtype for p in model.parameters()}
    reduced = dtypes & {torch.float16, torch.bfloat16}
    if reduced:
        raise TypeError(
            f"the model has {sorted(str(d).replace('torch.', '') for d in reduced)} parameters: the manipulations' "
            "constants overflow float16 and are rounded away in bfloat16, which would change the predictions. "
            "Pass build=\"safe\" (the constants stay in float32/64 and out of the first FC layer), or build from "
            "a float32 (or float64) model and run reduced precision through lie_cam.experiments.engine.Evaluator(autocast_dtype=...), "
            "which keeps the heads in float32 (a plain torch.autocast around the paper build casts the folded bias too)")


def check_target_image(target: torch.Tensor, side: int) -> torch.Tensor:
    """T2's target as a float64 `side` x `side` tensor, finite, non-negative with a positive maximum."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of shape {side} x {side}, got {type(target).__name__}")
    if target.shape != (side, side):
        raise ValueError(f"target must be {side} x {side} (the resolution of A), got {tuple(target.shape)}")
    t = target.detach().to(torch.float64).cpu()
    if not torch.isfinite(t).all():
        raise ValueError("target contains NaN or infinite values")
    if t.min() < 0 or t.max() <= 0:
        raise ValueError("target must be non-negative with a positive maximum (Grad-CAM's map is a ReLU)")
    return t
