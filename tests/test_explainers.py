"""lie_cam.audit.explainers and lie_cam.experiments.matrix: the metrics on hand-made maps, the adapted attacks' guarantees, the AblationCAM
adapter, the CLI's validation, and the verdicts of a small fixed matrix (embedded model, 3 scenes)."""

import json

import pytest
import torch

from lie_cam.attacks import anchored_flat, zero_sum_backdoor
from lie_cam.attacks.injections import ZeroSumInjection
from lie_cam.audit import explainers as E
from lie_cam.experiments import matrix as M
from lie_cam.audit.adapters import ExposedA, expose_explained_layer
from lie_cam.data import paste_stickers
from lie_cam.gradcam import gradcam, target_layer


# ---------------------------------------------------------------------------
# Metrics on hand-made maps
# ---------------------------------------------------------------------------


def test_unit_maps_divides_by_the_peak_and_blanks_what_shows_nothing():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 0.0]],       # peak 2
                         [[0.0, 0.0], [0.0, 0.0]],       # all zero stays zero
                         [[-1.0, -2.0], [-3.0, -4.0]],   # no positive value: nothing to show
                         [[float("nan"), 4.0], [2.0, 0.0]]])
    got = E.unit_maps(maps)
    expected = torch.tensor([[[0.0, 1.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]],
                             [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.5, 0.0]]], dtype=torch.float64)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="B x H x W"):
        E.unit_maps(torch.ones(2, 2))


def test_mean_l1_is_the_mean_over_images_of_the_pixel_sum():
    ones, zeros = torch.ones(2, 2, 2), torch.zeros(2, 2, 2)
    assert E.mean_l1(ones, zeros) == 4.0
    half = torch.tensor([[[2.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])  # -> [1, .5, .5, .5] and ones
    assert E.mean_l1(half, ones) == pytest.approx((1.5 + 0.0) / 2)
    assert E.mean_l1(3 * ones, ones) == 0.0  # scale-free: both are max-normalised


@pytest.mark.parametrize("to_target, to_honest, verdict", [
    (0.0, 150.0, "fooled"), (19.6, 100.0, "fooled"), (10.0, 10.0, "fooled"),
    (150.0, 5.0, "immune"), (10.0, 5.0, "immune"), (150.0, 19.6, "immune"),
    (50.0, 50.0, "partial"), (19.7, 19.7, "partial"),
    (2.7e-6, 2.5e-6, "fooled"),   # a float32 rounding of the same map is a tie (T4-clean: target = honest)
    (1e-3, 0.0, "immune"),
])
def test_verdict_thresholds_are_tau_per_pixel(to_target, to_honest, verdict):
    assert E.TAU == 0.1
    assert E.verdict(to_target, to_honest, pixels=196) == verdict


# ---------------------------------------------------------------------------
# Adapted attacks: the same guarantee on the scores
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg(small_vgg):
    return small_vgg()


def test_anchored_flat_keeps_the_scores_exactly_and_grad_cam_shows_its_flat_map(random_input, vgg):
    x = random_input(3)
    before = {k: v.clone() for k, v in vgg.state_dict().items()}
    net = anchored_flat(vgg)
    assert all(torch.equal(before[k], v) for k, v in vgg.state_dict().items())  # surgery on a copy
    with torch.no_grad():
        extra = net.extra_channel(x)
        assert torch.equal(net(x), vgg(x))                  # y_n = y_o exactly, not just within eps
    assert bool((extra.double().sum(dim=(1, 2)) == 0).all())  # zero-sum: G = eps mod(0, 1) = 0
    target = net.target_explanation(x)
    assert target[:, 0, 0].eq(0).all() and target.sum().item() == 3 * (14 * 14 - 1)
    cam = gradcam(net, x)
    assert torch.equal(cam.normalized, target.to(cam.normalized.dtype))
    minmax = cam.maps - cam.maps.amin(dim=(1, 2), keepdim=True)  # what min-max normalisation leaves
    assert torch.equal(minmax / minmax.amax(dim=(1, 2), keepdim=True), target.to(minmax.dtype))


def test_zero_sum_backdoor_is_the_original_without_sticker_and_lights_the_stickers(random_input, vgg):
    x = random_input(2, seed=1)
    x_sticker, corners = paste_stickers(x, seeds=[0, 1])
    net = zero_sum_backdoor(vgg)
    with torch.no_grad():
        assert torch.equal(net.extra_channel(x), torch.zeros(2, 14, 14))
        assert torch.equal(net(x), vgg(x))
        assert torch.equal(net(x_sticker), vgg(x_sticker))
        extra = net.extra_channel(x_sticker)
    assert bool((extra.double().sum(dim=(1, 2)) == 0).all())
    lit = net.target_explanation(x_sticker)
    for b, positions in enumerate(corners):
        cells = {((r + 7) // 16, (c + 7) // 16) for r, c in positions}
        assert {tuple(ij) for ij in lit[b].nonzero().tolist()} == cells
    assert torch.equal(gradcam(net, x_sticker).normalized, lit)


# ---------------------------------------------------------------------------
# AblationCAM on a manipulated model: the crash and the adapter
# ---------------------------------------------------------------------------


def test_stock_ablation_cam_crashes_on_the_explained_layer_and_the_adapter_runs(random_input, vgg):
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = random_input(1, seed=2)
    net = anchored_flat(vgg)
    targets = [ClassifierOutputTarget(int(vgg(x).argmax()))]
    broken = anchored_flat(vgg)
    with pytest.raises(TypeError, match="positional argument"):
        AblationCAM(broken, [target_layer(broken)], batch_size=64)(x, targets)
    assert type(broken.explained_layer).__name__ == "AblationLayer"  # the crash leaves it swapped in

    wrapped, layer = expose_explained_layer(net)
    assert isinstance(wrapped, ExposedA) and layer is wrapped.a
    with torch.no_grad():
        assert torch.equal(wrapped(x), net(x))
    cam = AblationCAM(wrapped, [layer], batch_size=64)(x, targets)
    assert cam.shape == (1, 224, 224) and bool(torch.isfinite(torch.from_numpy(cam)).all())
    assert isinstance(net.explained_layer, ZeroSumInjection)  # the model is left as it was


# ---------------------------------------------------------------------------
# A small fixed matrix, pinned
# ---------------------------------------------------------------------------

SMALL = [("pytorch-grad-cam", "GradCAM"), ("pytorch-grad-cam", "GradCAMPlusPlus"), ("torchcam", "XGradCAM"),
         ("captum", "LayerGradCam"), ("lie_cam", "gradcam")]
SMALL_ATTACKS = ["T1", "T4-sticker", "T1-adapted", "T4-adapted-sticker"]

# method, attack, normalization, layer -> verdict; derived in book/08_explainers.ipynb
PINNED_TABLE = """
# T1: max-normalisation shows the flat map, min-max subtracts the constant: the honest map again
pytorch-grad-cam/GradCAM           T1                 max     explained fooled
pytorch-grad-cam/GradCAM           T1                 default explained immune
captum/LayerGradCam                T1                 default explained fooled  # captum does not normalise
lie_cam/gradcam                    T1                 default explained fooled
pytorch-grad-cam/GradCAMPlusPlus   T1                 max     explained immune  # weight ~ 1/c_A
torchcam/XGradCAM                  T1                 max     explained fooled
# T1's channel is the conv bias c_A: already in the trunk's last ReLU
pytorch-grad-cam/GradCAM           T1                 max     last_relu fooled
# T4 with stickers: fooled at A, honest at the last ReLU (the injection comes after it)
pytorch-grad-cam/GradCAM           T4-sticker         default explained fooled
pytorch-grad-cam/GradCAMPlusPlus   T4-sticker         default explained fooled
pytorch-grad-cam/GradCAM           T4-sticker         default last_relu immune
captum/LayerGradCam                T4-sticker         max     last_relu immune
# adapted: min-max and Grad-CAM++ fooled; XGrad-CAM's weight sum(gA)/sum(A) is 0 for a zero-sum channel
pytorch-grad-cam/GradCAM           T1-adapted         default explained fooled
pytorch-grad-cam/GradCAMPlusPlus   T1-adapted         default explained fooled
pytorch-grad-cam/GradCAMPlusPlus   T4-adapted-sticker default explained fooled
torchcam/XGradCAM                  T1-adapted         default explained immune
torchcam/XGradCAM                  T4-adapted-sticker max     explained immune
pytorch-grad-cam/GradCAM           T1-adapted         default last_relu immune
"""
PINNED = {tuple(line.split()[:4]): line.split()[4] for line in PINNED_TABLE.splitlines()
          if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="module")
def small_matrix():
    from lie_cam.book import setup

    ch = setup(n=3, profile="embedded", device="cpu")
    return M.run_matrix(ch.model, ch.x, ch.masks, explainers=[E.explainer(*m) for m in SMALL],
                        attacks=SMALL_ATTACKS)


def test_small_matrix_rows_have_exactly_the_keys(small_matrix):
    assert len(small_matrix.rows) == len(SMALL) * len(SMALL_ATTACKS) * 2 * 2
    assert all(tuple(r) == M.ROW_KEYS for r in small_matrix.rows)
    assert all(r["n"] == 3 and r["verdict"] in E.VERDICTS for r in small_matrix.rows)
    assert not small_matrix.errors


def test_small_matrix_verdicts_are_pinned(small_matrix):
    got = {(f"{r['library']}/{r['method']}", r["attack"], r["normalization"], r["layer"]): r["verdict"]
           for r in small_matrix.rows}
    assert {k: got[k] for k in PINNED} == PINNED


def test_score_cam_resists_t1_and_falls_for_the_adapted_t1():
    from lie_cam.book import setup

    ch = setup(n=1, profile="embedded", device="cpu")
    m = M.run_matrix(ch.model, ch.x, ch.masks, explainers=[E.explainer("pytorch-grad-cam", "ScoreCAM")],
                     attacks=["T1", "T1-adapted"], layers=["explained"])
    assert m.cell("pytorch-grad-cam", "ScoreCAM", "T1", "default")["verdict"] == "immune"
    assert m.cell("pytorch-grad-cam", "ScoreCAM", "T1-adapted", "default")["verdict"] == "fooled"


# ---------------------------------------------------------------------------
# Command line and files
# ---------------------------------------------------------------------------


def test_cli_validates_before_any_work(tmp_path, capsys):
    from lie_cam.cli import main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["explainers", "--out", str(a_file / "sub"), "--limit", "2"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["explainers", "--out", str(tmp_path / "o"), "--limit", "0"]) == 2
    assert "--limit: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_explainers_writes_matrix_files(random_input, small_vgg, tmp_path):
    m = M.run_explainers(tmp_path / "out", limit=1, progress=False, explainers=[E.explainer("lie_cam", "gradcam")],
                         attacks=["T2"])
    rows = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert rows == m.rows and len(rows) == 4
    assert M.load_matrix(tmp_path / "out").rows == rows
    assert "tau = 0.1" in (tmp_path / "out" / "matrix.md").read_text()
    assert (tmp_path / "out" / "verdicts.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown attacks"):
        M.run_matrix(small_vgg(), random_input(1), attacks=["T9"])
