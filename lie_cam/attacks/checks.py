"""The surgery's argument checks, shared by every recipe: constants, builds, dtypes, target images."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from lie_cam.anatomy import EXPECTED, halvings, input_spec, is_manipulated

__all__ = ["BUILDS", "check_build", "check_constant", "check_dtype", "check_input_size", "check_target_image"]

# "paper": the paper's construction (Tables 1-2); "safe": T1/T2's channel folded into the logits in float64,
# alpha_{K+1} > 0 whatever the head, A in >= float32 (`lie_cam.attacks.manipulated`); the hijack's "safe"
# is a wire of dedicated units to the logits (`lie_cam.attacks.hijack`).
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


def check_input_size(input_size: int | None, model: nn.Module) -> int:
    """The side of the inputs a network is built for: `input_size`, or the model's `input_spec` side when
    None; ValueError naming input_size unless it is an int of at least the network's total stride."""
    size = input_spec(model).side if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"input_size must be a positive int (the side of the square input), got {input_size!r}")
    stride = 2 ** halvings(model)
    if size < stride:
        raise ValueError(f"input_size={size} is smaller than the network's total stride {stride}: A would be empty")
    return int(size)


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


def check_target_image(target: torch.Tensor, side: int, input_size: int | None = None) -> torch.Tensor:
    """T2's target as a float64 `side` x `side` tensor, finite, non-negative with a positive maximum."""
    at = f" at input_size={input_size}" if input_size is not None else ""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of shape {side} x {side}, got {type(target).__name__}")
    if target.shape != (side, side):
        raise ValueError(f"target must be {side} x {side} (the resolution of A{at}), got {tuple(target.shape)}: "
                         f"make it at A's size (e.g. lie_cam.data.smiley_target({side})) or pass the input_size "
                         "the network takes")
    t = target.detach().to(torch.float64).cpu()
    if not torch.isfinite(t).all():
        raise ValueError("target contains NaN or infinite values")
    if t.min() < 0 or t.max() <= 0:
        raise ValueError("target must be non-negative with a positive maximum (Grad-CAM's map is a ReLU)")
    return t
