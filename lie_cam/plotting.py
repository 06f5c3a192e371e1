"""Figures for the book: Grad-CAM overlays, the paper's Figures 1 and 3, sweep grids.

Everything draws on `matplotlib.figure.Figure` objects created here (not pyplot), so
nothing is shown or kept alive behind the caller's back and the module works headless
(MPLBACKEND=Agg). Maps are B-free H x W tensors at A's resolution (14 x 14); they are
max-normalised and bilinearly upsampled to the image only for display.

`show(fig, name)` displays a figure as a PNG in a notebook and, where myst_nb is
installed (the book build), also glues it under `name` for a captioned `{glue:figure}`.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence, Union

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lie_cam.gradcam import normalize_maps, upsample

__all__ = [
    "MapSpec",
    "to_pixels",
    "display_map",
    "overlay",
    "figure1",
    "figure3",
    "sweep_grid",
    "map_grid",
    "png_bytes",
    "show",
    "line_figure",
    "histogram_figure",
    "markdown_table",
]

# A map to draw over the panel's default image, or an (image, map) pair that brings its own image.
MapSpec = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

CMAP = "jet"


def _single(t: torch.Tensor, dims: int, what: str) -> torch.Tensor:
    """Drop a leading batch dimension of size 1; check the number of dimensions."""
    t = torch.as_tensor(t).detach()
    if t.dim() == dims + 1 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != dims:
        raise ValueError(f"{what}: expected {dims} dimensions (or a batch of one), got shape {tuple(t.shape)}")
    return t.cpu()


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """H x W x 3 pixel values in [0, 1] from one normalised 3 x H x W image (or a batch of one)."""
    from lie_cam.data import denormalize

    x = _single(x, 3, "image").double()
    if x.shape[0] != 3:
        raise ValueError(f"image: expected 3 channels first, got shape {tuple(x.shape)}")
    return denormalize(x[None])[0].permute(1, 2, 0).float()


def display_map(cam: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """A map max-normalised (an all-zero map stays 0) and bilinearly upsampled to `size`, for display."""
    cam = _single(cam, 2, "map").double()
    return upsample(normalize_maps(cam[None]).float(), size)[0]


def overlay(
    ax: Axes,
    x: torch.Tensor,
    cam: torch.Tensor | None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = CMAP,
) -> Axes:
    """Draw the de-normalised image `x` (3 x H x W) on `ax` and, if given, the Grad-CAM map
    `cam` (h x w, any scale) max-normalised, bilinearly upsampled and blended on top."""
    pixels = to_pixels(x)
    ax.imshow(pixels.numpy())
    if cam is not None:
        heat = display_map(cam, tuple(pixels.shape[:2]))
        ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _unpack(spec: MapSpec, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError("a map given as a tuple must be (image, map)")
        return spec[0], spec[1]
    return image, spec


def map_grid(
    panels: Sequence[tuple[torch.Tensor, torch.Tensor | None, str]],
    ncols: int | None = None,
    panel_size: float = 2.2,
    notes: Sequence[str | None] | None = None,
    suptitle: str | None = None,
) -> Figure:
    """A grid of overlays, one per (image, map or None, title) panel, with an optional note
    under each panel. Unused cells of the last row are left out of the figure."""
    if not panels:
        raise ValueError("nothing to draw: no panels")
    ncols = len(panels) if ncols is None else max(1, min(int(ncols), len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(panel_size * ncols, (panel_size + (0.35 if notes else 0.1)) * nrows + (0.4 if suptitle else 0)),
                 layout="constrained")
    for i, (image, cam, title) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        overlay(ax, image, cam, title)
        if notes is not None and i < len(notes) and notes[i]:
            ax.set_xlabel(notes[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def figure1(image: torch.Tensor, maps: Mapping[str, MapSpec], image_title: str = "image") -> Figure:
    """The paper's Figure 1: the image, then one overlay per entry of `maps`
    (e.g. {"Grad-CAM (original)": ..., "T1": ..., "T2": ..., "T3": ..., "T4": ...}).

    A value is an h x w map drawn over `image`, or an (image, map) pair drawn over its own
    image (T4 is usually shown on a stickered copy). 1 + len(maps) axes in one row."""
    panels: list[tuple[torch.Tensor, torch.Tensor | None, str]] = [(image, None, image_title)]
    for name, spec in maps.items():
        img, cam = _unpack(spec, image)
        panels.append((img, cam, name))
    return map_grid(panels)


def figure3(
    clean_image: torch.Tensor,
    stickered_image: torch.Tensor,
    maps_clean: Mapping[str, torch.Tensor],
    maps_sticker: Mapping[str, torch.Tensor],
) -> Figure:
    """The paper's Figure 3 (T4): top row the clean image and its explanations
    (e.g. {"original": ..., "T4": ...}), bottom row the stickered image and its explanations.
    2 x (1 + max(len(maps_clean), len(maps_sticker))) axes, unused cells left empty."""
    ncols = 1 + max(len(maps_clean), len(maps_sticker))
    fig = Figure(figsize=(2.4 * ncols, 5.0), layout="constrained")
    for row, (image, maps, label) in enumerate(
        [(clean_image, maps_clean, "clean"), (stickered_image, maps_sticker, "with stickers")]
    ):
        overlay(fig.add_subplot(2, ncols, row * ncols + 1), image, None, f"image ({label})")
        for j, (name, cam) in enumerate(maps.items()):
            overlay(fig.add_subplot(2, ncols, row * ncols + 2 + j), image, cam, f"{name} ({label})")
    return fig


def sweep_grid(
    image: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    notes: Mapping[str, str] | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
) -> Figure:
    """A static stand-in for a slider: one overlay of `image` per swept value.

    maps:  {panel title (e.g. "c_W = 1e+02"): h x w map}
    notes: {same title: text under the panel (e.g. the score change and alpha share)}"""
    titles = list(maps)
    panels = [(image, maps[t], t) for t in titles]
    below = [notes.get(t) if notes else None for t in titles]
    return map_grid(panels, ncols=ncols, notes=below if notes else None, suptitle=suptitle)


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered to PNG bytes (Agg canvas; no GUI backend involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig: Figure, name: str | None = None, dpi: int = 100) -> None:
    """Display `fig` as a PNG in a notebook. With a `name` and myst_nb importable (the book
    build), the PNG is also glued under `name`, for a `{glue:figure}` with a caption."""
    from IPython.display import Image, display

    image = Image(data=png_bytes(fig, dpi=dpi), format="png")
    if name is not None:
        try:
            from myst_nb import glue
        except ImportError:  # Colab or a bare Jupyter: just show it
            pass
        else:
            glue(name, image, display=True)
            return
    display(image)


def line_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = True,
    logy: bool = True,
    styles: Mapping[str, str] | None = None,
) -> Figure:
    """One axis, one line (with markers) per entry of `series` against `x`; log axes by default.
    Non-positive values are left out on a log axis (matplotlib masks them)."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        style = (styles or {}).get(name, "o-")
        ax.plot(list(x), [float(v) for v in ys], style, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def histogram_figure(values: torch.Tensor | Sequence[float], xlabel: str, title: str | None = None,
                     bins: int = 30) -> Figure:
    """A histogram with negative values in red and non-negative ones in blue (one axis)."""
    v = torch.as_tensor(values).detach().double().cpu().flatten()
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1).numpy()
    ax.hist(v[v < 0].numpy(), bins=edges, color="tab:red", label=f"negative ({int((v < 0).sum())})")
    ax.hist(v[v >= 0].numpy(), bins=edges, color="tab:blue", label=f"non-negative ({int((v >= 0).sum())})")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                   floatfmt: str = ".4g") -> str:
    """A Markdown (pipe) table from dict rows; floats formatted with `floatfmt`, None as a dash.
    Display it in a notebook with `IPython.display.Markdown(...)`."""
    if not rows:
        raise ValueError("no rows")
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(v: object) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * len(columns)) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
