"""The live explorers (ipywidgets; they need a kernel: Jupyter, Colab): one per technique, controls
built from `lie_cam.explore.measure.SPECS`, every change measured (`measure`) and redrawn."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from lie_cam.explore.measure import SPECS, BaseCache, Measurement, SliderSpec, split_params
from lie_cam.plotting import overlay, png_bytes

__all__ = ["Explorer", "T1Explorer", "T2Explorer", "T3Explorer", "T4Explorer", "readout_html", "draw_measurement"]


def readout_html(m: Measurement) -> str:
    """The numbers of a measurement as one line of HTML."""
    return (f"<code>score change {m.score_change:.3g} &nbsp; α<sub>K+1</sub> {m.alpha_extra:.3g} &nbsp; "
            f"α share {m.alpha_share:.3f} &nbsp; map share {m.map_share:.3f} &nbsp; L1 to target {m.l1:.3g} &nbsp; "
            f"class {m.class_original} &rarr; {m.class_manipulated}</code>")


def draw_measurement(fig: Any, m: Measurement) -> None:
    """Redraw `fig` (3 axes: overlay, raw map, |alpha_k| bars) for measurement m."""
    ax_map, ax_raw, ax_alpha = fig.axes
    for ax in fig.axes:
        ax.clear()
    overlay(ax_map, m.image, m.map, f"{m.technique} Grad-CAM over the image")
    ax_map.set_xlabel(f"score change {m.score_change:.2g}, L1 {m.l1:.2g}", fontsize=10)
    ax_raw.imshow(m.map.numpy(), cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_raw.set_xticks([])
    ax_raw.set_yticks([])
    ax_raw.set_title(f"the {m.map.shape[0]}x{m.map.shape[1]} map", fontsize=10)
    alpha = m.alpha.double()
    colours = ["tab:blue"] * (alpha.numel() - 1) + ["tab:red"]
    ax_alpha.bar(range(alpha.numel()), alpha.abs().clamp_min(1e-12).numpy(), color=colours, width=1.0)
    ax_alpha.set_yscale("log")
    ax_alpha.set_xlabel("channel k (red: the added K+1)", fontsize=10)
    ax_alpha.set_title(f"|α_k|; K+1 share: α {m.alpha_share:.3f}, map {m.map_share:.3f}", fontsize=10)


class Explorer:
    """Live explorer of one technique on one image: ipywidgets controls built from
    `SPECS[technique]`; every change calls `measure` (honest side cached) and redraws.

        .sliders   dict of ipywidgets controls (set `.value` from code to drive it)
        .last      the `Measurement` just drawn;  .update() recomputes and returns it
        .figure    matplotlib Figure (overlay, raw map, |alpha_k|);  .image  its PNG widget
        .widget    the ipywidgets box; the explorer displays as it
    Needs a running kernel (Jupyter, Colab); the book's HTML shows `lie_cam.explore.sliders` instead."""

    technique = ""

    def __init__(self, model: nn.Module, image: torch.Tensor, draw: bool = True, **initial: Any) -> None:
        import ipywidgets as widgets

        spec = SPECS[self.technique]
        split_params(spec, initial)  # unknown names fail here, before any work
        self.spec = spec
        self.cache = BaseCache(model, image)
        self.draw = draw
        values = {**spec.defaults(), **initial}
        self.sliders: dict[str, Any] = {s.name: _make_control(widgets, s, values[s.name]) for s in spec.sliders}
        self.fixed = {k: v for k, v in initial.items() if k not in self.sliders}
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([*self.sliders.values(), self.readout, self.image])
        self.figure = _new_figure()
        self.last: Measurement | None = None
        for control in self.sliders.values():
            control.observe(lambda change: self.update(), names="value")
        self.update()

    def params(self) -> dict[str, Any]:
        """The current control values (and the fixed constants given to the constructor)."""
        return {**self.fixed, **{k: _control_value(self.spec.slider(k), v.value) for k, v in self.sliders.items()}}

    def update(self) -> Measurement:
        """Measure for the current values, show the numbers, redraw; returns `.last`."""
        self.last = self.cache.measure(self.technique, **self.params())
        self.readout.value = readout_html(self.last)
        if self.draw:
            draw_measurement(self.figure, self.last)
            self.image.value = png_bytes(self.figure, dpi=80)
        return self.last

    def sweep(self, name: str, values: Sequence[Any], **overrides: Any) -> list[Measurement]:
        """Measure for each value of one control, the others at their current values
        (or `overrides`). The controls are left as they are."""
        self.spec.slider(name)
        base = {**self.params(), **overrides}
        return [self.cache.measure(self.technique, **{**base, name: v}) for v in values]

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def _make_control(widgets: Any, spec: SliderSpec, value: Any) -> Any:
    common = {"description": spec.name, "style": {"description_width": "initial"}}
    if spec.is_choice:
        labels = [spec.format(c) for c in spec.choices]
        return widgets.ToggleButtons(options=labels, value=spec.format(value), **common)
    if spec.log:
        return widgets.FloatLogSlider(value=float(value), base=10, min=spec.min, max=spec.max, step=spec.step,
                                      continuous_update=False, readout_format=spec.fmt, **common)
    return widgets.FloatSlider(value=float(value), min=spec.min, max=spec.max, step=spec.step,
                               continuous_update=False, **common)


def _control_value(spec: SliderSpec, shown: Any) -> Any:
    """The parameter value behind a control's displayed value (choices are shown as labels)."""
    if spec.is_choice:
        return {spec.format(c): c for c in spec.choices}[shown]
    return float(shown)


def _new_figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    for i in range(3):
        fig.add_subplot(1, 3, i + 1)
    return fig


class T1Explorer(Explorer):
    """T1: c_W (log, 1e-3 .. 1e4), c_A (1 .. 200), precision. alpha_{K+1} grows linearly in c_W;
    c_A scales A^{K+1}, hence the added channel's weight in the map, not alpha. In float32 the
    cancellation b_o - c_A c_W N_Z leaves a score change that grows with c_A c_W."""

    technique = "T1"


class T2Explorer(Explorer):
    """T2: c_I (log, 1e-3 .. 1e3), the scale of the injected smiley, and c_W (log, 1e-3 .. 1e3), the FC
    weight that sets alpha_{K+1}; the map sees their product."""

    technique = "T2"


class T3Explorer(Explorer):
    """T3: eps (log, 1e-4 .. 1), c_G (log, 1e-8 .. 1e8), c_F (log, 1e1 .. 1e9), precision; the seed fixed.
    |y_n - y_o| <= eps whatever c_G; alpha_{K+1} = eps c_G, and the map sees eps c_G c_F. In float32
    c_G sum A^{K+1} is a whole number once past 2^24: the mod is 0 and the scores do not change at all."""

    technique = "T3"


class T4Explorer(Explorer):
    """T4: eps (log, 1e-4 .. 1), the stickers (off, or three smileys pasted in one of three placements)
    and c_F (log, 1e5 .. 1e11); c_G = 1 unless given. Without stickers the explanation is the honest
    one, exactly; with them it points at them, the more so the larger eps c_G c_F."""

    technique = "T4"
