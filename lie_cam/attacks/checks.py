"""The surgery's argument checks, shared by every recipe: constants, builds, dtypes, target images."""

from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch
from torch import nn

from lie_cam.anatomy import EXPECTED, feature_size, halvings, input_spec, is_manipulated, is_resnet, split_vgg

__all__ = ["BUILDS", "HEADROOM", "INPUT_BOUND", "check_build", "check_constant", "check_dtype", "check_input_size",
           "check_target_image", "a_dtype", "check_fits", "check_fold_range", "check_branch_range"]

# "paper": the paper's construction (Tables 1-2); "safe": T1/T2's channel folded into the logits in float64,
# alpha_{K+1} > 0 whatever the head, A in >= float32 (`lie_cam.attacks.manipulated`); the hijack's "safe"
# is a wire of dedicated units to the logits (`lie_cam.attacks.hijack`).
BUILDS = ("paper", "safe")
# The large terms a recipe's constants make (folded bias, c_F F(x), c_G sum A^{K+1}, the map) are kept this many
# times below their dtype's largest value: they are summed with the other terms of the scores and the map.
HEADROOM = 1e3
# The inputs the range checks are made for: normalised images, |x| <= INPUT_BOUND (ImageNet's normalisation maps
# pixels in [0, 1] into [-2.2, 2.7]).
INPUT_BOUND = 10.0


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


def a_dtype(model: nn.Module, build: str) -> torch.dtype:
    """The dtype of A, where the recipes' large terms live: the model's (paper build), at least float32 (safe)."""
    dtype = next(model.parameters()).dtype
    return torch.promote_types(dtype, torch.float32) if build == "safe" else dtype


def check_fits(constants: Mapping[str, float], factor: float, dtype: torch.dtype, what: str) -> None:
    """ValueError naming the constants when `what` = factor * prod |constants| is not below
    finfo(dtype).max / HEADROOM (it would overflow and make the scores or the map NaN); the message
    gives each constant's largest value with the others as given. Computed in log10 (no overflow here)."""
    largest = torch.finfo(dtype).max
    logs = {name: math.log10(abs(value)) for name, value in constants.items()}
    log_size = math.log10(abs(factor)) + sum(logs.values()) if factor else -math.inf
    log_limit = math.log10(largest / HEADROOM)
    if log_size < log_limit:
        return
    name = str(dtype).replace("torch.", "")
    given = " and ".join(f"{n} = {v:g}" for n, v in constants.items())
    size = f"{10 ** log_size:.3g}" if log_size < 300 else f"10^{log_size:.0f}"
    ranges = "; or ".join(
        f"{n} <= {10 ** (log_limit - (log_size - logs[n])):.3g}"
        + (f" with {', '.join(f'{m} = {constants[m]:g}' for m in constants if m != n)}" if len(constants) > 1 else "")
        for n in constants)
    raise ValueError(f"{given} out of range: {what} would be {size}, beyond what {name} holds (largest "
                     f"{largest:.3g}, kept {HEADROOM:g} times below), and the scores or the map would be NaN; "
                     f"expected {ranges}")


def classifier_inputs_per_channel(model: nn.Module) -> int:
    """N_Z: the classifier's inputs per channel of A (VGG-16: 49; a ResNet's GAP head: 1)."""
    return 1 if is_resnet(model) else split_vgg(model).pixels_per_channel


def check_fold_range(model: nn.Module, build: str, value_name: str, value: float, c_W: float,
                     largest_target: float = 1.0) -> None:
    """T1/T2: A^{K+1} = value * I_T (T1: value = c_A, I_T = 1), W_n = c_W, the folded bias
    value max(I_T) |c_W| N_Z and the map term alpha_{K+1} A^{K+1} (of the same size) must fit A's dtype."""
    dtype = a_dtype(model, build)
    n_z = classifier_inputs_per_channel(model)
    check_fits({value_name: value}, largest_target, dtype, f"the added channel A^{{K+1}} = {value_name} max(I_T)")
    check_fits({"c_W": c_W}, 1.0, next(model.parameters()).dtype if build == "paper" else torch.float64,
               "the first FC layer's weight c_W")
    check_fits({value_name: value, "c_W": c_W}, largest_target * n_z, dtype,
               f"the folded bias {value_name} max(I_T) |c_W| N_Z (N_Z = {n_z})")


def check_branch_range(model: nn.Module, build: str, branch: nn.Module, c_F: float, eps: float, c_G: float,
                       floor: float = 0.0, input_size: int | None = None) -> None:
    """T3/T4: for inputs |x| <= INPUT_BOUND, A^{K+1} = c_F F(x) <= c_F F_max (`branch.bound`), the score branch's
    c_G sum A^{K+1} <= c_G c_F N_A F_max and the map's eps c_G A^{K+1} must fit A's dtype (N_A at `input_size`, None: the model's input spec);
    and c_F floor, the least value of A^{K+1} when F >= floor > 0, must not underflow to 0."""
    dtype = a_dtype(model, build)
    bound = float(branch.bound(INPUT_BOUND))
    n_a = feature_size(model, check_input_size(input_size, model)) ** 2
    on = f"max F(x) <= {bound:.3g} on inputs |x| <= {INPUT_BOUND:g}"
    check_fits({"c_F": c_F}, bound, dtype, f"A^{{K+1}} = c_F F(x) ({on})")
    check_fits({"c_F": c_F, "c_G": c_G}, n_a * bound, dtype,
               f"the score branch's c_G c_F sum F(x) ({on}, N_A = {n_a} cells)")
    check_fits({"eps": eps, "c_G": c_G, "c_F": c_F}, bound, dtype, f"the map's eps c_G c_F F(x) ({on})")
    tiny = torch.finfo(dtype).tiny
    if floor > 0 and c_F * floor < tiny:
        raise ValueError(f"c_F = {c_F:g} is too small: c_F F(x) >= c_F * {floor:g} (the branch's floor) would "
                         f"underflow to 0 in {str(dtype).replace('torch.', '')}; expected c_F >= {tiny / floor:.3g}")
