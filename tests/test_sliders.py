"""sliders: the precomputed grid is the measuring function's, and the HTML block carries it whole,
self-contained (no external reference), in the layout the inline script decodes."""

import base64
import json
import re

import pytest
import torch

from lie_cam.explore.sliders import block_html, colormap_lut, precompute
from lie_cam.explore.measure import SPECS, measure

POINTS = {"eps": (1e-3, 1e-1), "c_G": (1e-6, 1.0, 1e4)}


@pytest.fixture(scope="module")
def block(model, picture):
    return precompute("T3", model, picture, class_names=lambda c: f"class{c}", points=POINTS)


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" class="lc-data">(.*?)</script>', html, re.S)
    assert m, "no data script in the block"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_grid_is_row_major_and_equals_measure(block, model, picture):
    assert len(block.records) == 2 * 3 * 2  # eps x c_G x precision
    assert block.points == (POINTS["eps"], POINTS["c_G"], ("float32", "float64"))
    # the last control varies fastest
    assert [(r.params["eps"], r.params["c_G"], r.precision) for r in block.records[:3]] == [
        (1e-3, 1e-6, "float32"), (1e-3, 1e-6, "float64"), (1e-3, 1.0, "float32")]
    r = block.record(eps=1e-1, c_G=1e4, precision="float64")
    fresh = measure("T3", model, picture, precision="float64", eps=1e-1, c_G=1e4)
    assert r.numbers() == fresh.numbers() and torch.equal(r.map, fresh.map)
    with pytest.raises(KeyError, match="not on the grid"):
        block.record(eps=0.5, c_G=1e4, precision="float64")


def test_default_points_are_the_specs(model, picture):
    t2 = precompute("T2", model, picture)
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
    assert base64.b64decode(data["lut"]) == colormap_lut()
    # the page says which explorer is which
    assert "no kernel and no network" in html and "needs a kernel" in html


def test_two_blocks_do_not_share_ids(block):
    a, b = block_html(block), block_html(block)
    ids = [re.search(r'id="(lc-[^"]+)"', h).group(1) for h in (a, b)]
    assert ids[0] != ids[1]


def test_t4_block_has_both_images(model, picture):
    t4 = precompute("T4", model, picture, points={"eps": (1e-2, 1.0)})
    data = _data(t4.html())
    assert len(data["images"]) == 2  # clean and stickered
    assert {r["image"] for r in data["records"]} == {0, 1}


def test_colormap_lut_is_jet():
    lut = colormap_lut()
    assert len(lut) == 768
    assert tuple(lut[:3]) == (0, 0, 128) and tuple(lut[-3:]) == (128, 0, 0)  # jet: dark blue .. dark red
