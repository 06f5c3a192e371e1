"""What the explorers measure: a pure measuring function and the slider specifications, as data.

    measure(technique, model, x, precision, **params) -> Measurement

builds the manipulated network for the constants `params` and measures it on one image
(the manipulated network explains its own top class):

    score_change   max_c |y_o,c - y_n,c|, original vs manipulated logits
    alpha_extra    alpha_{K+1}, the weight Grad-CAM gives the added channel (Eq. 2)
    alpha_share    |alpha_{K+1}| / sum_{k=1}^{K+1} |alpha_k|: the added channel's share of the
                   total absolute channel weight
    map_share      |alpha_{K+1}| S_{K+1} / sum_k |alpha_k| S_k with S_k = sum_ij A^k_ij: the added
                   channel's share of the total absolute mass of the terms of Eq. 1 (1 = the map is
                   the added channel alone). It can be near 1 while alpha_share is small, when
                   A^{K+1} is huge (T3: c_F F(x))
    l1             sum_ij |I~_T - I~_n|: distance of the normalised map to the technique's target
    class_original, class_manipulated   the argmax classes
    map            the normalised h x w map I~_n;  alpha   the K+1 channel weights

The layers below the last conv are untouched by the surgery, so the trunk output h = trunk(x)
of the honest model is computed once (`honest_base`) and every manipulated network is
evaluated from it: A = manipulated.activations_from(h, x), then `head_gradcam(manipulated.head, A)`.

`SPECS[technique]` lists the controls (`SliderSpec`: name, min, max, step, log scale, default,
label, or a set of choices): T1 c_W, c_A, precision; T2 c_I; T3 eps, c_G, precision; T4 eps,
stickers on/off. The same specs drive the live ipywidgets `Explorer` (needs a kernel: Jupyter,
Colab) and the kernel-free sliders that `lie_cam.explore.sliders` precomputes into the book's HTML.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from lie_cam.anatomy import cut_at_a
from lie_cam.attacks import ATTACKS, ManipulatedModel
from lie_cam.data import paste_stickers
from lie_cam.gradcam import GradCAMResult, gradcam, head_gradcam
from lie_cam.metrics import l1_distance, score_change

__all__ = [
    "PRECISIONS",
    "SliderSpec",
    "TechniqueSpec",
    "SPECS",
    "HonestBase",
    "Measurement",
    "BaseCache",
    "honest_base",
    "measure",
    "split_params",
    "alpha_share",
    "map_share",
]

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------------
# The controls, as data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliderSpec:
    """One control. Numeric: values from `min` to `max` by `step` (in log10 units when `log`,
    so min=-2, max=4, step=1 means 1e-2 .. 1e4), `default` in the parameter's own units;
    `points`: the values the kernel-free slider precomputes (default: `grid(7)`).
    Choice: `choices` (e.g. ("float32", "float64") or (False, True)) and min/max/step unused."""

    name: str
    label: str
    default: Any
    min: float = 0.0
    max: float = 0.0
    step: float = 1.0
    log: bool = False
    choices: tuple = ()
    fmt: str = ".3g"
    points: tuple = ()

    def __post_init__(self) -> None:
        if self.choices:
            if self.default not in self.choices:
                raise ValueError(f"{self.name}: default {self.default!r} is not one of {self.choices}")
            return
        if not (self.max > self.min and self.step > 0):
            raise ValueError(f"{self.name}: need min < max and step > 0, got {self.min}, {self.max}, {self.step}")
        low, high = (10.0 ** self.min, 10.0 ** self.max) if self.log else (self.min, self.max)
        outside = [p for p in (*self.points, self.default) if not low * (1 - 1e-9) <= p <= high * (1 + 1e-9)]
        if outside:
            raise ValueError(f"{self.name}: {outside} outside the slider's range {low:g} .. {high:g}")

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    def values(self) -> list:
        """Every value the control can take (the ipywidgets slider's positions)."""
        if self.is_choice:
            return list(self.choices)
        count = int(round((self.max - self.min) / self.step)) + 1
        points = [self.min + i * self.step for i in range(count)]
        return [10.0 ** p if self.log else p for p in points]

    def grid(self, count: int) -> list:
        """`count` values spread evenly (in log10 when `log`) from min to max, the default
        included (it replaces the nearest point): the kernel-free slider's positions."""
        if self.is_choice:
            return list(self.choices)
        if count < 2:
            raise ValueError(f"{self.name}: a grid needs at least 2 values, got {count}")
        lo, hi = self.min, self.max
        points = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
        values = [10.0 ** p if self.log else p for p in points]
        where = (lambda v: math.log10(v)) if self.log else (lambda v: v)
        nearest = min(range(count), key=lambda i: abs(where(values[i]) - where(self.default)))
        values[nearest] = float(self.default)
        return [float(f"{v:.6g}") for v in values]

    def kernel_free_points(self) -> list:
        """The values precomputed for the book's kernel-free slider."""
        return list(self.points) if self.points else self.grid(7)

    def format(self, value: Any) -> str:
        if self.is_choice:
            return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)
        return format(value, self.fmt)


def _precision(default: str) -> SliderSpec:
    return SliderSpec("precision", "precision", default, choices=tuple(PRECISIONS))


@dataclass(frozen=True)
class TechniqueSpec:
    """A technique's controls and how to build it: build(model, **slider values, **fixed).
    `head_only`: the constants that change only the head (T3/T4's score branch G: eps, c_G),
    not A, so networks that differ only in them share A = activations_from(h, x)."""

    technique: str
    title: str
    sliders: tuple[SliderSpec, ...]
    build: Callable[..., ManipulatedModel]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    head_only: tuple[str, ...] = ()

    def slider(self, name: str) -> SliderSpec:
        for s in self.sliders:
            if s.name == name:
                return s
        raise KeyError(f"{self.technique} has no control {name!r}; it has {[s.name for s in self.sliders]}")

    def defaults(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.sliders}


SPECS: dict[str, TechniqueSpec] = {
    "T1": TechniqueSpec("T1", "T1, a flat explanation", (
        SliderSpec("c_W", "c_W (FC weight)", 100.0, min=-2, max=4, step=0.25, log=True, fmt=".0e",
                   points=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)),
        SliderSpec("c_A", "c_A (channel value)", 100.0, min=1, max=200, step=1, fmt=".3g",
                   points=(1.0, 10.0, 50.0, 100.0, 200.0)),
        _precision("float32"),
    ), ATTACKS["T1"].build, {"build": "paper"}),  # the paper's fold: what chapter 4 explores
    "T2": TechniqueSpec("T2", "T2, a smiley as explanation", (
        SliderSpec("c_I", "c_I (image scale)", 100.0, min=-3, max=3, step=0.25, log=True, fmt=".0e",
                   points=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)),
    ), ATTACKS["T2"].build, {"c_W": 10.0, "build": "paper"}),
    "T3": TechniqueSpec("T3", "T3, a semi-random explanation", (
        SliderSpec("eps", "ε (score bound)", 0.01, min=-4, max=0, step=0.25, log=True, fmt=".0e",
                   points=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)),
        SliderSpec("c_G", "c_G (gradient scale)", 1e4, min=-8, max=8, step=0.5, log=True, fmt=".0e",
                   points=(1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8)),
        _precision("float64"),
    ), ATTACKS["T3"].build, {"c_F": 1e7, "seed": 0}, head_only=("eps", "c_G")),
    "T4": TechniqueSpec("T4", "T4, a backdoor in the explanation", (
        SliderSpec("eps", "ε (score bound)", 0.01, min=-4, max=0, step=0.25, log=True, fmt=".0e",
                   points=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)),
        SliderSpec("stickers", "stickers", True, choices=(False, True)),
    ), ATTACKS["T4"].build, {"c_G": 1e4, "c_F": 1e9}, head_only=("eps", "c_G")),
}


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def alpha_share(alpha: torch.Tensor) -> torch.Tensor:
    """|alpha_{K+1}| / sum_k |alpha_k| per row of a B x (K+1) weight matrix (the last
    column is the added channel); 0 where every weight is 0."""
    if alpha.dim() != 2:
        raise ValueError(f"expected B x (K+1) channel weights, got {tuple(alpha.shape)}")
    total = alpha.abs().sum(dim=1)
    return torch.where(total > 0, alpha[:, -1].abs() / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def map_share(alpha: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """|alpha_{K+1}| S_{K+1} / sum_k |alpha_k| S_k per image, S_k = sum_ij A^k_ij (A >= 0 after the
    ReLU): the added channel's share of the mass of the terms alpha_k A^k of Grad-CAM's Eq. 1."""
    if alpha.dim() != 2 or activations.dim() != 4 or activations.shape[:2] != alpha.shape:
        raise ValueError(f"expected B x K weights and B x K x H x W activations, got "
                         f"{tuple(alpha.shape)} and {tuple(activations.shape)}")
    terms = alpha.abs() * activations.abs().flatten(2).sum(dim=2)
    return alpha_share(terms)


@dataclass(frozen=True)
class HonestBase:
    """The honest model in one precision, the image explained (1 x 3 x H x W, stickers pasted
    when asked), its Grad-CAM and the trunk output h = trunk(x) shared by every manipulation;
    `activations` keeps A of the manipulated networks by the constants that determine it."""

    model: nn.Module
    x: torch.Tensor
    honest: GradCAMResult
    h: torch.Tensor
    precision: str
    stickers: bool
    source: torch.Tensor = field(repr=False)
    activations: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Measurement:
    """One manipulated network measured on one image (see the module docstring)."""

    technique: str
    params: dict[str, Any]
    precision: str
    score_change: float
    alpha_extra: float
    alpha_share: float
    map_share: float
    l1: float
    class_original: int
    class_manipulated: int
    map: torch.Tensor
    alpha: torch.Tensor
    image: torch.Tensor

    def numbers(self) -> dict[str, Any]:
        """The scalars, with the parameters and the precision (no tensors)."""
        return {**self.params, "precision": self.precision, "score_change": self.score_change,
                "alpha_extra": self.alpha_extra, "alpha_share": self.alpha_share, "map_share": self.map_share,
                "l1": self.l1, "class_original": self.class_original, "class_manipulated": self.class_manipulated}


def _one_image(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected one image as a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image, 3 x H x W or 1 x 3 x H x W, got {tuple(x.shape)}")
    return x.detach()


def _check_precision(precision: str) -> torch.dtype:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def honest_base(model: nn.Module, x: torch.Tensor, precision: str = "float32", stickers: bool = False,
                sticker_seed: int = 0) -> HonestBase:
    """A copy of `model` in `precision` (eval mode; the model given is not touched), the image
    (with three smiley stickers pasted at `sticker_positions(sticker_seed)` when `stickers`),
    its honest Grad-CAM and the trunk output h."""
    dtype = _check_precision(precision)
    stickers = _check_stickers(stickers)
    device = next(model.parameters()).device
    source = _one_image(x)
    x = source.to(device=device, dtype=dtype)
    if stickers:
        x, _ = paste_stickers(x, seeds=[sticker_seed])
    honest_model = copy.deepcopy(model).to(dtype=dtype).eval()
    with torch.no_grad():
        h = cut_at_a(honest_model).trunk(x)
    return HonestBase(honest_model, x, gradcam(honest_model, x), h, precision, bool(stickers), source.clone())


def split_params(spec: TechniqueSpec, params: Mapping[str, Any]) -> tuple[str, bool, dict[str, Any]]:
    """(precision, stickers, build keyword arguments) from slider values, defaults filling gaps.
    `precision` and `stickers` (paste three stickers into the image) are accepted by every technique."""
    names = {s.name for s in spec.sliders} | set(spec.fixed)
    unknown = set(params) - names - {"precision", "stickers"}
    if unknown:
        raise TypeError(f"{spec.technique} takes {sorted(names)}, got unknown {sorted(unknown)}")
    values = {**spec.defaults(), **spec.fixed, **params}
    precision = values.pop("precision", "float32")
    stickers = _check_stickers(values.pop("stickers", False))
    return precision, stickers, values


def _check_stickers(stickers: Any) -> bool:
    """`stickers` as a bool; a string or a number is refused ("no" is not False)."""
    if not isinstance(stickers, (bool, np.bool_)):
        raise TypeError(f"stickers must be True or False, got {stickers!r}")
    return bool(stickers)


def measure(technique: str, model: nn.Module, x: torch.Tensor, precision: str | None = None,
            base: HonestBase | None = None, **params: Any) -> Measurement:
    """Build `technique` from `model` with `params` (the spec's defaults fill the rest) and
    measure it on the one image x. `base` (from `honest_base` for the same model, image,
    precision and stickers) saves recomputing the honest side; it is checked against x."""
    if technique not in SPECS:
        raise KeyError(f"technique must be one of {sorted(SPECS)}, got {technique!r}")
    spec = SPECS[technique]
    if precision is not None:
        params = {**params, "precision": precision}
    precision, stickers, build_args = split_params(spec, params)
    _check_precision(precision)
    if base is None:
        base = honest_base(model, x, precision, stickers)
    elif base.precision != precision or base.stickers != stickers:
        raise ValueError(f"base was computed for {base.precision}, stickers={base.stickers}; "
                         f"this measurement needs {precision}, stickers={stickers}")
    elif not torch.equal(base.source, _one_image(x).to(base.source.device, base.source.dtype)):
        raise ValueError("base was computed for another image than x: use honest_base(model, x, ...)")
    manipulated = spec.build(base.model, **build_args)
    key = (technique, tuple(sorted((k, v) for k, v in build_args.items() if k not in spec.head_only)))
    activations = base.activations.get(key)
    if activations is None:
        with torch.no_grad():
            activations = base.activations[key] = manipulated.activations_from(base.h, base.x)
    result = head_gradcam(manipulated.head, activations)
    target = manipulated.target_explanation(extra=activations[:, -1], honest=base.honest.normalized)
    shown = {k: v for k, v in params.items() if k != "precision"}
    shown = {**{s.name: s.default for s in spec.sliders if s.name != "precision"}, **shown}
    return Measurement(
        technique=technique,
        params=shown,
        precision=precision,
        score_change=score_change(base.honest.logits, result.logits).item(),
        alpha_extra=result.alpha[0, -1].item(),
        alpha_share=alpha_share(result.alpha).item(),
        map_share=map_share(result.alpha, activations).item(),
        l1=l1_distance(target, result.normalized).item(),
        class_original=int(base.honest.classes[0]),
        class_manipulated=int(result.classes[0]),
        map=result.normalized[0].detach().cpu(),
        alpha=result.alpha[0].detach().cpu(),
        image=base.x[0].detach().float().cpu(),
    )


class BaseCache:
    """`honest_base` per (precision, stickers) for one model and image, computed on first use."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model = model
        self.x = _one_image(x)
        self._bases: dict[tuple[str, bool], HonestBase] = {}

    def measure(self, technique: str, **params: Any) -> Measurement:
        precision, stickers, _ = split_params(SPECS[technique], params)
        key = (precision, stickers)
        if key not in self._bases:
            self._bases[key] = honest_base(self.model, self.x, precision, stickers)
        return measure(technique, self.model, self.x, base=self._bases[key], **params)
