"""explore.measure and explore.widgets: the pure measuring function checked against the math, the specs, and the thin UI."""

import copy

import pytest
import torch

from lie_cam.gradcam import gradcam
from lie_cam.attacks import constant_flat
from lie_cam.explore.measure import (BaseCache, SPECS, SliderSpec, alpha_share, honest_base, map_share, measure,
                                    measure_batch, minmax_maps, normalise)
from lie_cam.explore.widgets import T1Explorer, T2Explorer, T3Explorer, T4Explorer


@pytest.fixture(scope="module")
def cache(model, picture) -> BaseCache:
    return BaseCache(model, picture)


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


def test_specs_are_data():
    assert {t: [s.name for s in spec.sliders] for t, spec in SPECS.items()} == {
        "T1": ["c_W", "c_A", "precision"], "T2": ["c_I", "c_W"], "T3": ["eps", "c_G", "c_F", "precision"],
        "T4": ["eps", "stickers", "c_F"]}
    c_W = SPECS["T1"].slider("c_W")
    assert c_W.log and c_W.values()[0] == pytest.approx(1e-3) and c_W.values()[-1] == pytest.approx(1e4)
    assert len(c_W.values()) == 29 and c_W.default in c_W.kernel_free_points()
    stickers = SPECS["T4"].slider("stickers")
    assert [stickers.format(v) for v in stickers.choices] == ["off", "place 1", "place 2", "place 3"]
    for spec in SPECS.values():
        for s in spec.sliders:
            pts = s.kernel_free_points()
            assert 2 <= len(pts) <= 9 and s.default in pts
    grid = SliderSpec("a", "a", 3.0, min=0, max=10).grid(5)
    assert grid == [0.0, 3.0, 5.0, 7.5, 10.0]  # the default replaces the nearest point
    with pytest.raises(ValueError, match="outside"):
        SliderSpec("a", "a", 50.0, min=0, max=10)
    with pytest.raises(ValueError, match="not one of"):
        SliderSpec("p", "p", "float16", choices=("float32", "float64"))
    with pytest.raises(KeyError, match="no control"):
        SPECS["T1"].slider("eps")


def test_measure_is_pure_and_shares_the_trunk(model, picture, cache):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    direct = measure("T1", model, picture, precision="float64", c_W=10.0)
    cached = cache.measure("T1", precision="float64", c_W=10.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    assert direct.numbers() == cached.numbers() and torch.equal(direct.map, cached.map)
    # Against the plain gradcam of the full manipulated network (its own trunk pass).
    full = gradcam(constant_flat(copy.deepcopy(model).double(), c_W=10.0, c_A=100.0, build="paper"), picture.double())
    assert torch.allclose(full.normalized[0], direct.map.double(), atol=1e-12)
    assert direct.alpha_extra == pytest.approx(full.alpha[0, -1].item(), rel=1e-12)


def test_measure_checks_its_inputs(model, picture):
    with pytest.raises(KeyError, match="technique"):
        measure("T9", model, picture)
    with pytest.raises(TypeError, match="unknown"):
        measure("T1", model, picture, eps=0.1)
    with pytest.raises(ValueError, match="precision"):
        measure("T1", model, picture, precision="float16")
    with pytest.raises(ValueError, match="one image"):
        measure("T1", model, torch.zeros(2, 3, 224, 224))
    base = honest_base(model, picture, "float32")
    with pytest.raises(ValueError, match="base was computed"):
        measure("T1", model, picture, precision="float64", base=base)
    with pytest.raises(ValueError, match="another image"):
        measure("T1", model, picture.flip(-1), base=base)


@pytest.mark.parametrize("stickers", ["no", "False", 0, -1, 2.0, None])
def test_measure_refuses_stickers_that_are_not_a_bool(model, picture, stickers):
    with pytest.raises(TypeError, match="stickers must be True or False, or a placement"):
        measure("T4", model, picture, stickers=stickers)
    with pytest.raises(TypeError, match="stickers must be True or False, or a placement"):
        honest_base(model, picture, stickers=stickers)


def test_sticker_placements(model, picture):
    """Placement 1 is True (the sticker seed 0); placements 2 and 3 paste the stickers elsewhere."""
    bases = [honest_base(model, picture, stickers=s) for s in (True, 1, 2, 3)]
    assert torch.equal(bases[0].x, bases[1].x) and bases[1].stickers is True
    assert len({b.x.numpy().tobytes() for b in bases[1:]}) == 3


def test_minmax_maps_and_norm():
    maps = torch.tensor([[[2.0, 3.0], [4.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]])
    assert minmax_maps(maps)[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert minmax_maps(maps)[1].abs().max() == 0  # a constant map is 0, never NaN
    assert torch.equal(minmax_maps(maps + 100.0), minmax_maps(maps))  # a constant added cancels (T1)
    assert torch.equal(normalise(maps, "max"), maps / maps.amax(dim=(1, 2), keepdim=True))
    with pytest.raises(ValueError, match="norm must be one of"):
        normalise(maps, "sum")


def test_measure_batch_is_measure_per_scene_and_class(model):
    from lie_cam.data import synthetic_split

    scenes = synthetic_split("test", 2)[0]
    base = honest_base(model, scenes, "float64")
    batch = measure_batch("T3", base, ranks=(0, 2), norms=("max", "min-max"), c_G=1e-2)
    assert len(batch) == 2 * 2 * 2 and [m.norm for m in batch[:2]] == ["max", "min-max"]
    for i, (scene, rank, norm) in enumerate([(s, r, n) for s in (0, 1) for r in (0, 2) for n in ("max", "min-max")]):
        one = measure("T3", model, scenes[scene], precision="float64", c_G=1e-2, rank=rank, norm=norm)
        assert batch[i].class_explained == one.class_explained and batch[i].norm == norm
        assert torch.allclose(batch[i].map, one.map, atol=1e-9)
        assert batch[i].alpha_extra == pytest.approx(one.alpha_extra, rel=1e-9)
    order = base.honest.logits[0].argsort(descending=True)
    assert batch[2].class_explained == int(order[2])
    with pytest.raises(ValueError, match="ranks must be"):
        measure_batch("T3", base, ranks=())
    with pytest.raises(ValueError, match="ranks must be below the number of classes"):
        measure_batch("T3", base, ranks=(0, 99))
    with pytest.raises(ValueError, match="base was computed"):
        measure_batch("T3", base, precision="float32")


def test_measure_names_a_constant_out_of_range(model, picture):
    with pytest.raises(ValueError, match=r"c_W = 1e\+300 out of range.*expected c_W <="):
        measure("T1", model, picture, c_W=1e300)
    with pytest.raises(ValueError, match=r"c_A = 1e\+36 out of range"):
        measure("T1", model, picture, c_A=1e36)


def test_measure_on_resnets(picture):
    """A torchvision ResNet is measured; one the surgery cannot cut says what is wrong with it, not 'a VGG'."""
    from torch import nn

    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models import resnet18

    torch.manual_seed(0)
    resnet = resnet18(num_classes=4).eval()
    m = measure("T3", resnet, picture, precision="float64", c_G=1e4)  # the paper's constants
    assert m.score_change <= 0.01 and m.l1 < 0.05
    resnet.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 4))
    with pytest.raises(TypeError, match="`fc` is of type Sequential, not an nn.Linear") as info:
        measure("T1", resnet, picture)
    assert "VGG" not in str(info.value)


def test_t1_c_W_drives_alpha(cache):
    records = [cache.measure("T1", precision="float64", c_W=c_W) for c_W in (0.01, 1.0, 100.0)]
    shares = [r.alpha_share for r in records]
    assert shares[0] < shares[1] < shares[2]
    # alpha_{K+1} = c_W / N_A * sum(dy/dz_n): linear in c_W, so x100 per step.
    assert records[2].alpha_extra == pytest.approx(100 * records[1].alpha_extra, rel=1e-9)
    assert records[1].alpha_extra == pytest.approx(100 * records[0].alpha_extra, rel=1e-9)
    assert all(r.score_change < 1e-8 for r in records)  # exact cancellation in float64
    assert all(r.class_manipulated == r.class_original for r in records)
    assert [r.params["c_W"] for r in records] == [0.01, 1.0, 100.0]


def test_t1_c_A_scales_the_channel_not_alpha(cache):
    low, high = (cache.measure("T1", precision="float64", c_W=100.0, c_A=c_A) for c_A in (10.0, 200.0))
    assert high.alpha_extra == pytest.approx(low.alpha_extra, rel=1e-9)
    if low.alpha_extra > 0:  # the target is reached when the sign is right, better with a larger c_A
        assert high.l1 < low.l1


def test_t1_float32_cancellation(cache):
    exact = cache.measure("T1", precision="float64", c_W=1e4).score_change
    rounded = cache.measure("T1", precision="float32", c_W=1e4).score_change
    assert exact < 1e-6
    # b_o - c_A c_W N_Z ~ -4.9e7 (N_Z = 49): float32 steps of 4 there.
    assert rounded > 1e3 * max(exact, 1e-12)


def test_t2_c_I_takes_the_map_over(cache):
    records = [cache.measure("T2", c_I=c_I) for c_I in (1e-3, 1.0, 1e3)]
    shares = [r.map_share for r in records]
    assert shares[0] < shares[1] < shares[2]
    # alpha_{K+1} = N_Z/N_A c_W s^c does not depend on c_I (exactly so in float64)
    exact = [cache.measure("T2", c_I=c_I, precision="float64").alpha_extra for c_I in (1e-3, 1e3)]
    assert exact[0] == pytest.approx(exact[1], rel=1e-9)
    if records[0].alpha_extra > 0:
        assert records[2].l1 < records[0].l1


def test_t3_eps_bounds_the_score_change(cache):
    for eps in (1.0, 1e-2, 1e-4):
        r = cache.measure("T3", precision="float64", eps=eps)
        assert 0 <= r.score_change <= eps
        assert r.alpha_extra == pytest.approx(eps * r.params["c_G"], rel=1e-6)  # dG/dA_ij = eps c_G
    records = [cache.measure("T3", precision="float64", c_G=c_G) for c_G in (1e-6, 1e-2, 1e2)]
    shares, maps = [r.alpha_share for r in records], [r.map_share for r in records]
    assert shares[0] < shares[1] < shares[2]
    assert maps[0] < maps[1] < maps[2] and all(0 <= m <= 1 for m in maps)
    # A^{K+1} = c_F F(x) is huge: the map is taken over long before alpha_{K+1} dominates the weights.
    assert maps[1] > 0.9 > shares[1]


def test_t3_shared_activations_equal_a_fresh_build(model, picture, cache):
    """eps and c_G change only the head, so A is shared between them: the results are those of a
    network built and evaluated from scratch."""
    cache.measure("T3", precision="float32", eps=0.5, c_G=1.0)
    shared = cache.measure("T3", precision="float32", eps=0.01, c_G=1e4)
    fresh = measure("T3", model, picture, precision="float32", eps=0.01, c_G=1e4)
    assert shared.numbers() == fresh.numbers() and torch.equal(shared.map, fresh.map)
    assert shared.score_change < 1e-6 and shared.l1 < 1e-3  # float32: the mod collapses, G adds nothing


def test_t4_stickers_switch(cache):
    off = cache.measure("T4", stickers=False, c_G=1e4)  # the paper's c_G c_F = 1e13
    on = cache.measure("T4", stickers=True, c_G=1e4)
    # the original network (up to the summation order of the widened FC1 in float32)
    assert off.score_change < 1e-6 and off.map_share == 0 and off.l1 < 1e-4
    assert not torch.equal(off.image, on.image)  # the stickered image is the one explained
    assert on.map_share > 0.99 and on.l1 < 0.05 and on.score_change <= 0.01


def test_explorers_drive_measure(model, picture):
    ex = T1Explorer(model, picture, precision="float64", draw=False)
    assert set(ex.sliders) == {"c_W", "c_A", "precision"}
    ex.sliders["c_W"].value = 1.0  # the observer measures again
    assert ex.last.params["c_W"] == pytest.approx(1.0) and ex.last.precision == "float64"
    ex.sliders["precision"].value = "float32"
    assert ex.last.precision == "float32"
    t4 = T4Explorer(model, picture, draw=False)
    assert t4.last.params["stickers"] is True
    t4.sliders["stickers"].value = "off"
    assert t4.last.params["stickers"] is False and t4.last.map_share == 0
    t3 = T3Explorer(model, picture, precision="float64", draw=False)
    records = t3.sweep("eps", [1e-3, 1e-1])
    assert [r.params["eps"] for r in records] == [1e-3, 1e-1]
    assert t3.sliders["eps"].value == pytest.approx(0.01)  # a sweep leaves the controls alone
    assert set(T2Explorer(model, picture, draw=False).sliders) == {"c_I", "c_W"}
    with pytest.raises(TypeError, match="unknown"):
        T2Explorer(model, picture, draw=False, c_A=3.0)


def test_redraw(model, picture):
    ex = T1Explorer(model, picture, precision="float64")
    ax_map, ax_raw, ax_alpha = ex.figure.axes
    assert len(ax_map.images) == 2 and len(ax_raw.images) == 1
    assert len(ax_alpha.patches) == ex.last.alpha.numel()
    before, png_before = ax_alpha.get_title(), ex.image.value
    assert png_before[:8] == b"\x89PNG\r\n\x1a\n"
    ex.sliders["c_W"].value = 100.0
    assert ax_alpha.get_title() != before and f"{ex.last.alpha_share:.3f}" in ax_alpha.get_title()
    assert ex.image.value != png_before  # the displayed picture was redrawn
    assert f"{ex.last.score_change:.3g}" in ex.readout.value
