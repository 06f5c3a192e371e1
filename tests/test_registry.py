"""lie_cam.attacks.registry: one list of attacks, their defaults, and what every consumer builds from it."""

import pytest
import torch

from lie_cam.anatomy import InputSpec
from lie_cam.attacks import ATTACKS, TECHNIQUES, constant_flat, networks, paper_networks
from lie_cam.attacks.manipulated import WidenedLinear
from lie_cam.attacks.registry import names
from lie_cam.models import compact_resnet


def test_the_registry_knows_every_attack_once_by_family():
    assert TECHNIQUES == ("T1", "T2", "T3", "T4")
    assert names("weights-only") == ("hijack",) and names("adapted") == ("T1-adapted", "T4-adapted")
    assert names() == tuple(ATTACKS)
    assert [a.name for a in ATTACKS.values() if a.triggered] == ["T4", "T4-adapted"]
    with pytest.raises(ValueError, match="unknown families"):
        names("learned")
    with pytest.raises(ValueError, match="unknown attacks"):
        networks(torch.nn.Linear(2, 2), ["T5"])


def test_paper_networks_are_the_registry_builds_with_the_papers_constants(small_vgg, random_input):
    model, x = small_vgg(0), random_input(2)
    built = paper_networks(model)
    assert list(built) == list(TECHNIQUES)
    by_hand = constant_flat(model, c_A=100.0, c_W=100.0, build="paper")  # paper_networks: the paper's build
    assert torch.equal(built["T1"](x), by_hand(x))
    assert built["T2"].classifier[0].weight[0, -1].item() == 10.0  # the paper's c_W for T2
    resnet = compact_resnet(4).eval()
    assert paper_networks(resnet, input_size=64)["T1"].classifier[0].weight[0, -1].item() == 1000.0


def test_build_overrides_defaults_and_passes_only_what_a_recipe_takes(small_vgg):
    model = small_vgg(0)
    t3 = ATTACKS["T3"].build(model, c_F=123.0, c_W=5.0, seed=1)  # c_W: not T3's, left out
    assert t3.explained_layer.c_F == 123.0 and t3.score_branch.eps == 0.01
    assert not ATTACKS["T3"].accepts("c_W") and ATTACKS["T1"].accepts("c_W")
    with pytest.raises(ValueError, match="c_F"):
        ATTACKS["T3"].build(model, c_F=-1.0)


def test_t4_reads_the_models_input_spec(small_vgg):
    model = small_vgg(0)
    model.input_spec = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    detector = ATTACKS["T4"].build(model).explained_layer.branch
    assert torch.equal(detector.mean.flatten().cpu(), torch.zeros(3, dtype=detector.mean.dtype))


def test_t3_t4_first_fc_is_the_originals_product_exactly(small_vgg, random_input):
    """A single product over [z_o, 0] sums in another order on some CPUs; the split keeps it exact."""
    model, x = small_vgg(2, dtype=torch.float64), random_input(3, 2, torch.float64)
    for name in ("T3", "T4"):
        fc = paper_networks(model)[name].classifier[0]
        assert isinstance(fc, WidenedLinear) and fc.in_features == model.classifier[0].in_features + 49
        z = torch.randn(3, model.classifier[0].in_features, dtype=torch.float64)
        widened = torch.cat([z, torch.rand(3, 49, dtype=torch.float64)], dim=1)
        assert torch.equal(fc(widened), model.classifier[0](z))  # the added columns are zero
    t4 = paper_networks(model)["T4"]
    assert torch.equal(t4(x), model(x))  # no sticker: exactly the original
