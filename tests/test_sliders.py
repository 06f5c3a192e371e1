"""sliders: the precomputed grid is the measuring function's, and the HTML block carries it whole,
self-contained (no external reference), in the layout the inline script decodes."""

import base64
import json
import re

import pytest
import torch

from lie_cam.explore.sliders import GAUGE_WIDTH, block_html, colormap_lut, gauges, precompute
from lie_cam.explore.measure import SPECS, measure

POINTS = {"eps": (1e-3, 1e-1), "c_G": (1e-6, 1.0, 1e4)}


@pytest.fixture(scope="module")
def block(model, picture):
    return precompute("T3", model, picture, class_names=lambda c: f"class{c}", points=POINTS, c_F=1e7)


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" class="lc-data">(.*?)</script>', html, re.S)
    assert m, "no data script in the block"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_grid_is_row_major_and_equals_measure(block, model, picture):
    assert len(block.records) == 2 * 3 * 2  # eps x c_G x precision (c_F given: not a control)
    assert block.points == (POINTS["eps"], POINTS["c_G"], ("float32", "float64"))
    assert [s.name for s in block.controls] == ["eps", "c_G", "precision"]
    # the last control varies fastest
    assert [(r.params["eps"], r.params["c_G"], r.precision) for r in block.records[:3]] == [
        (1e-3, 1e-6, "float32"), (1e-3, 1e-6, "float64"), (1e-3, 1.0, "float32")]
    r = block.record(eps=1e-1, c_G=1e4, precision="float64")
    fresh = measure("T3", model, picture, precision="float64", eps=1e-1, c_G=1e4, c_F=1e7)
    assert r.numbers() == fresh.numbers() and torch.equal(r.map, fresh.map)
    with pytest.raises(KeyError, match="not on the grid"):
        block.record(eps=0.5, c_G=1e4, precision="float64")


def test_default_points_are_the_specs(model, picture):
    t2 = precompute("T2", model, picture, c_W=10.0)
    assert [r.params["c_I"] for r in t2.records] == SPECS["T2"].slider("c_I").kernel_free_points()
    with pytest.raises(KeyError, match="no control"):
        precompute("T2", model, picture, points={"eps": (1.0, 2.0)})
    with pytest.raises(ValueError, match="at least 2"):
        precompute("T2", model, picture, points={"c_I": (1.0,)})


def test_html_is_self_contained_and_carries_every_record(block):
    html = block.html()
    assert html.count("data-lie-cam-slider=") == 1 and "data-lie-cam-slider" in block._repr_html_()
    # nothing outside the block: no src/href to a URL, no external script or stylesheet
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script src" not in html and "<link" not in html
    data = _data(html)
    assert len(data["records"]) == len(block.records)
    assert [c["n"] for c in data["controls"]] == [2, 3, 2]
    assert all(src.startswith("data:image/jpeg;base64,") for src in data["images"])
    for shown, m in zip(data["records"], block.records):
        q = torch.tensor(list(base64.b64decode(shown["map"])), dtype=torch.float64).reshape(m.map.shape) / 255
        assert (q - m.map.double()).abs().max() <= 0.5 / 255 + 1e-12  # quantised to bytes, nothing else
        assert shown["numbers"][0] == f"{m.score_change:.2g}" and shown["numbers"][4] == f"{m.l1:.3g}"
        assert shown["numbers"][5] == f"{m.class_original} (class{m.class_original}) → {m.class_manipulated} (class{m.class_manipulated})"
        assert shown["g"] == list(gauges(m))
    assert base64.b64decode(data["lut"]) == colormap_lut()
    # the page says which explorer is which
    assert "no kernel and no network" in html and "needs a kernel" in html


def test_repr_is_one_short_line(block):
    assert repr(block) == "SliderBlock('T3', 12 records; eps: 2, c_G: 3, precision: 2)"


def test_two_blocks_do_not_share_ids(block):
    a, b = block_html(block), block_html(block)
    ids = [re.search(r'id="(lc-[^"]+)"', h).group(1) for h in (a, b)]
    assert ids[0] != ids[1]


def test_t4_block_has_an_image_per_sticker_placement(model, picture):
    t4 = precompute("T4", model, picture, points={"eps": (1e-2, 1.0)}, c_F=1e9)
    data = _data(t4.html())
    assert len(data["images"]) == 4  # clean and three placements of the stickers
    assert {r["image"] for r in data["records"]} == {0, 1, 2, 3}
    off, *on = (t4.record(stickers=s) for s in (False, True, 2, 3))
    assert off.map_share == 0 and all(m.map_share > 0.5 for m in on)
    assert len({_map_key(m) for m in on}) == 3  # the map follows the stickers


def _map_key(m) -> bytes:
    return (m.map * 255).round().to(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def scenes():
    from lie_cam.data import synthetic_split

    return synthetic_split("test", 3)[0]


def test_scenes_classes_and_norms_are_controls(model, scenes):
    """Several scenes, explained classes and normalisations: one build serves them all, and each record
    equals the single-image `measure` of its scene, class and normalisation."""
    block = precompute("T1", model, scenes, points={"c_W": (0.01, 100.0), "c_A": (1.0, 100.0)},
                       ranks=(0, 1), norms=("max", "min-max"), precision="float64")
    assert [s.name for s in block.controls] == ["scene", "class", "c_W", "c_A", "norm"]
    assert len(block.records) == 3 * 2 * 2 * 2 * 2
    for scene, rank, norm in ((0, 0, "max"), (2, 1, "min-max")):
        r = block.record(scene=scene, **{"class": rank}, c_W=100.0, c_A=100.0, norm=norm)
        fresh = measure("T1", model, scenes[scene], precision="float64", c_W=100.0, c_A=100.0, rank=rank, norm=norm)
        # the same numbers up to float64 rounding (a batch of 6 sums in another order than a batch of 1)
        a, b = r.numbers(), fresh.numbers()
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-10)
                                            if isinstance(b[k], float) else a[k] == b[k] for k in b)
        assert torch.allclose(r.map, fresh.map, atol=1e-9)
    ranked = [block.record(scene=0, **{"class": k}).class_explained for k in (0, 1)]
    assert ranked[0] == block.record(scene=0).class_original and ranked[1] != ranked[0]
    # min-max cancels T1's constant: the flat lie (max) is undone, the map is the honest one again
    flat = block.record(c_W=100.0, c_A=100.0, norm="max")
    undone = block.record(c_W=100.0, c_A=100.0, norm="min-max")
    honest = measure("T1", model, scenes[0], precision="float64", c_W=1e-3, c_A=1.0, norm="min-max")
    assert flat.l1 < 1e-2 and undone.l1 > 10 * flat.l1
    assert (undone.map - honest.map).abs().max() < 0.05
    with pytest.raises(KeyError, match="no control"):
        block.record(eps=0.1)


def test_changes_counts_the_steps_that_move_the_picture(model, picture):
    block = precompute("T3", model, picture, points={"eps": (1e-4, 1e-2, 1.0)}, precision="float64")
    picture_steps, map_steps, steps = block.changes("eps")
    assert steps == 2 and map_steps <= picture_steps <= 2
    pictures = [block.picture(block.record(eps=e)) for e in (1e-4, 1e-2, 1.0)]
    assert picture_steps == sum(a != b for a, b in zip(pictures, pictures[1:]))
    with pytest.raises(KeyError, match="no control"):
        block.changes("c_W")


def test_gauges():
    from dataclasses import replace

    base = dict(technique="T3", precision="float64", alpha_extra=0.0, alpha_share=0.0, l1=0.0, class_original=0,
                class_manipulated=0, map=torch.zeros(2, 2), alpha=torch.zeros(2), image=torch.zeros(3, 2, 2))
    from lie_cam.explore.measure import Measurement

    r = Measurement(params={"eps": 1e-2}, score_change=1e-4, map_share=0.5, **base)
    assert gauges(r) == (round(GAUGE_WIDTH * 4 / 8), round(GAUGE_WIDTH * 6 / 8), GAUGE_WIDTH // 2)
    assert gauges(replace(r, score_change=0.0, params={}))[:2] == (0, -1)  # 0: an empty bar; no eps: no tick
    assert gauges(replace(r, score_change=1e-12))[0] == 0 and gauges(replace(r, score_change=10.0))[0] == GAUGE_WIDTH


def test_colormap_lut_is_jet():
    lut = colormap_lut()
    assert len(lut) == 768
    assert tuple(lut[:3]) == (0, 0, 128) and tuple(lut[-3:]) == (128, 0, 0)  # jet: dark blue .. dark red


def test_the_sign_warning_is_not_printed_by_a_block(model, picture, monkeypatch):
    """A block explains other classes on purpose (the sign caveat is what its class control shows), so the
    paper build's SignWarning raised while precomputing does not reach the page's stderr."""
    import warnings

    from lie_cam.attacks import SignWarning
    from lie_cam.explore.measure import BaseCache

    original = BaseCache.measure_batch

    def warning_batch(self, *args, **kwargs):
        warnings.warn("alpha_{K+1} <= 0", SignWarning, stacklevel=2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BaseCache, "measure_batch", warning_batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precompute("T1", model, picture, points={"c_W": (0.01, 100.0), "c_A": (1.0, 100.0)})
    assert not [w for w in caught if issubclass(w.category, SignWarning)]
