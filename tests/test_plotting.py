"""Figures: axes counts, what each panel shows, and the PNG/glue helpers."""

import numpy as np
import pytest
import torch

from lie_cam import plotting
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
    x, stickered = image(0), image(5)
    maps = {"original": cam(1), "T1": torch.ones(14, 14), "T2": cam(2), "T3": cam(3), "T4": (stickered, cam(4))}
    fig = plotting.figure1(x, maps)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes] == ["image", "original", "T1", "T2", "T3", "T4"]
    assert len(fig.axes[0].images) == 1 and all(len(ax.images) == 2 for ax in fig.axes[1:])
    # T4's (image, map) pair is drawn over its own image, the others over x.
    t4_pixels = np.asarray(fig.axes[-1].images[0].get_array())
    assert np.allclose(t4_pixels, denormalize(stickered[None])[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert not np.allclose(np.asarray(fig.axes[1].images[0].get_array()), t4_pixels)


def test_figure3_two_rows():
    fig = plotting.figure3(image(0), image(1), {"original": cam(1), "T4": cam(2)}, {"original": cam(3), "T4": cam(4)})
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("image") and titles[3].startswith("image")
    assert "T4" in titles[2] and "sticker" in titles[5]
    fig = plotting.figure3(image(0), image(1), {"original": cam(1)}, {"original": cam(3), "T4": cam(4)})
    assert len(fig.axes) == 5  # the missing clean T4 panel is left out


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

    shown, glued = [], []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    plotting.show(fig)
    assert len(shown) == 1 and shown[0].data[:8] == png[:8]

    myst_nb = pytest.importorskip("myst_nb")
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=True: glued.append((name, display)))
    plotting.show(fig, "fig-name")
    assert glued == [("fig-name", True)] and len(shown) == 1
