"""Figures for the book: Grad-CAM overlays, the paper's Figures 1 and 3, sweep grids.

Everything draws on `matplotlib.figure.Figure` objects created here (not pyplot), so
nothing is shown or kept alive behind the caller's back and the module works headless
(MPLBACKEND=Agg). Maps are B-free H x W tensors at A's resolution (14 x 14); they are
max-normalised and bilinearly upsampled to the image only for display.

`show(fig, name)` displays a figure as a PNG in a notebook and, where myst_nb is
installed (the book build), also glues it under `name` for a captioned `{glue:figure}`.

Sizes are chosen for the book's text column on a desktop and on a phone: a figure is at most `WIDTH`
inches wide, rendered at `DPI`, with at most `MAX_COLUMNS` panels a row and every text (titles, notes,
tick labels, legends) at `FONT` points. On a 400 px wide page the text column is about 368 px, so a
WIDTH-wide figure is shown at 368 / (WIDTH * DPI) of its size and FONT points become
FONT * DPI / 72 * 368 / (WIDTH * DPI), about 9.6 px, over the 9 px the book check asks for.
`png_bytes` records the smallest font the figure drew (`FONT_KEY`) and the DPI (`DPI_KEY`) in the PNG's
text chunks, so that the check can compute the smallest text on screen from the width the page shows.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Mapping, Sequence, Union

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lie_cam.anatomy import InputSpec
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
    "raw_map",
    "panel_axes",
    "sticker_window",
    "manipulation_diagram",
    "WIDTH",
    "FONT",
    "FONT_KEY",
    "DPI_KEY",
    "drawn_font_sizes",
    "MAX_COLUMNS",
]

# A map to draw over the panel's default image, or an (image, map) pair that brings its own image.
MapSpec = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

CMAP = "jet"
WIDTH = 6.4        # inches: at most the text column (about 690 px at 1280 px, 368 px at 400 px) at DPI
DPI = 100
FONT = 12          # points: every text of a figure (9.6 px on screen at 400 px for a WIDTH-wide figure)
FONT_KEY = "lie_cam:smallest_font_pt"  # PNG text chunk: the smallest font size drawn, in points
DPI_KEY = "lie_cam:dpi"                # PNG text chunk: pixels per inch of the PNG
MAX_COLUMNS = 4
COLORBAR_LABEL = "colorbar"  # the label of a colour bar's axes (see `panel_axes`)


def _single(t: torch.Tensor, dims: int, what: str) -> torch.Tensor:
    """Drop a leading batch dimension of size 1; check the number of dimensions."""
    t = torch.as_tensor(t).detach()
    if t.dim() == dims + 1 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != dims:
        raise ValueError(f"{what}: expected {dims} dimensions (or a batch of one), got shape {tuple(t.shape)}")
    return t.cpu()


def to_pixels(x: torch.Tensor, spec: InputSpec | None = None) -> torch.Tensor:
    """H x W x 3 pixel values in [0, 1] from one normalised 3 x H x W image (or a batch of one):
    p = x * std + mean with the model's input spec (`lie_cam.anatomy.input_spec(model)`; None: the
    default `InputSpec`, ImageNet's statistics), clipped to [0, 1]."""
    spec = InputSpec() if spec is None else spec
    if not isinstance(spec, InputSpec):
        raise TypeError(f"spec must be a lie_cam.anatomy.InputSpec, got {type(spec).__name__}")
    x = _single(x, 3, "image").double()
    if x.shape[0] != 3:
        raise ValueError(f"image: expected 3 channels first, got shape {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float64).reshape(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).reshape(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).float()


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
    spec: InputSpec | None = None,
) -> Axes:
    """Draw the image `x` (3 x H x W), de-normalised with the model's input spec `spec` (`to_pixels`),
    on `ax` and, if given, the Grad-CAM map `cam` (h x w, any scale) max-normalised, bilinearly
    upsampled and blended on top."""
    pixels = to_pixels(x, spec)
    ax.imshow(pixels.numpy())
    if cam is not None:
        heat = display_map(cam, tuple(pixels.shape[:2]))
        ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT)
    return ax


def raw_map(ax: Axes, cam: torch.Tensor, title: str | None = None, cmap: str = CMAP) -> Axes:
    """Draw the map itself, max-normalised, at its own resolution (one square per pixel of A,
    no upsampling, no image): what Grad-CAM returns before any display processing."""
    cam = _single(cam, 2, "map").double()
    ax.imshow(normalize_maps(cam[None])[0].float().numpy(), cmap=cmap, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT)
    return ax


def panel_axes(fig: Figure) -> list[Axes]:
    """The figure's panels: its axes without the colour bar."""
    return [ax for ax in fig.axes if ax.get_label() != COLORBAR_LABEL]


def _wrap(text: str | None, width_in: float) -> str | None:
    """Wrap `text` to the width of a panel `width_in` inches wide at FONT points."""
    if not text:
        return text
    chars = max(8, int(width_in * 72 / (FONT * 0.55)))
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text


def _columns(n: int, ncols: int | None) -> int:
    """At most MAX_COLUMNS panels a row; rows as even as possible (6 panels: 2 x 3)."""
    if ncols is not None:
        ncols = int(ncols)
        if ncols < 1 or ncols > MAX_COLUMNS:
            raise ValueError(f"ncols must be between 1 and {MAX_COLUMNS} (the text column's width), got {ncols}")
        return min(ncols, n)
    rows = math.ceil(n / MAX_COLUMNS)
    return math.ceil(n / rows)


def _colorbar(fig: Figure, axes: Sequence[Axes], label: str = "Grad-CAM / max") -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), CMAP), ax=list(axes), shrink=0.85,
                       fraction=0.04, pad=0.02, aspect=25)
    bar.ax.set_label(COLORBAR_LABEL)
    bar.set_label(label, fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)


def _unpack(spec: MapSpec, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError("a map given as a tuple must be (image, map)")
        return spec[0], spec[1]
    return image, spec


def map_grid(
    panels: Sequence[tuple[torch.Tensor | None, torch.Tensor | None, str]],
    ncols: int | None = None,
    panel_size: float | None = None,
    notes: Sequence[str | None] | None = None,
    suptitle: str | None = None,
    colorbar: bool = True,
    spec: InputSpec | None = None,
) -> Figure:
    """A grid of panels, one per (image, map, title): the map over the image (`overlay`, the image
    de-normalised with `spec`), the image alone when the map is None, or the raw map (`raw_map`)
    when the image is None; an optional note under each panel and a colour bar for the maps. At
    most MAX_COLUMNS panels a row (by default rows as even as possible), titles and notes wrapped
    to the panel's width."""
    if not panels:
        raise ValueError("nothing to draw: no panels")
    ncols = _columns(len(panels), ncols)
    nrows = math.ceil(len(panels) / ncols)
    has_map = any(cam is not None for _, cam, _ in panels)
    side = panel_size or min(2.6, (WIDTH - (0.8 if colorbar and has_map else 0.0)) / ncols)
    lines = [1 + (_wrap(t, side) or "").count("\n") for _, _, t in panels]
    note_lines = [1 + (_wrap(n, side) or "").count("\n") for n in notes or [] if n]
    text_h = FONT / 72 * 1.25 * (max(lines) + (max(note_lines) if note_lines else 0))
    fig = Figure(figsize=(side * ncols + (0.8 if colorbar and has_map else 0.0),
                          (side + text_h + 0.1) * nrows + (0.4 if suptitle else 0)), layout="constrained")
    axes = []
    for i, (image, cam, title) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if image is None:
            if cam is None:
                raise ValueError(f"panel {i}: neither an image nor a map")
            raw_map(ax, cam, _wrap(title, side))
        else:
            overlay(ax, image, cam, _wrap(title, side), spec=spec)
        if notes is not None and i < len(notes) and notes[i]:
            ax.set_xlabel(_wrap(notes[i], side), fontsize=FONT)
        axes.append(ax)
    if colorbar and has_map:
        _colorbar(fig, axes)
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT + 1)
    return fig


def sticker_window(clean: torch.Tensor, stickered: torch.Tensor, size: int = 40,
                   tolerance: float = 1e-3) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a `size` x `size` window centred on the first pasted sticker:
    the first group of pixels where `stickered` differs from `clean` (both 3 x H x W) by more than
    `tolerance` (pasting through a de-normalise / normalise round trip moves the other pixels a little)."""
    clean, stickered = _single(clean, 3, "clean image"), _single(stickered, 3, "stickered image")
    if clean.shape != stickered.shape:
        raise ValueError(f"images of different shapes: {tuple(clean.shape)} and {tuple(stickered.shape)}")
    changed = ((clean - stickered).abs() > tolerance).any(dim=0)
    if not changed.any():
        raise ValueError("the two images are identical: no sticker to zoom on")
    rows, cols = changed.nonzero(as_tuple=True)
    r0 = int(rows.min())
    near = (rows - r0 < size // 2) & ((cols - cols[0]).abs() < size // 2)
    cr, cc = int(rows[near].float().mean().round()), int(cols[near].float().mean().round())
    h, w = changed.shape
    top = min(max(cr - size // 2, 0), max(h - size, 0))
    left = min(max(cc - size // 2, 0), max(w - size, 0))
    return top, left, min(size, h), min(size, w)


def _zoom(ax: Axes, image: torch.Tensor, cam: torch.Tensor | None, window: tuple[int, int, int, int],
          title: str, spec: InputSpec | None = None) -> Axes:
    """`overlay` of the window (top, left, height, width) of the image (and map), enlarged."""
    top, left, height, width = window
    overlay(ax, image, cam, title, spec=spec)
    ax.set_xlim(left - 0.5, left + width - 0.5)
    ax.set_ylim(top + height - 0.5, top - 0.5)
    return ax


def figure1(image: torch.Tensor, maps: Mapping[str, MapSpec], image_title: str = "image",
            zoom: bool = True, spec: InputSpec | None = None) -> Figure:
    """The paper's Figure 1: the image, then one overlay per entry of `maps`
    (e.g. {"Grad-CAM (original)": ..., "T1": ..., "T2": ..., "T3": ..., "T4": ...}).

    A value is an h x w map drawn over `image`, or an (image, map) pair drawn over its own
    image (T4 shown on a stickered copy, where it is triggered). For the first such pair, with
    `zoom`, the stickered image and an enlarged window on one sticker with the map are added
    after it. At most MAX_COLUMNS panels a row, and a colour bar. `spec`: the model's input spec,
    to de-normalise the images (`to_pixels`)."""
    panels: list[tuple[torch.Tensor | None, torch.Tensor | None, str]] = [(image, None, image_title)]
    zoomed = None
    for name, entry in maps.items():
        img, cam = _unpack(entry, image)
        if zoom and zoomed is None and img is not image and not torch.equal(torch.as_tensor(img).cpu(),
                                                                           torch.as_tensor(image).cpu()):
            panels.append((img, None, "image with stickers"))
            zoomed = (len(panels) + 1, img, cam, name)
        panels.append((img, cam, name))
    if zoomed is None:
        return map_grid(panels, spec=spec)
    at, img, cam, name = zoomed
    panels.insert(at, (img, cam, "one sticker, enlarged"))
    fig = map_grid(panels, spec=spec)
    ax = panel_axes(fig)[at]
    window = sticker_window(image, img)
    _zoom(ax, img, cam, window, ax.get_title(), spec)
    return fig


def figure3(
    clean_image: torch.Tensor,
    stickered_image: torch.Tensor,
    maps_clean: Mapping[str, torch.Tensor],
    maps_sticker: Mapping[str, torch.Tensor],
    spec: InputSpec | None = None,
) -> Figure:
    """The paper's Figure 3 (T4): top row the clean image and its explanations
    (e.g. {"original": ..., "T4": ...}), bottom row the stickered image and its explanations.
    2 x (1 + max(len(maps_clean), len(maps_sticker))) axes, unused cells left empty."""
    ncols = 1 + max(len(maps_clean), len(maps_sticker))
    if ncols > MAX_COLUMNS:
        raise ValueError(f"at most {MAX_COLUMNS - 1} maps a row, got {ncols - 1}")
    side = min(2.4, (WIDTH - 0.8) / ncols)
    fig = Figure(figsize=(side * ncols + 0.8, 2 * (side + 0.45)), layout="constrained")
    axes = []
    for row, (image, maps, label) in enumerate(
        [(clean_image, maps_clean, "clean"), (stickered_image, maps_sticker, "with stickers")]
    ):
        axes.append(overlay(fig.add_subplot(2, ncols, row * ncols + 1), image, None, f"image ({label})", spec=spec))
        for j, (name, cam) in enumerate(maps.items()):
            axes.append(overlay(fig.add_subplot(2, ncols, row * ncols + 2 + j), image, cam, f"{name} ({label})",
                                spec=spec))
    _colorbar(fig, axes)
    return fig


def sweep_grid(
    image: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    notes: Mapping[str, str] | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
    colorbar: bool = False,
    spec: InputSpec | None = None,
) -> Figure:
    """A static stand-in for a slider: one overlay of `image` per swept value.

    maps:  {panel title (e.g. "c_W = 1e+02"): h x w map}
    notes: {same title: text under the panel (e.g. the score change and alpha share)}"""
    titles = list(maps)
    panels = [(image, maps[t], t) for t in titles]
    below = [notes.get(t) if notes else None for t in titles]
    return map_grid(panels, ncols=ncols, notes=below if notes else None, suptitle=suptitle, colorbar=colorbar,
                    spec=spec)


def drawn_font_sizes(fig: Figure) -> list[float]:
    """The font size in points of every non-empty text the figure draws (titles, labels, tick labels,
    legends, annotations, mathtext), recorded from the Agg renderer's `draw_text` while the figure is
    drawn once: what is drawn, not what is set on artists that end up hidden or outside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    sizes: list[float] = []
    draw_text = renderer.draw_text

    def spy(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if str(s).strip():
            sizes.append(float(prop.get_size_in_points()))
        return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = spy
    try:
        fig.draw(renderer)
    finally:
        del renderer.draw_text
    return sizes


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered to PNG bytes (Agg canvas; no GUI backend involved), with the smallest font
    size it draws (`drawn_font_sizes`, in points) under `FONT_KEY` and `dpi` under `DPI_KEY` in the
    PNG's text chunks: text of s points is s * dpi / 72 pixels of the PNG."""
    sizes = drawn_font_sizes(fig)
    metadata = {FONT_KEY: f"{min(sizes):g}" if sizes else "none", DPI_KEY: str(int(dpi))}
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=metadata)
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
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(which="both", labelsize=FONT)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=FONT)
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
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel("images", fontsize=FONT)
    ax.tick_params(which="both", labelsize=FONT)
    ax.legend(fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=FONT)
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


class _Canvas:
    """Boxes and arrows on a 100 x 54 axes, for `manipulation_diagram`."""

    plain = "0.25"

    def __init__(self, ax) -> None:
        self.ax = ax

    def box(self, x: float, y: float, text: str, colour: str = plain, w: float = 12.0, h: float = 9.0) -> tuple:
        from matplotlib.patches import FancyBboxPatch

        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.4,rounding_size=1.2",
                                         facecolor="white" if colour == self.plain else "#fde8e8", edgecolor=colour,
                                         lw=1.4))
        self.ax.text(x, y, text, ha="center", va="center", fontsize=FONT, color="black")
        return x, y, w, h

    def arrow(self, a: tuple, b: tuple, colour: str = plain, start: str = "right", end: str = "left") -> None:
        def anchor(bx: tuple, where: str) -> tuple[float, float]:
            x, y, w, h = bx
            return {"right": (x + w / 2 + 0.6, y), "left": (x - w / 2 - 0.6, y),
                    "top": (x, y + h / 2 + 0.6), "bottom": (x, y - h / 2 - 0.6)}[where]

        self.ax.annotate("", xy=anchor(b, end), xytext=anchor(a, start),
                         arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.4, shrinkA=0, shrinkB=0))


def _draw_branch(c: _Canvas, x_in: tuple, a_new: tuple, technique: str | None, added: str, top: float) -> None:
    """T3/T4's branch F into A^{K+1} and the score branch G added to every score."""
    show_all = technique is None
    f = c.box(13, 12, "branch $F$\n" + ("(T3, T4)" if show_all else
                                        "random CNN" if technique == "T3" else "sticker det."), colour=added, w=15)
    c.arrow(x_in, f, colour=added, start="bottom", end="top")
    c.arrow(f, a_new, colour=added)
    c.ax.text(21.5, 21, "$c_F F(x)$", ha="center", va="bottom", fontsize=FONT, color=added)
    g = c.box(67, 6, "$G = \\varepsilon\\, \\mathrm{mod}(c_G \\sum A^{K+1}, 1)$", colour=added, w=31, h=7)
    c.arrow(a_new, g, colour=added, start="right", end="left")
    c.ax.plot([83.1, 94], [6, 6], color=added, lw=1.4)
    c.ax.annotate("", xy=(94, top - 2.4), xytext=(94, 6),
                  arrowprops=dict(arrowstyle="-|>", color=added, lw=1.4, shrinkA=0, shrinkB=0))
    c.ax.text(92.5, 21, "$+\\,G$ on\nevery score", ha="right", va="center", fontsize=FONT, color=added)


def manipulation_diagram(technique: str | None = None) -> Figure:
    """The manipulated network (the paper's Figure 2) as a block diagram: VGG-16's path
    image -> conv layers -> A^1..A^K -> pooling -> FC1 -> FC2, FC3 -> y, and in red what the
    techniques add: the channel A^{K+1} (a constant filter, a fixed image, or a branch F on the
    input), the FC1 columns W_n with the folded bias b_n, and the score branch G added to every
    score. technique: "T1".."T4" draws only that technique's parts; None draws all of them."""
    from matplotlib.patches import FancyBboxPatch

    if technique is not None and technique not in ("T1", "T2", "T3", "T4"):
        raise ValueError(f"technique must be 'T1', 'T2', 'T3', 'T4' or None, got {technique!r}")
    show_all = technique is None
    branch = show_all or technique in ("T3", "T4")
    added, plain = "tab:red", _Canvas.plain
    fig = Figure(figsize=(WIDTH, 3.9), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 54)
    ax.axis("off")
    c = _Canvas(ax)
    top = 40.0
    x_in = c.box(5.5, top, "image\n$x$", w=9)
    trunk = c.box(20.5, top, "conv\n1–13", w=12)
    a_old = c.box(37, top, "$A^1 \\ldots A^K$", w=13)
    pool = c.box(53, top, "max-\npool", w=10)
    fc1 = c.box(69, top, "FC1\n$W_o z_o + b_o$", w=15)
    rest = c.box(84.5, top, "FC2,\nFC3", w=9)
    for a, b in [(x_in, trunk), (trunk, a_old), (a_old, pool), (pool, fc1), (fc1, rest)]:
        c.arrow(a, b)
    line = dict(arrowstyle="-|>", color=plain, lw=1.4, shrinkA=0, shrinkB=0)
    if branch:
        ax.text(94, top, "+", ha="center", va="center", fontsize=FONT + 2,
                bbox=dict(boxstyle="circle,pad=0.15", facecolor="white", edgecolor=plain, lw=1.4))
        ax.annotate("", xy=(92.2, top), xytext=(89.6, top), arrowprops=line)
        ax.annotate("", xy=(99.5, top), xytext=(95.8, top), arrowprops=line)
    else:
        ax.annotate("", xy=(99.5, top), xytext=(89.6, top), arrowprops=line)
    ax.text(99.5, top + 2.2, "$y$", fontsize=FONT + 1, ha="right")
    # Grad-CAM's view: everything it multiplies is in the dotted box
    ax.add_patch(FancyBboxPatch((29, 14), 16, 32, boxstyle="round,pad=0.3", fill=False, ls=":", lw=1.3,
                                edgecolor="tab:blue"))
    ax.text(37, 48.5, "Grad-CAM explains $A$", ha="center", fontsize=FONT, color="tab:blue")
    a_new = c.box(37, 20, "$A^{K+1}$", colour=added, w=13)
    c.arrow(a_new, pool, colour=added, start="right", end="bottom")
    if show_all or technique in ("T1", "T2"):
        text = ("bias $c_A$ (T1)\n$+\\,c_I I_T$ (T2)" if show_all else
                "filter bias $c_A$" if technique == "T1" else "$+\\,c_I I_T$")
        ax.text(37, 12.5, text, ha="center", va="top", fontsize=FONT, color=added)
        ax.text(69, 33.5, "new columns $W_n = c_W$\n$b_n = b_o - W_n z_n$" + ("\n(T1, T2)" if show_all else ""),
                ha="center", va="top", fontsize=FONT, color=added)
    if branch:
        _draw_branch(c, x_in, a_new, technique, added, top)
    return fig
