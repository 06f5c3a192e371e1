"""The independent cross-check (tools/independent_matrix.py) against the project's own matrix.

tools/independent_matrix.py measures the verdicts with its own code, calling pytorch-grad-cam,
captum and torchcam as their users do; here it must give the same verdicts (and distances) as
`lie_cam.experiments.matrix.run_matrix` on the same two images, for a few cheap methods and attacks.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lie_cam  # noqa: F401  (before torchvision and the CAM libraries)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "independent_matrix.py"
ATTACKS = ["T1", "T2", "T4-clean", "T4-sticker", "T1-adapted"]
METHODS = [("pytorch-grad-cam", "GradCAM"), ("pytorch-grad-cam", "GradCAMPlusPlus"), ("captum", "LayerGradCam")]


def _load_tool():
    spec = importlib.util.spec_from_file_location("independent_matrix", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


im = _load_tool()


def test_max_normalise_zeroes_non_positive_and_nan_maps():
    maps = np.stack([np.full((2, 2), -1.0), np.array([[np.nan, 2.0], [1.0, -2.0]]), np.zeros((2, 2))])
    out = im.max_normalise(maps)
    assert np.array_equal(out[0], np.zeros((2, 2)))
    assert np.array_equal(out[1], np.array([[0.0, 1.0], [0.5, -1.0]]))
    assert np.array_equal(out[2], np.zeros((2, 2)))


@pytest.mark.parametrize("to_target, to_honest, expected", [
    (5.0, 30.0, "fooled"),
    (19.6, 19.6, "fooled"),              # both at the threshold: a tie counts as "not larger"
    (1e-4, 0.0, "fooled"),               # within the tie allowance 1e-6 N_A
    (1e-3, 0.0, "immune"),               # beyond it: closer to the honest map
    (25.0, 10.0, "immune"),
    (25.0, 30.0, "partial"),
    (10.0, 5.0, "immune"),               # below tau N_A but nearer the honest map
    (float("nan"), 1.0, "error"),
])
def test_verdict_rule(to_target, to_honest, expected):
    assert im.verdict(to_target, to_honest, 196) == expected


@pytest.fixture(scope="module")
def both():
    """(ours, theirs, diagnostics) on the first two test images, keyed by cell."""
    torch.set_num_threads(1)
    from lie_cam.book import setup
    from lie_cam.audit.explainers import explainer
    from lie_cam.experiments.matrix import run_matrix

    ch = setup(n=2, device="cpu")
    material = im.build_material(ch.model, ch.x, ch.masks, ATTACKS)
    chosen = [m for m in im.methods() if (m.library, m.method) in METHODS]
    assert len(chosen) == len(METHODS)
    ours, diagnostics = im.measure(material, chosen, ATTACKS, im.LAYERS, costly_limit=2)
    theirs = run_matrix(ch.model, ch.x, ch.masks, explainers=[explainer(lib, m) for lib, m in METHODS],
                        attacks=ATTACKS, layers=list(im.LAYERS), costly_limit=2).rows
    return {im.key(r): r for r in ours}, {im.key(r): r for r in theirs}, diagnostics


def test_same_cells(both):
    ours, theirs, _ = both
    assert len(ours) == len(METHODS) * len(ATTACKS) * len(im.LAYERS) * len(im.NORMALIZATIONS)
    assert set(ours) <= set(theirs)


def test_fourteen_by_fourteen_maps_are_what_the_library_showed(both):
    """pytorch-grad-cam's 224 x 224 output is reproduced from our 14x14 map by the library's resize."""
    _, _, diagnostics = both
    diffs = [d["max_abs_diff_vs_library_output"] for k, d in diagnostics.items() if k.startswith("pytorch-grad-cam/")]
    assert diffs and max(diffs) < 1e-5


def test_verdicts_equal_the_projects(both):
    ours, theirs, _ = both
    differ = {k: (ours[k]["verdict"], theirs[k]["verdict"]) for k in ours if ours[k]["verdict"] != theirs[k]["verdict"]}
    assert not differ, differ
    # The cells tested hold every verdict, so a rule that always answers the same would fail here
    assert {r["verdict"] for r in ours.values()} == {"fooled", "immune", "partial"}


def test_distances_equal_the_projects(both):
    """Same maps, same targets: the mean L1 distances agree to float32 rounding of the maps."""
    ours, theirs, _ = both
    for k, r in ours.items():
        for field in ("l1_to_target", "l1_to_honest"):
            assert math.isclose(r[field], theirs[k][field], rel_tol=1e-3, abs_tol=1e-2), (k, field, r[field],
                                                                                           theirs[k][field])
        assert r["n"] == theirs[k]["n"] == 2
        assert r["pointing"] == pytest.approx(theirs[k]["pointing"]), (k, "pointing")


def test_a_method_that_raises_gives_error_rows_that_json_can_hold(both):
    """An error cell has no distances (None, as in the project's matrix), and the report still renders."""
    import json

    from lie_cam.book import setup

    def crash(net, layer, x, classes):  # like stock AblationCAM: fine on the original, not on a manipulated net
        if net is material.model:
            return im.captum_layer_gradcam(net, layer, x, classes)
        raise RuntimeError("boom")

    ch = setup(n=2, device="cpu")
    material = im.build_material(ch.model, ch.x, ch.masks, ["T1"])
    rows, _ = im.measure(material, [im.Method("fake", "Crash", False, crash)], ["T1"], im.LAYERS)
    assert {r["verdict"] for r in rows} == {"error"} and all(r["l1_to_target"] is None for r in rows)
    json.dumps(rows, allow_nan=False)
    report = im.agreement_markdown(rows, rows, {})
    assert "Agreement: 4 / 4 cells" in report and "| fake | default | explained | 1 | 1 |" in report
