"""Interactive explorers for T1 (constant flat) and T3 (semi-random): sliders that rebuild
the manipulated network and redraw its Grad-CAM over one image.

Each explorer holds
    .sliders   dict of ipywidgets controls (set `.value` from code to drive it),
    .update()  rebuild the network for the current values, recompute, redraw; returns `.last`,
    .last      dict of the numbers just drawn (see below),
    .figure    the matplotlib Figure (2 axes: the overlay and |alpha_k| per channel),
    .image     an ipywidgets Image holding the figure as PNG (redrawn on every update),
    .widget    the ipywidgets box (controls, read-out, image); the explorer displays as it.

Numbers in `.last` (one image, the manipulated network explains its own top class):
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
    plus the current parameter values and "precision".

Widgets need a live kernel (Jupyter, Colab); the static book shows `sweep_figure` instead.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lie_cam.gradcam import GradCAMResult, gradcam
from lie_cam.metrics import l1_distance, score_change
from lie_cam.surgery import ManipulatedVGG, constant_flat, semi_random, target_explanation

__all__ = ["alpha_share", "map_share", "Explorer", "T1Explorer", "T3Explorer"]

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


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


class _CachedTrunk(nn.Module):
    """The surgery leaves the layers below the last conv untouched, so their output for the
    explorer's own image is computed once and reused; any other input runs the real layers."""

    def __init__(self, trunk: nn.Module, x: torch.Tensor, h: torch.Tensor) -> None:
        super().__init__()
        self.trunk = trunk
        self.x = x
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h if x is self.x else self.trunk(x)


class Explorer:
    """Base class: one image, an honest model, controls that define a manipulation."""

    technique = ""
    fixed: tuple[str, ...] = ()  # constructor parameters that are not sliders

    def __init__(self, model: nn.Module, image: torch.Tensor, precision: str = "float32",
                 device: torch.device | str | None = None, draw: bool = True) -> None:
        import ipywidgets as widgets

        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image, 3 x H x W or 1 x 3 x H x W, got {tuple(image.shape)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._model = model
        self._image = image.detach().float().cpu()
        self._bases: dict[str, tuple[nn.Module, torch.Tensor, GradCAMResult]] = {}
        self._trunks: dict[str, torch.Tensor] = {}
        self.draw = draw
        self.manipulated: ManipulatedVGG | None = None
        self.result: GradCAMResult | None = None
        self.target: torch.Tensor | None = None
        self.last: dict[str, Any] = {}
        self.sliders: dict[str, Any] = dict(self._make_sliders(widgets))
        self.sliders["precision"] = widgets.ToggleButtons(options=list(PRECISIONS), value=precision,
                                                          description="precision")
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([*self.sliders.values(), self.readout, self.image])
        self.figure = self._new_figure()
        for control in self.sliders.values():
            control.observe(self._changed, names="value")
        self.update()

    # -- to be provided by subclasses ---------------------------------------------------
    def _make_sliders(self, widgets: Any) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, model: nn.Module, **params: float) -> ManipulatedVGG:
        raise NotImplementedError

    # -- machinery -----------------------------------------------------------------------
    def _base(self, precision: str) -> tuple[nn.Module, torch.Tensor, GradCAMResult]:
        """The honest model, the image and its honest Grad-CAM in `precision` (cached)."""
        if precision not in self._bases:
            dtype = PRECISIONS[precision]
            model = copy.deepcopy(self._model).to(device=self.device, dtype=dtype).eval()
            x = self._image.to(device=self.device, dtype=dtype)
            self._bases[precision] = (model, x, gradcam(model, x))
        return self._bases[precision]

    def params(self) -> dict[str, float]:
        """The current slider values of the technique's constants."""
        return {k: float(v.value) for k, v in self.sliders.items() if k != "precision"}

    def _changed(self, change: dict) -> None:
        self.update()

    def compute(self, precision: str | None = None, **params: float) -> dict[str, Any]:
        """Build the manipulated network for `params` and measure it (no drawing)."""
        precision = precision or self.sliders["precision"].value
        model, x, honest = self._base(precision)
        manipulated = self.build(model, **params)
        if precision not in self._trunks:
            with torch.no_grad():
                self._trunks[precision] = manipulated.trunk(x)
        manipulated.trunk = _CachedTrunk(manipulated.trunk, x, self._trunks[precision])
        result = gradcam(manipulated, x)
        target = target_explanation(manipulated, x)
        with torch.no_grad():
            activations = manipulated.activations(x)
        self._latest = (manipulated, result, target)
        return {
            **params,
            "precision": precision,
            "score_change": score_change(honest.logits, result.logits).item(),
            "alpha_extra": result.alpha[0, -1].item(),
            "alpha_share": alpha_share(result.alpha).item(),
            "map_share": map_share(result.alpha, activations).item(),
            "l1": l1_distance(target, result.normalized).item(),
            "class_original": int(honest.classes[0]),
            "class_manipulated": int(result.classes[0]),
            "map": result.normalized[0].detach().cpu(),
        }

    def update(self) -> dict[str, Any]:
        """Rebuild for the current slider values, recompute, redraw; returns `.last`."""
        record = self.compute(**self.params())
        record.pop("map")
        self.manipulated, self.result, self.target = self._latest
        self.last = record
        self.readout.value = self._readout_html(record)
        if self.draw:
            self._redraw()
        return self.last

    def _readout_html(self, r: dict[str, Any]) -> str:
        return (f"<code>score change {r['score_change']:.3g} &nbsp; alpha_K+1 {r['alpha_extra']:.3g} &nbsp; "
                f"alpha share {r['alpha_share']:.3f} &nbsp; map share {r['map_share']:.3f} &nbsp; L1 to target {r['l1']:.3g} &nbsp; "
                f"class {r['class_original']} &rarr; {r['class_manipulated']}</code>")

    def _new_figure(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.5, 3.0), layout="constrained")
        fig.add_subplot(1, 2, 1)
        fig.add_subplot(1, 2, 2)
        return fig

    def _redraw(self) -> None:
        from lie_cam.plotting import overlay, png_bytes

        assert self.result is not None
        ax_map, ax_alpha = self.figure.axes
        ax_map.clear()
        ax_alpha.clear()
        r = self.last
        overlay(ax_map, self._image, self.result.normalized[0], f"{self.technique} Grad-CAM")
        ax_map.set_xlabel(f"score change {r['score_change']:.2g}, L1 {r['l1']:.2g}", fontsize=8)
        alpha = self.result.alpha[0].detach().double().cpu()
        colours = ["tab:blue"] * (alpha.numel() - 1) + ["tab:red"]
        ax_alpha.bar(range(alpha.numel()), alpha.abs().clamp_min(1e-12).numpy(), color=colours, width=1.0)
        ax_alpha.set_yscale("log")
        ax_alpha.set_xlabel("channel k (red: the added K+1)", fontsize=8)
        ax_alpha.set_title(f"|alpha_k|; K+1 share: alpha {r['alpha_share']:.3f}, map {r['map_share']:.3f}", fontsize=9)
        self.image.value = png_bytes(self.figure, dpi=80)

    def sweep(self, name: str, values: Sequence[float], precision: str | None = None) -> list[dict[str, Any]]:
        """Measure the manipulation for each value of one constant, the others at their slider
        values. Records as in `.last`, plus "map" (the normalised h x w map). Sliders untouched."""
        if name not in self.sliders or name == "precision":
            raise KeyError(f"{name!r} is not one of {sorted(self.params())}")
        base = self.params()
        return [self.compute(precision=precision, **{**base, name: float(v)}) for v in values]

    def sweep_figure(self, name: str, values: Sequence[float], precision: str | None = None,
                     label: Callable[[float], str] | None = None):
        """`sweep` drawn as a grid of overlays, the numbers under each panel (`plotting.sweep_grid`)."""
        from lie_cam.plotting import sweep_grid

        records = self.sweep(name, values, precision)
        label = label or (lambda v: f"{name} = {v:.0e}")
        maps = {label(r[name]): r["map"] for r in records}
        notes = {label(r[name]): f"Δy {r['score_change']:.0e}, α {r['alpha_share']:.2f}, map {r['map_share']:.2f}"
                 for r in records}
        prec = precision or self.sliders["precision"].value
        return sweep_grid(self._image, maps, notes, suptitle=f"{self.technique}: sweeping {name} ({prec})")

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


class T1Explorer(Explorer):
    """T1 (constant flat explanation): sliders c_W (log scale, 1e-2 .. 1e4) and c_A (1 .. 200).

    alpha_{K+1} = c_W/N_A * (sum over pooled cells) * sum_u dy_c/dr_u grows linearly in c_W;
    c_A scales A^{K+1}, hence the added channel's weight in the map, not alpha. The bias
    b_o - c_A c_W N_Z cancels the new inputs exactly in float64; in float32 the cancellation
    leaves a score change that grows with c_A c_W."""

    technique = "T1"

    def __init__(self, model: nn.Module, image: torch.Tensor, c_A: float = 100.0, c_W: float = 100.0,
                 **kwargs: Any) -> None:
        self._initial = {"c_A": c_A, "c_W": c_W}
        super().__init__(model, image, **kwargs)

    def _make_sliders(self, widgets: Any) -> dict[str, Any]:
        style = {"description_width": "initial"}
        return {
            "c_W": widgets.FloatLogSlider(value=self._initial["c_W"], base=10, min=-2, max=4, step=0.25,
                                          description="c_W", continuous_update=False, style=style,
                                          readout_format=".2g"),
            "c_A": widgets.FloatSlider(value=self._initial["c_A"], min=1, max=200, step=1, description="c_A",
                                       continuous_update=False, style=style),
        }

    def build(self, model: nn.Module, c_W: float, c_A: float) -> ManipulatedVGG:
        return constant_flat(model, c_A=c_A, c_W=c_W)


class T3Explorer(Explorer):
    """T3 (semi-random explanation): sliders eps (log scale, 1e-4 .. 1) and c_G (log scale,
    1e-8 .. 1e8); c_F and the branch's seed are fixed.

    y_n = y_o + eps mod(c_G sum A^{K+1}, 1), so the score change is at most eps whatever c_G;
    alpha_{K+1} = eps c_G (the derivative of the mod is 1 almost everywhere). In float32
    c_G sum A^{K+1} is a whole number once it passes 2^24, the mod is 0 and the scores do
    not change at all; in float64 the mod is a genuine fraction and the change is up to eps."""

    technique = "T3"

    def __init__(self, model: nn.Module, image: torch.Tensor, eps: float = 0.01, c_G: float = 1e4,
                 c_F: float = 1e7, seed: int = 0, **kwargs: Any) -> None:
        self._initial = {"eps": eps, "c_G": c_G}
        self.c_F = float(c_F)
        self.seed = int(seed)
        super().__init__(model, image, **kwargs)

    def _make_sliders(self, widgets: Any) -> dict[str, Any]:
        style = {"description_width": "initial"}
        return {
            "eps": widgets.FloatLogSlider(value=self._initial["eps"], base=10, min=-4, max=0, step=0.25,
                                          description="eps", continuous_update=False, style=style,
                                          readout_format=".1e"),
            "c_G": widgets.FloatLogSlider(value=self._initial["c_G"], base=10, min=-8, max=8, step=0.5,
                                          description="c_G", continuous_update=False, style=style,
                                          readout_format=".0e"),
        }

    def build(self, model: nn.Module, eps: float, c_G: float) -> ManipulatedVGG:
        return semi_random(model, eps=eps, c_G=c_G, c_F=self.c_F, seed=self.seed)
