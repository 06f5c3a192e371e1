"""Figures: axes counts, what each panel shows, and the PNG/glue helpers."""

import io

import numpy as np
import pytest
import torch

from lie_cam import plotting
from lie_cam.experiments.report import ours_and_paper_table
from lie_cam.data import denormalize, normalize


def image(seed: int = 0) -> torch.Tensor:
    """A normalised 3 x 224 x 224 image whose pixels are known."""
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.rand(1, 3, 224, 224, generator=g))[0]


def cam(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(14, 14, generator=g) * 5


def test_display_map_is_max_normalised_and_upsampled():
    m = cam()
    up = plotting.display_map(m, (224, 224))
    assert up.shape == (224, 224)
    assert up.max().item() == pytest.approx(1.0, abs=0.02)
    assert up.min().item() >= 0
    # Bilinear, not nearest: many more distinct values than the 196 input cells.
    assert torch.unique(up).numel() > 1000
    assert torch.equal(plotting.display_map(torch.zeros(14, 14), 224), torch.zeros(224, 224))


def test_overlay_draws_image_then_map():
    from matplotlib.figure import Figure

    x = image()
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    plotting.overlay(ax, x, cam(), title="honest")
    assert len(ax.images) == 2
    assert ax.get_title() == "honest"
    shown = np.asarray(ax.images[0].get_array())
    assert np.allclose(shown, denormalize(x[None])[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert np.asarray(ax.images[1].get_array()).shape == (224, 224)
    ax2 = fig.add_subplot(1, 2, 2)
    plotting.overlay(ax2, x[None], None)  # a batch of one is accepted; no map: the image alone
    assert len(ax2.images) == 1


def test_overlay_rejects_bad_shapes():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    with pytest.raises(ValueError):
        plotting.overlay(ax, torch.zeros(2, 3, 224, 224), cam())
    with pytest.raises(ValueError):
        plotting.overlay(ax, torch.zeros(1, 224, 224), cam())
    with pytest.raises(ValueError):
        plotting.overlay(ax, image(), torch.zeros(3, 14, 14))


def test_figure1_has_one_axis_per_map_plus_the_image():
    x = image(0)
    maps = {"original": cam(1), "T1": torch.ones(14, 14), "T2": cam(2), "T3": cam(3)}
    fig = plotting.figure1(x, maps)
    panels = plotting.panel_axes(fig)
    assert [ax.get_title() for ax in panels] == ["image", "original", "T1", "T2", "T3"]
    assert len(panels[0].images) == 1 and all(len(ax.images) == 2 for ax in panels[1:])
    assert len(fig.axes) == len(panels) + 1  # and a colour bar
    # at most 4 panels a row: 5 panels in two rows of 3 and 2
    assert panels[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)


def stickered_copy(x: torch.Tensor, top: int = 100, left: int = 60) -> torch.Tensor:
    from lie_cam.data import smiley

    pixels = denormalize(x[None])[0]
    pixels[:, top:top + 14, left:left + 14] = smiley()
    return normalize(pixels[None])[0]


def test_figure1_shows_t4_on_its_stickered_image_with_a_zoom():
    x = image(0)
    stickered = stickered_copy(x)
    maps = {"original": cam(1), "T1": torch.ones(14, 14), "T2": cam(2), "T3": cam(3), "T4": (stickered, cam(4))}
    fig = plotting.figure1(x, maps)
    panels = plotting.panel_axes(fig)
    titles = [ax.get_title().replace("\n", " ") for ax in panels]  # titles are wrapped to the panel
    assert titles[:5] == ["image", "original", "T1", "T2", "T3"]
    assert titles[5] == "image with stickers" and titles[6] == "T4" and titles[7] == "one sticker, enlarged"
    assert panels[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
    # T4's (image, map) pair is drawn over its own image, the others over x.
    t4_pixels = np.asarray(panels[6].images[0].get_array())
    assert np.allclose(t4_pixels, denormalize(stickered[None])[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert not np.allclose(np.asarray(panels[1].images[0].get_array()), t4_pixels)
    # the zoom: a 40 x 40 window that contains the sticker at rows 100..113, columns 60..73
    x0, x1 = panels[7].get_xlim()
    y1, y0 = panels[7].get_ylim()
    assert x1 - x0 == pytest.approx(40) and y1 - y0 == pytest.approx(40)
    assert x0 <= 60 and x1 >= 73 and y0 <= 100 and y1 >= 113


def test_sticker_window():
    x = image(3)
    top, left, h, w = plotting.sticker_window(x, stickered_copy(x, 200, 5), size=32)
    assert (h, w) == (32, 32) and top <= 200 and top + h >= 214 and left <= 5 and left + w >= 19
    assert top + h <= 224  # clamped to the image
    with pytest.raises(ValueError, match="identical"):
        plotting.sticker_window(x, x.clone())
    with pytest.raises(ValueError):
        plotting.sticker_window(x, torch.zeros(3, 100, 100))


def test_map_grid_rows_raw_maps_and_colour_bar():
    panels = [(image(), cam(i), f"map {i}") for i in range(6)] + [(None, cam(9), "raw")]
    fig = plotting.map_grid(panels)
    axes = plotting.panel_axes(fig)
    assert len(axes) == 7 and len(fig.axes) == 8
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
    raw = axes[-1]
    assert len(raw.images) == 1 and np.asarray(raw.images[0].get_array()).shape == (14, 14)
    assert np.asarray(raw.images[0].get_array()).max() == pytest.approx(1.0)
    assert raw.images[0].get_interpolation() == "nearest"
    with pytest.raises(ValueError, match="ncols"):
        plotting.map_grid(panels, ncols=6)
    with pytest.raises(ValueError, match="neither"):
        plotting.map_grid([(None, None, "empty")])
    assert len(plotting.map_grid([(image(), None, "only an image")]).axes) == 1  # no map: no colour bar


def all_texts(fig):
    return [t for ax in fig.axes for t in ax.texts + [ax.title, ax.xaxis.label, ax.yaxis.label] if t.get_text()]


def test_figures_fit_the_column_and_use_the_body_font():
    x = image(0)
    long_title = "a rather long panel title that must be wrapped to fit its panel"
    figs = [plotting.figure1(x, {"original": cam(1), "T4": (stickered_copy(x), cam(2))}),
            plotting.map_grid([(x, cam(1), long_title)] * 4, notes=["Δy 1e-10, α share 0.99"] * 4),
            plotting.figure3(x, x, {"original": cam(1), "T4": cam(2)}, {"original": cam(3), "T4": cam(4)}),
            plotting.manipulation_diagram(), plotting.line_figure([1, 10, 100], {"a": [1, 2, 3]}, "x", "y"),
            plotting.histogram_figure([-1.0, 2.0, 3.0], "x", title="t")]
    for fig in figs:
        # at most WIDTH (colour bar included) and every text drawn, tick labels too, at FONT or more:
        # FONT * DPI / 72 * 368 / (WIDTH * DPI) >= 9 px on a 400 px page
        assert fig.get_figwidth() <= plotting.WIDTH + 1e-9
        sizes = plotting.drawn_font_sizes(fig)
        assert sizes and min(sizes) >= plotting.FONT
    assert plotting.FONT * 368 / (plotting.WIDTH * 72) >= 9
    title = plotting.panel_axes(figs[1])[0].get_title()
    assert "\n" in title and title.replace("\n", " ") == long_title


def test_manipulation_diagram_draws_each_techniques_parts():
    everything = " ".join(t.get_text() for t in all_texts(plotting.manipulation_diagram()))
    for part in ["A^{K+1}", "branch $F$", "c_A", "c_I I_T", "W_n = c_W", "mod", "Grad-CAM explains"]:
        assert part in everything, part
    t1 = " ".join(t.get_text() for t in all_texts(plotting.manipulation_diagram("T1")))
    assert "c_A" in t1 and "W_n = c_W" in t1 and "mod" not in t1 and "branch" not in t1
    t4 = " ".join(t.get_text() for t in all_texts(plotting.manipulation_diagram("T4")))
    assert "sticker" in t4 and "mod" in t4 and "c_A" not in t4
    with pytest.raises(ValueError):
        plotting.manipulation_diagram("T5")


def test_figure3_two_rows():
    fig = plotting.figure3(image(0), image(1), {"original": cam(1), "T4": cam(2)}, {"original": cam(3), "T4": cam(4)})
    assert len(plotting.panel_axes(fig)) == 6 and len(fig.axes) == 7  # and a colour bar
    titles = [ax.get_title() for ax in plotting.panel_axes(fig)]
    assert titles[0].startswith("image") and titles[3].startswith("image")
    assert "T4" in titles[2] and "sticker" in titles[5]
    fig = plotting.figure3(image(0), image(1), {"original": cam(1)}, {"original": cam(3), "T4": cam(4)})
    assert len(plotting.panel_axes(fig)) == 5  # the missing clean T4 panel is left out


def test_sweep_grid_panels_and_notes():
    values = [1, 10, 100, 1000]
    maps = {f"c = {v}": cam(v) for v in values}
    notes = {f"c = {v}": f"note {v}" for v in values}
    fig = plotting.sweep_grid(image(), maps, notes, ncols=2, suptitle="sweep")
    assert len(fig.axes) == 4
    assert [ax.get_xlabel() for ax in fig.axes] == [f"note {v}" for v in values]
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)
    with pytest.raises(ValueError):
        plotting.sweep_grid(image(), {})


def test_png_and_show(monkeypatch):
    fig = plotting.figure1(image(), {"m": cam()})
    png = plotting.png_bytes(fig, dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    record = Image.open(io.BytesIO(png)).text  # the smallest text drawn, for the book check
    assert record[plotting.FONT_KEY] == f"{min(plotting.drawn_font_sizes(fig)):g}" and record[plotting.DPI_KEY] == "40"
    from matplotlib.figure import Figure

    small = Figure(figsize=(2, 1))
    small.text(0.1, 0.5, "tiny", fontsize=5)
    small.text(0.1, 0.2, "", fontsize=2)  # empty: not drawn, not counted
    assert Image.open(io.BytesIO(plotting.png_bytes(small))).text[plotting.FONT_KEY] == "5"

    shown, glued = [], []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    plotting.show(fig)
    assert len(shown) == 1 and shown[0].data[:8] == png[:8]

    myst_nb = pytest.importorskip("myst_nb")
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=True: glued.append((name, display)))
    plotting.show(fig, "fig-name")
    assert glued == [("fig-name", True)] and len(shown) == 1


def test_ours_and_paper_table():
    rows = [{"network": "T1", "accuracy": 0.5, "paper_accuracy": 0.71594, "l1": None, "paper_l1": 0.00513},
            {"network": "T2", "accuracy": 0.25, "paper_accuracy": 0.71594, "l1": 0.125, "paper_l1": 0.01079,
             "pointing": 0.5}]
    text = ours_and_paper_table(rows, ["network"], {"accuracy": "accuracy", "l1": "L1"})
    lines = text.splitlines()
    assert lines[0] == "| network | accuracy<br>ours / paper | L1<br>ours / paper | pointing |"
    assert lines[2] == "| T1 | 0.50000 / 0.71594 | – / 0.00513 | – |"
    assert lines[3] == "| T2 | 0.25000 / 0.71594 | 0.12500 / 0.01079 | 0.50000 |"


def test_images_are_drawn_with_the_models_input_spec():
    from matplotlib.figure import Figure

    from lie_cam.anatomy import InputSpec

    unit = InputSpec(side=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # the model takes pixels in [0, 1]
    pixels = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plotting.to_pixels(pixels, unit), pixels.permute(1, 2, 0))  # drawn as they are
    washed = plotting.to_pixels(pixels)  # ImageNet's statistics assumed: squeezed to about [0.41, 0.70]
    assert washed.min() > 0.35 and washed.max() < 0.75
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    plotting.overlay(ax, pixels, cam(), spec=unit)
    assert np.allclose(np.asarray(ax.images[0].get_array()), pixels.permute(1, 2, 0).numpy())
    for figure in (plotting.figure1(pixels, {"map": cam()}, spec=unit),
                   plotting.figure3(pixels, pixels, {"o": cam()}, {"o": cam()}, spec=unit),
                   plotting.sweep_grid(pixels, {"a": cam()}, spec=unit)):
        shown = np.asarray(plotting.panel_axes(figure)[0].images[0].get_array())
        assert np.allclose(shown, pixels.permute(1, 2, 0).numpy())
    with pytest.raises(TypeError, match="InputSpec"):
        plotting.to_pixels(pixels, (0.0, 1.0))
