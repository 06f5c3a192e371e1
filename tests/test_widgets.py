"""The T1/T3 explorers: drive the sliders from code and check the numbers the math predicts."""

import time

import pytest
import torch

from lie_cam.data import synthetic_split
from lie_cam.widgets import T1Explorer, T3Explorer, alpha_share, map_share

from conftest import small_vgg

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    x, _, _ = synthetic_split("test", 1)
    return x


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return small_vgg(seed=3)


def test_alpha_share():
    alpha = torch.tensor([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 1.0, -4.0]])
    assert alpha_share(alpha).tolist() == pytest.approx([0.5, 0.0, 0.5])
    with pytest.raises(ValueError):
        alpha_share(torch.ones(3))


def test_map_share():
    alpha = torch.tensor([[1.0, -2.0, 0.5]])
    A = torch.zeros(1, 3, 2, 2)
    A[0, 0] = 1.0   # mass 4, term 4
    A[0, 1] = 0.5   # mass 2, term 4
    A[0, 2] = 4.0   # mass 16, term 8
    assert map_share(alpha, A).item() == pytest.approx(8 / 16)
    with pytest.raises(ValueError):
        map_share(alpha, torch.zeros(1, 2, 2, 2))


def test_t1_sliders_drive_alpha(model, picture):
    ex = T1Explorer(model, picture, precision="float64", draw=False)
    assert set(ex.sliders) == {"c_W", "c_A", "precision"}
    records = []
    for c_W in (0.01, 1.0, 100.0):
        ex.sliders["c_W"].value = c_W  # the observer rebuilds and recomputes
        assert ex.last["c_W"] == pytest.approx(c_W)
        records.append(dict(ex.last))
    shares = [r["alpha_share"] for r in records]
    assert shares[0] < shares[1] < shares[2]
    # alpha_{K+1} = c_W / N_A * sum(dy/dz_n): linear in c_W, so x100 per step.
    assert records[2]["alpha_extra"] == pytest.approx(100 * records[1]["alpha_extra"], rel=1e-9)
    assert records[1]["alpha_extra"] == pytest.approx(100 * records[0]["alpha_extra"], rel=1e-9)
    # Exact cancellation in float64: the scores do not move and the class stays.
    assert all(r["score_change"] < 1e-8 for r in records)
    assert all(r["class_manipulated"] == r["class_original"] for r in records)


def test_t1_c_A_scales_the_channel_not_alpha(model, picture):
    ex = T1Explorer(model, picture, precision="float64", c_W=100.0, c_A=10.0, draw=False)
    low = dict(ex.last)
    ex.sliders["c_A"].value = 200.0
    high = dict(ex.last)
    assert high["alpha_extra"] == pytest.approx(low["alpha_extra"], rel=1e-9)
    if low["alpha_extra"] > 0:  # the target is reached when the sign is right, better with a larger c_A
        assert high["l1"] < low["l1"]


def test_t1_float32_cancellation(model, picture):
    ex = T1Explorer(model, picture, precision="float64", c_W=1e4, c_A=100.0, draw=False)
    exact = ex.last["score_change"]
    ex.sliders["precision"].value = "float32"
    rounded = ex.last["score_change"]
    assert ex.last["precision"] == "float32"
    assert exact < 1e-6
    # b_o - c_A c_W N_Z ~ -4.9e7 (N_Z = 49): float32 steps of 4 there.
    assert rounded > 1e3 * max(exact, 1e-12)


def test_t3_eps_bounds_the_score_change(model, picture):
    ex = T3Explorer(model, picture, precision="float64", draw=False)
    assert set(ex.sliders) == {"eps", "c_G", "precision"}
    for eps in (1.0, 1e-2, 1e-4):
        ex.sliders["eps"].value = eps
        assert ex.last["eps"] == pytest.approx(eps)
        assert 0 <= ex.last["score_change"] <= eps
        # dG/dA_ij = eps * c_G at every pixel, so alpha_{K+1} = eps * c_G.
        assert ex.last["alpha_extra"] == pytest.approx(eps * ex.last["c_G"], rel=1e-6)
    shares, maps = [], []
    for c_G in (1e-6, 1e-2, 1e2):
        ex.sliders["c_G"].value = c_G
        shares.append(ex.last["alpha_share"])
        maps.append(ex.last["map_share"])
    assert shares[0] < shares[1] < shares[2]
    assert maps[0] < maps[1] < maps[2] and all(0 <= m <= 1 for m in maps)
    # A^{K+1} = c_F F(x) is huge: the map is taken over long before alpha_{K+1} dominates the weights.
    assert maps[1] > 0.9 > shares[1]


def test_t3_float32_mod_collapse(model, picture):
    ex = T3Explorer(model, picture, precision="float32", draw=False)
    extra = ex.manipulated.extra_channel(picture)
    assert ex.last["c_G"] * extra.sum().item() > 2**24  # every float32 there is a whole number
    assert ex.manipulated.score_branch(extra).abs().max().item() == 0.0  # so mod(., 1) = 0: G adds nothing
    assert ex.last["score_change"] < 1e-6  # (only the summation order of the widened FC1 differs)
    assert ex.last["l1"] < 1e-3


def test_redraw_and_sweep(model, picture):
    ex = T1Explorer(model, picture, precision="float64")
    ax_map, ax_alpha = ex.figure.axes
    assert len(ax_map.images) == 2
    assert len(ax_alpha.patches) == ex.result.alpha.shape[1]
    before, png_before = ax_alpha.get_title(), ex.image.value
    assert png_before[:8] == b"\x89PNG\r\n\x1a\n"
    ex.sliders["c_W"].value = 0.01
    assert ax_alpha.get_title() != before and f"{ex.last['alpha_share']:.3f}" in ax_alpha.get_title()
    assert ex.image.value != png_before  # the displayed picture was redrawn
    assert f"{ex.last['score_change']:.3g}" in ex.readout.value
    records = ex.sweep("c_W", [1.0, 10.0, 100.0])
    assert [r["c_W"] for r in records] == [1.0, 10.0, 100.0]
    assert ex.sliders["c_W"].value == pytest.approx(0.01)  # a sweep leaves the sliders alone
    assert all(r["map"].shape == (14, 14) for r in records)
    fig = ex.sweep_figure("c_W", [1.0, 100.0])
    assert len(fig.axes) == 2
    with pytest.raises(KeyError):
        ex.sweep("precision", [1.0])


def test_update_is_fast_with_the_embedded_size():
    """The embedded model's architecture (width 1/8): an update (rebuild, Grad-CAM, redraw
    to PNG) takes less than a second on a CPU (best of three, against a loaded machine)."""
    from lie_cam.models import compact_vgg16

    torch.manual_seed(0)
    ex = T1Explorer(compact_vgg16().eval(), torch.randn(1, 3, 224, 224), precision="float32")
    times = []
    for c_W in (1.0, 10.0, 100.0):
        start = time.perf_counter()
        ex.sliders["c_W"].value = c_W
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0
