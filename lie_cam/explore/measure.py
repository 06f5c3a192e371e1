"""What the explorers measure: a pure measuring function and the slider specifications, as data.

    measure(technique, model, x, precision, rank=0, norm="max", **params) -> Measurement
    measure_batch(technique, base, ranks, norms, **params) -> [Measurement]  # S scenes x R classes x N norms

builds the manipulated network for the constants `params` and measures it on one image
(or on every scene of `base` at once), explaining the class of `rank` among the honest scores
(0: the top class; the attacks keep the scores, so it is the manipulated network's top class too),
the map normalised by `norm` ("max": I / max I, Grad-CAM's; "min-max": (I - min I) / (max I - min I)):

    score_change   max_c |y_o,c - y_n,c|, original vs manipulated logits
    alpha_extra    alpha_{K+1}, the weight Grad-CAM gives the added channel (Eq. 2)
    alpha_share    |alpha_{K+1}| / sum_{k=1}^{K+1} |alpha_k|: the added channel's share of the
                   total absolute channel weight
    map_share      |alpha_{K+1}| S_{K+1} / sum_k |alpha_k| S_k with S_k = sum_ij A^k_ij: the added
                   channel's share of the total absolute mass of the terms of Eq. 1 (1 = the map is
                   the added channel alone). It can be near 1 while alpha_share is small, when
                   A^{K+1} is huge (T3: c_F F(x))
    l1             sum_ij |I~_T - I~_n|: distance of the normalised map to the technique's target
    class_original, class_manipulated   the argmax classes;  class_explained  the class of `rank`
    map            the normalised h x w map I~_n;  alpha   the K+1 channel weights

The layers below the last conv are untouched by the surgery, so the trunk output h = trunk(x)
of the honest model is computed once (`honest_base`) and every manipulated network is
evaluated from it: A = manipulated.activations_from(h, x), then `head_gradcam(manipulated.head, A)`.

`SPECS[technique]` lists the controls (`SliderSpec`: name, min, max, step, log scale, default,
label, or a set of choices): T1 c_W, c_A, precision; T2 c_I, c_W; T3 eps, c_G, c_F, precision;
T4 eps, stickers (off, or one of three placements), c_F. Their defaults are where each control
moves the picture (the transition of the map, eps c_G c_F or c_W c_A of the order of the honest
terms), not always the paper's constants (T3's c_G = 1e4 and T4's c_F c_G = 1e13 saturate it:
there eps only moves the score). The same specs drive the live ipywidgets `Explorer` (needs a kernel: Jupyter,
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
from lie_cam.gradcam import GradCAMResult, gradcam, head_gradcam, normalize_maps
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
    "measure_batch",
    "minmax_maps",
    "normalise",
    "NORMS",
    "split_params",
    "alpha_share",
    "map_share",
]

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
NORMS = ("max", "min-max")  # how the map is normalised for display: I / max I, or (I - min I) / (max I - min I)


# ---------------------------------------------------------------------------
# The controls, as data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliderSpec:
    """One control. Numeric: values from `min` to `max` by `step` (in log10 units when `log`,
    so min=-2, max=4, step=1 means 1e-2 .. 1e4), `default` in the parameter's own units;
    `points`: the values the kernel-free slider precomputes (default: `grid(7)`).
    Choice: `choices` (e.g. ("float32", "float64") or (False, True)) and min/max/step unused;
    `labels`: how each choice is shown (default: str, on/off for booleans)."""

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
    labels: tuple = ()

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
        if self.labels and value in self.choices:
            return self.labels[list(self.choices).index(value)]
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
        SliderSpec("c_W", "c_W (FC weight)", 0.01, min=-3, max=4, step=0.25, log=True, fmt=".0e",
                   points=(1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3)),
        SliderSpec("c_A", "c_A (channel value)", 100.0, min=1, max=200, step=1, fmt=".3g",
                   points=(1.0, 10.0, 50.0, 100.0, 200.0)),
        _precision("float32"),
    ), ATTACKS["T1"].build, {"build": "paper"}),  # the paper's fold: what chapter 4 explores
    "T2": TechniqueSpec("T2", "T2, a smiley as explanation", (
        SliderSpec("c_I", "c_I (image scale)", 0.1, min=-3, max=3, step=0.25, log=True, fmt=".0e",
                   points=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)),
        SliderSpec("c_W", "c_W (FC weight)", 10.0, min=-3, max=3, step=0.25, log=True, fmt=".0e",
                   points=(1e-2, 1e-1, 1.0, 10.0, 100.0)),
    ), ATTACKS["T2"].build, {"build": "paper"}),
    "T3": TechniqueSpec("T3", "T3, a semi-random explanation", (
        SliderSpec("eps", "ε (score bound)", 0.01, min=-4, max=0, step=0.25, log=True, fmt=".0e",
                   points=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)),
        SliderSpec("c_G", "c_G (gradient scale)", 1e-4, min=-8, max=8, step=0.5, log=True, fmt=".0e",
                   points=(1e-8, 1e-5, 1e-4, 1e-2, 1e4)),
        SliderSpec("c_F", "c_F (branch scale)", 1e7, min=1, max=9, step=0.5, log=True, fmt=".0e",
                   points=(1e3, 1e5, 1e7, 1e9)),
        _precision("float64"),
    ), ATTACKS["T3"].build, {"seed": 0}, head_only=("eps", "c_G")),
    "T4": TechniqueSpec("T4", "T4, a backdoor in the explanation", (
        SliderSpec("eps", "ε (score bound)", 0.01, min=-4, max=0, step=0.25, log=True, fmt=".0e",
                   points=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)),
        SliderSpec("stickers", "stickers", True, choices=(False, True, 2, 3),
                   labels=("off", "place 1", "place 2", "place 3")),
        SliderSpec("c_F", "c_F (branch scale)", 1e9, min=5, max=11, step=0.5, log=True, fmt=".0e",
                   points=(1e7, 1e8, 1e9, 1e11)),
    ), ATTACKS["T4"].build, {"c_G": 1.0}, head_only=("eps", "c_G")),
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
    """The honest model in one precision, the S images explained (S x 3 x H x W, stickers pasted
    when asked), their Grad-CAM (top class) and the trunk output h = trunk(x) shared by every
    manipulation; `activations` keeps A of the manipulated networks by the constants that determine
    it, and the honest Grad-CAM of other explained classes."""

    model: nn.Module
    x: torch.Tensor
    honest: GradCAMResult
    h: torch.Tensor
    precision: str
    stickers: bool | int
    source: torch.Tensor = field(repr=False)
    activations: dict = field(default_factory=dict, repr=False)
    pre: torch.Tensor | None = field(default=None, repr=False)  # the honest last conv's output conv_{1..K}(h)
    a: torch.Tensor | None = field(default=None, repr=False)    # the honest A = activation(pre)
    head: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)  # y = head(A)

    def explained(self, ranks: tuple[int, ...]) -> tuple[torch.Tensor, GradCAMResult]:
        """The classes of the given ranks among each image's honest scores (rank 0: the top class),
        S*R of them (image-major), and the honest Grad-CAM of each."""
        key = ("honest", ranks)
        if key not in self.activations:
            n_classes = self.honest.logits.shape[1]
            if max(ranks) >= n_classes:
                raise ValueError(f"ranks must be below the number of classes, {n_classes}; got {list(ranks)}")
            order = self.honest.logits.argsort(dim=1, descending=True)
            classes = order[:, list(ranks)].reshape(-1)
            if self.a is None or self.head is None:
                honest = gradcam(self.model, self.x.repeat_interleave(len(ranks), 0), classes)
            else:  # from A: no second trunk pass
                honest = head_gradcam(self.head, self.a.repeat_interleave(len(ranks), 0), classes)
            self.activations[key] = (classes, honest)
        return self.activations[key]


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
    class_explained: int = -1
    norm: str = "max"

    def numbers(self) -> dict[str, Any]:
        """The scalars, with the parameters and the precision (no tensors)."""
        return {**self.params, "precision": self.precision, "score_change": self.score_change,
                "alpha_extra": self.alpha_extra, "alpha_share": self.alpha_share, "map_share": self.map_share,
                "l1": self.l1, "class_original": self.class_original, "class_manipulated": self.class_manipulated,
                "class_explained": self.class_explained, "norm": self.norm}


def minmax_maps(maps: torch.Tensor) -> torch.Tensor:
    """I~ = (I - min_ij I) / (max_ij I - min_ij I) per map (the normalisation of pytorch-grad-cam and
    captum's users); a constant map is 0. A constant added to every cell (T1's flat lie) cancels."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def normalise(maps: torch.Tensor, norm: str) -> torch.Tensor:
    """`norm` = "max" (Grad-CAM's I / max I, `gradcam.normalize_maps`) or "min-max" (`minmax_maps`)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    return normalize_maps(maps) if norm == "max" else minmax_maps(maps)


def _images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected images as a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] < 1 or x.shape[1] != 3:
        raise ValueError(f"expected images 3 x H x W or S x 3 x H x W, got {tuple(x.shape)}")
    return x.detach()


def _one_image(x: torch.Tensor) -> torch.Tensor:
    x = _images(x)
    if x.shape[0] != 1:
        raise ValueError(f"expected one image, 3 x H x W or 1 x 3 x H x W, got {tuple(x.shape)}")
    return x


def _check_precision(precision: str) -> torch.dtype:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def honest_base(model: nn.Module, x: torch.Tensor, precision: str = "float32", stickers: bool | int = False,
                sticker_seed: int = 0) -> HonestBase:
    """A copy of `model` in `precision` (eval mode; the model given is not touched), the images x
    (one, or a batch of scenes; with three smiley stickers pasted at `sticker_positions(seed)` when
    `stickers`: True or placement 1 takes seed `sticker_seed`, placement n seed `sticker_seed` + n - 1),
    their honest Grad-CAM and the trunk output h."""
    dtype = _check_precision(precision)
    stickers = _check_stickers(stickers)
    device = next(model.parameters()).device
    source = _images(x)
    x = source.to(device=device, dtype=dtype)
    if stickers:
        x, _ = paste_stickers(x, seeds=[sticker_seed + int(stickers) - 1] * len(x))
    honest_model = copy.deepcopy(model).to(dtype=dtype).eval()
    cut = cut_at_a(honest_model)
    with torch.no_grad():
        h = cut.trunk(x)
        pre = cut.pre(h)
        a = cut.activation(pre.clone())  # the ReLU may work in place
    return HonestBase(honest_model, x, head_gradcam(cut.head, a), h, precision, stickers, source.clone(), pre=pre,
                      a=a, head=cut.head)


def split_params(spec: TechniqueSpec, params: Mapping[str, Any]) -> tuple[str, bool | int, dict[str, Any]]:
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


def _check_stickers(stickers: Any) -> bool | int:
    """`stickers`: False (none), True (placement 1) or a placement 1, 2, 3, ... (an int, not 0); a
    string, 0 or None is refused ("no" is not False)."""
    if isinstance(stickers, (bool, np.bool_)):
        return bool(stickers)
    if isinstance(stickers, (int, np.integer)) and stickers >= 1:
        return True if stickers == 1 else int(stickers)
    raise TypeError(f"stickers must be True or False, or a placement 1, 2, 3, ...; got {stickers!r}")


def _check_ranks(ranks: Any) -> tuple[int, ...]:
    ranks = tuple(ranks) if isinstance(ranks, (tuple, list)) else ranks
    if (not isinstance(ranks, tuple) or not ranks
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks)):
        raise ValueError(f"ranks must be a non-empty sequence of class ranks 0, 1, ... (0: the top class), "
                         f"got {ranks!r}")
    return ranks


def measure(technique: str, model: nn.Module, x: torch.Tensor, precision: str | None = None,
            base: HonestBase | None = None, rank: int = 0, norm: str = "max", **params: Any) -> Measurement:
    """Build `technique` from `model` with `params` (the spec's defaults fill the rest) and
    measure it on the one image x, explaining the class of `rank` among the honest scores (0: the
    top class), the map normalised by `norm` ("max" or "min-max"). `base` (from `honest_base` for
    the same model, image, precision and stickers) saves recomputing the honest side; it is checked against x."""
    if technique not in SPECS:
        raise KeyError(f"technique must be one of {sorted(SPECS)}, got {technique!r}")
    if precision is not None:
        params = {**params, "precision": precision}
    precision, stickers, _ = split_params(SPECS[technique], params)
    _check_precision(precision)
    if base is None:
        base = honest_base(model, x, precision, stickers)
    elif base.precision != precision or base.stickers != stickers:
        raise ValueError(f"base was computed for {base.precision}, stickers={base.stickers}; "
                         f"this measurement needs {precision}, stickers={stickers}")
    elif not torch.equal(base.source, _one_image(x).to(base.source.device, base.source.dtype)):
        raise ValueError("base was computed for another image than x: use honest_base(model, x, ...)")
    _one_image(base.source)
    return measure_batch(technique, base, ranks=(rank,), norms=(norm,), **params)[0]


def measure_batch(technique: str, base: HonestBase, ranks: tuple[int, ...] = (0,), norms: tuple[str, ...] = ("max",),
                  **params: Any) -> list[Measurement]:
    """`measure` on every image of `base` (S scenes), every explained class rank and every
    normalisation at once: one build, one batched backward through the head. S * R * N
    measurements, scene-major, then rank, then norm (the last fastest)."""
    spec = SPECS[technique]
    precision, stickers, build_args = split_params(spec, params)
    if (base.precision, base.stickers) != (precision, stickers):
        raise ValueError(f"base was computed for {base.precision}, stickers={base.stickers}; "
                         f"this measurement needs {precision}, stickers={stickers}")
    ranks = _check_ranks(ranks)
    for norm in norms:
        normalise(torch.zeros(1, 1, 1), norm)
    manipulated = spec.build(base.model, **build_args)
    key = (technique, tuple(sorted((k, v) for k, v in build_args.items() if k not in spec.head_only)))
    activations = base.activations.get(key)
    if activations is None:
        with torch.no_grad():
            # the surgery keeps the K original filters: only the added one is computed (a copy of pre:
            # the ReLU may work in place)
            pre = None if base.pre is None else base.pre.clone()
            activations = base.activations[key] = manipulated.activations_from(base.h, base.x, original_pre=pre)
    classes, honest = base.explained(ranks)
    repeated = activations.repeat_interleave(len(ranks), 0)
    result = head_gradcam(manipulated.head, repeated, target=classes)
    shown = {**{s.name: s.default for s in spec.sliders if s.name != "precision"},
             **{k: v for k, v in params.items() if k != "precision"}}
    numbers = dict(score_change=score_change(honest.logits, result.logits), alpha_share=alpha_share(result.alpha),
                   map_share=map_share(result.alpha, repeated))
    top_o, top_n = honest.logits.argmax(dim=1), result.logits.argmax(dim=1)
    if "images" not in base.activations:  # one float32 copy per base, shared by its measurements
        base.activations["images"] = base.x.detach().float().cpu()
    images = base.activations["images"]
    out = []
    for norm in norms:
        maps = normalise(result.maps, norm)
        target = manipulated.target_explanation(extra=repeated[:, -1], honest=normalise(honest.maps, norm))
        l1 = l1_distance(target, maps)
        out.append([Measurement(
            technique=technique, params=dict(shown), precision=precision,
            score_change=numbers["score_change"][i].item(), alpha_extra=result.alpha[i, -1].item(),
            alpha_share=numbers["alpha_share"][i].item(), map_share=numbers["map_share"][i].item(),
            l1=l1[i].item(), class_original=int(top_o[i]), class_manipulated=int(top_n[i]),
            map=maps[i].detach().cpu(), alpha=result.alpha[i].detach().cpu(),
            image=images[i // len(ranks)], class_explained=int(classes[i]), norm=norm)
            for i in range(len(classes))])
    return [out[n][i] for i in range(len(classes)) for n in range(len(norms))]


class BaseCache:
    """`honest_base` per (precision, stickers) for one model and its images (one, or S scenes),
    computed on first use."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model = model
        self.x = _images(x)
        self._bases: dict[tuple[str, bool | int], HonestBase] = {}

    def base(self, technique: str, **params: Any) -> HonestBase:
        precision, stickers, _ = split_params(SPECS[technique], params)
        key = (precision, stickers)
        if key not in self._bases:
            self._bases[key] = honest_base(self.model, self.x, precision, stickers)
        return self._bases[key]

    def measure(self, technique: str, rank: int = 0, norm: str = "max", **params: Any) -> Measurement:
        """`measure` on the one image (a cache of several scenes: `measure_batch`)."""
        return measure(technique, self.model, self.x, base=self.base(technique, **params), rank=rank, norm=norm,
                       **params)

    def measure_batch(self, technique: str, ranks: tuple[int, ...] = (0,), norms: tuple[str, ...] = ("max",),
                      **params: Any) -> list[Measurement]:
        return measure_batch(technique, self.base(technique, **params), ranks, norms, **params)
